//! HTTP handlers: each one walks a request through the lifecycle phases.
//!
//! authenticate → read and parse the body → resolve the model and check access → build the
//! request's context ([`crate::context`]) → admit (rate limits and budgets, a
//! [`crate::quota::Ticket`]) → forward (route, retry, stream) → account. Each phase is a
//! function of its own module; this file only strings them together and shapes the HTTP
//! answer.

use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::json;
use switchboard_shared::snapshot::ProviderKind;
use switchboard_shared::usage::MediaUsage;
use tracing::Instrument;

use crate::accounting::Ledger;
use crate::auth::authenticate;
use crate::budget::{BudgetScope, BudgetSubject};
use crate::catalog::{Catalog, KeyEntry};
use crate::context::{RequestContext, RequestFacts};
use crate::error::ApiError;
use crate::providers::Endpoint;
use crate::proxy::forward;
use crate::quota::Ticket;
use crate::request::RequestView;
use crate::state::AppState;

// Header names are made once, here: a name given as a string is parsed and validated again
// on every insert or lookup.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The gateway's own id for a request, on every proxied answer (also `x-request-id` when the
/// client sent none): the id of its usage record.
pub const GATEWAY_REQUEST_ID: HeaderName = HeaderName::from_static("x-switchboard-request-id");
/// The revision that served a request; `routes` adds it to answers that do not set it.
pub const REVISION: HeaderName =
    HeaderName::from_static(switchboard_shared::cluster::REVISION_HEADER);

pub async fn chat_completions(state: State<Arc<AppState>>, request: Request) -> Response {
    proxy(state, Endpoint::ChatCompletions, request).await
}

pub async fn completions(state: State<Arc<AppState>>, request: Request) -> Response {
    proxy(state, Endpoint::Completions, request).await
}

pub async fn embeddings(state: State<Arc<AppState>>, request: Request) -> Response {
    proxy(state, Endpoint::Embeddings, request).await
}

/// `POST /v1/responses`: OpenAI's Responses API, with the same keys, limits and routing;
/// stored responses and `previous_response_id` through [`crate::responses`].
pub async fn responses(state: State<Arc<AppState>>, request: Request) -> Response {
    proxy(state, Endpoint::Responses, request).await
}

/// `POST /v1/images/generations`: OpenAI's image generation (see [`crate::media`]).
pub async fn images_generations(state: State<Arc<AppState>>, request: Request) -> Response {
    proxy(state, Endpoint::ImagesGenerations, request).await
}

/// `POST /v1/audio/transcriptions`: a multipart audio upload (see [`crate::media`]).
pub async fn audio_transcriptions(state: State<Arc<AppState>>, request: Request) -> Response {
    proxy(state, Endpoint::AudioTranscriptions, request).await
}

/// `POST /v1/audio/speech`: text to binary audio, relayed as it arrives (see [`crate::media`]).
pub async fn audio_speech(state: State<Arc<AppState>>, request: Request) -> Response {
    proxy(state, Endpoint::AudioSpeech, request).await
}

/// `POST /v1/messages`: Anthropic's Messages API, with the same keys, limits and routing.
/// Every error leaves in Anthropic's shape.
pub async fn messages(state: State<Arc<AppState>>, request: Request) -> Response {
    let mut response = proxy(state, Endpoint::Messages, request).await;
    if let Some(error) = response.extensions_mut().remove::<ApiError>() {
        *response.body_mut() = Body::from(error.anthropic_body());
        response.headers_mut().remove(http::header::CONTENT_LENGTH);
    }
    response
}

/// A wrong method on `/v1/messages`: 405 in Anthropic's shape.
pub async fn messages_method_not_allowed() -> Response {
    let error = ApiError::MethodNotAllowed;
    let mut response = error.clone().into_response();
    response.extensions_mut().remove::<ApiError>();
    *response.body_mut() = Body::from(error.anthropic_body());
    response
}

/// The client's `x-request-id`, if it is sane (1–128 visible ASCII characters). It is the
/// client's id, kept beside the gateway's own; never the idempotency key of the usage record.
fn client_request_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|id| !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
}

async fn proxy(state: State<Arc<AppState>>, endpoint: Endpoint, request: Request) -> Response {
    proxy_to(state, endpoint, request, None).await
}

