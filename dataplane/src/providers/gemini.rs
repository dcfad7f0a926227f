//! Google's Gemini API (AI Studio): `POST {base_url}/models/{model}:generateContent`, or
//! `:streamGenerateContent?alt=sse` for streams, with the key in `x-goog-api-key`.
//!
//! Chat requests are translated both ways ([`super::translate::openai_gemini`]);
//! `/v1/messages` requests go through OpenAI's shape first. Completions and embeddings are
//! not served (400 without a network call).
//!
//! Gemini answers an invalid API key with a 400 (`API_KEY_INVALID`), which would look like
//! the client's fault; the adaptor reads small error bodies and turns that one into a 401,
//! so the proxy takes the deployment out instead of blaming the client. 429
//! `RESOURCE_EXHAUSTED` cools the deployment for the `RetryInfo.retryDelay` in its body
//! (Gemini sends no `Retry-After`), 500/503 (`UNAVAILABLE`, "model overloaded") are
//! retried elsewhere, and a prompt blocked by safety settings is a 200 with
//! `finish_reason: content_filter`.

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, StatusCode, Uri};
use http_body_util::BodyExt;

use super::anthropic::{openai_answer_for_messages, openai_request_body};
use super::client::{self, HttpClient};
use super::translate::{self, TranslateError, openai_gemini};
use super::{Endpoint, ProviderAdaptor, SendError, UpstreamRequest, UpstreamResponse};

static JSON: HeaderValue = HeaderValue::from_static("application/json");
static EVENT_STREAM: HeaderValue = HeaderValue::from_static("text/event-stream");
const API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");

/// A Gemini provider.
#[derive(Debug)]
pub struct GeminiAdaptor {
    upstream: client::Upstream,
    /// `{base path}/models/`.
    prefix: String,
    api_key: Option<HeaderValue>,
}

impl GeminiAdaptor {
    /// `base_url` includes the version path (`https://generativelanguage.googleapis.com/v1beta`).
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
            prefix: format!("{}/models/", base.path().trim_end_matches('/')),
            api_key,
        })
    }

    /// The request path; model names are letters, digits, `-`, `_` and `.` (others are
    /// percent-encoded so that they cannot change the path).
    fn path(&self, model: &str, stream: bool) -> String {
        let mut path = String::with_capacity(self.prefix.len() + model.len() + 40);
        path.push_str(&self.prefix);
        for b in model.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                path.push(char::from(b));
            } else {
                path.push_str(&format!("%{b:02X}"));
            }
        }
        path.push_str(if stream {
            ":streamGenerateContent?alt=sse"
        } else {
            ":generateContent"
        });
        path
    }

    async fn send_chat(
        &self,
        request: &UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, SendError> {
        let stream = request.view.stream;
        let openai_body = match openai_request_body(request) {
            Ok(body) => body,
            Err(refusal) => return Ok(refusal),
        };
        let body = match openai_gemini::request(&openai_body) {
            Ok(body) => body,
            Err(e) => return Ok(translate::refusal(request.endpoint, &e)),
        };
        let request_id = HeaderValue::from_str(request.request_id).ok();
        let mut headers: Vec<(HeaderName, &HeaderValue)> = Vec::with_capacity(4);
        headers.push((CONTENT_TYPE, &JSON));
        headers.push((ACCEPT, if stream { &EVENT_STREAM } else { &JSON }));
        if let Some(key) = &self.api_key {
            headers.push((API_KEY, key));
        }
        if let Some(id) = &request_id {
            headers.push((HeaderName::from_static("x-request-id"), id));
        }
        let path = self.path(request.upstream_model, stream);
        let response = self.upstream.post(&path, &headers, &body).await?;
        let mut response = UpstreamResponse {
            status: response.status,
            headers: response.headers,
            body: response.body.boxed(),
        };
        if response.status == StatusCode::BAD_REQUEST
            || response.status == StatusCode::TOO_MANY_REQUESTS
        {
            let (read, bytes) = translate::read_error(response).await;
            response = read;
            if openai_gemini::is_invalid_api_key(&bytes) {
                response.status = StatusCode::UNAUTHORIZED;
            }
            if let Some(secs) = openai_gemini::retry_delay_secs(&bytes) {
                response
                    .headers
                    .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
            }
        }
        let response = translate::wrap(
            response,
            stream,
            openai_gemini::StreamToOpenAi::new(),
            openai_gemini::response,
            openai_gemini::error,
        );
        Ok(if request.endpoint == Endpoint::Messages {
            openai_answer_for_messages(response, stream)
        } else {
            response
        })
    }
}

impl ProviderAdaptor for GeminiAdaptor {
    fn send<'a>(
        &'a self,
        request: &'a UpstreamRequest<'a>,
    ) -> BoxFuture<'a, Result<UpstreamResponse, SendError>> {
        async move {
            match request.endpoint {
                Endpoint::ChatCompletions | Endpoint::Messages => self.send_chat(request).await,
                Endpoint::Completions | Endpoint::Embeddings => Ok(translate::refusal(
                    request.endpoint,
                    &TranslateError::new(
                        format!(
                            "Gemini deployments do not serve the {} API",
                            request.endpoint.as_str()
                        ),
                        None,
                    ),
                )),
            }
        }
        .boxed()
    }
}
