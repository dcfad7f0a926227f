//! Every metric the data plane exports, named in one place.
//!
//! Names follow `switchboard_<thing>_<unit>`, counters end in `_total`. Labels come from small
//! closed sets: endpoints, status codes, error kinds, provider kinds, and model and deployment
//! names *from the snapshot* (a client's unknown model name never becomes a label). Never a
//! key, a tenant id, a prompt or a user id.
//!
//! The per-request metrics are recorded through handles registered once — per model in the
//! catalog ([`ModelMetrics`]), or in lazily filled static tables for the closed label sets —
//! because registering on every call hashes the name and labels under the recorder's lock-free
//! map and allocates a label vector: a measurable share of a request that costs microseconds.

use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use switchboard_shared::snapshot::ProviderKind;
use switchboard_shared::usage::Usage;

pub const REQUESTS_TOTAL: &str = "switchboard_requests_total";
pub const REQUEST_DURATION_SECONDS: &str = "switchboard_request_duration_seconds";
pub const TIME_TO_FIRST_TOKEN_SECONDS: &str = "switchboard_time_to_first_token_seconds";
pub const UPSTREAM_ATTEMPTS_TOTAL: &str = "switchboard_upstream_attempts_total";
pub const TOKENS_TOTAL: &str = "switchboard_tokens_total";
/// Cost in nano-dollars: Prometheus counters here are integers, and a cheap request costs
/// a few micro-dollars.
pub const COST_NANODOLLARS_TOTAL: &str = "switchboard_cost_nanodollars_total";
pub const ERRORS_TOTAL: &str = "switchboard_errors_total";
pub const RATE_LIMITED_TOTAL: &str = "switchboard_rate_limited_total";
pub const DEPLOYMENT_COOLDOWNS_TOTAL: &str = "switchboard_deployment_cooldowns_total";
/// Named by the cluster contract (`docs/cluster.md`).
pub const SNAPSHOT_REVISION: &str = "switchboard_config_revision";
pub const SNAPSHOT_RELOADS_TOTAL: &str = "switchboard_snapshot_reloads_total";
/// Cluster snapshots refused (unsigned, badly signed, replayed, unsealed secrets, ...).
pub const SNAPSHOT_REFUSED_TOTAL: &str = "switchboard_snapshot_refused_total";
/// Config deltas applied on top of the catalog served (`docs/cluster.md`, "Deltas").
pub const CONFIG_DELTAS_APPLIED_TOTAL: &str = "switchboard_config_deltas_applied_total";
/// Times a delta arrived whose base was not the revision served and the gap did not close
/// by itself, so the full head was fetched again.
pub const CONFIG_DELTA_GAPS_TOTAL: &str = "switchboard_config_delta_gaps_total";
pub const INFLIGHT_REQUESTS: &str = "switchboard_inflight_requests";
/// Budget checks done without Redis (degraded), counted whatever the policy did.
pub const BUDGET_DEGRADED_TOTAL: &str = "switchboard_budget_degraded_total";
/// Usage records by fate: `published` (stored by JetStream), `spilled` (to the spill file),
/// `dropped` (lost: queue full with no spill file, or the file cannot be written), `evicted`
/// (lost: the oldest records of a full spill file). Only in cluster mode.
pub const USAGE_RECORDS_TOTAL: &str = "switchboard_usage_records_total";
/// Time spent choosing the order of deployments (the strategy itself, not the attempts).
pub const ROUTING_DECISION_SECONDS: &str = "switchboard_routing_decision_seconds";
/// 1 while the shared Redis answers, 0 while limits run degraded.
pub const REDIS_UP: &str = "switchboard_redis_up";
pub const LIMITS_DEGRADED_TOTAL: &str = "switchboard_limits_degraded_total";
/// Token-limit corrections not sent to Redis because the settlement queue was full (the
/// estimate then stands for the rest of the window).
pub const SETTLEMENTS_DROPPED_TOTAL: &str = "switchboard_limits_settlements_dropped_total";
/// Slices of large limits and budgets (`redis.lease`), by `event`: `refill` (a slice taken
/// from Redis), `refused` (Redis had no room for it), `return` (an unused remainder given
/// back).
pub const LEASE_EVENTS_TOTAL: &str = "switchboard_limits_lease_events_total";
/// Upstream answers cut off for passing a size cap, by `part`: `body` (a complete answer or
/// error body) or `event` (one event of an event stream).
pub const UPSTREAM_OVERSIZE_TOTAL: &str = "switchboard_upstream_oversize_total";
/// Response-cache lookups by model and `result`: `hit`, `miss` or `bypass` (the client said
/// not to read). Hit ratio: `hit / (hit + miss)`.
pub const RESPONSE_CACHE_LOOKUPS_TOTAL: &str = "switchboard_response_cache_lookups_total";
/// What answers served from the response cache cost when they were generated, in nano-USD,
/// by model: the spend the cache saved.
pub const RESPONSE_CACHE_SAVED_NANODOLLARS_TOTAL: &str =
    "switchboard_response_cache_saved_nanodollars_total";

