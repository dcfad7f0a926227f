//! OpenAI-compatible upstreams: OpenAI itself, vLLM, Ollama, Groq, DeepSeek, Together, ...
//!
//! The body goes out as the client sent it, with only the model name swapped (and, for
//! streams, usage reporting switched on — see [`crate::request::RequestView::upstream_body`]).
//! A `/v1/messages` client's request is translated to a chat completion and the answer back
//! ([`super::translate::anthropic_openai`]). Everything that
//! can be computed once per snapshot is: the three request paths and the auth header.

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Uri};
use http_body_util::BodyExt;

use super::anthropic::{openai_answer_for_messages, openai_request_body};
use super::client::{self, HttpClient};
use super::{Endpoint, ProviderAdaptor, SendError, UpstreamRequest, UpstreamResponse};

/// An OpenAI-compatible provider.
#[derive(Debug)]
pub struct OpenAiAdaptor {
    upstream: client::Upstream,
    chat_path: String,
    completions_path: String,
    embeddings_path: String,
    /// `Bearer <key>`, marked sensitive so that it is never printed.
    authorization: Option<HeaderValue>,
}

static JSON: HeaderValue = HeaderValue::from_static("application/json");
static EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream");
const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

impl OpenAiAdaptor {
    /// `base_url` includes the version path (`https://api.openai.com/v1`).
    pub fn new(client: &HttpClient, base_url: &str, api_key: Option<&str>) -> Result<Self, String> {
        let base: Uri = base_url
            .parse()
            .map_err(|e| format!("invalid base_url {base_url:?}: {e}"))?;
        let upstream = client
            .upstream(&base)
            .map_err(|e| format!("invalid base_url {base_url:?}: {e}"))?;
        let prefix = base.path().trim_end_matches('/');
        let authorization = match api_key {
            None => None,
            Some(key) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                    "the API key contains characters not allowed in a header".to_owned()
                })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok(Self {
            upstream,
            chat_path: format!("{prefix}{}", Endpoint::ChatCompletions.openai_path()),
            completions_path: format!("{prefix}{}", Endpoint::Completions.openai_path()),
            embeddings_path: format!("{prefix}{}", Endpoint::Embeddings.openai_path()),
            authorization,
        })
    }

    fn path(&self, endpoint: Endpoint) -> &str {
        match endpoint {
            Endpoint::ChatCompletions | Endpoint::Messages => &self.chat_path,
            Endpoint::Completions => &self.completions_path,
            Endpoint::Embeddings => &self.embeddings_path,
        }
    }
}

impl ProviderAdaptor for OpenAiAdaptor {
    fn send<'a>(
        &'a self,
        request: &'a UpstreamRequest<'a>,
    ) -> BoxFuture<'a, Result<UpstreamResponse, SendError>> {
        let auth = self.authorization.as_ref().map(|v| (AUTHORIZATION, v));
        send_openai_compatible(&self.upstream, self.path(request.endpoint), auth, request).boxed()
    }
}

/// Sends one attempt to an OpenAI-compatible API at `path` (OpenAI itself, Azure OpenAI):
/// the client's body with the model swapped, or — for a `/v1/messages` client — the
/// translation of its request, with the answer translated back.
pub async fn send_openai_compatible(
    upstream: &client::Upstream,
    path: &str,
    auth: Option<(HeaderName, &HeaderValue)>,
    request: &UpstreamRequest<'_>,
) -> Result<UpstreamResponse, SendError> {
    let body = match openai_request_body(request) {
        Ok(body) => body,
        Err(refusal) => return Ok(refusal),
    };
    let request_id = HeaderValue::from_str(request.request_id).ok();
    let accept = if request.view.stream {
        &EVENT_STREAM
    } else {
        &JSON
    };
    let mut headers: Vec<(HeaderName, &HeaderValue)> = Vec::with_capacity(4);
    headers.push((CONTENT_TYPE, &JSON));
    headers.push((ACCEPT, accept));
    if let Some(auth) = auth {
        headers.push(auth);
    }
    if let Some(id) = &request_id {
        headers.push((REQUEST_ID, id));
    }
    let response = upstream.post(path, &headers, &body).await?;
    let response = UpstreamResponse {
        status: response.status,
        headers: response.headers,
        body: response.body.boxed(),
    };
    Ok(if request.endpoint == Endpoint::Messages {
        openai_answer_for_messages(response, request.view.stream)
    } else {
        response
    })
}