/// [`proxy`], for a metered passthrough to `passthrough` when given. The handlers take the
/// whole request and keep its header map: axum's `HeaderMap` extractor would clone it (two
/// allocations, and a reference count for every header).
pub(crate) async fn proxy_to(
    State(state): State<Arc<AppState>>,
    endpoint: Endpoint,
    request: Request,
    passthrough: Option<crate::request::Passthrough>,
) -> Response {
    let (http::request::Parts { headers, .. }, body) = request.into_parts();
    let started = Instant::now();
    let id = uuid::Uuid::now_v7().to_string();
    let client_id = client_request_id(&headers);
    let span = tracing::info_span!("request", request_id = %id, client_request_id = client_id.as_deref(), endpoint = endpoint.as_str(), model = tracing::field::Empty, deployment = tracing::field::Empty);
    // Made now: the ids themselves move into the request's ledger and its usage record. The
    // client gets its own id back, and the gateway's in a header of its own.
    let gateway_header = HeaderValue::from_str(&id);
    let id_header = HeaderValue::from_str(client_id.as_deref().unwrap_or(&id));
    let ids = (id, client_id);
    // The exported span is the outer one: the log span stays the current one.
    let trace = crate::telemetry::request(endpoint.as_str(), &ids.0, &headers);
    // Boxed: the request's state machine is several kilobytes, and every future that holds it
    // (the spans' wrappers, the router's boxed handler future) would otherwise copy all of it
    // when it is built; a third of a request's instructions went to those copies.
    let served = Box::pin(serve_proxy(
        &state,
        (endpoint, passthrough),
        &headers,
        body,
        ids,
        (started, &trace),
    ));
    let mut response = match served.instrument(span).instrument(trace.clone()).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    if let (Ok(id), Ok(gateway)) = (id_header, gateway_header) {
        response.headers_mut().insert(REQUEST_ID, id);
        response.headers_mut().insert(GATEWAY_REQUEST_ID, gateway);
    }
    response
}

async fn serve_proxy(
    state: &Arc<AppState>,
    (endpoint, passthrough): (Endpoint, Option<crate::request::Passthrough>),
    headers: &HeaderMap,
    body: Body,
    mut ids: (String, Option<String>),
    (started, trace): (Instant, &tracing::Span),
) -> Result<Response, ApiError> {
    let (catalog, key) = crate::telemetry::authenticate(trace)
        .in_scope(|| caller(state, headers))
        .inspect_err(|e| crate::telemetry::failed(trace, e.kind(), e.status().as_u16()))?;
    crate::telemetry::caller(trace, &key.tenant.tenant.id, key.key.id());
    let mut model = String::new();
    let served = serve_caller(
        state,
        (endpoint, passthrough, headers, body),
        (&catalog, &key),
        &mut ids,
        &mut model,
        (started, trace),
    )
    .await;
    served.inspect_err(|error| {
        crate::telemetry::failed(trace, error.kind(), error.status().as_u16());
        let refused = crate::accounting::Refused {
            endpoint: endpoint.as_str(),
            model,
            latency: started.elapsed(),
        };
        crate::accounting::record_refusal(&state.books, &key, ids, refused, error);
    })
}