/// Every name above, for the test that scrapes `/metrics`.
pub const ALL: &[&str] = &[
    REQUESTS_TOTAL,
    REQUEST_DURATION_SECONDS,
    TIME_TO_FIRST_TOKEN_SECONDS,
    UPSTREAM_ATTEMPTS_TOTAL,
    TOKENS_TOTAL,
    COST_NANODOLLARS_TOTAL,
    ERRORS_TOTAL,
    RATE_LIMITED_TOTAL,
    DEPLOYMENT_COOLDOWNS_TOTAL,
    SNAPSHOT_REVISION,
    SNAPSHOT_RELOADS_TOTAL,
    SNAPSHOT_REFUSED_TOTAL,
    CONFIG_DELTAS_APPLIED_TOTAL,
    CONFIG_DELTA_GAPS_TOTAL,
    INFLIGHT_REQUESTS,
    REDIS_UP,
    LIMITS_DEGRADED_TOTAL,
    ROUTING_DECISION_SECONDS,
    UPSTREAM_OVERSIZE_TOTAL,
    RESPONSE_CACHE_LOOKUPS_TOTAL,
    RESPONSE_CACHE_SAVED_NANODOLLARS_TOTAL,
];

/// Buckets of the routing-decision histogram: 1 µs to 1 ms.
const DECISION_BUCKETS: &[f64] = &[
    0.000_001, 0.000_002, 0.000_005, 0.000_01, 0.000_02, 0.000_05, 0.000_1, 0.000_25, 0.000_5,
    0.001,
];

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0,
];

/// Installs the process-wide recorder, or returns the installed one's handle (tests build
/// many routers in one process; the recorder is global by design of the `metrics` crate).
pub fn install() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full(ROUTING_DECISION_SECONDS.into()),
                    DECISION_BUCKETS,
                )
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                })
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(handle) => {
                    describe();
                    spawn_upkeep(handle.clone());
                    handle
                }
                // Another recorder is installed (an embedding program's): render an empty one.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

