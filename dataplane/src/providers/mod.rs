//! Upstream providers as adaptors behind one trait.
//!
//! Each provider file owns what is particular to its upstream: URL building, auth headers,
//! the request body it sends (from the client's [`RequestView`]) and how its errors are
//! classified. The proxy ([`crate::proxy`]) owns everything common: timeouts, retries,
//! fallbacks, cooldowns, streaming and accounting.
//!
//! - [`openai`]: any OpenAI-compatible HTTP API; bytes pass through except the model name.
//! - [`azure`]: Azure OpenAI — OpenAI's wire format at deployment URLs, `api-key` auth.
//! - [`anthropic`]: Anthropic's Messages API; bytes pass through for `/v1/messages`, OpenAI
//!   requests are translated.
//! - [`bedrock`]: Amazon Bedrock's Converse API, SigV4-signed, event-stream framing decoded.
//! - [`gemini`]: Google's Gemini API (`generateContent`), translated.
//! - [`vertex`]: Google Cloud's Vertex AI — Gemini and Anthropic models with a service
//!   account's OAuth2 token (the Gemini and Anthropic translations reused).
//! - [`mock`]: answers inside the process, deterministically and offline.
//! - [`registry`]: which adaptor serves which provider kind — the one place that names them
//!   all; the catalog builds every adaptor through it.
//! - [`common`]: what every HTTP adaptor shares: its base URL, sensitive credential headers,
//!   the JSON post.
//! - [`chat_only`]: the send of an upstream that serves only chat through OpenAI's shape
//!   (Gemini, Bedrock), written once.
//! - [`client`]: the HTTP/1.1 client every HTTP adaptor shares (pooled, rustls).
//! - [`translate`]: request, answer, stream and error translation between protocols.
//! - [`keyring`]: several credentials of one provider, by weight, with per-key rest and removal.
//!
//! The contract with the proxy: an adaptor answers **in the client's protocol** (the
//! [`Endpoint`] says which). Where the deployment speaks another one, the adaptor translates
//! the request and wraps the upstream body, so the proxy, relay and accounting never know.

pub mod anthropic;
pub mod azure;
pub mod bedrock;
pub mod chat_only;
pub mod client;
pub mod common;
pub mod gemini;
pub mod keyring;
pub mod mock;
pub mod openai;
pub mod registry;
pub mod translate;
pub mod vertex;

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use http::{HeaderMap, StatusCode};
use http_body_util::combinators::BoxBody;

use crate::request::RequestView;

/// The API a client called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    /// Anthropic's Messages API (`/v1/messages`): answers and errors in Anthropic's shape.
    Messages,
    /// OpenAI's Responses API (`/v1/responses`): native on deployments tagged
    /// [`translate::responses_openai::NATIVE_TAG`], translated to chat everywhere else.
    Responses,
    /// Anthropic's `/v1/messages/count_tokens`: served by Anthropic deployments only (the
    /// handler estimates for the others, see `crate::count_tokens`).
    CountTokens,
    /// A metered passthrough (`/passthrough/{kind}/{path}`): the body goes to the path the
    /// request names below the provider's base URL (see [`RequestView::passthrough`]).
    Passthrough,
    /// OpenAI's `/v1/images/generations` (OpenAI-compatible deployments only, see
    /// `crate::media`).
    ImagesGenerations,
    /// OpenAI's `/v1/audio/transcriptions`: a multipart upload (OpenAI-compatible only).
    AudioTranscriptions,
    /// OpenAI's `/v1/audio/speech`: a binary audio answer (OpenAI-compatible only).
    AudioSpeech,
}

