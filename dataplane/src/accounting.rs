//! The last phase of a request: usage, cost, limit settlement and the usage record.
//!
//! A [`Ledger`] is opened when a request has been admitted, holding its quota
//! [`Ticket`] and sharing its [`RequestFacts`]; it travels with the answer (inside the
//! streaming body, for streams) and is closed exactly once — when the answer is complete, when
//! the upstream fails, or when the client goes away (its `Drop`). Its fields are private; the
//! forward loop and the relay tell it what happened through its verbs. Closing it settles the
//! ticket (the token limits corrected with the real count, the budgets with the cost), prices
//! the usage with the deployment's price entry, counts tokens and cost in metrics and hands a
//! [`UsageRecord`] to the [`UsageSink`].
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
//!   reported it, else the gateway's estimate) plus the completion relayed ([`Generated`]):
//!   one token per event relayed — OpenAI and Anthropic stream about one token per event, so
//!   this errs a few tokens high — or, when more, the relayed text's estimate at four bytes a
//!   token (Gemini and Bedrock send many tokens an event);
//! - a non-streamed answer that may have been generated but whose usage is unknown (a provider
//!   that reports none, or a ledger dropped before the answer arrived) → the most it could have
//!   cost: the prompt estimate plus the completion allowance (`max_tokens`, bounded by the
//!   model's output limit) — the upstream finishes and bills a non-streamed answer whether or
//!   not anyone reads it. A client that leaves while waiting does not drop the ledger: the
//!   handler forwards a non-streamed request in a task of its own, so it is charged the usage
//!   the provider reports;
//! - an upstream error without usage, or a request that never reached a deployment → nothing.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::StatusCode;
use serde::Deserialize;
use serde::de::IgnoredAny;
use switchboard_shared::budget::{MAX_CHARGE_NANOS, charge_nanos};
use switchboard_shared::pricing::{cost, media_cost};
use switchboard_shared::usage::{
    AttemptRecord, CapturedContent, MediaUsage, Outcome, Usage, UsageRecord,
};

use crate::catalog::DeploymentEntry;
use crate::context::RequestFacts;
pub use crate::context::completion_allowance;
use crate::json_scan::{self, Scan};
use crate::limits::Limiter;
use crate::metrics;
use crate::quota::{Stores, Ticket};

/// Where usage records go. The control-plane pipeline implements this later; today records go
/// to the log (and, in tests, to memory).
pub trait UsageSink: Send + Sync + std::fmt::Debug {
    fn emit(&self, record: UsageRecord);

    /// Whether a record emitted now would be read at all. `false` lets the ledger skip building
    /// it (its strings are a dozen allocations): a standalone gateway whose usage log lines
    /// are filtered out, with no trace to annotate, has no one to give it to.
    fn wants_records(&self) -> bool {
        true
    }
}

/// Something that only needs to look at each record, such as a log. [`TeeSink`] shows it a
/// record before handing the record itself on, so the record is never copied.
pub trait UsageObserver: Send + Sync + std::fmt::Debug {
    fn observe(&self, record: &UsageRecord);

    /// Whether [`UsageObserver::observe`] would look at a record now.
    fn observes(&self) -> bool {
        true
    }
}

/// Writes each record as one structured log line (target `switchboard::usage`).
#[derive(Debug, Default)]
pub struct LogSink;

impl UsageSink for LogSink {
    fn emit(&self, record: UsageRecord) {
        self.observe(&record);
    }

    fn wants_records(&self) -> bool {
        self.observes()
    }
}

impl UsageObserver for LogSink {
    /// Whether the usage log line is written: `switchboard::usage` at `info` is not filtered
    /// out.
    fn observes(&self) -> bool {
        tracing::enabled!(target: "switchboard::usage", tracing::Level::INFO)
    }

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

