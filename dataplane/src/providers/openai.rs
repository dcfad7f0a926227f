//! OpenAI-compatible upstreams: OpenAI itself, vLLM, Ollama, Groq, DeepSeek, Together, ...
//!
//! The body goes out as the client sent it, with only the model name swapped (and, for
//! streams, usage reporting switched on — see [`crate::request::RequestView::upstream_body`]).
//! A `/v1/messages` client's request is translated to a chat completion and the answer back
//! ([`super::translate::anthropic_openai`]). Everything that
//! can be computed once per snapshot is: the three request paths and the auth header.

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::header::AUTHORIZATION;
use http::{HeaderName, HeaderValue};

use super::client;
use super::common::{self, EVENT_STREAM};
use super::registry::Setup;
use super::translate::anthropic_openai;
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

impl OpenAiAdaptor {
    /// `base_url` includes the version path (`https://api.openai.com/v1`).
    pub fn new(setup: &Setup<'_>) -> Result<Self, String> {
        let (upstream, prefix) = common::connect(setup.client, setup.base_url())?;
        Ok(Self {
            upstream,
            chat_path: format!("{prefix}{}", Endpoint::ChatCompletions.openai_path()),
            completions_path: format!("{prefix}{}", Endpoint::Completions.openai_path()),
            embeddings_path: format!("{prefix}{}", Endpoint::Embeddings.openai_path()),
            authorization: common::api_key_header(setup.api_key, "Bearer ")?,
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
    let body = match anthropic_openai::openai_body(request) {
        Ok(body) => body,
        Err(refusal) => return Ok(refusal),
    };
    let accept = common::accept(request.view.stream, &EVENT_STREAM);
    let response = common::post_json(
        upstream,
        path,
        accept,
        auth,
        Some(request.request_id),
        &body,
    )
    .await?;
    Ok(if request.endpoint == Endpoint::Messages {
        anthropic_openai::wrap_answer(response, request.view.stream)
    } else {
        response
    })
}
