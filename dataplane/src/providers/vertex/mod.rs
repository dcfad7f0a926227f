//! Google Cloud's Vertex AI: Gemini models and Anthropic's models in one Google Cloud project
//! and location, authorized with a service account's OAuth2 token ([`token`]).
//!
//! Paths are `{base_url}/v1/projects/{project}/locations/{location}/publishers/{publisher}/
//! models/{model}:{method}`. The publisher follows from the deployment's `upstream_model`:
//! `claude-…` (or `anthropic/…`) is Anthropic's, anything else (or `google/…`) Google's.
//! - **Google's models** speak the Gemini API's `generateContent` (and
//!   `streamGenerateContent?alt=sse`): translated by [`super::translate::openai_gemini`] through
//!   the chat-only frame, answers handled as the Gemini adaptor's ([`super::gemini::answer`]).
//! - **Anthropic's models** speak the Messages API at `:rawPredict` (`:streamRawPredict` for a
//!   stream), with `anthropic_version: "vertex-2023-10-16"` in the body in place of the header
//!   and no `model` (the URL names it): the Anthropic adaptor's body and answer handling
//!   ([`super::anthropic::messages_body`], [`super::anthropic::for_client`]) with that edit.
//!
//! `base_url` defaults to `https://{location}-aiplatform.googleapis.com`
//! (`https://aiplatform.googleapis.com` for `global`); the project defaults to the key's
//! `project_id`. Every request carries `Authorization: Bearer <token>`; a 401 drops the token
//! and the request is sent once more with a new one (a token revoked early), a second 401 takes
//! the deployment out. Google's errors (`{"error":{"code","message","status"}}`: 401
//! `UNAUTHENTICATED`, 403 `PERMISSION_DENIED`, 429 `RESOURCE_EXHAUSTED`, 503 `UNAVAILABLE`)
//! follow [`super::classify_http`]. A service account the token endpoint refuses is answered
//! as a 401 (the deployment is taken out); an unreachable token endpoint as a connection
//! failure (the request fails over).

pub mod token;

use std::sync::Arc;

use bytes::Bytes;
use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use http::header::AUTHORIZATION;
use http::{HeaderName, StatusCode};
use serde_json::{Map, Value};

use super::chat_only::{self, ChatOnly, Outgoing, not_served};
use super::common::{self, EVENT_STREAM, Http};
use super::registry::Setup;
use super::translate::{self, TranslateError, openai_gemini};
use super::{
    Endpoint, ProviderAdaptor, SendError, UpstreamRequest, UpstreamResponse, anthropic, gemini,
};
use token::{KeyFile, Token, TokenError, TokenSource};

/// The `anthropic_version` Vertex AI wants in the body of Anthropic's models.
pub const ANTHROPIC_VERTEX_VERSION: &str = "vertex-2023-10-16";
const ANTHROPIC_BETA: HeaderName = HeaderName::from_static("anthropic-beta");

