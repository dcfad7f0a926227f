//! `POST /admin/v1/auth/login`: email and password for a short-lived JWT.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::{Claims, Role, dummy_hash, issue_token, verify_password};
use crate::body::Body;
use crate::error::{ApiError, Problem};
use crate::state::AppState;

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
    responses((status = 200, body = LoginResponse), (status = 401, body = Problem)))]
pub async fn login(
    State(state): State<AppState>,
    Body(req): Body<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    let row: Option<(uuid::Uuid, String, String, String, Option<String>)> = sqlx::query_as(
        "SELECT id, email, password_hash, role, tenant_id FROM admin_users WHERE lower(email) = lower($1)",
    )
    .bind(&req.email)
    .fetch_optional(&state.pool)
    .await?;
    let phc = row
        .as_ref()
        .map_or_else(|| dummy_hash().to_owned(), |r| r.2.clone());
    let password = req.password;
    // argon2 takes tens of milliseconds of CPU: keep it off the async workers.
    let matches = tokio::task::spawn_blocking(move || verify_password(&password, &phc))
        .await
        .unwrap_or(false);
    let Some((id, email, _, role, tenant_id)) = row.filter(|_| matches) else {
        return Err(ApiError::Unauthorized("wrong email or password"));
    };
    let role = Role::parse(&role).ok_or(ApiError::Internal(format!(
        "admin {id} has an unknown role"
    )))?;
    let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
    let ttl = state.settings.token_ttl.as_secs();
    let claims = Claims {
        sub: id.to_string(),
        email,
        role,
        tenant_id,
        iat: now,
        exp: now + ttl,
    };
    Ok(Json(LoginResponse {
        access_token: issue_token(&state.settings.jwt_secret, &claims)?,
        token_type: "Bearer",
        expires_in: ttl,
    }))
}
