//! The last phase of a request: usage, cost, limit settlement and the usage record.
//!
//! A [`Ledger`] is opened when a request has been admitted and routed, travels with the answer
//! (inside the streaming body, for streams) and is closed exactly once — when the answer is
//! complete, when the upstream fails, or when the client goes away (its `Drop`). Closing it
//! corrects the token limits with the real count, prices the usage with the deployment's price
//! entry, counts tokens and cost in metrics and hands a [`UsageRecord`] to the [`UsageSink`].
//!
//! Usage is read in OpenAI's wire format, the format of every answer that leaves the gateway
//! (other providers' answers are translated into it before they get here).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use http::StatusCode;
use serde::Deserialize;
use switchboard_shared::pricing::cost;
use switchboard_shared::usage::{Outcome, Usage, UsageRecord};

use crate::catalog::{DeploymentEntry, KeyEntry, ModelEntry};
use crate::limits::Limiter;
use crate::metrics;
use crate::providers::Endpoint;

/// Where usage records go. The control-plane pipeline implements this later; today records go
/// to the log (and, in tests, to memory).
pub trait UsageSink: Send + Sync + std::fmt::Debug {
    fn emit(&self, record: UsageRecord);
}

/// Writes each record as one structured log line (target `switchboard::usage`).
#[derive(Debug, Default)]
pub struct LogSink;

impl UsageSink for LogSink {
    fn emit(&self, r: UsageRecord) {
        tracing::info!(
            target: "switchboard::usage",
            request_id = %r.request_id,
            tenant = %r.tenant_id,
            key = %r.key_id,
            model = %r.model,
            deployment = r.deployment_id.as_deref().unwrap_or("-"),
            endpoint = %r.endpoint,
            stream = r.stream,
            outcome = r.outcome.as_str(),
            status = r.status,
            attempts = r.attempts,
            prompt_tokens = r.usage.prompt_tokens,
            completion_tokens = r.usage.completion_tokens,
            cached_read_tokens = r.usage.cached_read_tokens,
            cost_usd = r.cost_usd,
            latency_ms = r.latency_ms,
            ttft_ms = r.ttft_ms,
            "usage"
        );
    }
}

/// Keeps records in memory, for tests and embedding programs.
#[derive(Debug, Default)]
pub struct MemorySink {
    records: Mutex<Vec<UsageRecord>>,
}