/// [`serve_proxy`] for an authenticated caller. Writes the model asked for into `model` as
/// soon as it is known, and takes the ids out of `ids` only once nothing can be refused.
async fn serve_caller(
    state: &Arc<AppState>,
    (endpoint, passthrough, headers, body): (
        Endpoint,
        Option<crate::request::Passthrough>,
        &HeaderMap,
        Body,
    ),
    (catalog, key): (&Arc<Catalog>, &Arc<KeyEntry>),
    ids: &mut (String, Option<String>),
    model_asked: &mut String,
    (started, trace): (Instant, &tracing::Span),
) -> Result<Response, ApiError> {
    let key = Arc::clone(key);
    let bytes = read_body(body, headers, state.max_body_bytes).await?;
    let (bytes, keep) = match endpoint {
        Endpoint::Responses => {
            let tenant = &key.tenant.tenant.id;
            state.responses.prepare(tenant, bytes).await?
        }
        _ => (bytes, None),
    };
    let (view, media, kind) = read_request(endpoint, bytes, headers, passthrough)?;
    model_asked.clone_from(&view.model);
    let client_request_id = ids.1.clone();
    let (model, mut selection) = crate::selectors::resolve(catalog, &key.key, &view, headers)?;
    selection.provider_kind = kind;
    tracing::Span::current().record("model", model.name.as_str());
    crate::telemetry::model(trace, endpoint.as_str(), &model.name);
    crate::context::check_output_limit(model, view.max_tokens)?;
    let at = (endpoint, headers, &view, &**catalog, started);
    let mut cache = match consult_cache(state, (&**model, &*key), ids, at).await {
        ControlFlow::Continue(plan) => plan,
        ControlFlow::Break(hit) => return Ok(hit),
    };
    let prompt_estimate = view.estimated_prompt_tokens();
    let facts = RequestFacts {
        endpoint,
        key,
        model: Arc::clone(model),
        stream: view.stream,
        client_wants_usage: view.client_wants_usage,
        max_tokens: view.max_tokens,
        choices: view.choices,
        client_request_id,
        started,
        started_at: state.books.clock.now(),
        prompt_estimate,
        estimated_tokens: prompt_estimate
            .saturating_add(view.max_tokens.unwrap_or(0).saturating_mul(view.choices)),
        revision: catalog.revision,
        price_version: catalog.price_version,
        media,
    };
    let (ticket, limits) = Ticket::admit(
        state.books.stores(),
        &facts.key,
        facts.estimated_tokens,
        || {
            let models = std::iter::once(model).chain(crate::selectors::fallbacks(
                catalog,
                &facts.key.key,
                model,
            ));
            let servable = models
                .flat_map(|m| m.deployments.iter())
                .filter(|d| selection.check(d, &facts.key.key).is_ok())
                .map(|d| &**d);
            facts.max_cost_nanos(servable)
        },
        facts.started_at,
    )
    .instrument(crate::telemetry::admit(trace))
    .await?;
    let request = RequestContext {
        facts: Arc::new(facts),
        view,
        selection,
        explain: headers.contains_key(crate::proxy::EXPLAIN_REQUEST_HEADER),
    };
    let mut ledger = Ledger::open(
        Arc::clone(&state.books),
        Arc::clone(&request.facts),
        std::mem::take(&mut ids.0),
        ticket,
    );
    ledger.traced(trace);
    ledger.capture(&request.view.body);
    ledger.report_to_cache(cache.as_mut().and_then(crate::cache::Plan::settled));
    let answer = forward_to_the_end(catalog, request, ledger, trace).await;
    let mut response = crate::cache::fill(cache, answer);
    if let Some(keep) = keep {
        response = keep.keep(response);
    }
    limits.write_headers(response.headers_mut());
    response
        .headers_mut()
        .insert(REVISION, catalog.revision_header.clone());
    Ok(response)
}

/// The request's view, what an image or audio request is priced by, and the provider kind its
/// deployments must have: a passthrough's, or `openai` for images and audio.
fn read_request(
    endpoint: Endpoint,
    bytes: bytes::Bytes,
    headers: &HeaderMap,
    passthrough: Option<crate::request::Passthrough>,
) -> Result<(RequestView, Option<MediaUsage>, Option<ProviderKind>), ApiError> {
    let (mut view, media) = if endpoint.is_media() {
        let (view, media) = crate::media::parse(endpoint, bytes, headers)?;
        (view, Some(media))
    } else {
        let named = passthrough.as_ref().and_then(|p| p.model.clone());
        (parse(bytes, endpoint, named)?, None)
    };
    if passthrough.as_ref().is_some_and(|p| p.stream) {
        view.stream = true;
    }
    view.anthropic_headers = anthropic_headers(headers);
    let kind = match &passthrough {
        Some(target) => Some(target.kind),
        None => media.is_some().then_some(ProviderKind::Openai),
    };
    view.passthrough = passthrough;
    Ok((view, media, kind))
}

