//! Every metric the data plane exports, named in one place.
//!
//! Names follow `switchboard_<thing>_<unit>`, counters end in `_total`. Labels come from small
//! closed sets: endpoints, status codes, error kinds, provider kinds, and model and deployment
//! names *from the snapshot* (a client's unknown model name never becomes a label). Never a
//! key, a tenant id, a prompt or a user id.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

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
pub const SNAPSHOT_REVISION: &str = "switchboard_snapshot_revision";
pub const SNAPSHOT_RELOADS_TOTAL: &str = "switchboard_snapshot_reloads_total";
pub const INFLIGHT_REQUESTS: &str = "switchboard_inflight_requests";

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
    INFLIGHT_REQUESTS,
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
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            match builder.install_recorder() {
                Ok(handle) => {
                    describe();
                    handle
                }
                // Another recorder is installed (an embedding program's): render an empty one.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            }
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(REQUESTS_TOTAL, "Requests answered, by endpoint and status.");
    describe_histogram!(
        REQUEST_DURATION_SECONDS,
        Unit::Seconds,
        "Time from arrival to last byte."
    );
    describe_histogram!(
        TIME_TO_FIRST_TOKEN_SECONDS,
        Unit::Seconds,
        "Time from arrival to the first streamed bytes."
    );
    describe_counter!(
        UPSTREAM_ATTEMPTS_TOTAL,
        "Upstream attempts, by provider kind and result."
    );
    describe_counter!(TOKENS_TOTAL, "Tokens used, by model and kind.");
    describe_counter!(COST_NANODOLLARS_TOTAL, "Cost in nano-USD, by model.");
    describe_counter!(ERRORS_TOTAL, "Error answers, by kind.");
    describe_counter!(
        RATE_LIMITED_TOTAL,
        "Requests refused by a rate limit, by scope and resource."
    );
    describe_counter!(
        DEPLOYMENT_COOLDOWNS_TOTAL,
        "Cooldowns started, by deployment."
    );
    describe_gauge!(SNAPSHOT_REVISION, "Revision of the snapshot being served.");
    describe_counter!(SNAPSHOT_RELOADS_TOTAL, "Snapshot loads, by result.");
    describe_gauge!(INFLIGHT_REQUESTS, "Requests being served now.");
}