    fn wants_records(&self) -> bool {
        self.0.observes() || self.1.wants_records()
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

/// What closing a ledger needs from the process.
#[derive(Debug, Clone)]
pub struct Books {
    pub limiter: Arc<Limiter>,
    /// Concurrency slots of keys, tenants and deployments.
    pub slots: crate::concurrency::Slots,
    /// Where deployments' spend caps and request quotas are counted.
    pub caps: crate::caps::CapStore,
    pub budgets: crate::budget::Budgets,
    pub webhooks: crate::webhooks::Webhooks,
    pub sink: Arc<dyn UsageSink>,
    /// The time budgets are charged at and spend records carry.
    pub clock: crate::clock::Clock,
    /// The most bytes of a prompt, and of an answer, kept for a tenant that opted in to
    /// content capture (`server.capture_max_bytes`).
    pub capture_max_bytes: usize,
}

impl Books {
    /// The limit and budget stores, as a [`Ticket`] charges them.
    pub fn stores(&self) -> Stores<'_> {
        Stores {
            limiter: &self.limiter,
            caps: &self.caps,
            budgets: &self.budgets,
            webhooks: &self.webhooks,
        }
    }
}

/// The accounting of one admitted request: its quota [`Ticket`], the attempts made, and the
/// usage record it ends with. Its verbs follow the request: [`Ledger::attempt_began`] and
/// [`Ledger::attempt_failed`] per attempt, [`Ledger::first_byte`], then one close —
/// [`Ledger::answered`], [`Ledger::gave_up`] or [`Ledger::stream_closed`] — or its drop.
#[derive(Debug)]
pub struct Ledger {
    books: Arc<Books>,
    request: Arc<RequestFacts>,
    /// Moved into the usage record when the ledger closes.
    request_id: String,
    ticket: Ticket,
    /// The deployment of the latest attempt.
    deployment: Option<Arc<DeploymentEntry>>,
    /// Marks the request in flight on its current deployment until the answer ends.
    inflight: Option<crate::fleet::InFlight>,
    attempts: u32,
    /// Each attempt for the request log; the last one open until it ends.
    attempt_log: Vec<AttemptRecord>,
    /// When the open attempt started.
    attempt_started: Option<std::time::Instant>,
    /// Why the request failed, when it did (the error the client got).
    error_kind: Option<&'static str>,
    /// The request's exported span (disabled when trace export is off), its open attempt's
    /// and, from the first byte on, its relay's.
    trace: tracing::Span,
    attempt_span: tracing::Span,
    relay_span: tracing::Span,
    ttft: Option<Duration>,
    /// Told the cost of a successful answer, for the response cache to store it.
    cache: Option<Arc<crate::cache::Settled>>,
    /// The request's content, for a tenant that opted in ([`Ledger::capture`]).
    capture: Option<Box<Capture>>,
    closed: bool,
    /// What an image or audio request is priced by: the request's statement, corrected by
    /// the answer ([`Ledger::measured_media`]).
    media: Option<MediaUsage>,
}

/// A prompt and its answer as they pass, each cut at `limit` bytes (on a character boundary).
/// Only for a tenant with `capture_content`; it goes into the usage record alone — never a
/// log line or a span.
#[derive(Debug)]
struct Capture {
    limit: usize,
    prompt: String,
    answer: Vec<u8>,
    truncated: bool,
}

/// `bytes` as text: a character cut at the end is dropped, anything else invalid replaced.
fn text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(e) if e.error_len().is_none() => {
            String::from_utf8_lossy(&bytes[..e.valid_up_to()]).into_owned()
        }
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

impl Capture {
    fn new(prompt: &[u8], limit: usize) -> Self {
        Self {
            limit,
            prompt: text(&prompt[..prompt.len().min(limit)]),
            answer: Vec::new(),
            truncated: prompt.len() > limit,
        }
    }

    fn answer(&mut self, bytes: &[u8]) {
        let room = self.limit.saturating_sub(self.answer.len());
        if bytes.len() > room {
            self.truncated = true;
        }
        self.answer
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn finish(self) -> CapturedContent {
        CapturedContent {
            prompt: self.prompt,
            completion: text(&self.answer),
            truncated: self.truncated,
        }
    }
}

impl Ledger {
    /// Opens the books of an admitted `request` holding `ticket`.
    pub fn open(
        books: Arc<Books>,
        request: Arc<RequestFacts>,
        request_id: String,
        ticket: Ticket,
    ) -> Self {
        Self {
            media: request.media.clone(),
            books,
            request,
            request_id,
            ticket,
            deployment: None,
            inflight: None,
            attempts: 0,
            attempt_log: Vec::new(),
            attempt_started: None,
            error_kind: None,
            trace: tracing::Span::none(),
            attempt_span: tracing::Span::none(),
            relay_span: tracing::Span::none(),
            ttft: None,
            cache: None,
            capture: None,
            closed: false,
        }
    }

    /// What the answer of an image or audio request says it used (images generated, seconds
    /// transcribed), which prices it.
    pub fn measured_media(&mut self, media: MediaUsage) {
        self.media = Some(media);
    }

    /// Tells `settled` the cost when the request succeeds with usage reported (the response
    /// cache stores only such answers).
    pub fn report_to_cache(&mut self, settled: Option<Arc<crate::cache::Settled>>) {
        self.cache = settled;
    }

    /// Starts capturing the request's content (`prompt`, the body as the client sent it) when
    /// its tenant opted in; for any other tenant it does nothing.
    pub fn capture(&mut self, prompt: &[u8]) {
        if self.request.key.tenant.tenant.capture_content {
            let limit = self.books.capture_max_bytes;
            self.capture = Some(Box::new(Capture::new(prompt, limit)));
        }
    }

    /// Bytes of the answer as the client receives them, kept when capturing.
    pub fn capture_answer(&mut self, bytes: &[u8]) {
        if let Some(capture) = self.capture.as_mut() {
            capture.answer(bytes);
        }
    }

