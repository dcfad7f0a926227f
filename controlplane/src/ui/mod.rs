//! The admin console at `/ui` on the admin listener: server-rendered HTML (maud) with one
//! embedded stylesheet and one tiny script, so the control-plane binary alone serves it and
//! nothing is built with a JavaScript toolchain (docs/ui.md says why).
//!
//! A sibling of [`crate::api`] in the layers: handlers call [`crate::service`] with the
//! session's [`crate::service::Actor`], exactly as the API's handlers do with a token's, and
//! never the repository. Pages: [`pages`] (overview, budgets, spend, fleet, audit), [`prices`],
//! [`requests`] (the request log and one request's attempts), [`health`] (deployment health
//! and the test call),
//! [`resources`] (tenants, keys, providers, deployments, model policies); sign-in and the
//! session in [`session`]; single sign-on in [`oidc`]; the frame and shared pieces in [`html`].

pub mod health;
pub mod html;
pub mod oidc;
pub mod pages;
pub mod prices;
pub mod requests;
pub mod resources;
pub mod session;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{MethodRouter, get, post};
use maud::html;

use crate::service::auth::{self, verify_token};
use crate::state::AppState;
use html::{FormErrors, document};
use session::{COOKIE, cookie, cross_origin, fields, set_cookie};

const CSS: &str = include_str!("assets/ui.css");
const JS: &str = include_str!("assets/ui.js");

/// The console's routes: each template with its handlers. One table for the admin
/// listener's router ([`router`]) and for the templates its traces name ([`templates`]).
fn routes() -> Vec<(&'static str, MethodRouter<AppState>)> {
    vec![
        ("/ui", get(pages::overview)),
        ("/ui/", get(|| async { Redirect::permanent("/ui") })),
        ("/ui/login", get(login_form).post(login)),
        ("/ui/logout", post(logout)),
        ("/ui/sso/start", get(oidc::start_sso)),
        ("/ui/sso/callback", get(oidc::callback)),
        (
            "/ui/tenants",
            get(resources::tenants_get).post(resources::tenants_post),
        ),
        (
            "/ui/keys",
            get(resources::keys_get).post(resources::keys_post),
        ),
        (
            "/ui/tenants/{id}",
            get(resources::tenant_get).post(resources::tenant_post),
        ),
        (
            "/ui/keys/{id}",
            get(resources::key_get).post(resources::key_post),
        ),
        ("/ui/keys/{id}/revoke", post(resources::keys_revoke)),
        ("/ui/keys/{id}/rotate", post(resources::key_rotate)),
        (
            "/ui/providers",
            get(resources::providers_get).post(resources::providers_post),
        ),
        (
            "/ui/deployments",
            get(resources::deployments_get).post(resources::deployments_post),
        ),
        ("/ui/deployments/health", get(health::list)),
        ("/ui/deployments/{id}/health", get(health::detail)),
        ("/ui/deployments/{id}/test", post(health::test)),
        (
            "/ui/models",
            get(resources::models_get).post(resources::models_post),
        ),
        ("/ui/budgets", get(pages::budgets)),
        ("/ui/spend", get(pages::spend)),
        ("/ui/prices", get(prices::prices_get)),
        ("/ui/prices/override", post(prices::override_post)),
        ("/ui/prices/clear", post(prices::clear_post)),
        ("/ui/prices/sync", post(prices::sync_post)),
        ("/ui/fleet", get(pages::fleet_page)),
        ("/ui/audit", get(pages::audit)),
        ("/ui/requests", get(requests::list)),
        ("/ui/requests/{id}", get(requests::detail)),
        (
            "/ui/assets/ui.css",
            get(|| async { asset(CSS, "text/css; charset=utf-8") }),
        ),
        (
            "/ui/assets/ui.js",
            get(|| async { asset(JS, "text/javascript; charset=utf-8") }),
        ),
    ]
}

/// The console's routes, for the admin listener's router.
pub fn router() -> Router<AppState> {
    routes()
        .into_iter()
        .fold(Router::new(), |router, (path, handlers)| {
            router.route(path, handlers)
        })
}

/// The console's route templates.
pub fn templates() -> Vec<&'static str> {
    routes().into_iter().map(|(path, _)| path).collect()
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    response
}

/// The sign-in page, with `error` under the form.
fn login_page(state: &AppState, email: &str, errors: &FormErrors) -> Response {
    let sso = state.settings.ui.oidc.as_ref().map(|o| o.label.clone());
    let body = html! {
        main.login #main {
            h1 { "Switchboard" }
            (html::general(errors))
            form method="post" action="/ui/login" {
                (html::input(errors, "email", "Email", "email", email))
                div {
                    label for="f-password" { "Password" }
                    input #f-password name="password" type="password" required autocomplete="current-password";
                }
                button type="submit" { "Sign in" }
            }
            @if let Some(label) = sso {
                p { a #sso href="/ui/sso/start" { (label) } }
            }
        }
    };
    document("Sign in", body)
}

async fn login_form(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    let signed_in = cookie(&headers, COOKIE).is_some_and(|t| {
        verify_token(&state.settings.jwt_secret, &state.settings.admin_auth, &t).is_ok()
    });
    if signed_in {
        return Redirect::to("/ui").into_response();
    }
    login_page(&state, "", &FormErrors::default())
}

/// `POST /ui/login`: the API's login, its token kept in the session cookie.
async fn login(State(state): State<AppState>, req: Request) -> Response {
    if let Some(refused) = cross_origin(req.headers()) {
        return refused;
    }
    let ip = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|axum::extract::ConnectInfo(a)| a.ip());
    let f = match fields(req, &state).await {
        Ok(f) => f,
        Err(r) => return r,
    };
    let email = f.text("email");
    let password = f.0.get("password").cloned().unwrap_or_default();
    let settings = &state.settings;
    let cx = auth::LoginCtx {
        jwt_secret: &settings.jwt_secret,
        ttl: settings.token_ttl,
        auth: &settings.admin_auth,
        guard: &state.login_guard,
        ip,
    };
    match auth::login(&state.pool, cx, &email, password).await {
        Ok(token) => match verify_token(
            &settings.jwt_secret,
            &settings.admin_auth,
            &token.access_token,
        ) {
            Ok(claims) => session::start(&state, &claims, Redirect::to("/ui").into_response()),
            Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        },
        Err(e) => {
            let mut page = login_page(&state, &email, &FormErrors::from(e));
            *page.status_mut() = StatusCode::UNAUTHORIZED;
            page
        }
    }
}

/// `POST /ui/logout`: clears the cookie (the token itself lapses at its expiry).
async fn logout(State(state): State<AppState>, form: session::PostForm) -> Response {
    let _ = form.session;
    let mut response = Redirect::to("/ui/login").into_response();
    response.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(&state, COOKIE, "", "/ui", "Strict", 0),
    );
    response
}