/// Histogram samples pile up in the recorder until upkeep folds them into buckets; without
/// it, memory grows with every request between scrapes (measured: ~50 MB per million).
fn spawn_upkeep(handle: PrometheusHandle) {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(5);
    let spawned = std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::park_timeout(EVERY);
                handle.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start metrics upkeep; histogram memory will grow");
    }
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    const COUNTERS: [(&str, &str); 16] = [
        (REQUESTS_TOTAL, "Requests answered, by endpoint and status."),
        (
            UPSTREAM_ATTEMPTS_TOTAL,
            "Upstream attempts, by provider kind and result.",
        ),
        (TOKENS_TOTAL, "Tokens used, by model and kind."),
        (COST_NANODOLLARS_TOTAL, "Cost in nano-USD, by model."),
        (ERRORS_TOTAL, "Error answers, by kind."),
        (
            RATE_LIMITED_TOTAL,
            "Requests refused by a rate limit, by scope and resource.",
        ),
        (
            DEPLOYMENT_COOLDOWNS_TOTAL,
            "Cooldowns started, by deployment.",
        ),
        (SNAPSHOT_RELOADS_TOTAL, "Snapshot loads, by result."),
        (
            SNAPSHOT_REFUSED_TOTAL,
            "Cluster snapshots refused, by reason (unsigned, bad_signature, wrong_namespace, replayed, unsealed_secret, ...).",
        ),
        (
            CONFIG_DELTAS_APPLIED_TOTAL,
            "Config deltas applied on top of the snapshot served (key changes without a full install).",
        ),
        (
            CONFIG_DELTA_GAPS_TOTAL,
            "Config deltas that did not follow on from the revision served, so the full head was fetched.",
        ),
        (
            LIMITS_DEGRADED_TOTAL,
            "Admissions decided without Redis, by failure policy (open: local counters; closed: refused).",
        ),
        (
            LEASE_EVENTS_TOTAL,
            "Slices of large limits and budgets, by event (refill, refused, return).",
        ),
        (
            UPSTREAM_OVERSIZE_TOTAL,
            "Upstream answers cut off for passing a size cap, by part (body, event).",
        ),
        (
            RESPONSE_CACHE_LOOKUPS_TOTAL,
            "Response-cache lookups, by model and result (hit, miss, bypass).",
        ),
        (
            RESPONSE_CACHE_SAVED_NANODOLLARS_TOTAL,
            "Cost in nano-USD that answers from the response cache saved, by model.",
        ),
    ];
    const GAUGES: [(&str, &str); 3] = [
        (SNAPSHOT_REVISION, "Revision of the snapshot being served."),
        (INFLIGHT_REQUESTS, "Requests being served now."),
        (
            REDIS_UP,
            "1 while the shared Redis answers, 0 while limits run degraded.",
        ),
    ];
    const SECONDS: [(&str, &str); 3] = [
        (REQUEST_DURATION_SECONDS, "Time from arrival to last byte."),
        (
            TIME_TO_FIRST_TOKEN_SECONDS,
            "Time from arrival to the first streamed bytes.",
        ),
        (
            ROUTING_DECISION_SECONDS,
            "Time the routing strategy took to order a model's deployments.",
        ),
    ];
    for (name, help) in COUNTERS {
        describe_counter!(name, help);
    }
    for (name, help) in GAUGES {
        describe_gauge!(name, help);
    }
    for (name, help) in SECONDS {
        describe_histogram!(name, Unit::Seconds, help);
    }
}

/// Token and cost counters of one public model.
#[derive(Debug)]
pub struct ModelMetrics {
    prompt: Counter,
    completion: Counter,
    cached_read: Counter,
    cache_creation: Counter,
    cost: Counter,
    /// The response cache's counters, registered on the model's first lookup (a model
    /// without a cache policy exports none).
    cache: OnceLock<CacheCounters>,
    model: String,
}

#[derive(Debug)]
struct CacheCounters {
    hit: Counter,
    miss: Counter,
    bypass: Counter,
    saved: Counter,
}

impl ModelMetrics {
    pub fn new(model: &str) -> Self {
        let tokens = |kind: &'static str| counter!(TOKENS_TOTAL, "model" => model.to_owned(), "kind" => kind);
        Self {
            prompt: tokens("prompt"),
            completion: tokens("completion"),
            cached_read: tokens("cached_read"),
            cache_creation: tokens("cache_creation"),
            cost: counter!(COST_NANODOLLARS_TOTAL, "model" => model.to_owned()),
            cache: OnceLock::new(),
            model: model.to_owned(),
        }
    }

