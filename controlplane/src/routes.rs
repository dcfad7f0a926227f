//! The route table and the OpenAPI document, built from the same handler list so that they
//! cannot disagree.
//!
//! Layers, outer to inner: the request body limit (`server.max_body_bytes`, 413 beyond it,
//! answered by [`crate::api::body::Body`]), then the routes. Every route under `/admin/v1` except
//! `POST /auth/login` takes a [`crate::api::caller::Caller`], i.e. a valid bearer JWT; `/openapi.json`
//! `/healthz` and `/metrics` (Prometheus text, [`crate::metrics`]) are open.

use axum::extract::DefaultBodyLimit;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get};
use axum::{Json, Router};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::api::error::{ApiError, FieldError, Problem};
use crate::api::{
    admins, auth, budgets, dead_letters, deployments, keys, models, prices, providers, requests,
    spend, status, tenants,
};
use crate::service::Error as ServiceError;
use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchboard control plane admin API",
        description = "Tenants, virtual keys, providers, deployments, model policies, admin \
            users, the audit log and the fleet. Every change bumps the config revision \
            (`x-switchboard-config-revision`) and is pushed to every data plane. Errors are \
            RFC 9457 problem JSON."
    ),
    components(schemas(Problem, FieldError)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "auth", description = "Log in for a JWT"),
        (name = "tenants"), (name = "keys"), (name = "providers"), (name = "deployments"),
        (name = "models", description = "Routing policies per public model name"),
        (name = "admins"), (name = "status", description = "Audit log, fleet, revision"),
        (name = "spend", description = "Spend totals from the daily rollups"),
        (name = "requests", description = "The request log: every request with its attempts"),
        (name = "budgets", description = "Budgets of keys and tenants with this period's spend"),
        (name = "prices", description = "Model prices: LiteLLM's price file as synced, with admin overrides")
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .bearer_format("JWT")
                        .build(),
                ),
            );
        }
    }
}

fn api() -> OpenApiRouter<AppState> {
    let v1 = OpenApiRouter::new()
        .routes(routes!(auth::login))
        .routes(routes!(tenants::list, tenants::create))
        .routes(routes!(tenants::get, tenants::update, tenants::delete))
        .routes(routes!(keys::list, keys::create))
        .routes(routes!(keys::get, keys::update, keys::delete))
        .routes(routes!(keys::revoke))
        .routes(routes!(keys::rotate))
        .routes(routes!(providers::list, providers::create))
        .routes(routes!(
            providers::get,
            providers::update,
            providers::delete
        ))
        .routes(routes!(deployments::list, deployments::create))
        .routes(routes!(
            deployments::get,
            deployments::update,
            deployments::delete
        ))
        .routes(routes!(deployments::health_all))
        .routes(routes!(deployments::health))
        .routes(routes!(deployments::test))
        .routes(routes!(models::list))
        .routes(routes!(models::get, models::put, models::delete))
        // Prices: fixed segments win over `{model}`, which takes `/` as `%2F` (`api::prices`).
        .routes(routes!(prices::list))
        .routes(routes!(prices::versions))
        .routes(routes!(prices::missing))
        .routes(routes!(prices::sync))
        .routes(routes!(prices::get))
        .routes(routes!(prices::put_override, prices::delete_override))
        .routes(routes!(admins::list, admins::create))
        .routes(routes!(admins::update, admins::delete))
        .routes(routes!(admins::revoke_sessions))
        .routes(routes!(status::audit))
        .routes(routes!(status::fleet))
        .routes(routes!(status::revision))
        .routes(routes!(dead_letters::list))
        .routes(routes!(spend::report))
        .routes(routes!(requests::list))
        .routes(routes!(requests::get))
        .routes(routes!(budgets::list))
        .routes(routes!(
            budgets::get_tenant_budget,
            budgets::put_tenant_budget,
            budgets::delete_tenant_budget
        ))
        .routes(routes!(
            budgets::get_key_budget,
            budgets::put_key_budget,
            budgets::delete_key_budget
        ));
    OpenApiRouter::with_openapi(ApiDoc::openapi()).nest("/admin/v1", v1)
}

/// The admin API's routes and their OpenAPI document.
fn parts() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (routes, mut doc) = api().split_for_parts();
    common_responses(&mut doc);
    (routes, doc)
}

/// Documents the answers every operation can give besides its own: 400 for a query, path or
/// body that does not parse, 401 without a valid bearer token (both problem JSON).
fn common_responses(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let problem = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("Problem")))
                    .build(),
            )
            .build()
    };
    for item in doc.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for op in operations.into_iter().flatten() {
            let responses = &mut op.responses.responses;
            for (status, description) in [
                ("400", "A query, path or body that does not parse"),
                ("401", "No valid bearer token"),
                (
                    "422",
                    "A value the control plane cannot take, named in `errors` (e.g. a NUL \
                     character, which Postgres cannot store, in any field or query parameter)",
                ),
            ] {
                responses
                    .entry(status.to_owned())
                    .or_insert_with(|| problem(description).into());
            }
        }
    }
}

