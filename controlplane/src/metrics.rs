//! The control plane's Prometheus exposition at `GET /metrics` on the admin listener: the
//! counters only the control plane can see — logins refused, usage events dead-lettered,
//! budget counters Redis refused during reconciliation, and usage events and heartbeats
//! dropped for a missing or wrong ingest tag. The data planes export the request path's
//! metrics on their own port (`dataplane/src/metrics.rs`); these complete the picture the
//! alert rules in `deploy/prometheus/` read. Labels carry reasons and kinds, never ids,
//! emails or secrets.
//!
//! The recorder is the control plane's own, not the process-wide one of the `metrics` crate:
//! a program (or a test) that runs a data plane in the same process keeps its global recorder,
//! and each plane's `/metrics` shows its own series. So every count goes through [`count`].

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusRecorder};

/// Logins answered 429 (`reason`: `account`, `ip`, `busy`).
pub const LOGIN_REFUSALS_TOTAL: &str = "switchboard_login_refusals_total";
/// Usage events stored as dead letters (`reason`: `malformed`, `out_of_range`, `refused`).
pub const INGEST_DEAD_LETTERS_TOTAL: &str = "switchboard_ingest_dead_letters_total";
/// Budget counters Redis refused while reconciling (the other tenants still reconcile).
pub const BUDGET_RECONCILE_FAILURES_TOTAL: &str = "switchboard_budget_reconcile_failures_total";
/// Usage events and heartbeats dropped for a missing or wrong ingest tag (`kind`).
pub const UNAUTHENTICATED_MESSAGES_TOTAL: &str = "switchboard_unauthenticated_messages_total";

fn recorder() -> &'static PrometheusRecorder {
    static RECORDER: OnceLock<PrometheusRecorder> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        metrics::with_local_recorder(&recorder, describe);
        recorder
    })
}

/// Adds one to the counter `name`, with one label when `label` is given.
pub fn count(name: &'static str, label: Option<(&'static str, &'static str)>) {
    metrics::with_local_recorder(recorder(), || match label {
        Some((key, value)) => metrics::counter!(name, key => value).increment(1),
        None => metrics::counter!(name).increment(1),
    });
}

fn describe() {
    use metrics::describe_counter;
    describe_counter!(
        LOGIN_REFUSALS_TOTAL,
        "Admin logins refused with 429, by reason"
    );
    describe_counter!(
        INGEST_DEAD_LETTERS_TOTAL,
        "Usage events stored as dead letters instead of spend rows, by reason"
    );
    describe_counter!(
        BUDGET_RECONCILE_FAILURES_TOTAL,
        "Budget counters Redis refused during reconciliation"
    );
    describe_counter!(
        UNAUTHENTICATED_MESSAGES_TOTAL,
        "Usage events and heartbeats dropped for a missing or wrong ingest tag, by kind"
    );
}

/// The exposition text (Prometheus text format).
pub fn render() -> String {
    recorder().handle().render()
}