    /// Counts a response-cache lookup: `hit`, `miss` or `bypass`.
    pub fn record_cache_lookup(&self, result: &'static str) {
        let c = self.cache_counters();
        match result {
            "hit" => c.hit.increment(1),
            "miss" => c.miss.increment(1),
            _ => c.bypass.increment(1),
        }
    }

    /// Counts what an answer from the cache saved.
    pub fn record_cache_saved(&self, saved_usd: f64) {
        if saved_usd > 0.0 && saved_usd.is_finite() {
            let nanos = (saved_usd * 1e9).round() as u64;
            self.cache_counters().saved.increment(nanos);
        }
    }

    fn cache_counters(&self) -> &CacheCounters {
        self.cache.get_or_init(|| {
            let model = &self.model;
            let lookups = |result: &'static str| counter!(RESPONSE_CACHE_LOOKUPS_TOTAL, "model" => model.clone(), "result" => result);
            CacheCounters {
                hit: lookups("hit"),
                miss: lookups("miss"),
                bypass: lookups("bypass"),
                saved: counter!(RESPONSE_CACHE_SAVED_NANODOLLARS_TOTAL, "model" => model.clone()),
            }
        })
    }

    pub fn record(&self, usage: &Usage, cost_usd: f64) {
        self.prompt.increment(usage.prompt_tokens);
        self.completion.increment(usage.completion_tokens);
        self.cached_read.increment(usage.cached_read_tokens);
        self.cache_creation.increment(usage.cache_creation_tokens);
        if cost_usd > 0.0 {
            self.cost.increment((cost_usd * 1e9).round() as u64);
        }
    }
}

/// A table of handles over a closed set of label values, each registered on first use (so
/// that series nobody produced stay out of `/metrics`).
struct Table<T, const N: usize>([OnceLock<T>; N]);

impl<T, const N: usize> Table<T, N> {
    const fn new() -> Self {
        Self([const { OnceLock::new() }; N])
    }

    fn get(&self, index: usize, make: impl FnOnce() -> T) -> Option<&T> {
        self.0.get(index).map(|cell| cell.get_or_init(make))
    }
}

/// Route templates: the closed set of the route table, plus `other` for unmatched paths.
pub const ROUTES: [&str; 18] = [
    "/v1/chat/completions",
    "/v1/messages",
    "/v1/messages/count_tokens",
    "/v1/responses",
    "/v1/responses/{id}",
    "/passthrough/{kind}/{*path}",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/images/generations",
    "/v1/audio/transcriptions",
    "/v1/audio/speech",
    "/v1/models",
    "/v1/models/{model}",
    "/v1/key/info",
    "/healthz",
    "/readyz",
    "/metrics",
    "other",
];

/// The index in [`ROUTES`] of the template that `path` matches, as the router matches it: a
/// literal segment equals, `{name}` is one non-empty segment, `{*name}` the non-empty rest;
/// `other` when none does. Worked out from the path, before the router runs, so that counting
/// needs nothing from inside the router.
pub fn route_of(path: &str) -> usize {
    ROUTES[..ROUTES.len() - 1]
        .iter()
        .position(|template| matches_template(template, path))
        .unwrap_or(ROUTES.len() - 1)
}

fn matches_template(template: &str, path: &str) -> bool {
    if !template.contains('{') {
        return template == path;
    }
    let mut segments = path.split('/');
    let mut parts = template.split('/').peekable();
    while let Some(part) = parts.next() {
        let Some(segment) = segments.next() else {
            return false;
        };
        if part.starts_with("{*") {
            // The rest of the path, at least one character.
            return !segment.is_empty() || segments.next().is_some();
        }
        let matched = if part.starts_with('{') {
            // A parameter: any segment, but not an empty last one.
            !segment.is_empty() || parts.peek().is_some()
        } else {
            part == segment
        };
        if !matched {
            return false;
        }
    }
    segments.next().is_none()
}

const STATUSES: [&str; 19] = [
    "200", "400", "401", "403", "404", "405", "408", "413", "422", "429", "499", "500", "502",
    "503", "504", "2xx", "4xx", "5xx", "other",
];

