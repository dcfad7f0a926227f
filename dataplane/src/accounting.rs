//! The last phase of a request: usage, cost, limit settlement and the usage record.
//!
//! A [`Ledger`] is opened when a request has been admitted and routed, travels with the answer
//! (inside the streaming body, for streams) and is closed exactly once — when the answer is
//! complete, when the upstream fails, or when the client goes away (its `Drop`). Closing it
//! corrects the token limits with the real count, prices the usage with the deployment's price
//! entry, counts tokens and cost in metrics and hands a [`UsageRecord`] to the [`UsageSink`].
//!
//! Usage is read in the client's wire format — OpenAI's, or Anthropic's on `/v1/messages` —
//! the format of every answer that leaves the gateway (other providers' answers are
//! translated into it by their adaptors before they get here).
//!
//! **What a request is charged** ([`Measured`]), one number for the spend record and the
//! budget alike:
//! - the provider reported usage → exactly that;
//! - a stream that did not end cleanly with a report (the client went away, the upstream broke
//!   off or timed out, or never sent usage) → what was generated: the prompt (as the provider
//!   reported it, else the gateway's estimate) plus one completion token per event relayed —
//!   OpenAI and Anthropic stream about one token per event, so this errs a few tokens high;
//! - a non-streamed answer that may have been generated but whose usage is unknown (the client
//!   went away while waiting, or a provider that reports none) → the most it could have cost:
//!   the prompt estimate plus the completion allowance (`max_tokens`, else the model's output
//!   limit) — the upstream finishes and bills a non-streamed answer whether or not anyone
//!   reads it;
//! - an upstream error without usage, or a request that never reached a deployment → nothing.

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

/// Something that only needs to look at each record, such as a log. [`TeeSink`] shows it a
/// record before handing the record itself on, so the record is never copied.
pub trait UsageObserver: Send + Sync + std::fmt::Debug {
    fn observe(&self, record: &UsageRecord);
}

/// Writes each record as one structured log line (target `switchboard::usage`).
#[derive(Debug, Default)]
pub struct LogSink;

impl UsageSink for LogSink {
    fn emit(&self, record: UsageRecord) {
        self.observe(&record);
    }
}

