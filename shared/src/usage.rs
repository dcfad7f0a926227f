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
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::UpstreamError => "upstream_error",
            Outcome::ClientDisconnected => "client_disconnected",
        }
    }
}

/// One finished request that reached the routing phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    /// Unique per request; the idempotency key of spend ingestion.
    pub request_id: String,
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