    /// Makes `trace` (the request's exported span) the parent of the attempt, relay and
    /// account spans, and the one the outcome is recorded on.
    pub fn traced(&mut self, trace: &tracing::Span) {
        if !trace.is_disabled() {
            self.trace = trace.clone();
        }
    }

    /// The request's exported span (none when it is not exported), the parent of its phases.
    pub fn trace(&self) -> &tracing::Span {
        &self.trace
    }

    /// The open attempt's span, for the attempt to run in (its `traceparent` goes upstream).
    pub fn attempt_span(&self) -> tracing::Span {
        self.attempt_span.clone()
    }

    /// The request this ledger accounts for.
    pub fn request(&self) -> &RequestFacts {
        &self.request
    }

    /// The request's id, sent upstream and recorded.
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// Where alerts go (the proxy raises credential alerts).
    pub fn webhooks(&self) -> &crate::webhooks::Webhooks {
        &self.books.webhooks
    }

    /// Charges an attempt on `deployment` to its own limits through the ticket, or says why
    /// it does not fit.
    pub async fn charge_deployment(
        &self,
        deployment: &DeploymentEntry,
    ) -> Result<(), crate::limits::Denial> {
        self.ticket
            .charge_deployment(&self.books.limiter, deployment)
            .await
    }

    /// Takes the key's and tenant's concurrency slots, waiting up to `wait` (a 429 naming the
    /// full limit when it runs out).
    pub async fn take_slots(&mut self, wait: Duration) -> Result<(), crate::error::ApiError> {
        let key = Arc::clone(&self.request);
        self.ticket
            .take_slots(&self.books.slots, &key.key, wait)
            .await
    }

    /// Takes a concurrency slot of `deployment` for the next attempt; `false` when it is full.
    pub async fn take_deployment_slot(&mut self, deployment: &DeploymentEntry) -> bool {
        self.ticket
            .take_deployment_slot(&self.books.slots, deployment)
            .await
    }

    /// Gives back a deployment slot taken for an attempt that did not start.
    pub fn drop_deployment_slot(&mut self) {
        self.ticket.drop_deployment_slot();
    }

    /// An attempt on `deployment` starts: counted, and in flight there until it ends.
    pub fn attempt_began(&mut self, deployment: &Arc<DeploymentEntry>) {
        self.attempts += 1;
        self.attempt_log.push(AttemptRecord {
            deployment_id: deployment.id.clone(),
            status: 0,
            error_kind: None,
            latency_ms: 0,
        });
        self.attempt_started = Some(std::time::Instant::now());
        if !self.trace.is_disabled() {
            let provider = deployment.provider_kind.as_str();
            let model = deployment.upstream_model.as_str();
            self.attempt_span =
                crate::telemetry::attempt(&self.trace, &deployment.id, provider, model);
        }
        self.deployment = Some(Arc::clone(deployment));
        self.inflight = Some(deployment.state.begin());
    }

    /// The attempt failed before any answer with `error`: no longer in flight, and its
    /// deployment gets its token estimate back.
    pub fn attempt_failed(&mut self, error: &crate::error::ApiError) {
        self.end_attempt(error.status().as_u16(), Some(error.kind()));
        self.inflight = None;
        if let Some(d) = &self.deployment {
            self.ticket.release_deployment(&self.books.limiter, d);
        }
    }

    /// Ends the open attempt (if any) in the request log with `status`.
    fn end_attempt(&mut self, status: u16, error_kind: Option<&'static str>) {
        if let (Some(started), Some(last)) =
            (self.attempt_started.take(), self.attempt_log.last_mut())
        {
            last.status = status;
            last.error_kind = error_kind.map(str::to_owned);
            last.latency_ms = millis(started.elapsed());
            let span = std::mem::replace(&mut self.attempt_span, tracing::Span::none());
            crate::telemetry::attempt_ended(&span, status, error_kind);
        }
    }

    /// Marks the arrival of the first bytes of the answer.
    pub fn first_byte(&mut self) {
        if self.ttft.is_none() {
            self.ttft = Some(self.request.started.elapsed());
            if !self.trace.is_disabled() {
                self.relay_span = crate::telemetry::relay(&self.trace);
            }
        }
    }

    /// Closes the books on a complete (non-streamed) answer, which is also its first byte.
    /// Usage `None` means the upstream reported none: an error then costs nothing, a success
    /// the most it could have cost.
    pub fn answered(mut self, outcome: Outcome, status: StatusCode, usage: Option<Usage>) {
        self.first_byte();
        let measured = match (usage, outcome) {
            (Some(usage), _) => Measured::Reported(usage),
            (None, Outcome::UpstreamError) => Measured::Nothing,
            // Images and audio are priced by their units, not by an allowance of tokens.
            (None, _) if self.media.is_some() => Measured::Counted(Usage {
                prompt_tokens: self.request.prompt_estimate,
                ..Usage::default()
            }),
            (None, _) => self.upper_bound(),
        };
        self.settle(outcome, status, measured);
    }

