//! Forwarding: attempts, retries, fallbacks and circuit breakers — the one place retries live.
//!
//! A request's model gives an ordered list of deployments ([`crate::routing`]); its policy gives
//! how many attempts it may spend on them (`1 + retries`) and which models to fall back to,
//! each with its own policy, when they are spent. Before each attempt the deployment's breaker
//! must let it through ([`crate::fleet::Gate`]) and it must fit within its own rate limits;
//! otherwise it is skipped. When every candidate is cooling down, the request waits for the
//! first one to come back if that is within the policy's `wait_for_cooldown_ms`, instead of
//! failing at once.
//!
//! Failures are classified:
//! - retryable, counted against the deployment's breaker: connect errors, resets, timeouts,
//!   5xx and 408, a 2xx whose body is broken;
//! - 429: the breaker opens at once for the upstream's `Retry-After` (or the cooldown), and the
//!   next deployment is tried;
//! - 401/403: our credential is bad: the deployment is taken out for
//!   [`CREDENTIAL_REJECTED_OUT`], an error is logged once per episode, and it is not retried;
//! - the request's own fault (400 context length or content filter, 404 model, 422): relayed to
//!   the client as is, never retried — another deployment would refuse it too.
//!
//! The commit point is the first body bytes: a non-streamed answer is read whole before
//! anything is sent, and a stream is committed once its first bytes have arrived. After that,
//! nothing is retried.
//!
//! Timeouts per attempt: `first_byte_ms` from sending until the head and first body bytes,
//! `total_ms` for the whole attempt including the stream. The connect timeout is the HTTP
//! client's.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, StatusCode};
use http_body_util::BodyExt;
use switchboard_shared::snapshot::ModelPolicy;
use switchboard_shared::usage::{Outcome, Usage};
use tokio::time::{Instant, timeout_at};

use crate::accounting::{Ledger, usage_from_body};
use crate::catalog::{Catalog, DeploymentEntry, ModelEntry};
use crate::error::ApiError;
use crate::fleet::prefix::block_keys;
use crate::fleet::{Gate, InFlight, unix_ms};
use crate::limits::Limiter;
use crate::metrics::{self, AttemptResult};
use crate::providers::{Endpoint, SendError, UpstreamBody, UpstreamRequest, Verdict};
use crate::relay::SseRelay;
use crate::request::RequestView;
use crate::routing::{RouteInput, attempt_order, describe, signals};
use crate::selectors::{Exclusion, Selection, unix_seconds};
use switchboard_shared::snapshot::VirtualKey;

/// Largest upstream error body relayed to a client; longer ones are cut.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// How long a deployment whose upstream refuses our credential stays out before one probe
/// checks whether the credential works again.
pub const CREDENTIAL_REJECTED_OUT: Duration = Duration::from_secs(300);

/// A request ready to be forwarded.
#[derive(Debug)]
pub struct Forward<'a> {
    pub catalog: &'a Catalog,
    pub model: &'a Arc<ModelEntry>,
    pub view: &'a RequestView,
    pub endpoint: Endpoint,
    pub limiter: &'a Limiter,
    pub estimated_tokens: u64,
    /// Tags, capabilities and session that narrow the deployments.
    pub selection: &'a Selection,
    pub key: &'a VirtualKey,
    /// Answer with [`EXPLAIN_RESPONSE_HEADER`].
    pub explain: bool,
}

/// Request header asking for the routing decision in the answer.
pub const EXPLAIN_REQUEST_HEADER: &str = "x-switchboard-explain";
/// Response header with the routing decision: per model tried, the strategy, the order with
/// each candidate's signals (see [`crate::routing::describe`]), the deployments left out and
/// why, and whether a session's deployment was kept.
pub const EXPLAIN_RESPONSE_HEADER: &str = "x-switchboard-route";

/// What one attempt produced.
enum Attempt {
    /// A complete answer to relay: success, or the upstream's refusal of the request itself.
    Complete {
        status: StatusCode,
        content_type: Option<HeaderValue>,
        body: Bytes,
        usage: Option<Usage>,
    },
    /// A stream whose first bytes have arrived.
    Stream {
        body: UpstreamBody,
        first: Bytes,
        deadline: Instant,
    },
    /// Nothing usable; try the next deployment.
    Failed(ApiError),
}

