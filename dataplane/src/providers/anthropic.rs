//! Anthropic's Messages API (`POST {base_url}/messages`, `x-api-key`, `anthropic-version`).
//! `base_url` may leave out the `/v1` (`https://api.anthropic.com`, as the Anthropic SDK takes
//! it): the path is then `{base_url}/v1/messages`.
//!
//! A client on `/v1/messages` speaks Anthropic already: its body goes out with only the model
//! name swapped and the answer comes back byte for byte (`/v1/messages/count_tokens` too).
//! The client's `anthropic-version` (else the gateway's) and `anthropic-beta` headers are
//! forwarded on every request. A client on `/v1/chat/completions`
//! is translated both ways ([`super::translate::openai_anthropic`]); one on `/v1/responses`
//! goes through chat first ([`super::translate::responses_openai`]). Anthropic has no
//! completions or embeddings API: those get a 400 in OpenAI's shape without a network call.
//!
//! Status classes follow [`super::classify_http`]: 529 `overloaded_error` and other 5xx are
//! retried elsewhere, 429 cools the deployment for `retry-after`, 401/403 take it out, and
//! 400/404/413 (context length, unknown model, too large) go back to the client translated.

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::{HeaderMap, HeaderName, HeaderValue};

use super::chat_only::not_served;
use super::common::{self, EVENT_STREAM, Http};
use super::registry::Setup;
use super::translate::{self, anthropic_openai, openai_anthropic};
use super::{Endpoint, ProviderAdaptor, SendError, UpstreamRequest, UpstreamResponse};
use crate::fleet::UpstreamRateLimits;

/// The API version the gateway speaks (the only stable one Anthropic has published).
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

static VERSION: HeaderValue = HeaderValue::from_static(ANTHROPIC_VERSION);
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const ANTHROPIC_VERSION_HEADER: HeaderName = HeaderName::from_static("anthropic-version");

/// The Messages API's path under a base path, adding the `/v1` the base may leave out.
fn messages_path(base_path: &str) -> String {
    if base_path.ends_with("/v1") {
        format!("{base_path}/messages")
    } else {
        format!("{base_path}/v1/messages")
    }
}

/// An Anthropic provider.
#[derive(Debug)]
pub struct AnthropicAdaptor {
    /// With `x-api-key: <key>`.
    http: Http,
    messages_path: String,
    /// `…/messages/count_tokens`.
    count_tokens_path: String,
    /// The base path with its `/v1`, for passthroughs.
    version_path: String,
}

impl AnthropicAdaptor {
    /// `base_url` with or without the version path: `https://api.anthropic.com/v1`, or
    /// `https://api.anthropic.com` as the Anthropic SDK and most docs write it (`/v1` is then
    /// added, as the SDK does).
    pub fn new(setup: &Setup<'_>) -> Result<Self, String> {
        let http = setup.http(X_API_KEY, "")?;
        let messages_path = messages_path(&http.base_path);
        Ok(Self {
            count_tokens_path: format!("{messages_path}/count_tokens"),
            version_path: messages_path.trim_end_matches("/messages").to_owned(),
            messages_path,
            http,
        })
    }

    /// Posts to `path` with the client's `anthropic-version` (the gateway's when it sent
    /// none) and `anthropic-beta`, if any.
    async fn post(
        &self,
        path: &str,
        body: &[u8],
        request: &UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, SendError> {
        let client = &request.view.anthropic_headers;
        let has_version = client.iter().any(|(n, _)| *n == ANTHROPIC_VERSION_HEADER);
        let version = (!has_version).then_some((ANTHROPIC_VERSION_HEADER, &VERSION));
        let headers = client.iter().map(|(n, v)| (n.clone(), v)).chain(version);
        let accept = common::accept(request.view.stream, &EVENT_STREAM);
        self.http
            .post(path, accept, headers, Some(request.request_id), body)
            .await
    }
}

/// The Messages API body of one attempt: the client's own with the model swapped on
/// `/v1/messages`, a translation on chat completions and `/v1/responses` (through chat's
/// shape). `Err` is the refusal to answer with, without a network call.
pub fn messages_body(request: &UpstreamRequest<'_>) -> Result<Bytes, UpstreamResponse> {
    let view = request.view;
    let chat = match request.endpoint {
        Endpoint::Messages => return Ok(view.upstream_body(request.upstream_model_json)),
        Endpoint::Responses => anthropic_openai::openai_body(request)?,
        _ => view.body.clone(),
    };
    openai_anthropic::request(&chat, request.upstream_model, view.stream)
        .map(Bytes::from)
        .map_err(|e| translate::refusal(request.endpoint, &e))
}

/// A Messages API answer in the client's protocol: as it came for `/v1/messages`, translated
/// for chat completions and `/v1/responses`.
pub fn for_client(response: UpstreamResponse, request: &UpstreamRequest<'_>) -> UpstreamResponse {
    if request.endpoint == Endpoint::Messages {
        return response;
    }
    let chat = translate::wrap(
        response,
        request.view.stream,
        openai_anthropic::StreamToOpenAi::new(),
        openai_anthropic::response,
        openai_anthropic::error,
    );
    translate::wrap_for_client(chat, request)
}

impl ProviderAdaptor for AnthropicAdaptor {
    fn send<'a>(
        &'a self,
        request: &'a UpstreamRequest<'a>,
    ) -> BoxFuture<'a, Result<UpstreamResponse, SendError>> {
        async move {
            let view = request.view;
            match request.endpoint {
                Endpoint::Messages => {
                    let body = view.upstream_body(request.upstream_model_json);
                    self.post(&self.messages_path, &body, request).await
                }
                Endpoint::Passthrough => {
                    let Some(target) = &view.passthrough else {
                        return Ok(not_served("Anthropic", request.endpoint));
                    };
                    let body = view.upstream_body(request.upstream_model_json);
                    let path = format!("{}{}", self.version_path, target.path);
                    self.post(&path, &body, request).await
                }
                Endpoint::CountTokens => {
                    let body = view.upstream_body(request.upstream_model_json);
                    self.post(&self.count_tokens_path, &body, request).await
                }
                Endpoint::ChatCompletions | Endpoint::Responses => {
                    let body = match messages_body(request) {
                        Ok(body) => body,
                        Err(refusal) => return Ok(refusal),
                    };
                    let response = self.post(&self.messages_path, &body, request).await?;
                    Ok(for_client(response, request))
                }
                Endpoint::Completions
                | Endpoint::Embeddings
                | Endpoint::ImagesGenerations
                | Endpoint::AudioTranscriptions
                | Endpoint::AudioSpeech => Ok(not_served("Anthropic", request.endpoint)),
            }
        }
        .boxed()
    }

    fn rate_limits(&self, headers: &HeaderMap) -> Option<UpstreamRateLimits> {
        UpstreamRateLimits::from_anthropic_headers(headers, chrono::Utc::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_base_url_works_with_or_without_v1() {
        assert_eq!(messages_path("/v1"), "/v1/messages");
        assert_eq!(messages_path(""), "/v1/messages");
        assert_eq!(messages_path("/s/x/v1"), "/s/x/v1/messages");
        assert_eq!(messages_path("/proxy"), "/proxy/v1/messages");
    }
}