    /// Closes the books on a request that got no answer: every attempt failed, or none could
    /// be made. It is charged nothing.
    pub fn gave_up(mut self, error: &crate::error::ApiError) {
        self.error_kind = Some(error.kind());
        self.settle(Outcome::UpstreamError, error.status(), Measured::Nothing);
    }

    /// Closes the books on a streamed answer: `usage` is what the stream reported (possibly
    /// only in part), `generated` what was relayed to the client. Only a stream that
    /// ended cleanly with a report is charged the report; any other is charged what was
    /// generated.
    pub fn stream_closed(
        mut self,
        outcome: Outcome,
        status: StatusCode,
        usage: Option<Usage>,
        generated: Generated,
    ) {
        let measured = match (usage, outcome) {
            (Some(usage), Outcome::Success) => Measured::Reported(usage),
            (partial, _) => {
                let mut usage = partial.unwrap_or(Usage {
                    prompt_tokens: self.request.prompt_estimate,
                    ..Usage::default()
                });
                usage.completion_tokens =
                    usage.completion_tokens.max(generated.completion_tokens());
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
        let max_tokens = self.request.max_tokens;
        Measured::Counted(Usage {
            prompt_tokens: self.request.prompt_estimate,
            completion_tokens: completion_allowance(
                max_tokens,
                self.request.choices,
                deployment.price.as_ref(),
            ),
            ..Usage::default()
        })
    }

    /// Closes the books once: settles the ticket, counts the usage and emits the record.
    fn settle(&mut self, outcome: Outcome, status: StatusCode, measured: Measured) {
        if std::mem::replace(&mut self.closed, true) {
            return;
        }
        let elapsed = self.request.started.elapsed();
        self.end_attempt(status.as_u16(), None);
        self.relay_span = tracing::Span::none();
        let account = crate::telemetry::account(&self.trace);
        let _account = account.enter();
        let (usage, reported) = match measured {
            Measured::Reported(usage) => (usage, true),
            Measured::Counted(usage) => (usage, false),
            Measured::Nothing => (Usage::default(), false),
        };
        // With nothing measured the admission estimate stands for the token limits: charging
        // zero would let a client that provokes failures bypass its token limit.
        let actual_tokens = if measured == Measured::Nothing {
            self.request.estimated_tokens
        } else {
            usage.total_tokens()
        };
        let deployment = self.deployment.as_deref();
        let media = self
            .media
            .as_ref()
            .filter(|_| measured != Measured::Nothing);
        let cost_usd = deployment.and_then(|d| d.price.as_ref()).map_or(0.0, |p| {
            media
                .and_then(|m| media_cost(m, p))
                .unwrap_or_else(|| cost(&usage, p))
        });
        self.ticket.settle(
            self.books.stores(),
            &self.request.key,
            deployment,
            actual_tokens,
            charged_nanos(cost_usd),
        );
        if let (Some(settled), true) = (&self.cache, reported && status == StatusCode::OK) {
            settled.succeeded(cost_usd);
        }
        if let Some(d) = deployment
            && measured != Measured::Nothing
        {
            d.state.record_tokens(actual_tokens);
        }
        self.inflight = None;
        self.request.model.metrics.record(&usage, cost_usd);
        let endpoint = self.request.endpoint.as_str();
        let stream = self.request.stream;
        metrics::record_latency(
            endpoint,
            elapsed.as_secs_f64(),
            self.ttft.filter(|_| stream).map(|t| t.as_secs_f64()),
        );
        if !self.books.sink.wants_records() && !crate::telemetry::reads_usage(&self.trace) {
            return;
        }
        let record = UsageRecord {
            request_id: std::mem::take(&mut self.request_id),
            client_request_id: self.request.client_request_id.clone(),
            tenant_id: self.request.key.tenant.tenant.id.clone(),
            key_id: self.request.key.key.id().to_owned(),
            model: self.request.model.name.clone(),
            deployment_id: deployment.map(|d| d.id.clone()),
            provider_id: deployment.map(|d| d.provider_id.clone()),
            endpoint: endpoint.to_owned(),
            stream,
            outcome,
            status: status.as_u16(),
            attempts: self.attempts,
            usage,
            usage_reported: reported,
            cost_usd,
            price_revision: self.request.revision,
            price_version: self.request.price_version,
            started_at: self.request.started_at,
            latency_ms: millis(elapsed),
            ttft_ms: self.ttft.map(millis),
            error_kind: error_kind(outcome, status, self.error_kind),
            attempt_log: std::mem::take(&mut self.attempt_log),
            content: self.capture.take().map(|c| c.finish()),
            cached_response: false,
            saved_usd: 0.0,
        };
        crate::telemetry::finished(
            &self.trace,
            &record,
            deployment.map(|d| d.provider_kind.as_str()),
            deployment.map(|d| d.upstream_model.as_str()),
        );
        self.books.sink.emit(record);
    }
}

/// A request refused before any attempt, for the request log.
#[derive(Debug)]
pub struct Refused {
    pub endpoint: &'static str,
    /// The model asked for ('' when the body could not be read).
    pub model: String,
    /// From arrival to the refusal.
    pub latency: Duration,
}

/// Emits the usage record of a request `key` made that the gateway refused with `error`
/// before any upstream attempt (a limit, a budget, a bad body, an unknown model): it costs
/// nothing and is only for the request log.
pub fn record_refusal(
    books: &Books,
    key: &crate::catalog::KeyEntry,
    (request_id, client_request_id): (String, Option<String>),
    refused: Refused,
    error: &crate::error::ApiError,
) {
    let status = error.status();
    books.sink.emit(UsageRecord {
        request_id,
        client_request_id,
        tenant_id: key.tenant.tenant.id.clone(),
        key_id: key.key.id().to_owned(),
        model: refused.model,
        deployment_id: None,
        provider_id: None,
        endpoint: refused.endpoint.to_owned(),
        stream: false,
        outcome: Outcome::Refused,
        status: status.as_u16(),
        attempts: 0,
        usage: Usage::default(),
        usage_reported: false,
        cost_usd: 0.0,
        price_revision: 0,
        price_version: None,
        started_at: books.clock.now(),
        latency_ms: millis(refused.latency),
        ttft_ms: None,
        error_kind: Some(error.kind().to_owned()),
        attempt_log: Vec::new(),
        content: None,
        cached_response: false,
        saved_usd: 0.0,
    });
}

/// A request answered from the response cache, for [`record_cache_hit`].
#[derive(Debug)]
pub struct CacheHit<'a> {
    pub endpoint: &'static str,
    pub model: &'a crate::catalog::ModelEntry,
    pub stream: bool,
    /// From arrival to the answer.
    pub latency: Duration,
    /// What the stored answer cost when it was generated.
    pub saved_usd: f64,
    pub revision: u64,
    pub price_version: Option<u64>,
}

/// Emits the usage record of a request `key` made that was answered from the response cache:
/// no deployment, no usage, cost 0, `cached_response` and what it saved (also counted in the
/// model's metrics). Limits and budgets are not charged: nothing reached an upstream.
pub fn record_cache_hit(
    books: &Books,
    key: &crate::catalog::KeyEntry,
    (request_id, client_request_id): (String, Option<String>),
    hit: CacheHit<'_>,
) {
    hit.model.metrics.record_cache_saved(hit.saved_usd);
    let latency_ms = millis(hit.latency);
    books.sink.emit(UsageRecord {
        request_id,
        client_request_id,
        tenant_id: key.tenant.tenant.id.clone(),
        key_id: key.key.id().to_owned(),
        model: hit.model.name.clone(),
        deployment_id: None,
        provider_id: None,
        endpoint: hit.endpoint.to_owned(),
        stream: hit.stream,
        outcome: Outcome::Success,
        status: StatusCode::OK.as_u16(),
        attempts: 0,
        usage: Usage::default(),
        usage_reported: false,
        cost_usd: 0.0,
        price_revision: hit.revision,
        price_version: hit.price_version,
        started_at: books.clock.now(),
        latency_ms,
        ttft_ms: hit.stream.then_some(latency_ms),
        error_kind: None,
        attempt_log: Vec::new(),
        content: None,
        cached_response: true,
        saved_usd: if hit.saved_usd.is_finite() {
            hit.saved_usd
        } else {
            0.0
        },
    });
}

/// The request log's error kind of a request that ended with `outcome` and `status`: the
/// gateway's own error when it answered with one, else a label for how the answer failed.
fn error_kind(outcome: Outcome, status: StatusCode, known: Option<&'static str>) -> Option<String> {
    let kind = match (outcome, known) {
        (Outcome::Success, _) if status.is_success() => return None,
        (_, Some(kind)) => kind,
        (Outcome::ClientDisconnected, None) => "client_disconnected",
        (Outcome::Success | Outcome::UpstreamError | Outcome::Refused, None) => {
            if status.is_success() {
                "upstream_stream_broken"
            } else {
                "upstream_error_status"
            }
        }
    };
    Some(kind.to_owned())
}

/// What a request costing `cost_usd` is charged, in nano-dollars: at most
/// [`MAX_CHARGE_NANOS`], the budget counters' range. Only an upstream reporting absurd usage
/// (or an absurd price) gets there; that is logged, and the usage record keeps the true cost.
fn charged_nanos(cost_usd: f64) -> i64 {
    charge_nanos(cost_usd).unwrap_or_else(|| {
        tracing::error!(
            cost_usd,
            "a request's cost is beyond what one request may be charged; budgets are charged the most"
        );
        if cost_usd.is_nan() { 0 } else { MAX_CHARGE_NANOS }
    })
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
    /// The Responses API's usage: `input_tokens` is the whole prompt (as OpenAI counts it),
    /// its cached part in here. Its presence tells it from Anthropic's `input_tokens`.
    #[serde(default)]
    input_tokens_details: Option<PromptDetails>,
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

impl PromptDetails {
    /// As [`PartialUsage::from_members`] reads it, for a field that may be absent; `None`
    /// for serde to decide.
    fn from_span(value: Option<&[u8]>) -> Option<Option<Self>> {
        match value {
            None | Some(b"null") => Some(None),
            Some(value) => match json_scan::fields(value, [b"cached_tokens"]) {
                Scan::Object([cached]) => Some(Some(Self {
                    cached_tokens: count(cached.and_then(|span| value.get(span)))?,
                })),
                Scan::Invalid | Scan::Unsure => None,
            },
        }
    }
}

/// The `Option<u64>` serde reads from a field's validated value (`None` if absent), when the
/// value is `null` or plain digits that fit; `None` for anything else, which serde decides
/// (`-0` reads as 0; a fraction, an exponent or an overflow is refused).
fn count(value: Option<&[u8]>) -> Option<Option<u64>> {
    let digits = match value {
        None | Some(b"null") => return Some(None),
        Some(digits) => digits,
    };
    let mut n: u64 = 0;
    for &digit in digits {
        if !digit.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(digit - b'0'))?;
    }
    Some(Some(n))
}

/// The fields of [`PartialUsage`] as its serde reads them, in the order
/// [`PartialUsage::from_members`] takes their spans.
const PARTIAL_USAGE_FIELDS: [&[u8]; 8] = [
    b"prompt_tokens",
    b"completion_tokens",
    b"prompt_tokens_details",
    b"input_tokens",
    b"input_tokens_details",
    b"output_tokens",
    b"cache_read_input_tokens",
    b"cache_creation_input_tokens",
];

impl PartialUsage {
    /// The `PartialUsage` serde reads from an object whose members called
    /// [`PARTIAL_USAGE_FIELDS`] have the values at `spans` in `body` ([`json_scan`] validated
    /// it and found them), read without serde when they have the usual shape: `null` or plain
    /// integers (details objects alike). `None` for any other (a sign, a fraction, an
    /// exponent, an overflow): serde decides those.
    fn from_members(body: &[u8], spans: [Option<Range<usize>>; 8]) -> Option<Self> {
        let [
            prompt,
            completion,
            prompt_details,
            input,
            input_details,
            output,
            read,
            created,
        ] = spans.map(|span| span.and_then(|span| body.get(span)));
        Some(Self {
            prompt_tokens: count(prompt)?,
            completion_tokens: count(completion)?,
            prompt_tokens_details: PromptDetails::from_span(prompt_details)?,
            input_tokens: count(input)?,
            input_tokens_details: PromptDetails::from_span(input_details)?,
            output_tokens: count(output)?,
            cache_read_input_tokens: count(read)?,
            cache_creation_input_tokens: count(created)?,
        })
    }