/// Forwards the request, trying deployments and fallbacks in turn, and closes the ledger (or
/// hands it to the streaming body).
pub async fn forward(f: Forward<'_>, ledger: Ledger) -> Response {
    let mut explain = (f.explain || tracing::enabled!(tracing::Level::DEBUG)).then(String::new);
    let mut response = forward_inner(&f, ledger, &mut explain).await;
    if let Some(text) = explain {
        tracing::debug!(route = %text, "routing decision");
        if f.explain
            && let Ok(value) = HeaderValue::from_str(&text)
        {
            response
                .headers_mut()
                .insert(EXPLAIN_RESPONSE_HEADER, value);
        }
    }
    response
}

/// Orders a model's deployments and leaves out those the selection excludes; puts a session's
/// deployment first while its breaker is closed.
fn candidates(
    f: &Forward<'_>,
    model: &ModelEntry,
    input: &RouteInput<'_>,
    explain: &mut Option<String>,
    excluded: &mut Option<Exclusion>,
) -> Vec<usize> {
    let decided = std::time::Instant::now();
    let mut order = attempt_order(model, input);
    let mut left_out = String::new();
    order.retain(|&i| match f.selection.check(&model.deployments[i], f.key) {
        Ok(()) => true,
        Err(why) => {
            excluded.get_or_insert(why);
            if explain.is_some() {
                left_out.push_str(&format!(" -{}:{}", model.deployments[i].id, why.as_str()));
            }
            false
        }
    });
    let mut kept = false;
    if let Some(session) = f.selection.session
        && let Some(i) = model.affinity.get(session, unix_seconds(input.now_ms))
        && let Some(pos) = order.iter().position(|&o| o == i)
        && !model.deployments[i].state.breaker.is_open()
    {
        order[..=pos].rotate_right(1);
        kept = true;
    }
    metrics::record_routing_decision(decided.elapsed().as_secs_f64());
    if let Some(text) = explain.as_mut() {
        let ids: Vec<String> = order
            .iter()
            .map(|&i| {
                let d = &model.deployments[i];
                format!("{}{}", d.id, describe(&signals(d, input)))
            })
            .collect();
        let strategy = serde_json::to_value(model.policy.strategy)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        if !text.is_empty() {
            text.push_str("; ");
        }
        text.push_str(&format!(
            "{}: {strategy} [{}]{}{left_out}",
            model.name,
            ids.join(","),
            if kept { " session" } else { "" }
        ));
    }
    order
}