fn status_index(code: u16) -> usize {
    match code {
        200 => 0,
        400 => 1,
        401 => 2,
        403 => 3,
        404 => 4,
        405 => 5,
        408 => 6,
        413 => 7,
        422 => 8,
        429 => 9,
        499 => 10,
        500 => 11,
        502 => 12,
        503 => 13,
        504 => 14,
        _ if code < 300 => 15,
        _ if code < 500 => 16,
        _ if code < 600 => 17,
        _ => 18,
    }
}

/// Counts an answer by route template (an index into [`ROUTES`]) and status.
pub fn count_request(route: usize, status: u16) {
    static TABLE: Table<Counter, { ROUTES.len() * STATUSES.len() }> = Table::new();
    let route = route.min(ROUTES.len() - 1);
    let status = status_index(status);
    if let Some(c) = TABLE.get(
        route * STATUSES.len() + status,
        || counter!(REQUESTS_TOTAL, "route" => ROUTES[route], "status" => STATUSES[status]),
    ) {
        c.increment(1);
    }
}

/// The in-flight gauge.
pub fn inflight() -> &'static Gauge {
    static GAUGE: OnceLock<Gauge> = OnceLock::new();
    GAUGE.get_or_init(|| gauge!(INFLIGHT_REQUESTS))
}

/// Endpoints that have latency histograms.
pub const ENDPOINTS: [&str; 7] = [
    "chat_completions",
    "completions",
    "embeddings",
    "messages",
    "responses",
    "passthrough",
    "models",
];

/// Records a request's duration and, for streams, its time to first token.
pub fn record_latency(endpoint: &'static str, total_seconds: f64, ttft_seconds: Option<f64>) {
    static TOTAL: Table<Histogram, 4> = Table::new();
    static TTFT: Table<Histogram, 4> = Table::new();
    let Some(i) = ENDPOINTS.iter().position(|e| *e == endpoint) else {
        return;
    };
    if let Some(h) = TOTAL.get(
        i,
        || histogram!(REQUEST_DURATION_SECONDS, "endpoint" => ENDPOINTS[i]),
    ) {
        h.record(total_seconds);
    }
    if let (Some(t), Some(h)) = (
        ttft_seconds,
        TTFT.get(
            i,
            || histogram!(TIME_TO_FIRST_TOKEN_SECONDS, "endpoint" => ENDPOINTS[i]),
        ),
    ) {
        h.record(t);
    }
}

/// Records how long a routing decision took.
pub fn record_routing_decision(seconds: f64) {
    static HISTOGRAM: OnceLock<Histogram> = OnceLock::new();
    HISTOGRAM
        .get_or_init(|| histogram!(ROUTING_DECISION_SECONDS))
        .record(seconds);
}

/// The result of one upstream attempt: a closed set, so the label table needs no lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptResult {
    Ok,
    Timeout,
    ConnectError,
    TransportError,
    RateLimited,
    ServerError,
    CredentialRejected,
    ClientError,
    BrokenBody,
    Malformed,
    /// A refusal whose body says it lasts (unknown model, exhausted quota).
    PermanentError,
}

impl AttemptResult {
    const COUNT: usize = 11;

    pub fn as_str(self) -> &'static str {
        match self {
            AttemptResult::Ok => "ok",
            AttemptResult::Timeout => "timeout",
            AttemptResult::ConnectError => "connect_error",
            AttemptResult::TransportError => "transport_error",
            AttemptResult::RateLimited => "rate_limited",
            AttemptResult::ServerError => "server_error",
            AttemptResult::CredentialRejected => "credential_rejected",
            AttemptResult::ClientError => "client_error",
            AttemptResult::BrokenBody => "broken_body",
            AttemptResult::Malformed => "malformed",
            AttemptResult::PermanentError => "permanent_error",
        }
    }
}