impl MemorySink {
    pub fn records(&self) -> Vec<UsageRecord> {
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl UsageSink for MemorySink {
    fn emit(&self, record: UsageRecord) {
        if let Ok(mut records) = self.records.lock() {
            records.push(record);
        }
    }
}

/// Sends records to the log and to another sink.
#[derive(Debug)]
pub struct TeeSink(pub Arc<dyn UsageSink>, pub Arc<dyn UsageSink>);

impl UsageSink for TeeSink {
    fn emit(&self, record: UsageRecord) {
        self.0.emit(record.clone());
        self.1.emit(record);
    }
}

/// What closing a ledger needs from the process.
#[derive(Debug, Clone)]
pub struct Books {
    pub limiter: Arc<Limiter>,
    pub sink: Arc<dyn UsageSink>,
}

/// The accounting context of one routed request.
#[derive(Debug)]
pub struct Ledger {
    books: Books,
    pub request_id: String,
    key: Arc<KeyEntry>,
    model: Arc<ModelEntry>,
    endpoint: Endpoint,
    stream: bool,
    started: Instant,
    started_at: DateTime<Utc>,
    estimated_tokens: u64,
    revision: u64,
    pub deployment: Option<Arc<DeploymentEntry>>,
    /// Marks the request in flight on its current deployment until the answer ends.
    pub inflight: Option<crate::fleet::InFlight>,
    pub attempts: u32,
    ttft: Option<Duration>,
    closed: bool,
}

/// The facts a ledger is opened with.
#[derive(Debug)]
pub struct LedgerOpen {
    pub books: Books,
    pub request_id: String,
    pub key: Arc<KeyEntry>,
    pub model: Arc<ModelEntry>,
    pub endpoint: Endpoint,
    pub stream: bool,
    pub started: Instant,
    pub started_at: DateTime<Utc>,
    pub estimated_tokens: u64,
    pub revision: u64,
}

impl Ledger {
    pub fn open(o: LedgerOpen) -> Self {
        Self {
            books: o.books,
            request_id: o.request_id,
            key: o.key,
            model: o.model,
            endpoint: o.endpoint,
            stream: o.stream,
            started: o.started,
            started_at: o.started_at,
            estimated_tokens: o.estimated_tokens,
            revision: o.revision,
            deployment: None,
            inflight: None,
            attempts: 0,
            ttft: None,
            closed: false,
        }
    }

    /// Marks the arrival of the first bytes of the answer.
    pub fn first_byte(&mut self) {
        if self.ttft.is_none() {
            self.ttft = Some(self.started.elapsed());
        }
    }

    /// Closes the books on this request. Usage `None` means the upstream reported none.
    pub fn close(mut self, outcome: Outcome, status: StatusCode, usage: Option<Usage>) {
        self.settle(outcome, status, usage);
    }

    fn settle(&mut self, outcome: Outcome, status: StatusCode, usage: Option<Usage>) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        let reported = usage.is_some();
        let usage = usage.unwrap_or_default();
        // Without a report the estimate stands: charging zero would let a client that cuts
        // streams short bypass its token limit.
        let actual_tokens = if reported {
            usage.total_tokens()
        } else {
            self.estimated_tokens
        };
        let [key_subject, tenant_subject] = self.key.subjects();
        self.books.limiter.settle(
            &[key_subject, tenant_subject],
            self.estimated_tokens,
            actual_tokens,
        );
        let price = self.deployment.as_ref().and_then(|d| d.price.as_ref());
        let cost_usd = price.map_or(0.0, |p| cost(&usage, p));
        if let Some(d) = &self.deployment {
            self.books
                .limiter
                .settle(&[d.subject()], self.estimated_tokens, actual_tokens);
            if outcome != Outcome::UpstreamError || reported {
                d.state
                    .load
                    .record_tokens(actual_tokens, crate::fleet::unix_ms());
            }
        }
        self.inflight = None;
        self.model.metrics.record(&usage, cost_usd);
        let endpoint = self.endpoint.as_str();
        metrics::record_latency(
            endpoint,
            elapsed.as_secs_f64(),
            self.ttft.filter(|_| self.stream).map(|t| t.as_secs_f64()),
        );
        let record = UsageRecord {
            request_id: std::mem::take(&mut self.request_id),
            tenant_id: self.key.tenant.tenant.id.clone(),
            key_id: self.key.key.id.clone(),
            model: self.model.name.clone(),
            deployment_id: self.deployment.as_ref().map(|d| d.id.clone()),
            provider_id: self.deployment.as_ref().map(|d| d.provider_id.clone()),
            endpoint: endpoint.to_owned(),
            stream: self.stream,
            outcome,
            status: status.as_u16(),
            attempts: self.attempts,
            usage,
            usage_reported: reported,
            cost_usd,
            price_revision: self.revision,
            started_at: self.started_at,
            latency_ms: millis(elapsed),
            ttft_ms: self.ttft.map(millis),
        };
        self.books.sink.emit(record);
    }
}

impl Drop for Ledger {
    /// A ledger dropped unclosed belongs to a request whose client went away (axum drops the
    /// handler future, or hyper drops the streaming body).
    fn drop(&mut self) {
        if !self.closed {
            self.settle(
                Outcome::ClientDisconnected,
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
                None,
            );
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// OpenAI's `usage` object.
#[derive(Debug, Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Debug, Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl From<WireUsage> for Usage {
    fn from(w: WireUsage) -> Self {
        Usage {
            prompt_tokens: w.prompt_tokens,
            completion_tokens: w.completion_tokens,
            cached_read_tokens: w
                .prompt_tokens_details
                .and_then(|d| d.cached_tokens)
                .unwrap_or(0),
            cache_creation_tokens: 0,
        }
    }
}

#[derive(Deserialize)]
struct UsageOnly {
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// Usage from a complete (non-streamed) JSON answer. `Err` when the body is not a JSON object:
/// a 2xx with a broken body is an upstream failure, not something to relay.
pub fn usage_from_body(body: &[u8]) -> Result<Option<Usage>, serde_json::Error> {
    let parsed: UsageOnly = serde_json::from_slice(body)?;
    Ok(parsed.usage.map(Usage::from))
}

#[derive(Deserialize)]
struct UsageChunk<'a> {
    #[serde(default, borrow)]
    choices: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    usage: Option<WireUsage>,
}

/// Usage from one SSE event's `data:` payload, and whether that event carries nothing else
/// (no choices), so that it may be dropped for a client that did not ask for it.
pub fn usage_from_chunk(data: &[u8]) -> Option<(Usage, bool)> {
    let chunk: UsageChunk<'_> = serde_json::from_slice(data).ok()?;
    let usage = chunk.usage?;
    let only_usage = chunk.choices.is_none_or(|c| c.get().trim() == "[]");
    Some((usage.into(), only_usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_usage_from_a_completion_including_cached_tokens() {
        let body = br#"{"id":"x","choices":[],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":4}}}"#;
        let usage = usage_from_body(body).unwrap().unwrap();
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 19,
                completion_tokens: 10,
                cached_read_tokens: 4,
                cache_creation_tokens: 0
            }
        );
        assert_eq!(usage_from_body(br#"{"data":[]}"#).unwrap(), None);
        assert!(usage_from_body(b"{not json").is_err());
    }

    #[test]
    fn reads_embedding_usage() {
        let usage = usage_from_body(br#"{"usage":{"prompt_tokens":8,"total_tokens":8}}"#)
            .unwrap()
            .unwrap();
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (8, 0));
    }

    #[test]
    fn tells_a_usage_only_chunk_from_a_content_chunk_with_usage() {
        let (u, only) = usage_from_chunk(
            br#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
        )
        .unwrap();
        assert!(only);
        assert_eq!(u.total_tokens(), 5);
        let (_, only) = usage_from_chunk(
            br#"{"choices":[{"delta":{"content":"x"}}],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
        )
        .unwrap();
        assert!(!only);
        assert!(usage_from_chunk(br#"{"choices":[],"usage":null}"#).is_none());
    }
}