async fn forward_inner(
    f: &Forward<'_>,
    mut ledger: Ledger,
    explain: &mut Option<String>,
) -> Response {
    let fallbacks = f
        .model
        .policy
        .fallbacks
        .iter()
        .filter_map(|name| f.catalog.model(name));
    let mut last_error: Option<ApiError> = None;
    let mut soonest_back: Option<Duration> = None;
    let mut excluded: Option<Exclusion> = None;
    let base_input = RouteInput {
        stream: f.view.stream,
        prompt_tokens: f.view.estimated_prompt_tokens(),
        max_tokens: f.view.max_tokens,
        now_ms: unix_ms(),
        prefix_keys: &[],
    };

    for model in std::iter::once(f.model).chain(fallbacks) {
        let prefix_keys = match &model.prefix {
            Some(_) => {
                let block = model.policy.prefix_affinity.unwrap_or_default().block_bytes;
                block_keys(f.view.prompt_bytes(), block as usize)
            }
            None => Vec::new(),
        };
        let input = RouteInput {
            prefix_keys: &prefix_keys,
            ..base_input
        };
        let order = candidates(f, model, &input, explain, &mut excluded);
        let mut cursor = 0usize;
        let mut previous: Option<usize> = None;
        let mut failures_in_a_row = 0u32;
        let mut may_wait = Duration::from_millis(model.policy.wait_for_cooldown_ms);
        for _ in 0..=model.policy.retries {
            let index = loop {
                let mut back: Option<Duration> = None;
                let found = next_available(
                    f.limiter,
                    model,
                    &order,
                    &mut cursor,
                    &mut back,
                    f.estimated_tokens,
                )
                .await;
                if let Some(b) = back {
                    soonest_back = Some(soonest_back.map_or(b, |s| s.min(b)));
                }
                match (found, back) {
                    (Some(index), _) => break Some(index),
                    // Every candidate is cooling down: wait for the first one back if the
                    // policy allows, once per model.
                    (None, Some(back)) if back <= may_wait => {
                        let pause = back + Duration::from_millis(fastrand::u64(0..=25));
                        may_wait = Duration::ZERO;
                        tokio::time::sleep(pause).await;
                    }
                    (None, _) => break None,
                }
            };
            let Some(index) = index else {
                break;
            };
            let deployment = &model.deployments[index];
            if previous == Some(index) {
                // Retrying the one deployment left: back off, with jitter.
                tokio::time::sleep(backoff(failures_in_a_row)).await;
            }
            previous = Some(index);
            ledger.attempts += 1;
            ledger.deployment = Some(Arc::clone(deployment));
            ledger.inflight = Some(InFlight::new(Arc::clone(&deployment.state)));
            match attempt(
                deployment,
                &model.policy,
                f.view,
                f.endpoint,
                &ledger.request_id,
                ledger.webhooks(),
            )
            .await
            {
                Attempt::Complete {
                    status,
                    content_type,
                    body,
                    usage,
                } => {
                    let outcome = if status.is_success() {
                        remember_choice(f, model, index, &input);
                        Outcome::Success
                    } else {
                        Outcome::UpstreamError
                    };
                    ledger.first_byte();
                    ledger.close(outcome, status, usage);
                    return complete_response(status, content_type, body);
                }
                Attempt::Stream {
                    body,
                    first,
                    deadline,
                } => {
                    remember_choice(f, model, index, &input);
                    ledger.first_byte();
                    let strip = !f.view.client_wants_usage;
                    let relay = SseRelay::new(body, first, strip, ledger, deadline);
                    return stream_response(relay);
                }
                Attempt::Failed(error) => {
                    ledger.inflight = None;
                    // Give back the deployment's token estimate: nothing was generated.
                    f.limiter
                        .settle(&[deployment.subject()], f.estimated_tokens, 0);
                    failures_in_a_row += 1;
                    last_error = Some(error);
                }
            }
        }
    }

    let error = match (last_error, excluded) {
        (Some(e), _) => e,
        // Nothing was tried and nothing is cooling down: the selection left no deployment.
        (None, Some(why)) if soonest_back.is_none() => {
            ApiError::bad_request(why.message(&f.model.name), Some("model"))
        }
        (None, _) => ApiError::NoDeploymentAvailable {
            model: f.model.name.clone(),
            retry_after: soonest_back,
        },
    };
    ledger.close(Outcome::UpstreamError, error.status(), None);
    axum::response::IntoResponse::into_response(error)
}

/// Keeps the session (and the prompt's prefix) on the deployment that answered.
fn remember_choice(f: &Forward<'_>, model: &ModelEntry, index: usize, input: &RouteInput<'_>) {
    if let Some(prefix) = &model.prefix {
        prefix.record(input.prefix_keys, index);
    }
    if let Some(session) = f.selection.session {
        model
            .affinity
            .set(session, index, unix_seconds(input.now_ms));
    }
}

/// The next deployment in `order` (from `cursor`, wrapping) whose breaker lets it through and
/// that fits its limits. Remembers the soonest moment a skipped one comes back.
async fn next_available(
    limiter: &Limiter,
    model: &ModelEntry,
    order: &[usize],
    cursor: &mut usize,
    soonest_back: &mut Option<Duration>,
    estimated_tokens: u64,
) -> Option<usize> {
    let now = unix_ms();
    for _ in 0..order.len() {
        let index = order[*cursor % order.len()];
        *cursor += 1;
        let deployment = &model.deployments[index];
        let gate = deployment.state.breaker.gate(now);
        if let Gate::Open { back_in } = gate {
            *soonest_back = Some(soonest_back.map_or(back_in, |s| s.min(back_in)));
            continue;
        }
        if !deployment.limits.is_unlimited()
            && let Err(denial) = limiter
                .admit(&[deployment.subject()], estimated_tokens)
                .await
        {
            if gate == Gate::Probe {
                deployment.state.breaker.release_probe();
            }
            let left = denial.retry_after();
            *soonest_back = Some(soonest_back.map_or(left, |s| s.min(left)));
            continue;
        }
        return Some(index);
    }
    None
}