/// Counts an upstream attempt by provider kind and result.
///
/// The table is indexed by the kind's position in [`ProviderKind`], so a new provider kind
/// needs no line here; it has room for more kinds than exist, and a kind past it is still
/// counted, through the recorder's own lookup.
pub fn count_attempt(provider: ProviderKind, result: AttemptResult) {
    const PROVIDERS: usize = 8;
    static TABLE: Table<Counter, { PROVIDERS * AttemptResult::COUNT }> = Table::new();
    let make = || counter!(UPSTREAM_ATTEMPTS_TOTAL, "provider" => provider.as_str(), "result" => result.as_str());
    match TABLE.get(
        provider as usize * AttemptResult::COUNT + result as usize,
        make,
    ) {
        Some(c) => c.increment(1),
        None => make().increment(1),
    }
}

/// Counts an error answer by kind (rare by nature: registered per call).
pub fn count_error(kind: &'static str) {
    counter!(ERRORS_TOTAL, "kind" => kind).increment(1);
}

/// Counts a request refused by a rate limit.
pub fn count_rate_limited(scope: &'static str, resource: &'static str) {
    counter!(RATE_LIMITED_TOTAL, "scope" => scope, "resource" => resource).increment(1);
}

/// Counts a deployment entering cooldown.
pub fn count_cooldown(deployment: &str) {
    counter!(DEPLOYMENT_COOLDOWNS_TOTAL, "deployment" => deployment.to_owned()).increment(1);
}

/// Counts a config reload by result (`swapped`, `unchanged`, `rejected`).
pub fn count_reload(result: &'static str) {
    counter!(SNAPSHOT_RELOADS_TOTAL, "result" => result).increment(1);
}

/// Counts a refused cluster snapshot.
pub fn count_snapshot_refused(reason: &'static str) {
    counter!(SNAPSHOT_REFUSED_TOTAL, "reason" => reason).increment(1);
}

/// Counts a config delta applied.
pub fn count_delta_applied() {
    counter!(CONFIG_DELTAS_APPLIED_TOTAL).increment(1);
}

/// Counts a gap in the deltas that sent a data plane back to the full head.
pub fn count_delta_gap() {
    counter!(CONFIG_DELTA_GAPS_TOTAL).increment(1);
}

/// Counts a budget check that could not reach Redis.
pub fn count_budget_degraded() {
    static C: OnceLock<Counter> = OnceLock::new();
    C.get_or_init(|| counter!(BUDGET_DEGRADED_TOTAL))
        .increment(1);
}

/// Counts usage records stored by JetStream.
pub fn count_usage_published() {
    static C: OnceLock<Counter> = OnceLock::new();
    C.get_or_init(|| counter!(USAGE_RECORDS_TOTAL, "result" => "published"))
        .increment(1);
}

/// Counts usage records written to the spill file.
pub fn count_usage_spilled(n: usize) {
    counter!(USAGE_RECORDS_TOTAL, "result" => "spilled").increment(n as u64);
}

/// Counts a token-limit correction dropped for a full settlement queue.
pub fn count_settlement_dropped() {
    static C: OnceLock<Counter> = OnceLock::new();
    C.get_or_init(|| counter!(SETTLEMENTS_DROPPED_TOTAL))
        .increment(1);
}

/// Counts the oldest records dropped from a full spill file.
pub fn count_usage_evicted(n: u64) {
    counter!(USAGE_RECORDS_TOTAL, "result" => "evicted").increment(n);
}

/// Counts usage records lost.
pub fn count_usage_dropped() {
    counter!(USAGE_RECORDS_TOTAL, "result" => "dropped").increment(1);
}

/// Counts an upstream answer cut off for passing a size cap (`part`: `body` or `event`).
pub fn count_upstream_oversize(part: &'static str) {
    static TABLE: Table<Counter, 2> = Table::new();
    let i = usize::from(part == "event");
    if let Some(c) = TABLE.get(i, || counter!(UPSTREAM_OVERSIZE_TOTAL, "part" => part)) {
        c.increment(1);
    }
}

