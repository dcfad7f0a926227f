//! The route table, and the layer stack around it.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use axum::extract::Request;
use axum::response::Response;
use axum::routing::future::RouteFuture;
use axum::routing::{IntoMakeService, get, post};
use axum::{Router, ServiceExt};
use http::header::Entry;
use tower::Service;

use crate::count_tokens;
use crate::error::ErrorKind;
use crate::handlers;
use crate::metrics;
use crate::passthrough;
use crate::responses_http;
use crate::state::AppState;

/// Builds the data plane's router.
///
/// Around the route table, [`Counted`]: counts every answer by route template and status,
/// and error answers by kind (from the [`ErrorKind`] extension that
/// [`crate::error::ApiError`] sets); keeps the in-flight gauge; and adds
/// `x-switchboard-config-revision` (the revision served, `0` before any) to every answer that
/// does not carry it yet — the proxy handlers set it themselves from the catalog that served
/// the request. It wraps the router as a whole rather than each route (`Router::layer`): a
/// layer inside the router costs every request a boxed future and a clone of the boxed route
/// (four allocations for axum's `from_fn`), this wrapper none.
///
/// Authentication is not a layer: the proxy and model routes authenticate as their first
/// phase (so that the key entry flows on as a value), and the operational routes
/// `/healthz`, `/readyz` and `/metrics` are the explicit allow-list that needs no key.
/// Unknown paths and wrong methods answer in OpenAI's error shape (Anthropic's on
/// `/v1/messages`).
pub fn router(state: Arc<AppState>) -> App {
    let routes = routes(Arc::clone(&state));
    Counted { routes, state }.into_make_service()
}

/// What [`router`] builds, for `axum::serve`.
pub type App = IntoMakeService<Counted>;

fn routes(state: Arc<AppState>) -> Router {
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
        .with_state(state)
}

/// Adds the served revision unless the handler did.
fn stamp_revision(state: &AppState, response: &mut Response) {
    if let Entry::Vacant(slot) = response.headers_mut().entry(crate::handlers::REVISION) {
        slot.insert(state.revision_header());
    }
}

/// The router with the request counting around it (see [`router`]).
#[derive(Clone)]
pub struct Counted {
    routes: Router,
    state: Arc<AppState>,
}

impl Service<Request> for Counted {
    type Response = Response;
    type Error = Infallible;
    type Future = Counting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<Request>::poll_ready(&mut self.routes, cx)
    }

    fn call(&mut self, request: Request) -> Counting {
        let route = metrics::route_of(request.uri().path());
        metrics::inflight().increment(1.0);
        // Only the model routes' latency is recorded: no clock read for the others.
        let timed = metrics::ROUTES[route].starts_with("/v1/models");
        Counting {
            answer: self.routes.call(request),
            state: Arc::clone(&self.state),
            route,
            started: timed.then(Instant::now),
        }
    }
}

/// A request's answer on its way out of [`Counted`]; in flight until dropped.
pub struct Counting {
    answer: RouteFuture<Infallible>,
    state: Arc<AppState>,
    route: usize,
    started: Option<Instant>,
}

impl Future for Counting {
    type Output = Result<Response, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Ok(mut response) = ready!(Pin::new(&mut self.answer).poll(cx));
        stamp_revision(&self.state, &mut response);
        metrics::count_request(self.route, response.status().as_u16());
        if let Some(ErrorKind(kind)) = response.extensions().get::<ErrorKind>() {
            metrics::count_error(kind);
        }
        if let Some(started) = self.started {
            metrics::record_latency("models", started.elapsed().as_secs_f64(), None);
        }
        Poll::Ready(Ok(response))
    }
}

impl Drop for Counting {
    /// Answered or abandoned (the client left first): no longer in flight.
    fn drop(&mut self) {
        metrics::inflight().decrement(1.0);
    }
}