impl UsageObserver for LogSink {
    fn observe(&self, r: &UsageRecord) {
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

/// Shows each record to an observer (the log), then hands it to a sink (the NATS publisher,
/// or memory in tests) without cloning it.
#[derive(Debug)]
pub struct TeeSink(pub Arc<dyn UsageObserver>, pub Arc<dyn UsageSink>);

impl UsageSink for TeeSink {
    fn emit(&self, record: UsageRecord) {
        self.0.observe(&record);
        self.1.emit(record);
    }
}

/// How the ledger learned what a request used (see the module header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measured {
    /// The provider's own report.
    Reported(Usage),
    /// Counted or bounded by the gateway; recorded with `usage_reported: false`.
    Counted(Usage),
    /// Nothing was generated, as far as anyone can tell.
    Nothing,
}

/// Completion tokens a request may generate on a deployment priced by `price`: its
/// `max_tokens`, else the model's output limit, else 4096. Budget reservations and the
/// charge for an answer of unknown size both use it.
pub fn completion_allowance(
    max_tokens: Option<u64>,
    price: Option<&switchboard_shared::price::PriceEntry>,
) -> u64 {
    max_tokens
        .or_else(|| price.and_then(|p| p.max_output_tokens.or(p.max_tokens)))
        .unwrap_or(4096)
}

/// What closing a ledger needs from the process.
#[derive(Debug, Clone)]
pub struct Books {
    pub limiter: Arc<Limiter>,
    pub budgets: crate::budget::Budgets,
    pub webhooks: crate::webhooks::Webhooks,
    pub sink: Arc<dyn UsageSink>,
    /// The time budgets are charged at and spend records carry.
    pub clock: crate::clock::Clock,
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
    prompt_estimate: u64,
    max_tokens: Option<u64>,
    revision: u64,
    price_version: Option<u64>,
    budget: crate::budget::Reservation,
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
    /// Prompt plus `max_tokens`, as the token limits were charged at admission.
    pub estimated_tokens: u64,
    /// The gateway's estimate of the prompt's tokens.
    pub prompt_estimate: u64,
    /// The client's `max_tokens`, if it set one.
    pub max_tokens: Option<u64>,
    /// The serving snapshot's revision and price-file version, which priced the request.
    pub revision: u64,
    pub price_version: Option<u64>,
    /// What admission reserved against the key's and tenant's budgets.
    pub budget: crate::budget::Reservation,
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
            prompt_estimate: o.prompt_estimate,
            max_tokens: o.max_tokens,
            revision: o.revision,
            price_version: o.price_version,
            budget: o.budget,
            deployment: None,
            inflight: None,
            attempts: 0,
            ttft: None,
            closed: false,
        }
    }

    /// Where alerts go (the proxy raises credential alerts).
    pub fn webhooks(&self) -> &crate::webhooks::Webhooks {
        &self.books.webhooks
    }

    /// Marks the arrival of the first bytes of the answer.
    pub fn first_byte(&mut self) {
        if self.ttft.is_none() {
            self.ttft = Some(self.started.elapsed());
        }
    }

    /// Closes the books on a complete (non-streamed) answer, or on a request that got no
    /// answer. Usage `None` means the upstream reported none: an error then costs nothing, a
    /// success the most it could have cost.
    pub fn close(mut self, outcome: Outcome, status: StatusCode, usage: Option<Usage>) {
        let measured = match (usage, outcome) {
            (Some(usage), _) => Measured::Reported(usage),
            (None, Outcome::UpstreamError) => Measured::Nothing,
            (None, _) => self.upper_bound(),
        };
        self.settle(outcome, status, measured);
    }

    /// Closes the books on a streamed answer: `usage` is what the stream reported (possibly
    /// only in part), `events` how many events were relayed to the client. Only a stream that
    /// ended cleanly with a report is charged the report; any other is charged what was
    /// generated.
    pub fn close_stream(
        mut self,
        outcome: Outcome,
        status: StatusCode,
        usage: Option<Usage>,
        events: u64,
    ) {
        let measured = match (usage, outcome) {
            (Some(usage), Outcome::Success) => Measured::Reported(usage),
            (partial, _) => {
                let mut usage = partial.unwrap_or(Usage {
                    prompt_tokens: self.prompt_estimate,
                    ..Usage::default()
                });
                usage.completion_tokens = usage.completion_tokens.max(events);
                Measured::Counted(usage)
            }
        };
        self.settle(outcome, status, measured);
    }

    /// The most a request that reached a deployment could have used.
    fn upper_bound(&self) -> Measured {
        let Some(deployment) = &self.deployment else {
            return Measured::Nothing;
        };
        Measured::Counted(Usage {
            prompt_tokens: self.prompt_estimate,
            completion_tokens: completion_allowance(self.max_tokens, deployment.price.as_ref()),
            ..Usage::default()
        })
    }

    fn settle(&mut self, outcome: Outcome, status: StatusCode, measured: Measured) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        let elapsed = self.started.elapsed();
        let (usage, reported) = match measured {
            Measured::Reported(usage) => (usage, true),
            Measured::Counted(usage) => (usage, false),
            Measured::Nothing => (Usage::default(), false),
        };
        // With nothing measured the admission estimate stands for the token limits: charging
        // zero would let a client that provokes failures bypass its token limit.
        let actual_tokens = if measured == Measured::Nothing {
            self.estimated_tokens
        } else {
            usage.total_tokens()
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
            if measured != Measured::Nothing {
                d.state
                    .load
                    .record_tokens(actual_tokens, crate::fleet::unix_ms());
            }
        }
        self.inflight = None;
        self.settle_budget(switchboard_shared::budget::usd_to_nanos(cost_usd));
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
            price_version: self.price_version,
            started_at: self.started_at,
            latency_ms: millis(elapsed),
            ttft_ms: self.ttft.map(millis),
        };
        self.books.sink.emit(record);
    }
}

impl Ledger {
    /// Replaces the budget reservation with what the request is charged (the same cost its
    /// usage record carries), off the request path.
    fn settle_budget(&mut self, actual: i64) {
        let reservation = std::mem::take(&mut self.budget);
        if reservation.is_empty() {
            return;
        }
        let budgets = self.books.budgets.clone();
        let webhooks = self.books.webhooks.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        runtime.spawn(async move {
            for crossing in budgets.settle(reservation, actual).await {
                tracing::warn!(
                    scope = crossing.scope.as_str(),
                    id = %crossing.id,
                    threshold = ?crossing.threshold,
                    spent_usd = crossing.spent_usd,
                    "budget threshold crossed"
                );
                webhooks.send(crate::webhooks::Event {
                    kind: match crossing.threshold {
                        crate::budget::Threshold::Soft => "budget.soft_threshold",
                        crate::budget::Threshold::Hard => "budget.exhausted",
                    },
                    at: chrono::Utc::now(),
                    scope: crossing.scope.as_str(),
                    id: crossing.id,
                    spent_usd: Some(crossing.spent_usd),
                    limit_usd: Some(crossing.limit_usd),
                    provider: None,
                    status: None,
                });
            }
        });
    }
}

