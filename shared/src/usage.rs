//! Token usage and the per-request usage record.
//!
//! [`Usage`] normalises what providers report: OpenAI counts cached tokens *inside*
//! `prompt_tokens`, Anthropic reports them beside `input_tokens`. Here `prompt_tokens` is always
//! the whole prompt, and the cached-read and cache-creation counts are parts of it.
//!
//! [`UsageRecord`] is what the data plane emits for every finished request. It is built to be
//! sent as-is to the control plane's spend ingestion: a unique `request_id` for idempotent
//! inserts, ids rather than names, and no prompt or secret.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Token counts of one request, normalised across providers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// All prompt tokens, cached ones included.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Prompt tokens read from the provider's prompt cache (a part of `prompt_tokens`).
    #[serde(default)]
    pub cached_read_tokens: u64,
    /// Prompt tokens written to the provider's prompt cache (a part of `prompt_tokens`).
    #[serde(default)]
    pub cache_creation_tokens: u64,
}

impl Usage {
    pub fn total_tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    /// Prompt tokens billed at the plain input rate: neither read from nor written to a cache.
    pub fn uncached_prompt_tokens(&self) -> u64 {
        self.prompt_tokens
            .saturating_sub(self.cached_read_tokens)
            .saturating_sub(self.cache_creation_tokens)
    }
}

/// What an image or audio request is priced by, beside (or instead of) tokens: see
/// [`crate::pricing::media_cost`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MediaUsage {
    /// Images generated, at a size (`1024x1024`) and quality (`high`, `standard`) when known.
    Images {
        count: u64,
        #[serde(default)]
        size: Option<String>,
        #[serde(default)]
        quality: Option<String>,
    },
    /// Seconds of audio transcribed.
    AudioSeconds { seconds: f64 },
    /// Characters of text spoken.
    Characters { count: u64 },
}

/// How a request ended, from the gateway's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The upstream answered 2xx and the whole answer reached the client.
    Success,
    /// The upstream answered with an error (after any retries), or could not be reached.
    UpstreamError,
    /// The client went away before the answer was complete.
    ClientDisconnected,
    /// The gateway refused the request before any upstream attempt (a limit, a budget, a bad
    /// request or an unknown model; never an unauthenticated one). Recorded in the request
    /// log only: it has no spend.
    Refused,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::UpstreamError => "upstream_error",
            Outcome::ClientDisconnected => "client_disconnected",
            Outcome::Refused => "refused",
        }
    }
}

/// One upstream attempt of a request, for the request log's attempt timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    /// The deployment tried.
    pub deployment_id: String,
    /// The HTTP status the attempt ended with: the upstream's for an answer, the gateway's
    /// (502, 504, 429) for a failure it turned into an error.
    pub status: u16,
    /// Why the attempt failed (`upstream_failed`, `upstream_timeout`, ...); absent for an
    /// answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// Milliseconds from the attempt's start to its answer's head, or to its failure.
    pub latency_ms: u64,
}

/// A tenant's opted-in copy of a request's content (see `Tenant::capture_content`),
/// truncated to the data plane's configured size. Never logged, never traced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapturedContent {
    /// The request body as the client sent it (UTF-8, cut at a character boundary).
    pub prompt: String,
    /// The answer body as the client received it (for streams, the relayed events).
    pub completion: String,
    /// Whether either part was cut to the size limit.
    pub truncated: bool,
}

/// One finished request that reached the routing phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// The gateway's own id for the request (a UUIDv7), unique per request: the idempotency
    /// key of spend ingestion (the JetStream `Nats-Msg-Id`). Never chosen by the client.
    pub request_id: String,
    /// The client's own `x-request-id`, when it sent a sane one: kept beside the gateway's id
    /// for searching, never used to deduplicate (a client repeating an id, or guessing
    /// another's, cannot make usage vanish). Absent in records written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_request_id: Option<String>,
    /// The tenant of the key.
    pub tenant_id: String,
    /// The virtual key's id (never the key).
    pub key_id: String,
    /// The public model name the client asked for.
    pub model: String,
    /// The deployment that served the final attempt (absent if none was tried).
    pub deployment_id: Option<String>,
    /// That deployment's provider.
    pub provider_id: Option<String>,
    /// `chat_completions`, `completions` or `embeddings`.
    pub endpoint: String,
    pub stream: bool,
    pub outcome: Outcome,
    /// HTTP status sent to the client.
    pub status: u16,
    /// Upstream attempts made (retries and fallbacks included).
    pub attempts: u32,
    pub usage: Usage,
    /// Whether `usage` came from the provider's own report (false: it did not report any).
    pub usage_reported: bool,
    /// Cost in USD, from the deployment's price entry at the time of the request.
    pub cost_usd: f64,
    /// Revision of the snapshot whose prices were used (deployments' own prices and admin
    /// overrides as of that revision).
    pub price_revision: u64,
    /// The price-file version those prices came from (see `Snapshot::price_version`).
    #[serde(default)]
    pub price_version: Option<u64>,
    pub started_at: DateTime<Utc>,
    /// Milliseconds from the request's arrival to its last byte.
    pub latency_ms: u64,
    /// Milliseconds from arrival to the first body bytes of the answer, for streams.
    pub ttft_ms: Option<u64>,
    /// Why the request failed or was refused (the gateway's error kind, e.g.
    /// `budget_exceeded`, `upstream_failed`); absent on success and in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<String>,
    /// Each upstream attempt in order (empty for a refused request and in older records).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempt_log: Vec<AttemptRecord>,
    /// The request's content, only for a tenant that opted in to capture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<CapturedContent>,
    /// Answered from the gateway's response cache: no upstream was called and `cost_usd`
    /// is 0. Absent (false) in older records.
    #[serde(default)]
    pub cached_response: bool,
    /// For a cached answer, what it cost when it was generated: what this request saved,
    /// in USD. 0 otherwise and in older records.
    #[serde(default)]
    pub saved_usd: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_without_a_client_id_still_parse() {
        let old = r#"{"request_id":"r1","tenant_id":"t","key_id":"k","model":"m",
            "deployment_id":null,"provider_id":null,"endpoint":"chat_completions","stream":false,
            "outcome":"success","status":200,"attempts":1,
            "usage":{"prompt_tokens":1,"completion_tokens":2},"usage_reported":true,
            "cost_usd":0.0,"price_revision":1,"started_at":"2026-12-05T10:00:00Z",
            "latency_ms":5,"ttft_ms":null}"#;
        let record: UsageRecord = serde_json::from_str(old).unwrap();
        assert_eq!(record.client_request_id, None);
        let mut with = record.clone();
        with.client_request_id = Some("mine".into());
        let text = serde_json::to_string(&with).unwrap();
        assert_eq!(serde_json::from_str::<UsageRecord>(&text).unwrap(), with);
        assert!(
            !serde_json::to_string(&record)
                .unwrap()
                .contains("client_request_id")
        );
    }

    #[test]
    fn uncached_tokens_subtract_cache_parts_without_underflow() {
        let u = Usage {
            prompt_tokens: 100,
            completion_tokens: 5,
            cached_read_tokens: 60,
            cache_creation_tokens: 30,
        };
        assert_eq!(u.uncached_prompt_tokens(), 10);
        assert_eq!(u.total_tokens(), 105);
        let odd = Usage {
            prompt_tokens: 10,
            cached_read_tokens: 20,
            ..Usage::default()
        };
        assert_eq!(odd.uncached_prompt_tokens(), 0);
    }
}
