//! The request path's OpenTelemetry spans, named and attributed per the GenAI semantic
//! conventions: one `server` span per request (named `{gen_ai.operation.name}
//! {gen_ai.request.model}`, continuing the client's `traceparent`) with a child per phase —
//! `authenticate`, `admit`, `route`, one `client` span per upstream attempt (whose
//! `traceparent` goes upstream), `relay`, `account`.
//!
//! Why a module: the phases live in five files other work also changes; here are the span
//! shapes and the attribute names, so each phase adds one call. Every span is of target
//! [`TARGET`] at `DEBUG`, so with trace export off (`switchboard_shared::telemetry`) they are
//! disabled at their call sites, and every recorder returns after one atomic load.
//!
//! Exported: ids (request, tenant, key id — never the key), names, statuses, counts, cost and
//! timings. Never a prompt, an answer or a credential.

use http::HeaderMap;
pub use switchboard_shared::telemetry::TARGET;
use switchboard_shared::telemetry::{continue_trace, current_traceparent, enabled, sampled};
use switchboard_shared::usage::UsageRecord;
use tracing::Span;
use tracing::field::Empty;

/// `gen_ai.operation.name` of an endpoint (`chat_completions`, `completions`, `embeddings`,
/// `messages`).
pub fn operation(endpoint: &str) -> &'static str {
    match endpoint {
        "completions" => "text_completion",
        "embeddings" => "embeddings",
        _ => "chat",
    }
}

/// The request's span, continuing the client's W3C trace context when it sent one; none at
/// all for a request the sampler leaves out ([`sampled`]: decided here, at the head, so that
/// neither it nor its phases make a span).
pub fn request(endpoint: &str, request_id: &str, headers: &HeaderMap) -> Span {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if !enabled() || !sampled(header("traceparent")) {
        return Span::none();
    }
    let span = tracing::debug_span!(target: TARGET, "request",
        otel.name = Empty, otel.kind = "server", otel.status_code = Empty,
        gen_ai.operation.name = operation(endpoint), gen_ai.request.model = Empty,
        gen_ai.response.model = Empty, gen_ai.provider.name = Empty,
        gen_ai.usage.input_tokens = Empty, gen_ai.usage.output_tokens = Empty,
        server.address = Empty, error.type = Empty, http.response.status_code = Empty,
        switchboard.request_id = request_id, switchboard.tenant = Empty,
        switchboard.key_id = Empty, switchboard.deployment = Empty,
        switchboard.cost_usd = Empty, switchboard.cache_read_tokens = Empty,
        switchboard.cache_creation_tokens = Empty, switchboard.ttft_ms = Empty,
        switchboard.attempts = Empty, switchboard.outcome = Empty);
    continue_trace(&span, header("traceparent"), header("tracestate"));
    span
}

/// A phase's span, made by `make` as a child of the request's span `parent`; none when that
/// is none (tracing off, or a request the sampler left out): a span without a parent would
/// start a trace of its own.
fn child(parent: &Span, make: impl FnOnce() -> Span) -> Span {
    if parent.is_none() {
        return Span::none();
    }
    make()
}

/// The `authenticate` phase.
pub fn authenticate(parent: &Span) -> Span {
    child(
        parent,
        || tracing::debug_span!(target: TARGET, parent: parent, "authenticate"),
    )
}

/// The `admit` phase (limits and budgets).
pub fn admit(parent: &Span) -> Span {
    child(
        parent,
        || tracing::debug_span!(target: TARGET, parent: parent, "admit"),
    )
}

/// The `route` phase of one model.
pub fn route(parent: &Span) -> Span {
    child(
        parent,
        || tracing::debug_span!(target: TARGET, parent: parent, "route"),
    )
}

/// One upstream attempt, a child of `parent`.
pub fn attempt(parent: &Span, deployment: &str, provider: &str, model: &str) -> Span {
    child(parent, || {
        tracing::debug_span!(target: TARGET, parent: parent, "attempt",
            otel.kind = "client", otel.status_code = Empty, switchboard.deployment = deployment,
            gen_ai.provider.name = provider, gen_ai.request.model = model,
            server.address = Empty, http.response.status_code = Empty, error.type = Empty)
    })
}