/// The response cache's part before admission, for a request whose model or key caches:
/// the stored answer when there is one (`Break`: recorded as a hit at cost 0, with what it
/// saved; hits are not admitted, so no limit or budget is charged), else the request's cache
/// plan (`Continue`, `None` when nothing is cached for it).
async fn consult_cache(
    state: &AppState,
    (model, key): (&crate::catalog::ModelEntry, &KeyEntry),
    ids: &mut (String, Option<String>),
    (endpoint, headers, view, catalog, started): (
        Endpoint,
        &HeaderMap,
        &RequestView,
        &Catalog,
        Instant,
    ),
) -> ControlFlow<Response, Option<crate::cache::Plan>> {
    let plan = crate::cache::Plan::new(&state.cache, (model, key), endpoint, headers, view);
    let Some(found) = &plan else {
        return ControlFlow::Continue(None);
    };
    let Some(entry) = found.lookup(model).await else {
        return ControlFlow::Continue(plan);
    };
    let now_ms = state.books.clock.now().timestamp_millis();
    let saved_usd = entry.cost_usd;
    let mut response = crate::cache::hit_response(entry, now_ms);
    response
        .headers_mut()
        .insert(REVISION, catalog.revision_header.clone());
    let hit = crate::accounting::CacheHit {
        endpoint: endpoint.as_str(),
        model,
        stream: view.stream,
        latency: started.elapsed(),
        saved_usd,
        revision: catalog.revision,
        price_version: catalog.price_version,
    };
    let ids = (std::mem::take(&mut ids.0), ids.1.take());
    crate::accounting::record_cache_hit(&state.books, key, ids, hit);
    ControlFlow::Break(response)
}

/// Forwards the request. A non-streamed answer is generated, and billed by the provider,
/// whether or not the client waits for it: if the client leaves before it arrives, the
/// exchange goes on in a task of its own ([`Detachable`]), so the client is charged the usage
/// the provider reports rather than the most it could have cost. A stream stays tied to the
/// client (leaving cancels it upstream, and it is charged what was relayed).
async fn forward_to_the_end(
    catalog: &Arc<Catalog>,
    request: RequestContext,
    ledger: Ledger,
    trace: &tracing::Span,
) -> Response {
    if request.facts.stream {
        // Boxed, so that the request's own state machine does not hold (and copy) this one.
        return Box::pin(forward(catalog, &request, ledger)).await;
    }
    let catalog = Arc::clone(catalog);
    // Boxed before the spans wrap it: each wrapper would otherwise copy the whole exchange
    // (about 1,000 instructions a request in `memcpy`).
    let exchange = Box::pin(async move { forward(&catalog, &request, ledger).await });
    // If it goes on in a task of its own, it runs in the request's spans as the handler does:
    // the exported trace outside (its phase spans stay in the client's trace), the log span
    // inside.
    let exchange = exchange.in_current_span().instrument(trace.clone());
    Detachable(Some(Box::pin(exchange))).await
}

/// A future polled in place while its caller waits, and moved into a task of its own if the
/// caller drops it first (a client that leaves): it then runs to the end unobserved. No task
/// is spawned for the common case of a client that waits for its answer. Boxed, so that
/// moving it moves a pointer rather than the exchange's whole state machine. A panic while it
/// is polled in place becomes a 500 for the client (as a panicking task's join would have),
/// rather than a connection closed without an answer.
struct Detachable<F: Future<Output = Response> + Send + 'static>(Option<std::pin::Pin<Box<F>>>);

impl<F: Future<Output = Response> + Send + 'static> Future for Detachable<F> {
    type Output = Response;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Response> {
        let Some(exchange) = self.0.as_mut() else {
            unreachable!("a Detachable is not polled after it answered")
        };
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| exchange.as_mut().poll(cx)));
        let answer = match polled {
            Ok(std::task::Poll::Pending) => return std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(answer)) => answer,
            Err(_) => {
                tracing::error!("the exchange panicked; answered 500");
                ApiError::Internal.into_response()
            }
        };
        // Dropped here, panicked or not: never moved into a task.
        self.0 = None;
        std::task::Poll::Ready(answer)
    }
}

impl<F: Future<Output = Response> + Send + 'static> Drop for Detachable<F> {
    fn drop(&mut self) {
        // Outside a runtime (the process is shutting down) there is nothing to finish it on.
        if let Some(exchange) = self.0.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(exchange);
        }
    }
}