/// Whose model an upstream model name is, and the name without a `publisher/` prefix.
fn publisher(model: &str) -> (Publisher, &str) {
    if let Some(name) = model.strip_prefix("anthropic/") {
        (Publisher::Anthropic, name)
    } else if let Some(name) = model.strip_prefix("google/") {
        (Publisher::Google, name)
    } else if model.starts_with("claude") {
        (Publisher::Anthropic, model)
    } else {
        (Publisher::Google, model)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Publisher {
    Google,
    Anthropic,
}

/// The endpoint of a location: regional, or the global one.
pub fn default_base_url(location: &str) -> String {
    if location == "global" {
        "https://aiplatform.googleapis.com".to_owned()
    } else {
        format!("https://{location}-aiplatform.googleapis.com")
    }
}

/// A Vertex AI provider: one project and location, one service account.
#[derive(Debug)]
pub struct VertexAdaptor {
    /// Without a credential header: the token goes in per request.
    http: Http,
    tokens: Arc<TokenSource>,
    /// `{base path}/v1/projects/{project}/locations/{location}/publishers/`.
    prefix: String,
}

impl VertexAdaptor {
    /// The service account's JSON key is the credential (`api_key`); `region` is the location
    /// (validation has made both present).
    pub fn new(setup: &Setup<'_>) -> Result<Self, String> {
        let json = setup.api_key.unwrap_or_default();
        let key = KeyFile::parse(json)?;
        let p = setup.provider;
        let location = p.region.as_deref().unwrap_or_default();
        let project = p
            .project
            .as_deref()
            .or(key.project_id.as_deref())
            .filter(|v| !v.is_empty())
            .ok_or("no project: set the provider's project (the key names none)")?;
        let base_url = p
            .base_url
            .clone()
            .unwrap_or_else(|| default_base_url(location));
        let http = Http::connect(setup.client, &base_url)?;
        let mut prefix = format!("{}/v1/projects/", http.base_path);
        common::push_segment(&mut prefix, project);
        prefix.push_str("/locations/");
        common::push_segment(&mut prefix, location);
        prefix.push_str("/publishers/");
        Ok(Self {
            tokens: token::shared(setup.client, json, &key)?,
            http,
            prefix,
        })
    }

    /// Posts `body` to `path` with a token; after a 401, once more with a new token.
    async fn post_authorized(
        &self,
        path: &str,
        body: &[u8],
        request: &UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, SendError> {
        let mut retried = false;
        loop {
            let token = match self.tokens.token().await {
                Ok(token) => token,
                Err(e) => return token_failure(&e, request.endpoint),
            };
            let response = self.post_with(&token, path, body, request).await?;
            if response.status != StatusCode::UNAUTHORIZED || retried {
                return Ok(response);
            }
            tracing::debug!("vertex: the access token was refused; fetching a new one");
            self.tokens.forget(&token);
            retried = true;
        }
    }

    async fn post_with(
        &self,
        token: &Token,
        path: &str,
        body: &[u8],
        request: &UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, SendError> {
        let accept = common::accept(request.view.stream, &EVENT_STREAM);
        let beta = request
            .view
            .anthropic_headers
            .iter()
            .filter(|(name, _)| *name == ANTHROPIC_BETA)
            .map(|(name, value)| (name.clone(), value));
        let auth = std::iter::once((AUTHORIZATION, &token.header));
        let id = Some(request.request_id);
        self.http
            .post(path, accept, auth.chain(beta), id, body)
            .await
    }

    /// One attempt at one of Anthropic's models.
    async fn send_anthropic(
        &self,
        model: &str,
        request: &UpstreamRequest<'_>,
    ) -> Result<UpstreamResponse, SendError> {
        if !matches!(
            request.endpoint,
            Endpoint::ChatCompletions | Endpoint::Messages | Endpoint::Responses
        ) {
            return Ok(not_served(NAME, request.endpoint));
        }
        let body = match anthropic::messages_body(request) {
            Ok(body) => body,
            Err(refusal) => return Ok(refusal),
        };
        let body = match vertex_messages_body(&body) {
            Ok(body) => body,
            Err(e) => return Ok(translate::refusal(request.endpoint, &e)),
        };
        let mut path = format!("{}anthropic/models/", self.prefix);
        push_model(&mut path, model);
        path.push_str(if request.view.stream {
            ":streamRawPredict"
        } else {
            ":rawPredict"
        });
        let response = self.post_authorized(&path, &body, request).await?;
        Ok(anthropic::for_client(response, request))
    }
}

const NAME: &str = "Vertex AI";

/// A model name as a path segment: Vertex AI's versions follow an `@`
/// (`claude-sonnet-4@20250514`), which stays; anything else is escaped as in
/// [`common::push_segment`].
fn push_model(path: &mut String, model: &str) {
    for (i, part) in model.split('@').enumerate() {
        if i > 0 {
            path.push('@');
        }
        common::push_segment(path, part);
    }
}

/// A Messages API body as Vertex AI takes it: no `model`, `anthropic_version` in the body.
fn vertex_messages_body(body: &[u8]) -> Result<Bytes, TranslateError> {
    let mut doc: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|_| TranslateError::new("the request body must be a JSON object", None))?;
    doc.remove("model");
    doc.insert(
        "anthropic_version".into(),
        Value::String(ANTHROPIC_VERTEX_VERSION.into()),
    );
    serde_json::to_vec(&doc)
        .map(Bytes::from)
        .map_err(|_| TranslateError::new("the request body cannot be encoded", None))
}

/// What a request gets when no token can be had: a 401 in the client's shape when the
/// account was refused (the proxy takes the deployment out), a connection failure otherwise.
fn token_failure(error: &TokenError, endpoint: Endpoint) -> Result<UpstreamResponse, SendError> {
    tracing::warn!(%error, "vertex: no access token");
    match error {
        TokenError::Refused(_) => {
            let message = format!("{NAME}: {error}");
            let mut response = translate::refusal(endpoint, &TranslateError::new(message, None));
            response.status = StatusCode::UNAUTHORIZED;
            Ok(response)
        }
        TokenError::Unavailable(_) => Err(SendError::Connect),
    }
}

impl ChatOnly for VertexAdaptor {
    const NAME: &'static str = NAME;

    const TRANSLATE: fn(&[u8]) -> Result<Vec<u8>, TranslateError> = openai_gemini::request;

    fn path(&self, model: &str, stream: bool) -> String {
        let (_, model) = publisher(model);
        let mut path = format!("{}google/models/", self.prefix);
        push_model(&mut path, model);
        path.push_str(gemini::method(stream));
        path
    }

    async fn post(&self, out: Outgoing<'_>) -> Result<UpstreamResponse, SendError> {
        let response = self
            .post_authorized(out.path, out.body, out.request)
            .await?;
        Ok(gemini::answer(response, out.request.view.stream).await)
    }
}

impl ProviderAdaptor for VertexAdaptor {
    fn send<'a>(
        &'a self,
        request: &'a UpstreamRequest<'a>,
    ) -> BoxFuture<'a, Result<UpstreamResponse, SendError>> {
        async move {
            match publisher(request.upstream_model) {
                (Publisher::Anthropic, model) => self.send_anthropic(model, request).await,
                (Publisher::Google, _) => chat_only::send(self, request).await,
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_publisher_follows_the_model_name() {
        assert_eq!(
            publisher("claude-sonnet-4@20250514"),
            (Publisher::Anthropic, "claude-sonnet-4@20250514")
        );
        assert_eq!(
            publisher("anthropic/claude-3-haiku"),
            (Publisher::Anthropic, "claude-3-haiku")
        );
        assert_eq!(
            publisher("gemini-2.5-flash"),
            (Publisher::Google, "gemini-2.5-flash")
        );
        assert_eq!(
            publisher("google/gemini-2.0-pro"),
            (Publisher::Google, "gemini-2.0-pro")
        );
    }

    #[test]
    fn anthropic_bodies_lose_the_model_and_gain_the_vertex_version() {
        let body = br#"{"model":"claude-x","max_tokens":5,"messages":[],"stream":true}"#;
        let out: Value = serde_json::from_slice(&vertex_messages_body(body).unwrap()).unwrap();
        assert_eq!(
            out,
            serde_json::json!({"max_tokens":5,"messages":[],"stream":true,"anthropic_version":"vertex-2023-10-16"})
        );
    }

    #[test]
    fn locations_have_their_endpoint() {
        assert_eq!(
            default_base_url("us-central1"),
            "https://us-central1-aiplatform.googleapis.com"
        );
        assert_eq!(
            default_base_url("global"),
            "https://aiplatform.googleapis.com"
        );
    }
}
