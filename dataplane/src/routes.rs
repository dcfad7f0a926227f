//! The route table, and the layer stack around it.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};

use crate::error::ErrorKind;
use crate::handlers;
use crate::metrics;
use crate::state::AppState;

/// Builds the data plane's router.
///
/// Layers, outer to inner:
/// 1. `count_requests` — counts every answer by route template and status, and error answers
///    by kind (from the [`ErrorKind`] extension that [`crate::error::ApiError`] sets); keeps
///    the in-flight gauge.
///
/// Authentication is not a layer: the proxy and model routes authenticate as their first
/// phase (so that the key entry flows on as a value), and the operational routes
/// `/healthz`, `/readyz` and `/metrics` are the explicit allow-list that needs no key.
/// Unknown paths and wrong methods answer in OpenAI's error shape.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/embeddings", post(handlers::embeddings))
        .route("/v1/models", get(handlers::list_models))
        .route("/v1/models/{model}", get(handlers::retrieve_model))
        .route("/healthz", get(handlers::healthz))
        .route("/readyz", get(handlers::readyz))
        .route("/metrics", get(handlers::metrics_text))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(middleware::from_fn(count_requests))
        .with_state(state)
}

async fn count_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |p| route_label(p.as_str()));
    let started = Instant::now();
    ::metrics::gauge!(metrics::INFLIGHT_REQUESTS).increment(1.0);
    let response = next.run(request).await;
    ::metrics::gauge!(metrics::INFLIGHT_REQUESTS).decrement(1.0);
    let status = response.status();
    ::metrics::counter!(
        metrics::REQUESTS_TOTAL,
        "route" => route,
        "status" => status_label(status.as_u16())
    )
    .increment(1);
    if let Some(ErrorKind(kind)) = response.extensions().get::<ErrorKind>() {
        ::metrics::counter!(metrics::ERRORS_TOTAL, "kind" => *kind).increment(1);
    }
    if route == "/v1/models" || route == "/v1/models/{model}" {
        ::metrics::histogram!(metrics::REQUEST_DURATION_SECONDS, "endpoint" => "models")
            .record(started.elapsed().as_secs_f64());
    }
    response
}

/// Route templates as `'static` labels (the set is closed: the table above).
fn route_label(path: &str) -> &'static str {
    const ROUTES: &[&str] = &[
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models",
        "/v1/models/{model}",
        "/healthz",
        "/readyz",
        "/metrics",
    ];
    ROUTES
        .iter()
        .find(|r| **r == path)
        .copied()
        .unwrap_or("other")
}

/// Status codes as `'static` labels without allocating.
fn status_label(code: u16) -> &'static str {
    match code {
        200 => "200",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        413 => "413",
        422 => "422",
        429 => "429",
        499 => "499",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        _ if code < 300 => "2xx",
        _ if code < 500 => "4xx",
        _ => "5xx",
    }
}
