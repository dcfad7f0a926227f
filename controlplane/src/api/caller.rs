//! The [`Caller`] extractor every protected handler takes: the bearer JWT, verified, as the
//! service layer's [`Actor`]. Role checks are the actor's (`caller.require_writer()?`).

use std::ops::Deref;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::error::ApiError;
use crate::service::auth::verify_token;
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
        let claims = verify_token(&state.settings.jwt_secret, token.trim())?;
        Ok(Caller(Actor::from_claims(claims)))
    }
}
