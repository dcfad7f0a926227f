//! Forwarding: attempts, retries, fallbacks and cooldowns — the one place retries live.
//!
//! A request's model gives an ordered list of deployments ([`crate::routing`]); its policy gives
//! how many attempts it may spend on them (`1 + retries`) and which models to fall back to,
//! each with its own policy, when they are spent. Before each attempt the deployment must not
//! be cooling down and must fit within its own rate limits; otherwise it is skipped.
//!
//! An attempt counts as *failed* — and the next one is tried — on a connect error, a timeout, a
//! 429, a 5xx, a credential rejection, or a 2xx whose body is broken. The commit point is the
//! first body bytes: a non-streamed answer is read whole before anything is sent, and a stream
//! is committed once its first bytes have arrived. After that, nothing is retried.
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
use crate::limits::Limiter;
use crate::metrics::{self, AttemptResult};
use crate::providers::{Endpoint, SendError, UpstreamBody, UpstreamRequest, Verdict};
use crate::relay::SseRelay;
use crate::request::RequestView;
use crate::routing::attempt_order;

/// Largest upstream error body relayed to a client; longer ones are cut.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// A request ready to be forwarded.
#[derive(Debug)]
pub struct Forward<'a> {
    pub catalog: &'a Catalog,
    pub model: &'a Arc<ModelEntry>,
    pub view: &'a RequestView,
    pub endpoint: Endpoint,
    pub limiter: &'a Limiter,
    pub estimated_tokens: u64,
}

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
pub async fn forward(f: Forward<'_>, mut ledger: Ledger) -> Response {
    let fallbacks = f
        .model
        .policy
        .fallbacks
        .iter()
        .filter_map(|name| f.catalog.model(name));
    let mut last_error: Option<ApiError> = None;
    let mut soonest_back: Option<Duration> = None;

    for model in std::iter::once(f.model).chain(fallbacks) {
        let order = attempt_order(model);
        let mut cursor = 0usize;
        let mut previous: Option<usize> = None;
        let mut failures_in_a_row = 0u32;
        for _ in 0..=model.policy.retries {
            let Some(index) = next_available(
                f.limiter,
                model,
                &order,
                &mut cursor,
                &mut soonest_back,
                f.estimated_tokens,
            )
            .await
            else {
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
            match attempt(
                deployment,
                &model.policy,
                f.view,
                f.endpoint,
                &ledger.request_id,
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
                    ledger.first_byte();
                    let strip = !f.view.client_wants_usage;
                    let relay = SseRelay::new(body, first, strip, ledger, deadline);
                    return stream_response(relay);
                }
                Attempt::Failed(error) => {
                    // Give back the deployment's token estimate: nothing was generated.
                    f.limiter
                        .settle(&[deployment.subject()], f.estimated_tokens, 0);
                    failures_in_a_row += 1;
                    last_error = Some(error);
                }
            }
        }
    }

    let error = last_error.unwrap_or_else(|| ApiError::NoDeploymentAvailable {
        model: f.model.name.clone(),
        retry_after: soonest_back,
    });
    ledger.close(Outcome::UpstreamError, error.status(), None);
    axum::response::IntoResponse::into_response(error)
}

/// The next deployment in `order` (from `cursor`, wrapping) that is not cooling down and fits
/// its limits. Remembers the soonest moment a skipped one comes back.
async fn next_available(
    limiter: &Limiter,
    model: &ModelEntry,
    order: &[usize],
    cursor: &mut usize,
    soonest_back: &mut Option<Duration>,
    estimated_tokens: u64,
) -> Option<usize> {
    for _ in 0..order.len() {
        let index = order[*cursor % order.len()];
        *cursor += 1;
        let deployment = &model.deployments[index];
        if let Some(left) = deployment.health.cooling_for() {
            *soonest_back = Some(soonest_back.map_or(left, |s| s.min(left)));
            continue;
        }
        if !deployment.limits.is_unlimited()
            && let Err(denial) = limiter
                .admit(&[deployment.subject()], estimated_tokens)
                .await
        {
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

/// A failure that counts against the deployment's health.
fn failed(
    deployment: &DeploymentEntry,
    policy: &ModelPolicy,
    result: AttemptResult,
    error: ApiError,
) -> Attempt {
    count_attempt(deployment, result);
    if deployment.health.record_failure(&policy.cooldown) {
        cooled(deployment);
    }
    Attempt::Failed(error)
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
) -> Attempt {
    let started = Instant::now();
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

    match deployment
        .adaptor
        .classify(response.status, &response.headers)
    {
        Verdict::Success => {}
        Verdict::RateLimited { retry_after } => {
            count_attempt(deployment, AttemptResult::RateLimited);
            let period = retry_after.unwrap_or(Duration::from_secs(policy.cooldown.seconds));
            deployment.health.cool_down(period);
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
            tracing::error!(
                deployment = %deployment.id,
                provider = %deployment.provider_id,
                status = response.status.as_u16(),
                "the upstream rejected the gateway's credential; taking the deployment out"
            );
            deployment
                .health
                .cool_down(Duration::from_secs(policy.cooldown.seconds));
            cooled(deployment);
            return Attempt::Failed(ApiError::UpstreamFailed {
                reason: "it rejected the gateway's credentials",
            });
        }
        Verdict::ClientError => {
            count_attempt(deployment, AttemptResult::ClientError);
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
                count_attempt(deployment, AttemptResult::Ok);
                deployment.health.record_success();
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
            count_attempt(deployment, AttemptResult::Ok);
            deployment.health.record_success();
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