impl Endpoint {
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
            Endpoint::Messages => "messages",
            Endpoint::Responses => "responses",
            Endpoint::CountTokens => "count_tokens",
            Endpoint::Passthrough => "passthrough",
            Endpoint::ImagesGenerations => "images_generations",
            Endpoint::AudioTranscriptions => "audio_transcriptions",
            Endpoint::AudioSpeech => "audio_speech",
        }
    }

    /// The path below an OpenAI-compatible base URL (Messages, and Responses for upstreams
    /// that do not serve them natively, are sent as chat completions).
    pub fn openai_path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions
            | Endpoint::Messages
            | Endpoint::Responses
            | Endpoint::CountTokens
            | Endpoint::Passthrough => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::ImagesGenerations => "/images/generations",
            Endpoint::AudioTranscriptions => "/audio/transcriptions",
            Endpoint::AudioSpeech => "/audio/speech",
        }
    }

    pub fn supports_streaming(self) -> bool {
        !matches!(self, Endpoint::Embeddings | Endpoint::CountTokens) && !self.is_media()
    }

    /// An image or audio endpoint: OpenAI-compatible deployments only, priced per unit.
    pub fn is_media(self) -> bool {
        matches!(
            self,
            Endpoint::ImagesGenerations | Endpoint::AudioTranscriptions | Endpoint::AudioSpeech
        )
    }
}

/// One attempt's request, as the proxy hands it to an adaptor.
#[derive(Debug)]
pub struct UpstreamRequest<'a> {
    pub endpoint: Endpoint,
    pub view: &'a RequestView,
    /// The deployment's upstream model name as a JSON string literal.
    pub upstream_model_json: &'a [u8],
    pub upstream_model: &'a str,
    pub request_id: &'a str,
    /// The deployment serves `/v1/responses` itself (tagged
    /// [`translate::responses_openai::NATIVE_TAG`]): a Responses request passes through.
    pub native_responses: bool,
}

/// An upstream body, boxed so that HTTP and in-process adaptors look the same to the proxy.
pub type UpstreamBody = BoxBody<Bytes, BodyError>;

/// A failure while reading an upstream body.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BodyError {
    #[error("upstream body failed: {0}")]
    Failed(String),
    /// The body passed one of the [`UpstreamCaps`] (counted where it was found).
    #[error("the upstream's {0} was larger than the gateway accepts")]
    TooLarge(Oversize),
}

/// Which of the [`UpstreamCaps`] an upstream passed; also the metric's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Oversize {
    /// A complete (non-streamed) answer or error body.
    #[error("answer")]
    Body,
    /// One event of an event stream (a single SSE line is part of its event).
    #[error("stream event")]
    Event,
}

impl Oversize {
    pub fn label(self) -> &'static str {
        match self {
            Oversize::Body => "body",
            Oversize::Event => "event",
        }
    }
}

/// Size caps on what an upstream sends (from the server config; upstreams are untrusted):
/// a complete body, streamed or not, that is not an event stream may have at most
/// `body_bytes`; an event stream may run for ever, but each of its events may have at most
/// `event_bytes`. Enforced by the HTTP client as it reads ([`client`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamCaps {
    pub body_bytes: usize,
    pub event_bytes: usize,
}

impl Default for UpstreamCaps {
    fn default() -> Self {
        Self {
            body_bytes: 64 * 1024 * 1024,
            event_bytes: 8 * 1024 * 1024,
        }
    }
}

/// The upstream's answer head and its (still unread) body.
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: UpstreamBody,
}

impl fmt::Debug for UpstreamResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamResponse")
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// Why an attempt produced no response head.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    #[error("could not connect to the upstream")]
    Connect,
    #[error("the upstream connection failed before an answer")]
    Transport,
}

/// What an upstream status means for the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Success: relay the answer.
    Success,
    /// The upstream is rate limiting: cool the deployment down, try another.
    RateLimited { retry_after: Option<Duration> },
    /// The upstream failed (5xx, 408): count a failure, try another.
    Failed,
    /// The upstream refused our credential: take the deployment out, try another.
    CredentialRejected,
    /// The request itself is at fault (400 context length, 404 model, 422): relay the
    /// upstream's error to the client; another deployment would refuse it too.
    ClientError,
}

