//! Forwarding: attempts, retries, fallbacks and circuit breakers — the one place retries live.
//!
//! A request's model gives an ordered list of deployments ([`crate::routing`]); its policy gives
//! how many attempts it may spend on them (`1 + retries`) and which models to fall back to,
//! each with its own policy, when they are spent. Before each attempt the deployment's breaker
//! must let it through ([`crate::fleet::Gate`]) and it must fit within its own rate limits
//! (charged through the request's [`crate::quota::Ticket`], which its ledger holds);
//! otherwise it is skipped. When every candidate is cooling down, the request waits for the
//! first one to come back if that is within the policy's `wait_for_cooldown_ms`, instead of
//! failing at once.
//!
//! The loop reads the request from its [`RequestContext`] (borrowed) and reports to two owners:
//! each attempt's outcome to the deployment's state ([`crate::fleet::DeploymentState::record`],
//! which updates breaker, load, latency and upstream quota) and the request's progress to its
//! [`Ledger`] (attempt began, attempt failed, answered, gave up).
//!
//! Failures are classified:
//! - retryable, counted against the deployment's breaker: connect errors, resets, timeouts,
//!   5xx and 408, a 2xx whose body is broken;
//! - 429: the breaker opens at once for the upstream's `Retry-After` (or the cooldown), and the
//!   next deployment is tried;
//! - 401/403, and refusals whose body says they last (Gemini's `API_KEY_INVALID`, a 404 for
//!   the model, OpenAI's 429 `insufficient_quota`; [`crate::providers::permanent_error`]):
//!   the deployment is taken out for [`CREDENTIAL_REJECTED_OUT`], an error is logged and a
//!   webhook sent once per episode, the error is kept for the health API, and the next
//!   deployment is tried;
//! - the request's own fault (400 context length or content filter, 404 model, 422): relayed to
//!   the client as is, never retried — another deployment would refuse it too.
//!
//! The commit point is the first body bytes: a non-streamed answer is read whole before
//! anything is sent, and a stream is committed once its first complete event has arrived.
//! After that, nothing is retried.
//!
//! Timeouts per attempt: `first_byte_ms` from sending until the head and first body bytes,
//! `total_ms` for the whole attempt including the stream. The connect timeout is the HTTP
//! client's.

use std::ops::ControlFlow;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, StatusCode};
use http_body_util::BodyExt;
use switchboard_shared::snapshot::ModelPolicy;
use switchboard_shared::usage::{MediaUsage, Outcome, Usage};
use tokio::time::{Instant, timeout_at};
use tracing::Instrument;

use crate::accounting::{Ledger, usage_from_body};
use crate::catalog::{Catalog, DeploymentEntry, ModelEntry};
use crate::context::RequestContext;
use crate::error::ApiError;
use crate::fleet::prefix::block_keys;
use crate::fleet::{Gate, Outcome as HealthOutcome, Recorded, UpstreamRateLimits, unix_ms};
use crate::metrics::{self, AttemptResult};
use crate::providers::translate::responses_openai::NATIVE_TAG as RESPONSES_TAG;
use crate::providers::{
    BodyError, Endpoint, SendError, UpstreamBody, UpstreamRequest, UpstreamResponse, Verdict,
};
use crate::relay::SseRelay;
use crate::request::RequestView;
use crate::routing::{RouteInput, attempt_order, describe, signals};
use crate::selectors::{Exclusion, unix_seconds};

/// Why an attempt failed whose upstream passed one of the size caps
/// ([`crate::providers::UpstreamCaps`]).
const TOO_LARGE: &str = "its answer was larger than the gateway accepts";

/// Largest upstream error body relayed to a client; longer ones are cut.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// How long the body of a 429 or 401/403 is waited for, to read whether the failure lasts.
const VERDICT_BODY_WAIT: Duration = Duration::from_secs(2);

/// How long a deployment whose upstream refuses our credential stays out before one probe
/// checks whether the credential works again.
pub const CREDENTIAL_REJECTED_OUT: Duration = Duration::from_secs(300);

/// Request header asking for the routing decision in the answer.
pub const EXPLAIN_REQUEST_HEADER: http::HeaderName =
    http::HeaderName::from_static("x-switchboard-explain");
/// Response header with the routing decision: the content rule that chose the model, if one
/// did; per model tried, the strategy, the order with each candidate's signals (see
/// [`crate::routing::describe`]), the deployments left out and why, whether a session's
/// deployment was kept, and the transforms each candidate's body gets.
pub const EXPLAIN_RESPONSE_HEADER: &str = "x-switchboard-route";

