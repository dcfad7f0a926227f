//! The route table, and the layer stack around it.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use http::header::Entry;

use crate::count_tokens;
use crate::error::ErrorKind;
use crate::handlers;
use crate::metrics;
use crate::passthrough;
use crate::responses_http;
use crate::state::AppState;

/// Builds the data plane's router.
///
/// Layers, outer to inner:
/// 1. `count_requests` — counts every answer by route template and status, and error answers
///    by kind (from the [`ErrorKind`] extension that [`crate::error::ApiError`] sets); keeps
///    the in-flight gauge; and adds `x-switchboard-config-revision` (the revision served, `0`
///    before any) to every answer that does not carry it yet — the proxy handlers set it
///    themselves from the catalog that served the request. One layer, not two: each `from_fn`
///    layer costs a boxed future per request.
///
/// Authentication is not a layer: the proxy and model routes authenticate as their first
/// phase (so that the key entry flows on as a value), and the operational routes
/// `/healthz`, `/readyz` and `/metrics` are the explicit allow-list that needs no key.
/// Unknown paths and wrong methods answer in OpenAI's error shape (Anthropic's on
/// `/v1/messages`).
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route(
            "/v1/messages",
            post(handlers::messages).fallback(handlers::messages_method_not_allowed),
        )
        .route(
            "/v1/messages/count_tokens",
            post(count_tokens::count_tokens).fallback(handlers::messages_method_not_allowed),
        )
        .route("/v1/responses", post(handlers::responses))
        .route(
            "/passthrough/{kind}/{*path}",
            post(passthrough::passthrough),
        )
        .route(
            "/v1/responses/{id}",
            get(responses_http::retrieve).delete(responses_http::delete),
        )
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/embeddings", post(handlers::embeddings))
        .route("/v1/images/generations", post(handlers::images_generations))
        .route(
            "/v1/audio/transcriptions",
            post(handlers::audio_transcriptions),
        )
        .route("/v1/audio/speech", post(handlers::audio_speech))
        .route("/v1/models", get(handlers::list_models))
        .route("/v1/models/{model}", get(handlers::retrieve_model))
        .route("/v1/key/info", get(handlers::key_info))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics_text))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            count_requests,
        ))
        .with_state(state)
}

/// Adds the served revision unless the handler did.
fn stamp_revision(state: &AppState, response: &mut Response) {
    if let Entry::Vacant(slot) = response.headers_mut().entry(crate::handlers::REVISION) {
        slot.insert(state.revision_header());
    }
}

async fn count_requests(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .and_then(|p| metrics::ROUTES.iter().position(|r| *r == p.as_str()))
        .unwrap_or(metrics::ROUTES.len() - 1);
    let started = Instant::now();
    metrics::inflight().increment(1.0);
    let mut response = next.run(request).await;
    stamp_revision(&state, &mut response);
    metrics::inflight().decrement(1.0);
    metrics::count_request(route, response.status().as_u16());
    if let Some(ErrorKind(kind)) = response.extensions().get::<ErrorKind>() {
        metrics::count_error(kind);
    }
    if metrics::ROUTES[route].starts_with("/v1/models") {
        metrics::record_latency("models", started.elapsed().as_secs_f64(), None);
    }
    response
}
