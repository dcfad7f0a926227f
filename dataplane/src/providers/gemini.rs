//! Google's Gemini API (AI Studio): `POST {base_url}/models/{model}:generateContent`, or
//! `:streamGenerateContent?alt=sse` for streams, with the key in `x-goog-api-key`.
//!
//! Chat requests are translated both ways ([`super::translate::openai_gemini`]);
//! `/v1/messages` requests go through OpenAI's shape first. Completions and embeddings are
//! not served (400 without a network call). A metered passthrough
//! (`/passthrough/gemini/models/{model}:{method}`) goes as sent, to the upstream model.
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
use http::{HeaderName, HeaderValue, StatusCode};

use super::chat_only::{self, ChatOnly, Outgoing};
use super::common::{self, EVENT_STREAM, Http};
use super::registry::Setup;
use super::translate::{self, TranslateError, openai_gemini};
use super::{ProviderAdaptor, SendError, UpstreamRequest, UpstreamResponse};

const API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");

/// A Gemini provider.
#[derive(Debug)]
pub struct GeminiAdaptor {
    /// With `x-goog-api-key: <key>`.
    http: Http,
    /// `{base path}/models/`.
    prefix: String,
}

impl GeminiAdaptor {
    /// `base_url` includes the version path (`https://generativelanguage.googleapis.com/v1beta`).
    pub fn new(setup: &Setup<'_>) -> Result<Self, String> {
        let http = setup.http(API_KEY, "")?;
        Ok(Self {
            prefix: format!("{}/models/", http.base_path),
            http,
        })
    }
}

impl ChatOnly for GeminiAdaptor {
    const NAME: &'static str = "Gemini";

    const TRANSLATE: fn(&[u8]) -> Result<Vec<u8>, TranslateError> = openai_gemini::request;

    /// The request path; model names are letters, digits, `-`, `_` and `.` (others are
    /// percent-encoded so that they cannot change the path).
    fn path(&self, model: &str, stream: bool) -> String {
        let mut path = String::with_capacity(self.prefix.len() + model.len() + 40);
        path.push_str(&self.prefix);
        common::push_segment(&mut path, model);
        path.push_str(method(stream));
        path
    }

    async fn post(&self, out: Outgoing<'_>) -> Result<UpstreamResponse, SendError> {
        let stream = out.request.view.stream;
        let accept = common::accept(stream, &EVENT_STREAM);
        let no_extra = std::iter::empty();
        let request_id = Some(out.request.request_id);
        let response = self
            .http
            .post(out.path, accept, no_extra, request_id, out.body)
            .await?;
        Ok(answer(response, stream).await)
    }
}

/// The method after a model's path: `:generateContent`, or `:streamGenerateContent?alt=sse`
/// for a stream (the Gemini API's and Vertex AI's alike).
pub fn method(stream: bool) -> &'static str {
    if stream {
        ":streamGenerateContent?alt=sse"
    } else {
        ":generateContent"
    }
}

/// A `generateContent` answer (Gemini's, or Vertex AI's for Google's models) in OpenAI's chat
/// shape: an invalid-key 400 becomes a 401, a 429's `retryDelay` becomes `Retry-After`.
pub async fn answer(response: UpstreamResponse, stream: bool) -> UpstreamResponse {
    let response = read_status(response).await;
    translate::wrap(
        response,
        stream,
        openai_gemini::StreamToOpenAi::new(),
        openai_gemini::response,
        openai_gemini::error,
    )
}

impl GeminiAdaptor {
    /// A metered passthrough: the client's body as sent, to `models/{upstream model}` and the
    /// rest of the client's path (`:generateContent`, `:streamGenerateContent?alt=sse`); the
    /// answer as Gemini gave it, with the adaptor's statuses for a bad key and rate limits.
    async fn passthrough(
        &self,
        request: &UpstreamRequest<'_>,
        rest: &str,
    ) -> Result<UpstreamResponse, SendError> {
        let mut path = String::with_capacity(self.prefix.len() + rest.len() + 40);
        path.push_str(&self.prefix);
        common::push_segment(&mut path, request.upstream_model);
        path.push_str(rest);
        let view = request.view;
        let accept = common::accept(view.stream, &EVENT_STREAM);
        let no_extra = std::iter::empty();
        let response = self
            .http
            .post(
                &path,
                accept,
                no_extra,
                Some(request.request_id),
                &view.body,
            )
            .await?;
        Ok(read_status(response).await)
    }
}

/// For a 400 or 429, reads the (small) error body to tell an invalid key (made a 401) and
/// to turn `RetryInfo.retryDelay` into `Retry-After`.
async fn read_status(response: UpstreamResponse) -> UpstreamResponse {
    if response.status != StatusCode::BAD_REQUEST
        && response.status != StatusCode::TOO_MANY_REQUESTS
    {
        return response;
    }
    let (mut response, bytes) = translate::read_error(response).await;
    if openai_gemini::is_invalid_api_key(&bytes) {
        response.status = StatusCode::UNAUTHORIZED;
    }
    if let Some(secs) = openai_gemini::retry_delay_secs(&bytes) {
        response
            .headers
            .insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

impl ProviderAdaptor for GeminiAdaptor {
    fn send<'a>(
        &'a self,
        request: &'a UpstreamRequest<'a>,
    ) -> BoxFuture<'a, Result<UpstreamResponse, SendError>> {
        match (&request.endpoint, &request.view.passthrough) {
            (super::Endpoint::Passthrough, Some(target)) => {
                self.passthrough(request, &target.path).boxed()
            }
            _ => chat_only::send(self, request).boxed(),
        }
    }
}