/// An upstream provider.
pub trait ProviderAdaptor: Send + Sync + fmt::Debug {
    /// Sends one attempt and resolves when the response head has arrived.
    fn send<'a>(
        &'a self,
        request: &'a UpstreamRequest<'a>,
    ) -> BoxFuture<'a, Result<UpstreamResponse, SendError>>;

    /// Classifies the upstream's status (and headers, e.g. `Retry-After`).
    fn classify(&self, status: StatusCode, headers: &HeaderMap) -> Verdict {
        classify_http(status, headers)
    }

    /// The upstream's own rate-limit state, from its response headers, for the router.
    fn rate_limits(&self, headers: &HeaderMap) -> Option<crate::fleet::UpstreamRateLimits> {
        crate::fleet::UpstreamRateLimits::from_openai_headers(headers)
    }

    /// One adaptor per credential when this one spreads traffic over several keys
    /// ([`keyring::KeyRing`]), so that a test call can try each key without resting any;
    /// `None` for an adaptor with one credential.
    fn key_adaptors(&self) -> Option<Vec<std::sync::Arc<dyn ProviderAdaptor>>> {
        None
    }
}

/// The classification shared by HTTP APIs that follow common status conventions.
pub fn classify_http(status: StatusCode, headers: &HeaderMap) -> Verdict {
    match status.as_u16() {
        200..=299 => Verdict::Success,
        429 => Verdict::RateLimited {
            retry_after: retry_after(headers),
        },
        401 | 403 => Verdict::CredentialRejected,
        408 | 500..=599 => Verdict::Failed,
        _ => Verdict::ClientError,
    }
}

/// A lasting failure read from an upstream's refusal
/// ([`switchboard_shared::fleet_keys::PermanentError::from_answer`]), except a passthrough's
/// 404: the client chose that path, so it says nothing about the deployment.
pub fn permanent_error(
    endpoint: Endpoint,
    status: StatusCode,
    body: &[u8],
    at_ms: u64,
) -> Option<switchboard_shared::fleet_keys::PermanentError> {
    if endpoint == Endpoint::Passthrough && status == StatusCode::NOT_FOUND {
        return None;
    }
    switchboard_shared::fleet_keys::PermanentError::from_answer(status.as_u16(), body, at_ms)
}

/// `retry-after-ms` (OpenAI, Azure) or `Retry-After` in seconds (the HTTP-date form is rare
/// from LLM APIs and is ignored), capped at an hour so that a hostile value cannot park a
/// deployment forever.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let number = |name: &str| -> Option<f64> {
        let secs: f64 = headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
        (secs.is_finite() && secs >= 0.0).then_some(secs)
    };
    let secs = number("retry-after-ms")
        .map(|ms| ms / 1000.0)
        .or_else(|| number(http::header::RETRY_AFTER.as_str()))?;
    Some(Duration::from_secs_f64(secs.min(3600.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_passthrough_404_is_the_clients() {
        let missing = br#"{"error":{"message":"The model `x` does not exist"}}"#;
        let at = |endpoint| permanent_error(endpoint, StatusCode::NOT_FOUND, missing, 1);
        assert!(at(Endpoint::ChatCompletions).is_some());
        assert_eq!(at(Endpoint::Passthrough), None);
    }

    #[test]
    fn statuses_are_classified() {
        let h = HeaderMap::new();
        assert_eq!(classify_http(StatusCode::OK, &h), Verdict::Success);
        assert_eq!(classify_http(StatusCode::BAD_GATEWAY, &h), Verdict::Failed);
        assert_eq!(
            classify_http(StatusCode::REQUEST_TIMEOUT, &h),
            Verdict::Failed
        );
        assert_eq!(
            classify_http(StatusCode::UNAUTHORIZED, &h),
            Verdict::CredentialRejected
        );
        assert_eq!(
            classify_http(StatusCode::BAD_REQUEST, &h),
            Verdict::ClientError
        );
        let mut h = HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(
            classify_http(StatusCode::TOO_MANY_REQUESTS, &h),
            Verdict::RateLimited {
                retry_after: Some(Duration::from_secs(2))
            }
        );
        h.insert(http::header::RETRY_AFTER, "99999".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3600)));
        h.insert("retry-after-ms", "1500".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(1500)));
    }
}