impl Drop for Ledger {
    /// A ledger dropped unclosed belongs to a request whose client went away while it waited
    /// for a complete answer (axum drops the handler future). Streams close theirs in the
    /// relay, which knows what was generated.
    fn drop(&mut self) {
        if !self.closed {
            let measured = self.upper_bound();
            self.settle(
                Outcome::ClientDisconnected,
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
                measured,
            );
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A `usage` object in either client protocol. OpenAI's counts cached tokens inside
/// `prompt_tokens` (`prompt_tokens_details.cached_tokens`; translated Anthropic answers add
/// `cache_creation_input_tokens` beside it, as LiteLLM does). Anthropic's counts them beside
/// `input_tokens`. A stream may report the parts in different events (Anthropic: input in
/// `message_start`, output in `message_delta`), so every field is optional and
/// [`PartialUsage::merge_into`] fills in only what an event reported.
#[derive(Debug, Default, Clone, Copy, Deserialize)]
pub struct PartialUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

impl PartialUsage {
    /// Writes the reported parts into `usage`, leaving unreported ones as they were.
    pub fn merge_into(self, usage: &mut Usage) {
        let read = self
            .prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .or(self.cache_read_input_tokens);
        if let Some(read) = read {
            usage.cached_read_tokens = read;
        }
        if let Some(created) = self.cache_creation_input_tokens {
            usage.cache_creation_tokens = created;
        }
        if let Some(prompt) = self.prompt_tokens {
            usage.prompt_tokens = prompt;
        } else if let Some(input) = self.input_tokens {
            // Anthropic: the whole prompt is the uncached input plus both cache parts.
            usage.prompt_tokens = input + usage.cached_read_tokens + usage.cache_creation_tokens;
        }
        if let Some(completion) = self.completion_tokens.or(self.output_tokens) {
            usage.completion_tokens = completion;
        }
    }
}

impl From<PartialUsage> for Usage {
    fn from(w: PartialUsage) -> Self {
        let mut usage = Usage::default();
        w.merge_into(&mut usage);
        usage
    }
}

#[derive(Deserialize)]
struct UsageOnly {
    #[serde(default)]
    usage: Option<PartialUsage>,
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
    /// Anthropic's event name; its events are never dropped.
    #[serde(default, borrow)]
    r#type: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    usage: Option<PartialUsage>,
    /// Anthropic's `message_start` carries usage inside the message.
    #[serde(default)]
    message: Option<UsageOnly>,
}

/// Usage from one SSE event's `data:` payload, and whether that event carries nothing else
/// (an OpenAI chunk without choices), so that it may be dropped for a client that did not ask
/// for it.
pub fn usage_from_chunk(data: &[u8]) -> Option<(PartialUsage, bool)> {
    let chunk: UsageChunk<'_> = serde_json::from_slice(data).ok()?;
    let usage = chunk.usage.or(chunk.message.and_then(|m| m.usage))?;
    let only_usage = chunk.r#type.is_none() && chunk.choices.is_none_or(|c| c.get().trim() == "[]");
    Some((usage, only_usage))
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
        assert_eq!(Usage::from(u).total_tokens(), 5);
        let (_, only) = usage_from_chunk(
            br#"{"choices":[{"delta":{"content":"x"}}],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
        )
        .unwrap();
        assert!(!only);
        assert!(usage_from_chunk(br#"{"choices":[],"usage":null}"#).is_none());
    }

    #[test]
    fn reads_anthropic_usage_with_cache_parts_in_the_prompt() {
        let body = br#"{"type":"message","usage":{"input_tokens":10,"output_tokens":5,"cache_read_input_tokens":100,"cache_creation_input_tokens":20}}"#;
        let usage = usage_from_body(body).unwrap().unwrap();
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 130,
                completion_tokens: 5,
                cached_read_tokens: 100,
                cache_creation_tokens: 20
            }
        );
    }

    #[test]
    fn merges_anthropic_stream_usage_across_events() {
        let mut usage = Usage::default();
        let (start, only) = usage_from_chunk(
            br#"{"type":"message_start","message":{"usage":{"input_tokens":25,"output_tokens":1,"cache_read_input_tokens":5}}}"#,
        )
        .unwrap();
        assert!(!only, "Anthropic events are never dropped");
        start.merge_into(&mut usage);
        let (delta, _) = usage_from_chunk(
            br#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}"#,
        )
        .unwrap();
        delta.merge_into(&mut usage);
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: 30,
                completion_tokens: 15,
                cached_read_tokens: 5,
                cache_creation_tokens: 0
            }
        );
    }

    #[test]
    fn reads_cache_creation_from_a_translated_openai_answer() {
        let body = br#"{"usage":{"prompt_tokens":130,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":100},"cache_creation_input_tokens":20}}"#;
        let usage = usage_from_body(body).unwrap().unwrap();
        assert_eq!(
            (
                usage.prompt_tokens,
                usage.cached_read_tokens,
                usage.cache_creation_tokens
            ),
            (130, 100, 20)
        );
    }
}
