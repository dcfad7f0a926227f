//! The [`Caller`] extractor every protected handler takes: the bearer JWT, verified (signature,
//! expiry, issuer, audience), then checked against the admin as it is now (its current role,
//! tenant and token version: [`session_actor`]), as the service layer's [`Actor`]. Role checks are the actor's (`caller.require_writer()?`).

use std::ops::Deref;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::error::ApiError;
use crate::service::auth::{session_actor, verify_token};
use crate::service::{Actor, Error};
use crate::state::AppState;

/// The authenticated admin making a request.
#[derive(Debug, Clone)]
pub struct Caller(pub Actor);

impl Deref for Caller {
    type Target = Actor;

    fn deref(&self) -> &Actor {
        &self.0
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or(Error::Unauthenticated("missing bearer token"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(Error::Unauthenticated("missing bearer token"))?;
        let settings = &state.settings;
        let claims = verify_token(&settings.jwt_secret, &settings.admin_auth, token.trim())?;
        Ok(Caller(session_actor(&state.pool, &claims).await?))
    }
}