/// Sets whether the shared Redis answers.
pub fn set_redis_up(up: bool) {
    static GAUGE: OnceLock<Gauge> = OnceLock::new();
    GAUGE
        .get_or_init(|| gauge!(REDIS_UP))
        .set(if up { 1.0 } else { 0.0 });
}

/// Counts an admission decided without Redis, by failure policy (`open`, `closed`).
pub fn count_limits_degraded(policy: &'static str) {
    static TABLE: Table<Counter, 2> = Table::new();
    let i = usize::from(policy == "closed");
    if let Some(c) = TABLE.get(i, || counter!(LIMITS_DEGRADED_TOTAL, "policy" => policy)) {
        c.increment(1);
    }
}

/// What happened to a slice of a leased limit or budget: `refill`, `refused` or `return`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEvent {
    Refill,
    Refused,
    Return,
}

/// Counts `n` lease events of one kind.
pub fn count_lease(event: LeaseEvent, n: u64) {
    static TABLE: Table<Counter, 3> = Table::new();
    let label = match event {
        LeaseEvent::Refill => "refill",
        LeaseEvent::Refused => "refused",
        LeaseEvent::Return => "return",
    };
    if let Some(c) = TABLE.get(
        event as usize,
        || counter!(LEASE_EVENTS_TOTAL, "event" => label),
    ) {
        c.increment(n);
    }
}

/// Sets the revision being served.
pub fn set_revision(revision: u64) {
    gauge!(SNAPSHOT_REVISION).set(revision as f64);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_their_label() {
        assert_eq!(STATUSES[status_index(200)], "200");
        assert_eq!(STATUSES[status_index(429)], "429");
        assert_eq!(STATUSES[status_index(201)], "2xx");
        assert_eq!(STATUSES[status_index(418)], "4xx");
        assert_eq!(STATUSES[status_index(599)], "5xx");
        for code in [
            200u16, 400, 401, 403, 404, 405, 408, 413, 422, 429, 499, 500, 502, 503, 504,
        ] {
            assert_eq!(STATUSES[status_index(code)], code.to_string());
        }
    }

    /// `route_of` agrees with the matcher axum's router uses (matchit), which the table's
    /// templates come from: every path gets the template it matches, or `other`.
    #[test]
    fn paths_get_the_template_the_router_matches() {
        let mut router = matchit::Router::new();
        for template in &ROUTES[..ROUTES.len() - 1] {
            router.insert(*template, *template).unwrap();
        }
        let paths = [
            "/v1/chat/completions",
            "/v1/chat/completions/",
            "/v1/chat",
            "/v1/messages",
            "/v1/messages/count_tokens",
            "/v1/messages/x",
            "/v1/responses",
            "/v1/responses/",
            "/v1/responses/resp_1",
            "/v1/responses/resp_1/x",
            "/v1/responses//",
            "/v1/models",
            "/v1/models/",
            "/v1/models/gpt-4o",
            "/v1/models/a/b",
            "/v1/models//",
            "/passthrough/openai/v1/chat/completions",
            "/passthrough/openai/x",
            "/passthrough/openai/",
            "/passthrough/openai",
            "/passthrough//x",
            "/passthrough/a//",
            "/passthrough/a//x",
            "/passthrough///",
            "/passthrough//",
            "/passthrough///x",
            "/v1/key/info",
            "/healthz",
            "/healthz/",
            "/readyz",
            "/metrics",
            "/",
            "",
            "/v1/embeddings",
            "/v1/completions",
            "/v1/images/generations",
            "/v1/audio/transcriptions",
            "/v1/audio/speech",
            "/nope",
            "/v1/models/%2F",
        ];
        for path in paths {
            let matched = router.at(path).map_or("other", |found| *found.value);
            assert_eq!(ROUTES[route_of(path)], matched, "path {path:?}");
        }
    }
}