    /// Writes the reported parts into `usage`, leaving unreported ones as they were.
    pub fn merge_into(self, usage: &mut Usage) {
        let read = self
            .prompt_tokens_details
            .and_then(|d| d.cached_tokens)
            .or(self.input_tokens_details.and_then(|d| d.cached_tokens))
            .or(self.cache_read_input_tokens);
        if let Some(read) = read {
            usage.cached_read_tokens = read;
        }
        if let Some(created) = self.cache_creation_input_tokens {
            usage.cache_creation_tokens = created;
        }
        if let Some(prompt) = self.prompt_tokens.or(self
            .input_tokens
            .filter(|_| self.input_tokens_details.is_some()))
        {
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
    /// Gemini's usage (a metered passthrough's answer or stream event).
    #[serde(default, rename = "usageMetadata")]
    usage_metadata: Option<serde_json::Value>,
}

impl UsageOnly {
    /// The fields parsed from their values' spans in a body that [`json_scan`] validated
    /// (`members`: those of the `usage` value's members, when it is an object); `None` when
    /// one does not parse as its type.
    fn from_spans(
        body: &[u8],
        [usage, metadata]: [Option<Range<usize>>; 2],
        members: [Option<Range<usize>>; 8],
    ) -> Option<Self> {
        let usage = match usage {
            Some(span) => {
                let value = body.get(span)?;
                let read = match value {
                    [b'{', ..] => PartialUsage::from_members(body, members).map(Some),
                    b"null" => Some(None),
                    _ => None,
                };
                read.or_else(|| serde_json::from_slice(value).ok())?
            }
            None => None,
        };
        let usage_metadata = match metadata {
            Some(span) => serde_json::from_slice(body.get(span)?).ok()?,
            None => None,
        };
        Some(Self {
            usage,
            usage_metadata,
        })
    }

    fn partial(self) -> Option<PartialUsage> {
        self.usage
            .or_else(|| self.usage_metadata.as_ref().and_then(gemini_usage))
    }
}

/// Gemini's `usageMetadata`, read as its translator reads it (cached content inside the
/// prompt, thoughts billed as output).
fn gemini_usage(metadata: &serde_json::Value) -> Option<PartialUsage> {
    if !metadata.is_object() {
        return None;
    }
    let usage = crate::providers::translate::openai_gemini::usage(metadata);
    serde_json::from_value(usage).ok()
}

/// Usage from a complete (non-streamed) JSON answer. `Err` when the body is not a JSON object:
/// a 2xx with a broken body is an upstream failure, not something to relay.
///
/// The body is validated by [`json_scan`], which also finds the `usage` and `usageMetadata`
/// values (and the `usage` object's fields) in the same pass, for reading alone; what the
/// scan leaves undecided, and every failure (for serde's error), is read as
/// [`usage_from_whole_body`] reads it, so the outcome is always that function's.
pub fn usage_from_body(body: &[u8]) -> Result<Option<Usage>, serde_json::Error> {
    let (scan, members) =
        json_scan::fields_within(body, USAGE_FIELDS, Some((0, PARTIAL_USAGE_FIELDS)));
    if let Scan::Object(spans) = scan
        && let Some(parsed) = UsageOnly::from_spans(body, spans, members)
    {
        return Ok(parsed.partial().map(Usage::from));
    }
    usage_from_whole_body(body)
}

/// The top-level fields whose values [`usage_from_body`] reads.
const USAGE_FIELDS: [&[u8]; 2] = [b"usage", b"usageMetadata"];

/// [`usage_from_body`] by serde over the whole body: its reference, which the property tests
/// and the fuzz target `usage_body` hold it to ([`usage_from_body_agrees`]).
pub fn usage_from_whole_body(body: &[u8]) -> Result<Option<Usage>, serde_json::Error> {
    let parsed: UsageOnly = serde_json::from_slice(body)?;
    Ok(parsed.partial().map(Usage::from))
}

/// The property the tests and the fuzz target `usage_body` check on any bytes:
/// [`usage_from_body`] reads the same usage as [`usage_from_whole_body`], or refuses the body
/// as it does; and [`json_scan`], where it decides, refuses exactly the bodies that serde
/// refuses as a top-level object of string keys (whose values it skips).
pub fn usage_from_body_agrees(body: &[u8]) -> Result<(), String> {
    let read = usage_from_body(body).ok();
    let reference = usage_from_whole_body(body).ok();
    if read != reference {
        return Err(format!("read {read:?}, serde {reference:?}"));
    }
    let scan = json_scan::fields(body, USAGE_FIELDS);
    if scan != Scan::Unsure {
        let valid = serde_json::from_slice::<HashMap<String, IgnoredAny>>(body).is_ok();
        if matches!(scan, Scan::Object(_)) != valid {
            return Err(format!("the scan found {scan:?}; serde valid: {valid}"));
        }
    }
    Ok(())
}

#[derive(Deserialize)]
struct UsageChunkFields<'a> {
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
    /// The Responses API's `response.completed` carries it inside the response.
    #[serde(default)]
    response: Option<UsageOnly>,
    /// Gemini's events (a metered passthrough) carry it in every event, cumulatively.
    #[serde(default, rename = "usageMetadata")]
    usage_metadata: Option<serde_json::Value>,
}

/// What else a chunk with usage carries, which decides what a client that did not ask for
/// usage gets of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageChunk {
    /// An OpenAI chunk with no choices: only the usage report. Dropped.
    UsageOnly,
    /// An OpenAI chunk with choices (content, or LiteLLM's final `delta: {}`): kept, with its
    /// `usage` field removed.
    WithChoices,
    /// An Anthropic or Responses API event (it has a `type`), or a Gemini one (usage in
    /// `usageMetadata`): usage is part of that protocol; never touched.
    Anthropic,
}

/// Usage from one SSE event's `data:` payload, and what else the event carries.
pub fn usage_from_chunk(data: &[u8]) -> Option<(PartialUsage, UsageChunk)> {
    let chunk: UsageChunkFields<'_> = serde_json::from_slice(data).ok()?;
    let gemini = chunk.usage_metadata.as_ref().and_then(gemini_usage);
    let usage = chunk
        .usage
        .or(chunk.message.and_then(UsageOnly::partial))
        .or(chunk.response.and_then(UsageOnly::partial))
        .or(gemini)?;
    let kind = if chunk.r#type.is_some() || gemini.is_some() {
        UsageChunk::Anthropic
    } else if chunk.choices.is_none_or(|c| c.get().trim() == "[]") {
        UsageChunk::UsageOnly
    } else {
        UsageChunk::WithChoices
    };
    Some((usage, kind))
}

/// What a stream relayed to its client, for charging one that ended without a usage report.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Generated {
    /// Events relayed.
    pub events: u64,
    /// Bytes of generated text in them ([`crate::sse::text_bytes`]).
    pub text_bytes: u64,
}

impl Generated {
    /// The completion tokens this stands for: one per event (OpenAI and Anthropic stream
    /// about a token an event) or the text's estimate at four bytes a token, whichever is
    /// more — Gemini and Bedrock send many tokens an event.
    pub fn completion_tokens(&self) -> u64 {
        self.events.max(self.text_bytes.div_ceil(4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_sink_wants_records_only_when_its_line_is_written() {
        use tracing_subscriber::filter::LevelFilter;
        let logging = |level| {
            tracing_subscriber::fmt()
                .with_max_level(level)
                .with_writer(std::io::sink)
                .finish()
        };
        tracing::subscriber::with_default(logging(LevelFilter::WARN), || {
            assert!(!LogSink.wants_records());
            // A sink that keeps records wants them, whatever the log says.
            let tee = TeeSink(Arc::new(LogSink), Arc::new(MemorySink::default()));
            assert!(tee.wants_records());
        });
        tracing::subscriber::with_default(logging(LevelFilter::INFO), || {
            assert!(LogSink.wants_records());
        });
    }

    #[test]
    fn a_capture_is_cut_at_its_limit_on_a_character_boundary() {
        let mut c = Capture::new("héllo".as_bytes(), 2);
        assert_eq!(c.prompt, "h", "the cut é is dropped, not mangled");
        c.answer(b"ab");
        c.answer(b"cd");
        let done = c.finish();
        assert_eq!((done.completion.as_str(), done.truncated), ("ab", true));
        let mut c = Capture::new(b"hi", 16);
        c.answer(b"there");
        let done = c.finish();
        assert_eq!(
            (done.prompt.as_str(), done.completion.as_str()),
            ("hi", "there")
        );
        assert!(!done.truncated);
    }

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
    fn reads_responses_api_usage_whole_and_streamed() {
        let usage = br#"{"input_tokens":19,"input_tokens_details":{"cached_tokens":4},"output_tokens":10,"total_tokens":29}"#;
        let body = [&br#"{"object":"response","usage":"#[..], usage, b"}"].concat();
        let expected = Usage {
            prompt_tokens: 19,
            completion_tokens: 10,
            cached_read_tokens: 4,
            cache_creation_tokens: 0,
        };
        assert_eq!(usage_from_body(&body).unwrap(), Some(expected));
        let event = [
            &br#"{"type":"response.completed","sequence_number":9,"response":{"id":"r","usage":"#[..],
            usage,
            b"}}",
        ]
        .concat();
        let (partial, kind) = usage_from_chunk(&event).unwrap();
        assert_eq!(Usage::from(partial), expected);
        assert_eq!(kind, UsageChunk::Anthropic);
    }

    #[test]
    fn reads_gemini_usage_metadata_whole_and_streamed() {
        let metadata = r#"{"promptTokenCount":120,"candidatesTokenCount":9,"cachedContentTokenCount":100,"thoughtsTokenCount":4}"#;
        let expected = Usage {
            prompt_tokens: 120,
            completion_tokens: 13,
            cached_read_tokens: 100,
            cache_creation_tokens: 0,
        };
        let body = format!(r#"{{"candidates":[],"usageMetadata":{metadata}}}"#);
        assert_eq!(usage_from_body(body.as_bytes()).unwrap(), Some(expected));
        let (partial, kind) = usage_from_chunk(body.as_bytes()).unwrap();
        assert_eq!(Usage::from(partial), expected);
        // Gemini's events are its protocol: never stripped.
        assert_eq!(kind, UsageChunk::Anthropic);
        assert_eq!(usage_from_body(br#"{"usageMetadata":null}"#).unwrap(), None);
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
        assert_eq!(only, UsageChunk::UsageOnly);
        assert_eq!(Usage::from(u).total_tokens(), 5);
        let (_, only) = usage_from_chunk(
            br#"{"choices":[{"delta":{"content":"x"}}],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
        )
        .unwrap();
        assert_eq!(only, UsageChunk::WithChoices);
        let (_, litellm) = usage_from_chunk(
            br#"{"choices":[{"index":0,"delta":{}}],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
        )
        .unwrap();
        assert_eq!(litellm, UsageChunk::WithChoices);
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
        assert_eq!(
            only,
            UsageChunk::Anthropic,
            "Anthropic events are never touched"
        );
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

    #[test]
    fn a_cut_stream_is_charged_by_events_or_text_whichever_is_more() {
        let one_token_events = Generated {
            events: 10,
            text_bytes: 30,
        };
        assert_eq!(one_token_events.completion_tokens(), 10);
        // Gemini: two events carrying 400 bytes of text are ~100 tokens, not 2.
        let big_events = Generated {
            events: 2,
            text_bytes: 400,
        };
        assert_eq!(big_events.completion_tokens(), 100);
    }
}