/// The body's few fields, adjusted to the endpoint: no streaming where it has none, and on
/// `/v1/messages` Anthropic's rules (`max_tokens` required; streams always report usage, and
/// its API refuses `stream_options`); on `/v1/responses`, streams always report usage (in
/// `response.completed`). A model `named` outside the body (a Gemini path) is the model.
fn parse(
    bytes: bytes::Bytes,
    endpoint: Endpoint,
    named: Option<String>,
) -> Result<RequestView, ApiError> {
    let mut view = match named {
        Some(model) => RequestView::parse_named(bytes, model)?,
        None => RequestView::parse(bytes)?,
    };
    if !endpoint.supports_streaming() {
        view.stream = false;
    }
    if matches!(endpoint, Endpoint::Responses | Endpoint::Passthrough) {
        // The body goes out as sent: no `stream_options` added.
        view.client_wants_usage = true;
    }
    if endpoint == Endpoint::Messages {
        view.client_wants_usage = true;
        if view.max_tokens.is_none() {
            return Err(ApiError::bad_request(
                "max_tokens: Field required",
                Some("max_tokens"),
            ));
        }
    }
    Ok(view)
}

/// The client's `anthropic-version` and `anthropic-beta` headers, for Anthropic deployments
/// (each at most 512 bytes; usually none, and then nothing is allocated).
pub(crate) fn anthropic_headers(headers: &HeaderMap) -> Vec<(http::HeaderName, HeaderValue)> {
    const NAMES: [http::HeaderName; 2] = [
        http::HeaderName::from_static("anthropic-version"),
        http::HeaderName::from_static("anthropic-beta"),
    ];
    // Most clients send neither: one pass over the few request headers, rather than two hashed
    // lookups of names that are not there.
    if !headers
        .keys()
        .any(|name| name.as_str().starts_with("anthropic-"))
    {
        return Vec::new();
    }
    NAMES
        .iter()
        .filter_map(|name| {
            let value = headers.get(name).filter(|v| v.len() <= 512)?;
            Some((name.clone(), value.clone()))
        })
        .collect()
}

/// The serving catalog and the calling key: 503 before the first snapshot, else what
/// [`authenticate`] says of the key.
pub(crate) fn caller(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(Arc<Catalog>, Arc<KeyEntry>), ApiError> {
    let catalog = state.catalog().ok_or(ApiError::NotReady)?;
    let key = authenticate(
        &catalog,
        state.key_digests(),
        headers,
        state.books.clock.now(),
    )?;
    Ok((catalog, key))
}

/// Reads the body up to `limit` bytes: 413 beyond it (by `Content-Length` before reading,
/// or while reading when there is none), 400 if the client breaks off.
pub(crate) async fn read_body(
    body: Body,
    headers: &HeaderMap,
    limit: usize,
) -> Result<bytes::Bytes, ApiError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::PayloadTooLarge { limit_bytes: limit });
    }
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::PayloadTooLarge { limit_bytes: limit })
        }
        Err(_) => Err(ApiError::bad_request(
            "the request body could not be read",
            None,
        )),
    }
}

/// `GET /v1/models`: the models this key may use.
pub async fn list_models(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (catalog, key) = caller(&state, &headers)?;
    let data: Vec<serde_json::Value> = catalog
        .model_names()
        .iter()
        .filter(|name| key.key.allows_model(name))
        .filter_map(|name| catalog.model(name))
        .map(|entry| model_object(entry))
        .collect();
    Ok(Json(json!({ "object": "list", "data": data })).into_response())
}

