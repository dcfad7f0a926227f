//! Anthropic's Messages API (`POST {base_url}/messages`, `x-api-key`, `anthropic-version`).
//!
//! A client on `/v1/messages` speaks Anthropic already: its body goes out with only the model
//! name swapped and the answer comes back byte for byte. A client on `/v1/chat/completions`
//! is translated both ways ([`super::translate::openai_anthropic`]). Anthropic has no
//! completions or embeddings API: those get a 400 in OpenAI's shape without a network call.
//!
//! Status classes follow [`super::classify_http`]: 529 `overloaded_error` and other 5xx are
//! retried elsewhere, 429 cools the deployment for `retry-after`, 401/403 take it out, and
//! 400/404/413 (context length, unknown model, too large) go back to the client translated.

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Uri};
use http_body_util::BodyExt;

use super::client::{self, HttpClient};
use super::translate::{self, TranslateError, anthropic_openai, openai_anthropic};
use super::{Endpoint, ProviderAdaptor, SendError, UpstreamRequest, UpstreamResponse};
use crate::fleet::UpstreamRateLimits;

/// The API version the gateway speaks (the only stable one Anthropic has published).
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

static JSON: HeaderValue = HeaderValue::from_static("application/json");
static EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream");
static VERSION: HeaderValue = HeaderValue::from_static(ANTHROPIC_VERSION);
const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const ANTHROPIC_VERSION_HEADER: HeaderName = HeaderName::from_static("anthropic-version");

/// An Anthropic provider.
#[derive(Debug)]
pub struct AnthropicAdaptor {
    upstream: client::Upstream,
    messages_path: String,
    /// The API key, marked sensitive so that it is never printed.
    api_key: Option<HeaderValue>,
}

impl AnthropicAdaptor {
    /// `base_url` includes the version path (`https://api.anthropic.com/v1`).
    pub fn new(client: &HttpClient, base_url: &str, api_key: Option<&str>) -> Result<Self, String> {
        let base: Uri = base_url
            .parse()
            .map_err(|e| format!("invalid base_url {base_url:?}: {e}"))?;
        let upstream = client
            .upstream(&base)
            .map_err(|e| format!("invalid base_url {base_url:?}: {e}"))?;
        let api_key = match api_key {
            None => None,
            Some(key) => {
                let mut value = HeaderValue::from_str(key).map_err(|_| {
                    "the API key contains characters not allowed in a header".to_owned()
                })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(Self {
            upstream,
            messages_path: format!("{}/messages", base.path().trim_end_matches('/')),
            api_key,
        })
    }

    async fn post(
        &self,
        body: &[u8],
        stream: bool,
        request_id: &str,
    ) -> Result<UpstreamResponse, SendError> {
        let request_id = HeaderValue::from_str(request_id).ok();
        let mut headers: Vec<(HeaderName, &HeaderValue)> = Vec::with_capacity(5);
        headers.push((CONTENT_TYPE, &JSON));
        headers.push((ACCEPT, if stream { &EVENT_STREAM } else { &JSON }));
        headers.push((ANTHROPIC_VERSION_HEADER, &VERSION));
        if let Some(key) = &self.api_key {
            headers.push((X_API_KEY, key));
        }
        if let Some(id) = &request_id {
            headers.push((HeaderName::from_static("x-request-id"), id));
        }
        let response = self
            .upstream
            .post(&self.messages_path, &headers, body)
            .await?;
        Ok(UpstreamResponse {
            status: response.status,
            headers: response.headers,
            body: response.body.boxed(),
        })
    }
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
                    self.post(&body, view.stream, request.request_id).await
                }
                Endpoint::ChatCompletions => {
                    let body = match openai_anthropic::request(
                        &view.body,
                        request.upstream_model,
                        view.stream,
                    ) {
                        Ok(body) => body,
                        Err(e) => return Ok(translate::refusal(request.endpoint, &e)),
                    };
                    let response = self.post(&body, view.stream, request.request_id).await?;
                    Ok(translate::wrap(
                        response,
                        view.stream,
                        openai_anthropic::StreamToOpenAi::new(),
                        openai_anthropic::response,
                        openai_anthropic::error,
                    ))
                }
                Endpoint::Completions | Endpoint::Embeddings => Ok(translate::refusal(
                    request.endpoint,
                    &TranslateError::new(
                        format!(
                            "Anthropic deployments do not serve the {} API",
                            request.endpoint.as_str()
                        ),
                        None,
                    ),
                )),
            }
        }
        .boxed()
    }

    fn rate_limits(&self, headers: &HeaderMap) -> Option<UpstreamRateLimits> {
        UpstreamRateLimits::from_anthropic_headers(headers, chrono::Utc::now())
    }
}

/// Wraps an OpenAI-format answer for a `/v1/messages` client (used by every OpenAI-compatible
/// adaptor).
pub fn openai_answer_for_messages(response: UpstreamResponse, stream: bool) -> UpstreamResponse {
    translate::wrap(
        response,
        stream,
        anthropic_openai::StreamToAnthropic::new(),
        anthropic_openai::response,
        anthropic_openai::error,
    )
}

/// The OpenAI-format request body for an attempt: the client's own (model swapped) or, for a
/// `/v1/messages` client, the translation of its Anthropic request. `Err` is a ready 400 in
/// the client's shape.
pub fn openai_request_body(request: &UpstreamRequest<'_>) -> Result<Bytes, UpstreamResponse> {
    let view = request.view;
    if request.endpoint != Endpoint::Messages {
        return Ok(view.upstream_body(request.upstream_model_json));
    }
    anthropic_openai::request(&view.body, request.upstream_model, view.stream)
        .map(Bytes::from)
        .map_err(|e| translate::refusal(request.endpoint, &e))
}