/// The `relay` phase: the answer passed on to the client, from its first bytes.
pub fn relay(parent: &Span) -> Span {
    child(
        parent,
        || tracing::debug_span!(target: TARGET, parent: parent, "relay"),
    )
}

/// The `account` phase: cost, settlement, the usage record.
pub fn account(parent: &Span) -> Span {
    child(
        parent,
        || tracing::debug_span!(target: TARGET, parent: parent, "account"),
    )
}

/// Records the caller (tenant, key id) on the request's `span`.
pub fn caller(span: &Span, tenant: &str, key_id: &str) {
    if enabled() {
        span.record("switchboard.tenant", tenant);
        span.record("switchboard.key_id", key_id);
    }
}

/// Names the request's `span` after the model asked for.
pub fn model(span: &Span, operation_endpoint: &str, model: &str) {
    if enabled() {
        span.record("gen_ai.request.model", model);
        let name = format!("{} {model}", operation(operation_endpoint));
        switchboard_shared::telemetry::rename(span, name);
    }
}

/// Marks the request's `span` as failed with `kind` (the gateway's error kind) and `status`.
pub fn failed(span: &Span, kind: &str, status: u16) {
    if enabled() {
        span.record("error.type", kind);
        span.record("http.response.status_code", status);
        span.record("otel.status_code", "ERROR");
    }
}

/// An attempt's end: its status, and its error kind when it failed.
pub fn attempt_ended(span: &Span, status: u16, error: Option<&str>) {
    if enabled() {
        span.record("http.response.status_code", status);
        if let Some(kind) = error {
            span.record("error.type", kind);
            span.record("otel.status_code", "ERROR");
        }
    }
}

/// The `traceparent` to send upstream (the current attempt's), recording the upstream's host
/// as `server.address` on it. `None` when trace export is off.
pub fn upstream_call(host: &http::HeaderValue) -> Option<http::HeaderValue> {
    if !enabled() {
        return None;
    }
    if let Ok(host) = host.to_str() {
        Span::current().record("server.address", host);
    }
    current_traceparent().and_then(|t| http::HeaderValue::from_str(&t).ok())
}

/// Whether [`finished`] would record a request's usage on `span` (export is on and the
/// request's trace is sampled).
pub fn reads_usage(span: &Span) -> bool {
    enabled() && !span.is_disabled()
}

/// The request's outcome on its span: usage, cost, deployment, statuses.
pub fn finished(
    span: &Span,
    r: &UsageRecord,
    provider: Option<&str>,
    response_model: Option<&str>,
) {
    if !reads_usage(span) {
        return;
    }
    span.record("gen_ai.usage.input_tokens", r.usage.prompt_tokens);
    span.record("gen_ai.usage.output_tokens", r.usage.completion_tokens);
    span.record("switchboard.cache_read_tokens", r.usage.cached_read_tokens);
    span.record(
        "switchboard.cache_creation_tokens",
        r.usage.cache_creation_tokens,
    );
    span.record("switchboard.cost_usd", r.cost_usd);
    span.record("switchboard.attempts", r.attempts);
    span.record("switchboard.outcome", r.outcome.as_str());
    span.record("http.response.status_code", r.status);
    if let Some(d) = &r.deployment_id {
        span.record("switchboard.deployment", d.as_str());
    }
    if let Some(p) = provider {
        span.record("gen_ai.provider.name", p);
    }
    if let Some(m) = response_model {
        span.record("gen_ai.response.model", m);
    }
    if let Some(t) = r.ttft_ms {
        span.record("switchboard.ttft_ms", t);
    }
    if let Some(kind) = &r.error_kind {
        span.record("error.type", kind.as_str());
        span.record("otel.status_code", "ERROR");
    }
}
