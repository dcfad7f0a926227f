//! `POST /admin/v1/auth/login`: email and password for a short-lived JWT. Rate limited per
//! account and per client address, with a cap on password checks at once (429 with
//! `Retry-After`; `service::login_guard`).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::body::Body;
use super::error::{ApiError, Problem};
use crate::service::auth;
use crate::state::AppState;

/// The client's address when the server knows it (absent for in-process calls). Forwarding
/// headers are not trusted: behind a proxy every client shares the proxy's address limit.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let addr = parts.extensions.get::<ConnectInfo<SocketAddr>>();
        Ok(Peer(addr.map(|ConnectInfo(a)| a.ip())))
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LoginResponse {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the token expires.
    pub expires_in: u64,
}

#[utoipa::path(post, path = "/auth/login", tag = "auth", request_body = LoginRequest, security(()),
    responses((status = 200, body = LoginResponse), (status = 401, body = Problem),
        (status = 422, body = Problem), (status = 429, body = Problem)))]
pub async fn login(
    State(state): State<AppState>,
    Peer(ip): Peer,
    Body(req): Body<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    let settings = &state.settings;
    let cx = auth::LoginCtx {
        jwt_secret: &settings.jwt_secret,
        ttl: settings.token_ttl,
        auth: &settings.admin_auth,
        guard: &state.login_guard,
        ip,
    };
    let token = auth::login(&state.pool, cx, &req.email, req.password).await?;
    Ok(Json(LoginResponse {
        access_token: token.access_token,
        token_type: "Bearer",
        expires_in: token.expires_in,
    }))
}