/// `GET /v1/key/info`: the calling key's own settings, limits and budgets with what they have
/// spent this period (from the shared Redis counters, `null` while Redis is unreachable; without
/// Redis, this replica's own counts). Never the key's hash or any other key's data.
pub async fn key_info(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (catalog, key) = caller(&state, &headers)?;
    let tenant = &key.tenant.tenant;
    let now = state.books.clock.now();
    let (mut key_budget, mut tenant_budget) = (None, None);
    if let Some(subjects) = key.budget_subjects() {
        for subject in subjects.as_slice() {
            let view = budget_view(&state, subject, now).await;
            match subject.scope {
                BudgetScope::Key => key_budget = Some(view),
                BudgetScope::Tenant => tenant_budget = Some(view),
            }
        }
    }
    Ok(Json(json!({
        "key": {
            "id": key.key.id(),
            "name": key.key.name(),
            "display_prefix": key.key.display_prefix(),
            "tenant_id": tenant.id,
            "expires_at": key.key.expires_at,
            "allowed_models": key.key.allowed_models(),
            "limits": key.key.limits,
            "budget": key_budget,
        },
        "tenant": {
            "id": tenant.id,
            "limits": tenant.limits,
            "budget": tenant_budget,
        },
        "revision": catalog.revision,
    }))
    .into_response())
}

/// One budget with its period and this period's spend, for [`key_info`].
async fn budget_view(
    state: &AppState,
    subject: &BudgetSubject<'_>,
    now: chrono::DateTime<chrono::Utc>,
) -> serde_json::Value {
    let budget = subject.budget;
    let period = switchboard_shared::budget::period_of(budget, now);
    let spent = state.books.budgets.spent_usd(subject, now).await;
    json!({
        "max_usd": budget.max_usd,
        "soft_usd": budget.soft_usd,
        "period": budget.period,
        "time_zone": budget.time_zone,
        "period_start": period.start,
        "resets_at": period.end,
        "spent_usd": spent,
        "remaining_usd": spent.map(|s| (budget.max_usd - s).max(0.0)),
    })
}

/// `GET /v1/models/{model}`: one model, if this key may use it (404 otherwise, which tells a
/// key nothing about models it cannot use).
pub async fn retrieve_model(
    State(state): State<Arc<AppState>>,
    Path(model): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (catalog, key) = caller(&state, &headers)?;
    match catalog.model(&model) {
        Some(entry) if key.key.allows_model(&entry.name) => {
            Ok(Json(model_object(entry)).into_response())
        }
        _ => Err(ApiError::ModelNotFound { model }),
    }
}

/// One model in OpenAI's shape, with the tags its deployments carry (declared or derived)
/// for `tag:` names and the tags header.
fn model_object(entry: &crate::catalog::ModelEntry) -> serde_json::Value {
    json!({
        "id": entry.name,
        "object": "model",
        "created": 0,
        "owned_by": "switchboard",
        "tags": entry.tags(),
    })
}

/// `GET /healthz`: the process is alive.
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: a snapshot is loaded and the process is not draining.
pub async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.catalog() {
        Some(catalog) if state.is_ready() => Json(json!({
            "status": "ready",
            "revision": catalog.revision,
            "content_hash": catalog.content_hash,
        }))
        .into_response(),
        _ => ApiError::NotReady.into_response(),
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics_text(State(state): State<Arc<AppState>>) -> Response {
    (
        StatusCode::OK,
        [(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Any other path: 404 in OpenAI's shape.
pub async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::RouteNotFound {
        path: uri.path().chars().take(200).collect(),
    }
}

/// A known path with the wrong method: 405 in OpenAI's shape.
pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_exchange_answers_500() {
        let exchange = async {
            if std::hint::black_box(true) {
                panic!("a bug in the exchange");
            }
            StatusCode::OK.into_response()
        };
        let answer = Detachable(Some(Box::pin(exchange))).await;
        assert_eq!(answer.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(answer.extensions().get::<ApiError>().is_some());
    }

    #[tokio::test]
    async fn an_exchange_left_by_its_caller_runs_to_the_end() {
        let (done, finished) = tokio::sync::oneshot::channel();
        let exchange = async move {
            tokio::task::yield_now().await;
            let _ = done.send(());
            StatusCode::OK.into_response()
        };
        let mut detachable = Detachable(Some(Box::pin(exchange)));
        // Polled once (it waits), then dropped as a handler is when its client leaves.
        let waker = futures_util::task::noop_waker();
        let polled =
            std::pin::Pin::new(&mut detachable).poll(&mut std::task::Context::from_waker(&waker));
        assert!(polled.is_pending());
        drop(detachable);
        tokio::time::timeout(std::time::Duration::from_secs(5), finished)
            .await
            .expect("the detached exchange finished")
            .unwrap();
    }
}