/// What one attempt produced.
enum Attempt {
    /// A complete answer to relay: success, or the upstream's refusal of the request itself.
    Complete {
        status: StatusCode,
        content_type: Option<HeaderValue>,
        body: Bytes,
        usage: Option<Usage>,
        /// What an image or transcription answer says it produced.
        media: Option<MediaUsage>,
    },
    /// A binary answer (speech audio) to relay as it arrives.
    Audio {
        body: UpstreamBody,
        content_type: Option<HeaderValue>,
        deadline: Instant,
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

/// Forwards the request, trying deployments and fallbacks (found in `catalog`) in turn, and
/// closes the ledger (or hands it to the streaming body).
pub async fn forward(catalog: &Catalog, request: &RequestContext, ledger: Ledger) -> Response {
    let mut explain = (request.explain || tracing::enabled!(tracing::Level::DEBUG))
        .then(|| request.selection.rule.clone().unwrap_or_default());
    let mut response = forward_inner(catalog, request, ledger, &mut explain).await;
    if let Some(text) = explain {
        tracing::debug!(route = %text, "routing decision");
        if request.explain
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
    request: &RequestContext,
    model: &ModelEntry,
    input: &RouteInput<'_>,
    explain: &mut Option<String>,
    tries: &mut Tries,
) -> Vec<usize> {
    let decided = std::time::Instant::now();
    let ranked = attempt_order(model, input);
    let mut order = ranked.clone();
    let mut left_out = String::new();
    let selection = &request.selection;
    order.retain(
        |&i| match selection.check(&model.deployments[i], &request.facts.key.key) {
            Ok(()) => true,
            Err(why) => {
                tries.excluded.get_or_insert(why);
                // A deployment of a model the key may not use is not shown at all.
                if explain.is_some() && why != Exclusion::NotAllowed {
                    left_out.push_str(&format!(" -{}:{}", model.deployments[i].id, why.as_str()));
                }
                false
            }
        },
    );
    if order.is_empty()
        && let Some(fallback) = selection.default_tag_fallback()
    {
        // No deployment has the tags asked for: those tagged `default` serve instead.
        order = ranked;
        order.retain(|&i| {
            fallback
                .check(&model.deployments[i], &request.facts.key.key)
                .is_ok()
        });
        if !order.is_empty() {
            left_out.push_str(" tags:default");
        }
    }
    leave_out_capped(model, &mut order, &mut left_out, tries);
    let mut kept = false;
    if let Some(session) = selection.session
        && let Some(i) = model.affinity.get(session, unix_seconds(input.now_ms))
        && let Some(pos) = order.iter().position(|&o| o == i)
        && !model.deployments[i].state.is_open()
    {
        order[..=pos].rotate_right(1);
        kept = true;
    }
    metrics::record_routing_decision(decided.elapsed().as_secs_f64());
    if let Some(text) = explain.as_mut() {
        explain_order(text, model, &order, input, &left_out, kept);
    }
    order
}

/// Leaves out the deployments whose spend cap or request quota is used up
/// ([`crate::caps`]), noting `-id:cap:<which>` for the explain header and when they come back.
fn leave_out_capped(
    model: &ModelEntry,
    order: &mut Vec<usize>,
    left_out: &mut String,
    tries: &mut Tries,
) {
    if model.deployments.iter().all(|d| d.caps.is_none()) {
        return;
    }
    let now = chrono::Utc::now();
    order.retain(|&i| {
        let d = &model.deployments[i];
        let Some(out) = d.caps.as_ref().and_then(|c| d.state.caps.exhausted(c, now)) else {
            return true;
        };
        tries.back_in(out.resets_in);
        left_out.push_str(&format!(" -{}:cap:{}", d.id, out.cap));
        false
    });
}

/// Appends one model's part of the routing decision to `text`.
fn explain_order(
    text: &mut String,
    model: &ModelEntry,
    order: &[usize],
    input: &RouteInput<'_>,
    left_out: &str,
    kept: bool,
) {
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
    for &i in order {
        let d = &model.deployments[i];
        let mut names = model.policy.transforms.names();
        names.extend(d.transforms.names());
        if !names.is_empty() {
            text.push_str(&format!(" transform:{}={}", d.id, names.join("+")));
        }
    }
}

/// What the attempts on all models so far have left, for the error when none answers.
#[derive(Default)]
struct Tries {
    last_error: Option<ApiError>,
    /// The soonest a skipped deployment comes back.
    soonest_back: Option<Duration>,
    /// Why the selection left a deployment out (the first reason found).
    excluded: Option<Exclusion>,
    /// A deployment skipped because its concurrency limit was full: id and limit.
    full: Option<(String, u32)>,
}

impl Tries {
    fn back_in(&mut self, back: Duration) {
        self.soonest_back = Some(self.soonest_back.map_or(back, |s| s.min(back)));
    }

    /// The error to answer with when no deployment answered.
    fn into_error(self, model: &str) -> ApiError {
        match (self.last_error, self.excluded) {
            (Some(e), _) => e,
            (None, _) if let Some((id, limit)) = self.full => {
                crate::quota::concurrency_limited("deployment", &id, limit)
            }
            // Nothing was tried and nothing is cooling down: the selection left no deployment.
            (None, Some(why)) if self.soonest_back.is_none() => {
                ApiError::bad_request(why.message(model), Some("model"))
            }
            (None, _) => ApiError::NoDeploymentAvailable {
                model: model.to_owned(),
                retry_after: self.soonest_back,
            },
        }
    }
}

async fn forward_inner(
    catalog: &Catalog,
    request: &RequestContext,
    mut ledger: Ledger,
    explain: &mut Option<String>,
) -> Response {
    let fallbacks =
        crate::selectors::fallbacks(catalog, &request.facts.key.key, &request.facts.model);
    let mut tries = Tries::default();
    let wait = Duration::from_millis(request.facts.model.policy.concurrency_wait_ms);
    if let Err(error) = ledger.take_slots(wait).await {
        ledger.gave_up(&error);
        return axum::response::IntoResponse::into_response(error);
    }
    let base_input = RouteInput {
        stream: request.view.stream,
        prompt_tokens: request.facts.prompt_estimate,
        max_tokens: request.view.max_tokens,
        now_ms: unix_ms(),
        prefix_keys: &[],
    };
    for model in std::iter::once(&request.facts.model).chain(fallbacks) {
        let prefix_keys = match &model.prefix {
            Some(_) => {
                let block = model.policy.prefix_affinity.unwrap_or_default().block_bytes;
                let tenant = &request.facts.key.tenant.tenant.id;
                block_keys(tenant, request.view.prompt_bytes(), block as usize)
            }
            None => Vec::new(),
        };
        let input = RouteInput {
            prefix_keys: &prefix_keys,
            ..base_input
        };
        let route = crate::telemetry::route(ledger.trace());
        let order = route.in_scope(|| candidates(request, model, &input, explain, &mut tries));
        ledger = match try_model(request, model, &order, &input, ledger, &mut tries).await {
            ControlFlow::Break(response) => return response,
            ControlFlow::Continue(ledger) => ledger,
        };
    }
    let error = tries.into_error(&request.facts.model.name);
    ledger.gave_up(&error);
    axum::response::IntoResponse::into_response(error)
}

/// Spends one model's attempts (`1 + retries`) on its deployments in `order`. Breaks with
/// the answer, or continues with the ledger when none answered.
async fn try_model(
    request: &RequestContext,
    model: &ModelEntry,
    order: &[usize],
    input: &RouteInput<'_>,
    mut ledger: Ledger,
    tries: &mut Tries,
) -> ControlFlow<Response, Ledger> {
    let mut cursor = 0usize;
    let mut previous: Option<usize> = None;
    let mut failures_in_a_row = 0u32;
    let mut waits = Waits {
        cooldown: Duration::from_millis(model.policy.wait_for_cooldown_ms),
        slot_until: Instant::now() + Duration::from_millis(model.policy.concurrency_wait_ms),
    };
    for _ in 0..=model.policy.retries {
        let Some(index) = pick(&mut ledger, model, order, &mut cursor, &mut waits, tries).await
        else {
            break;
        };
        let deployment = &model.deployments[index];
        if previous == Some(index) {
            // Retrying the one deployment left: back off, with jitter.
            tokio::time::sleep(backoff(failures_in_a_row)).await;
        }
        previous = Some(index);
        ledger.attempt_began(deployment);
        let attempted = attempt(
            deployment,
            &model.policy,
            (&request.view, request.facts.media.as_ref()),
            request.facts.endpoint,
            ledger.request_id(),
            ledger.webhooks(),
        )
        .instrument(ledger.attempt_span())
        .await;
        match attempted {
            Attempt::Complete {
                status,
                content_type,
                body,
                usage,
                media,
            } => {
                if let Some(media) = media {
                    ledger.measured_media(media);
                }
                let outcome = if status.is_success() {
                    remember_choice(request, model, index, input);
                    Outcome::Success
                } else {
                    Outcome::UpstreamError
                };
                ledger.capture_answer(&body);
                ledger.answered(outcome, status, usage);
                return ControlFlow::Break(complete_response(status, content_type, body));
            }
            Attempt::Audio {
                body,
                content_type,
                deadline,
            } => {
                remember_choice(request, model, index, input);
                ledger.first_byte();
                let relay = crate::media::BinaryRelay::new(body, ledger, deadline);
                return ControlFlow::Break(audio_response(relay, content_type));
            }
            Attempt::Stream {
                body,
                first,
                deadline,
            } => {
                remember_choice(request, model, index, input);
                ledger.first_byte();
                return ControlFlow::Break(stream_response(SseRelay::new(
                    body, first, ledger, deadline,
                )));
            }
            Attempt::Failed(error) => {
                ledger.attempt_failed(&error);
                failures_in_a_row += 1;
                tries.last_error = Some(error);
            }
        }
    }
    ControlFlow::Continue(ledger)
}

/// How long one model's attempts may still wait for a deployment.
struct Waits {
    /// For a cooling deployment to come back (spent by the first wait).
    cooldown: Duration,
    /// For a concurrency slot to free up.
    slot_until: Instant,
}

/// The deployment for the next attempt; when every candidate is cooling down, waits for the
/// first one back if the policy allows, once per model (`waits.cooldown` is then spent); when
/// candidates are at their concurrency limit, tries again until `waits.slot_until`.
async fn pick(
    ledger: &mut Ledger,
    model: &ModelEntry,
    order: &[usize],
    cursor: &mut usize,
    waits: &mut Waits,
    tries: &mut Tries,
) -> Option<usize> {
    loop {
        let mut back: Option<Duration> = None;
        let mut full = None;
        let found = next_available(ledger, model, order, cursor, &mut back, &mut full).await;
        if let Some(b) = back {
            tries.back_in(b);
        }
        let any_full = full.is_some();
        if any_full {
            tries.full = full;
        }
        let now = Instant::now();
        match (found, back) {
            (Some(index), _) => return Some(index),
            (None, Some(back)) if back <= waits.cooldown => {
                let pause = back + Duration::from_millis(fastrand::u64(0..=25));
                waits.cooldown = Duration::ZERO;
                tokio::time::sleep(pause).await;
            }
            (None, _) if any_full && now < waits.slot_until => {
                let pause = Duration::from_millis(10 + fastrand::u64(0..20));
                tokio::time::sleep(pause.min(waits.slot_until - now)).await;
            }
            (None, _) => return None,
        }
    }
}

/// Keeps the session (and the prompt's prefix) on the deployment that answered.
fn remember_choice(
    request: &RequestContext,
    model: &ModelEntry,
    index: usize,
    input: &RouteInput<'_>,
) {
    if let Some(prefix) = &model.prefix {
        prefix.record(input.prefix_keys, index);
    }
    if let Some(session) = request.selection.session {
        model
            .affinity
            .set(session, index, unix_seconds(input.now_ms));
    }
}

/// The next deployment in `order` (from `cursor`, wrapping) whose breaker lets it through, that
/// has a free concurrency slot (taken, held by the ledger's ticket) and that fits its limits
/// (charged through the ticket). Remembers the soonest moment a skipped one comes back, and
/// the first one skipped for a full concurrency limit.
async fn next_available(
    ledger: &mut Ledger,
    model: &ModelEntry,
    order: &[usize],
    cursor: &mut usize,
    soonest_back: &mut Option<Duration>,
    full: &mut Option<(String, u32)>,
) -> Option<usize> {
    let now = unix_ms();
    for _ in 0..order.len() {
        let index = order[*cursor % order.len()];
        *cursor += 1;
        let deployment = &model.deployments[index];
        let gate = deployment.state.gate(now);
        if let Gate::Open { back_in } = gate {
            *soonest_back = Some(soonest_back.map_or(back_in, |s| s.min(back_in)));
            continue;
        }
        if !ledger.take_deployment_slot(deployment).await {
            if gate == Gate::Probe {
                deployment.state.release_probe();
            }
            let limit = deployment.limits.concurrency.unwrap_or(0);
            full.get_or_insert_with(|| (deployment.id.clone(), limit));
            continue;
        }
        if let Err(denial) = ledger.charge_deployment(deployment).await {
            ledger.drop_deployment_slot();
            if gate == Gate::Probe {
                deployment.state.release_probe();
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

/// One attempt on one deployment: its timing, and where its outcome is reported.
struct Try<'a> {
    deployment: &'a DeploymentEntry,
    policy: &'a ModelPolicy,
    started: Instant,
    /// The head and the first body bytes must have arrived by then.
    first_byte_deadline: Instant,
    /// The whole attempt, stream included, must be over by then.
    deadline: Instant,
    /// The upstream's own rate-limit headers, from a success or a 429.
    reading: Option<UpstreamRateLimits>,
}

impl Try<'_> {
    /// Reports the outcome to the deployment's state (its one owner) and counts it.
    fn report(&self, outcome: HealthOutcome<'_>, result: AttemptResult) -> Recorded {
        metrics::count_attempt(self.deployment.provider_kind, result);
        let recorded = self.deployment.state.record(outcome, self.reading.as_ref());
        if recorded.cooled {
            metrics::count_cooldown(&self.deployment.id);
            tracing::warn!(deployment = %self.deployment.id, "deployment cooling down");
        }
        recorded
    }

    /// A failure that counts against the deployment's breaker.
    fn failed(&self, result: AttemptResult, error: ApiError) -> Attempt {
        let cooldown = &self.policy.cooldown;
        self.report(HealthOutcome::Failed { cooldown }, result);
        Attempt::Failed(error)
    }

    /// [`Self::failed`] with the upstream's failure described by `reason`.
    fn broke(&self, result: AttemptResult, reason: &'static str) -> Attempt {
        self.failed(result, ApiError::UpstreamFailed { reason })
    }

    /// A success: closes a half-open breaker, and feeds the latency averages.
    fn answered(&self, streamed: bool) {
        let ms = self.started.elapsed().as_secs_f64() * 1000.0;
        self.report(HealthOutcome::Answered { ms, streamed }, AttemptResult::Ok);
    }
}

async fn attempt(
    deployment: &DeploymentEntry,
    policy: &ModelPolicy,
    (view, media): (&RequestView, Option<&MediaUsage>),
    endpoint: Endpoint,
    request_id: &str,
    webhooks: &crate::webhooks::Webhooks,
) -> Attempt {
    let started = Instant::now();
    let mut at = Try {
        deployment,
        policy,
        started,
        first_byte_deadline: started + Duration::from_millis(policy.timeouts.first_byte_ms),
        deadline: started + Duration::from_millis(policy.timeouts.total_ms),
        reading: None,
    };
    let shaped = match view.transformed(&[&policy.transforms, &deployment.transforms]) {
        Ok(shaped) => shaped,
        Err(error) => return Attempt::Failed(error),
    };
    let view = shaped.as_ref().unwrap_or(view);
    let request = UpstreamRequest {
        endpoint,
        view,
        upstream_model_json: &deployment.upstream_model_json,
        upstream_model: &deployment.upstream_model,
        request_id,
        native_responses: endpoint == Endpoint::Responses
            && deployment.tags.iter().any(|t| t == RESPONSES_TAG),
    };
    let sent = timeout_at(at.first_byte_deadline, deployment.adaptor.send(&request)).await;
    let response = match sent {
        Err(_) => return at.failed(AttemptResult::Timeout, ApiError::UpstreamTimeout),
        Ok(Err(SendError::Connect)) => {
            return at.broke(AttemptResult::ConnectError, "could not connect");
        }
        Ok(Err(SendError::Transport)) => {
            let reason = "the connection broke before an answer";
            return at.broke(AttemptResult::TransportError, reason);
        }
        Ok(Ok(response)) => response,
    };

    let verdict = deployment
        .adaptor
        .classify(response.status, &response.headers);
    if matches!(verdict, Verdict::Success | Verdict::RateLimited { .. }) {
        at.reading = deployment.adaptor.rate_limits(&response.headers);
    }
    if verdict == Verdict::Success {
        return read_answer(&at, response, view.stream, (endpoint, media)).await;
    }
    if verdict == Verdict::Failed {
        return at.broke(
            AttemptResult::ServerError,
            "it answered with a server error",
        );
    }
    // A refusal: its body may say the failure lasts (a bad key, an unknown model, no quota).
    let status = response.status;
    let content_type = response.headers.get(CONTENT_TYPE).cloned();
    // A refusal relayed to the client may take the attempt's whole time; the others are read
    // only for their verdict, so a body that dawdles is not waited for long.
    let deadline = match verdict {
        Verdict::ClientError => at.deadline,
        _ => at.deadline.min(Instant::now() + VERDICT_BODY_WAIT),
    };
    let body = error_body(response.body, deadline).await;
    if let Some(error) = crate::providers::permanent_error(endpoint, status, &body, unix_ms()) {
        return permanent(&at, &error, webhooks);
    }
    match verdict {
        Verdict::RateLimited { retry_after } => {
            let period = retry_after.unwrap_or(Duration::from_secs(policy.cooldown.seconds));
            let outcome = HealthOutcome::RateLimited { period };
            at.report(outcome, AttemptResult::RateLimited);
            Attempt::Failed(ApiError::UpstreamRateLimited { retry_after })
        }
        _ => {
            // Not the deployment's fault: if this was the probe, let another request probe.
            at.report(HealthOutcome::Refused, AttemptResult::ClientError);
            relay_refusal(status, content_type, body)
        }
    }
}

/// A failure that lasts (401/403, or a body saying so — see
/// [`crate::providers::permanent_error`]): the deployment goes out for
/// [`CREDENTIAL_REJECTED_OUT`] and the next one is tried; the first of the episode is logged
/// and sent as a webhook, and the error is kept for the health API.
fn permanent(
    at: &Try<'_>,
    error: &switchboard_shared::fleet_keys::PermanentError,
    webhooks: &crate::webhooks::Webhooks,
) -> Attempt {
    let deployment = at.deployment;
    let outcome = HealthOutcome::Permanent {
        period: CREDENTIAL_REJECTED_OUT,
        error,
    };
    let credential = matches!(error.status, 401 | 403) || error.kind == "credential_invalid";
    let result = if credential {
        AttemptResult::CredentialRejected
    } else {
        AttemptResult::PermanentError
    };
    if at.report(outcome, result).first_alert {
        tracing::error!(
            deployment = %deployment.id,
            provider = %deployment.provider_id,
            status = error.status,
            kind = %error.kind,
            out_seconds = CREDENTIAL_REJECTED_OUT.as_secs(),
            "the upstream answered a lasting error; taking the deployment out"
        );
        webhooks.send(crate::webhooks::Event {
            kind: if credential {
                "upstream.credential_rejected"
            } else {
                "upstream.permanent_error"
            },
            at: chrono::Utc::now(),
            scope: "deployment",
            id: deployment.id.clone(),
            spent_usd: None,
            limit_usd: None,
            provider: Some(deployment.provider_id.clone()),
            status: Some(error.status),
        });
    }
    Attempt::Failed(ApiError::UpstreamFailed {
        reason: if credential {
            "it rejected the gateway's credentials"
        } else {
            "it answered a lasting error (see the deployment's health)"
        },
    })
}

/// An error answer's body, up to [`MAX_ERROR_BODY_BYTES`] (empty if it does not come by
/// `deadline`).
async fn error_body(body: UpstreamBody, deadline: Instant) -> Bytes {
    let limited = http_body_util::Limited::new(body, MAX_ERROR_BODY_BYTES);
    match timeout_at(deadline, limited.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        _ => Bytes::new(),
    }
}

/// The upstream refused the request itself: its answer goes to the client as is (an empty
/// one becomes our own error).
fn relay_refusal(status: StatusCode, content_type: Option<HeaderValue>, body: Bytes) -> Attempt {
    if body.is_empty() {
        return Attempt::Failed(ApiError::UpstreamRejected { status });
    }
    Attempt::Complete {
        status,
        content_type,
        body,
        usage: None,
        media: None,
    }
}

/// A 2xx: a stream once its first bytes arrive (when the client asked for one), else the whole
/// answer, whose usage is read from it. A complete body for a streamed request, or a body past
/// the size caps, fails the attempt (502 if no other deployment answers).
async fn read_answer(
    at: &Try<'_>,
    response: UpstreamResponse,
    stream: bool,
    (endpoint, asked): (Endpoint, Option<&MediaUsage>),
) -> Attempt {
    if endpoint == Endpoint::AudioSpeech {
        // Binary audio: relayed as it arrives, priced by the request's characters.
        at.answered(false);
        return Attempt::Audio {
            content_type: response.headers.get(CONTENT_TYPE).cloned(),
            body: response.body,
            deadline: at.deadline,
        };
    }
    let is_event_stream = response
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let mut body = response.body;

    if stream && !is_event_stream {
        // Never JSON to a client that expects events: another deployment may stream.
        let reason = "it answered a streamed request with a complete body, not a stream";
        return at.broke(AttemptResult::Malformed, reason);
    }
    if stream {
        return match timeout_at(at.first_byte_deadline, first_event(&mut body)).await {
            Err(_) => at.failed(AttemptResult::Timeout, ApiError::UpstreamTimeout),
            Ok(Err(BodyError::TooLarge(_))) => at.broke(AttemptResult::BrokenBody, TOO_LARGE),
            Ok(Ok(Some(first))) => {
                at.answered(true);
                Attempt::Stream {
                    body,
                    first,
                    deadline: at.deadline,
                }
            }
            Ok(Ok(None) | Err(BodyError::Failed(_))) => at.broke(
                AttemptResult::BrokenBody,
                "its stream ended before any data",
            ),
        };
    }

    let content_type = response.headers.get(CONTENT_TYPE).cloned();
    let bytes = match timeout_at(at.deadline, body.collect()).await {
        Err(_) => return at.failed(AttemptResult::Timeout, ApiError::UpstreamTimeout),
        Ok(Err(BodyError::TooLarge(_))) => return at.broke(AttemptResult::BrokenBody, TOO_LARGE),
        Ok(Err(BodyError::Failed(_))) => {
            return at.broke(AttemptResult::BrokenBody, "the connection broke mid-answer");
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    let read = if endpoint.is_media() {
        crate::media::read_answer(endpoint, asked, &bytes)
    } else {
        usage_from_body(&bytes).map(|usage| (usage, None))
    };
    match read {
        Ok((usage, media)) => {
            at.answered(false);
            Attempt::Complete {
                status: StatusCode::OK,
                content_type,
                body: bytes,
                usage,
                media,
            }
        }
        Err(_) => at.broke(AttemptResult::Malformed, "its answer was not valid JSON"),
    }
}

/// The stream's first complete event (with whatever else arrived with it), or what arrived if
/// the body ends first (`None` if nothing did). Committing on a whole event rather than the
/// first bytes lets a stream that breaks, or passes the event cap, inside its first event
/// fail over to another deployment, with a clear error in the client's shape if none answers.
async fn first_event(body: &mut UpstreamBody) -> Result<Option<Bytes>, BodyError> {
    let mut scanner = crate::sse::EventScanner::default();
    let mut arrived = BytesMut::new();
    loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                let mut ended = false;
                scanner.feed(&data, |_| ended = true);
                if ended && arrived.is_empty() {
                    return Ok(Some(data));
                }
                arrived.extend_from_slice(&data);
                if ended {
                    return Ok(Some(arrived.freeze()));
                }
            }
            Some(Err(e)) => return Err(e),
            None => return Ok((!arrived.is_empty()).then(|| arrived.freeze())),
        }
    }
}

/// An answer's header map, with room for what the gateway adds to it (type, rate limits, ids,
/// revision, length): a map that grows while they are inserted rehashes twice.
fn answer_headers() -> http::HeaderMap {
    http::HeaderMap::with_capacity(16)
}

fn complete_response(
    status: StatusCode,
    content_type: Option<HeaderValue>,
    body: Bytes,
) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = answer_headers();
    response.headers_mut().insert(
        CONTENT_TYPE,
        content_type.unwrap_or(HeaderValue::from_static("application/json")),
    );
    response
}

/// A binary answer relayed as it arrives, in the upstream's content type.
fn audio_response(relay: crate::media::BinaryRelay, content_type: Option<HeaderValue>) -> Response {
    let mut response = Response::new(Body::from_stream(relay));
    let fallback = HeaderValue::from_static("application/octet-stream");
    response
        .headers_mut()
        .insert(CONTENT_TYPE, content_type.unwrap_or(fallback));
    response
}

fn stream_response(relay: SseRelay) -> Response {
    let mut response = Response::new(Body::from_stream(relay));
    *response.headers_mut() = answer_headers();
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