/// 50 ms doubling per failure up to 2 s, then scaled by a random factor in [0.5, 1).
fn backoff(failures: u32) -> Duration {
    let base = Duration::from_millis(50).saturating_mul(1 << failures.min(6));
    base.min(Duration::from_secs(2))
        .mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// Counts an attempt's result by provider kind.
fn count_attempt(deployment: &DeploymentEntry, result: AttemptResult) {
    metrics::count_attempt(deployment.provider_kind, result);
}

/// A failure that counts against the deployment's breaker.
fn failed(
    deployment: &DeploymentEntry,
    policy: &ModelPolicy,
    result: AttemptResult,
    error: ApiError,
) -> Attempt {
    count_attempt(deployment, result);
    deployment.state.load.record_failure(unix_ms());
    if deployment.state.breaker.record_failure(&policy.cooldown) {
        cooled(deployment);
    }
    Attempt::Failed(error)
}

/// A success: closes a half-open breaker, and feeds the latency averages.
fn succeeded(deployment: &DeploymentEntry, started: Instant, streamed: bool) {
    count_attempt(deployment, AttemptResult::Ok);
    let state = &deployment.state;
    state.breaker.record_success();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    let now = unix_ms();
    if streamed {
        state.load.record_ttft(ms, now);
    } else {
        state.load.record_latency(ms, now);
    }
}

fn cooled(deployment: &DeploymentEntry) {
    metrics::count_cooldown(&deployment.id);
    tracing::warn!(deployment = %deployment.id, "deployment cooling down");
}

async fn attempt(
    deployment: &DeploymentEntry,
    policy: &ModelPolicy,
    view: &RequestView,
    endpoint: Endpoint,
    request_id: &str,
    webhooks: &crate::webhooks::Webhooks,
) -> Attempt {
    let started = Instant::now();
    deployment.state.load.record_request(unix_ms());
    let first_byte_deadline = started + Duration::from_millis(policy.timeouts.first_byte_ms);
    let deadline = started + Duration::from_millis(policy.timeouts.total_ms);
    let request = UpstreamRequest {
        endpoint,
        view,
        upstream_model_json: &deployment.upstream_model_json,
        upstream_model: &deployment.upstream_model,
        request_id,
    };

    let response = match timeout_at(first_byte_deadline, deployment.adaptor.send(&request)).await {
        Err(_) => {
            return failed(
                deployment,
                policy,
                AttemptResult::Timeout,
                ApiError::UpstreamTimeout,
            );
        }
        Ok(Err(SendError::Connect)) => {
            return failed(
                deployment,
                policy,
                AttemptResult::ConnectError,
                ApiError::UpstreamFailed {
                    reason: "could not connect",
                },
            );
        }
        Ok(Err(SendError::Transport)) => {
            return failed(
                deployment,
                policy,
                AttemptResult::TransportError,
                ApiError::UpstreamFailed {
                    reason: "the connection broke before an answer",
                },
            );
        }
        Ok(Ok(response)) => response,
    };

    let verdict = deployment
        .adaptor
        .classify(response.status, &response.headers);
    if matches!(verdict, Verdict::Success | Verdict::RateLimited { .. })
        && let Some(reading) = deployment.adaptor.rate_limits(&response.headers)
    {
        deployment.state.quota.record(&reading, unix_ms());
    }
    match verdict {
        Verdict::Success => {}
        Verdict::RateLimited { retry_after } => {
            count_attempt(deployment, AttemptResult::RateLimited);
            deployment.state.load.record_failure(unix_ms());
            let period = retry_after.unwrap_or(Duration::from_secs(policy.cooldown.seconds));
            deployment.state.breaker.open(period);
            cooled(deployment);
            return Attempt::Failed(ApiError::UpstreamRateLimited { retry_after });
        }
        Verdict::Failed => {
            return failed(
                deployment,
                policy,
                AttemptResult::ServerError,
                ApiError::UpstreamFailed {
                    reason: "it answered with a server error",
                },
            );
        }
        Verdict::CredentialRejected => {
            count_attempt(deployment, AttemptResult::CredentialRejected);
            let breaker = &deployment.state.breaker;
            breaker.open(CREDENTIAL_REJECTED_OUT);
            if breaker.first_alert() {
                tracing::error!(
                    deployment = %deployment.id,
                    provider = %deployment.provider_id,
                    status = response.status.as_u16(),
                    out_seconds = CREDENTIAL_REJECTED_OUT.as_secs(),
                    "the upstream rejected the gateway's credential; taking the deployment out"
                );
                webhooks.send(crate::webhooks::Event {
                    kind: "upstream.credential_rejected",
                    at: chrono::Utc::now(),
                    scope: "deployment",
                    id: deployment.id.clone(),
                    spent_usd: None,
                    limit_usd: None,
                    provider: Some(deployment.provider_id.clone()),
                    status: Some(response.status.as_u16()),
                });
                cooled(deployment);
            }
            return Attempt::Failed(ApiError::UpstreamFailed {
                reason: "it rejected the gateway's credentials",
            });
        }
        Verdict::ClientError => {
            count_attempt(deployment, AttemptResult::ClientError);
            // Not the deployment's fault: if this was the probe, let another request probe.
            deployment.state.breaker.release_probe();
            let content_type = response.headers.get(CONTENT_TYPE).cloned();
            let body = match timeout_at(
                deadline,
                http_body_util::Limited::new(response.body, MAX_ERROR_BODY_BYTES).collect(),
            )
            .await
            {
                Ok(Ok(collected)) => collected.to_bytes(),
                _ => Bytes::new(),
            };
            if body.is_empty() {
                return Attempt::Failed(ApiError::UpstreamRejected {
                    status: response.status,
                });
            }
            return Attempt::Complete {
                status: response.status,
                content_type,
                body,
                usage: None,
            };
        }
    }

    let is_event_stream = response
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut body = response.body;

    if view.stream && is_event_stream {
        return match timeout_at(first_byte_deadline, first_data(&mut body)).await {
            Err(_) => failed(
                deployment,
                policy,
                AttemptResult::Timeout,
                ApiError::UpstreamTimeout,
            ),
            Ok(Some(first)) => {
                succeeded(deployment, started, true);
                Attempt::Stream {
                    body,
                    first,
                    deadline,
                }
            }
            Ok(None) => failed(
                deployment,
                policy,
                AttemptResult::BrokenBody,
                ApiError::UpstreamFailed {
                    reason: "its stream ended before any data",
                },
            ),
        };
    }

    let content_type = response.headers.get(CONTENT_TYPE).cloned();
    let bytes = match timeout_at(deadline, body.collect()).await {
        Err(_) => {
            return failed(
                deployment,
                policy,
                AttemptResult::Timeout,
                ApiError::UpstreamTimeout,
            );
        }
        Ok(Err(_)) => {
            return failed(
                deployment,
                policy,
                AttemptResult::BrokenBody,
                ApiError::UpstreamFailed {
                    reason: "the connection broke mid-answer",
                },
            );
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    match usage_from_body(&bytes) {
        Ok(usage) => {
            succeeded(deployment, started, false);
            Attempt::Complete {
                status: StatusCode::OK,
                content_type,
                body: bytes,
                usage,
            }
        }
        Err(_) => failed(
            deployment,
            policy,
            AttemptResult::Malformed,
            ApiError::UpstreamFailed {
                reason: "its answer was not valid JSON",
            },
        ),
    }
}

/// The first non-empty data frame, or `None` if the body ends or fails first.
async fn first_data(body: &mut UpstreamBody) -> Option<Bytes> {
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data()
                    && !data.is_empty()
                {
                    return Some(data);
                }
            }
            Some(Err(_)) | None => return None,
        }
    }
}

fn complete_response(
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Bytes,
) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        content_type.unwrap_or(HeaderValue::from_static("application/json")),
    );
    response
}

fn stream_response(relay: SseRelay) -> Response {
    let mut response = Response::new(Body::from_stream(relay));
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
