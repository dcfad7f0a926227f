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

use super::common::{self, EVENT_STREAM, Http};
use super::registry::Setup;
use super::translate::{self, anthropic_openai};
use super::{Endpoint, ProviderAdaptor, SendError, UpstreamRequest, UpstreamResponse};

/// An OpenAI-compatible provider.
#[derive(Debug)]
pub struct OpenAiAdaptor {
    /// With `authorization: Bearer <key>`.
    http: Http,
    chat_path: String,
    completions_path: String,
    embeddings_path: String,
    /// `/responses`, for deployments that serve the Responses API natively.
    responses_path: String,
    images_path: String,
    transcriptions_path: String,
    speech_path: String,
}

impl OpenAiAdaptor {
    /// `base_url` includes the version path (`https://api.openai.com/v1`).
    pub fn new(setup: &Setup<'_>) -> Result<Self, String> {
        let http = setup.http(AUTHORIZATION, "Bearer ")?;
        let path = |endpoint: Endpoint| format!("{}{}", http.base_path, endpoint.openai_path());
        Ok(Self {
            chat_path: path(Endpoint::ChatCompletions),
            completions_path: path(Endpoint::Completions),
            embeddings_path: path(Endpoint::Embeddings),
            responses_path: format!("{}/responses", http.base_path),
            images_path: path(Endpoint::ImagesGenerations),
            transcriptions_path: path(Endpoint::AudioTranscriptions),
            speech_path: path(Endpoint::AudioSpeech),
            http,
        })
    }

    fn path(&self, request: &UpstreamRequest<'_>) -> &str {
        match request.endpoint {
            Endpoint::Responses if request.native_responses => &self.responses_path,
            Endpoint::ChatCompletions
            | Endpoint::Messages
            | Endpoint::Responses
            | Endpoint::CountTokens
            | Endpoint::Passthrough => &self.chat_path,
            Endpoint::Completions => &self.completions_path,
            Endpoint::Embeddings => &self.embeddings_path,
            Endpoint::ImagesGenerations => &self.images_path,
            Endpoint::AudioTranscriptions => &self.transcriptions_path,
            Endpoint::AudioSpeech => &self.speech_path,
        }
    }
}

impl ProviderAdaptor for OpenAiAdaptor {
    fn send<'a>(
        &'a self,
        request: &'a UpstreamRequest<'a>,
    ) -> BoxFuture<'a, Result<UpstreamResponse, SendError>> {
        send_openai_compatible(&self.http, self.path(request), request).boxed()
    }
}

/// Sends one attempt of a metered passthrough to an OpenAI-compatible API at `path` (the
/// whole upstream path): the client's body with only the model swapped, the answer as it is.
pub async fn send_passthrough(
    http: &Http,
    path: &str,
    request: &UpstreamRequest<'_>,
) -> Result<UpstreamResponse, SendError> {
    let view = request.view;
    let body = view.upstream_body(request.upstream_model_json);
    let accept = common::accept(view.stream, &EVENT_STREAM);
    let no_extra = std::iter::empty();
    http.post(path, accept, no_extra, Some(request.request_id), &body)
        .await
}

/// Sends one attempt to an OpenAI-compatible API at `path` (OpenAI itself, Azure OpenAI):
/// the client's body with the model swapped, or — for a `/v1/messages` client, and a
/// `/v1/responses` client of a deployment without native Responses — the translation of its
/// request, with the answer translated back.
pub async fn send_openai_compatible(
    http: &Http,
    path: &str,
    request: &UpstreamRequest<'_>,
) -> Result<UpstreamResponse, SendError> {
    if let (Endpoint::Passthrough, Some(target)) = (request.endpoint, &request.view.passthrough) {
        let path = format!("{}{}", http.base_path, target.path);
        return send_passthrough(http, &path, request).await;
    }
    if request.endpoint.is_media() {
        // Images and audio: the body as sent (JSON, or a multipart upload in its own content
        // type), only the model swapped; any answer type accepted (speech is binary audio).
        let view = request.view;
        // In a multipart form the model is a bare value, not a JSON string.
        let body = match &view.content_type {
            Some(_) => view.upstream_body(request.upstream_model.as_bytes()),
            None => view.upstream_body(request.upstream_model_json),
        };
        let content_type = view.content_type.as_ref().unwrap_or(&common::JSON);
        let no_extra = std::iter::empty();
        return http
            .post_typed(
                path,
                content_type,
                &common::ANY,
                no_extra,
                Some(request.request_id),
                &body,
            )
            .await;
    }
    if request.native_responses {
        let view = request.view;
        let body = view.upstream_body(request.upstream_model_json);
        let accept = common::accept(view.stream, &EVENT_STREAM);
        let no_extra = std::iter::empty();
        return http
            .post(path, accept, no_extra, Some(request.request_id), &body)
            .await;
    }
    let body = match anthropic_openai::openai_body(request) {
        Ok(body) => body,
        Err(refusal) => return Ok(refusal),
    };
    let accept = common::accept(request.view.stream, &EVENT_STREAM);
    let no_extra = std::iter::empty();
    let response = http
        .post(path, accept, no_extra, Some(request.request_id), &body)
        .await?;
    Ok(translate::wrap_for_client(response, request))
}