/// The OpenAPI document of the admin API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    parts().1
}

/// The document as checked in under `openapi/controlplane.json`.
pub fn openapi_json() -> String {
    let mut text = openapi().to_pretty_json().unwrap_or_default();
    text.push('\n');
    text
}

/// One exported span per admin API request when trace export is on
/// (`switchboard_shared::telemetry`): method, route template and status, continuing the
/// caller's `traceparent`; never a body or a token.
async fn traced(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use switchboard_shared::telemetry::{TARGET, continue_trace, enabled};
    use tracing::Instrument;
    if !enabled() {
        return next.run(request).await;
    }
    let route = route_template(request.uri().path());
    let method = request.method().as_str().to_owned();
    let span = tracing::debug_span!(target: TARGET, "admin request",
        otel.name = format!("{method} {route}"), otel.kind = "server",
        http.request.method = method.as_str(), http.route = route.as_str(),
        http.response.status_code = tracing::field::Empty);
    {
        let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
        continue_trace(&span, header("traceparent"), header("tracestate"));
    }
    let response = next.run(request).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

/// The listener's routes beside the admin API's and the console's.
fn operational(doc: utoipa::openapi::OpenApi) -> [(&'static str, MethodRouter<AppState>); 3] {
    let doc = Json(doc);
    [
        (
            "/openapi.json",
            get(move || async move { ([(CONTENT_TYPE, "application/json")], doc).into_response() }),
        ),
        ("/healthz", get(|| async { "ok" })),
        ("/metrics", get(|| async { crate::metrics::render() })),
    ]
}

/// The template of the route `path` takes (`/admin/v1/keys/{id}`), empty when none: the
/// `http.route` of its trace span. Matched here, from the routes' own tables, rather than
/// read from axum's `MatchedPath`: that extension costs every request of both planes a map
/// allocation (the planes build axum with the same features), on the data plane's request
/// path too.
fn route_template(path: &str) -> String {
    static TEMPLATES: std::sync::OnceLock<matchit::Router<String>> = std::sync::OnceLock::new();
    let templates = TEMPLATES.get_or_init(|| {
        let doc = openapi();
        let api = doc.paths.paths.keys().cloned();
        let others = operational(utoipa::openapi::OpenApi::default())
            .map(|(path, _)| path)
            .into_iter()
            .chain(crate::ui::templates())
            .map(str::to_owned);
        let mut templates = matchit::Router::new();
        for template in api.chain(others) {
            // A template the router took cannot conflict here (the same matcher).
            let _ = templates.insert(template.clone(), template);
        }
        templates
    });
    templates
        .at(path)
        .map(|found| found.value.clone())
        .unwrap_or_default()
}

/// The admin REST router.
pub fn router(state: AppState) -> Router {
    let max_body = state.settings.max_body_bytes;
    let (api, doc) = parts();
    operational(doc)
        .into_iter()
        .fold(api, |router, (path, handlers)| router.route(path, handlers))
        .merge(crate::ui::router())
        .route_layer(axum::middleware::from_fn(traced))
        .fallback(|| async { ApiError::from(ServiceError::NotFound("route".into())) })
        .layer(DefaultBodyLimit::max(max_body))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use super::route_template;

    /// Every kind of route the listener serves is named by its template: the admin API's
    /// (from the OpenAPI document), the console's and the operational ones; other paths by
    /// nothing.
    #[test]
    fn requests_are_named_by_the_template_they_took() {
        for (path, template) in [
            ("/admin/v1/keys", "/admin/v1/keys"),
            ("/admin/v1/keys/key_1", "/admin/v1/keys/{id}"),
            ("/admin/v1/keys/key_1/revoke", "/admin/v1/keys/{id}/revoke"),
            ("/admin/v1/prices/missing", "/admin/v1/prices/missing"),
            ("/admin/v1/prices/gpt-4o", "/admin/v1/prices/{model}"),
            ("/ui/keys/key_1/rotate", "/ui/keys/{id}/rotate"),
            ("/ui/assets/ui.css", "/ui/assets/ui.css"),
            ("/openapi.json", "/openapi.json"),
            ("/healthz", "/healthz"),
            ("/metrics", "/metrics"),
            ("/nowhere", ""),
            ("/admin/v1/keys/key_1/nothing", ""),
        ] {
            assert_eq!(route_template(path), template, "{path}");
        }
    }
}
