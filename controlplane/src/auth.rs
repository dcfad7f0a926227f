//! Who is calling: admin passwords (argon2id), the JWTs handed out at login (HS256, short
//! lived) and the [`Caller`] extractor every protected handler takes.
//!
//! Roles: a platform admin may do everything; a tenant admin only sees and changes its own
//! tenant's objects (another tenant's object is 404, never 403, so ids do not leak); a viewer
//! reads everything and writes nothing (403).

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::state::AppState;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    PlatformAdmin,
    TenantAdmin,
    Viewer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::PlatformAdmin => "platform_admin",
            Role::TenantAdmin => "tenant_admin",
            Role::Viewer => "viewer",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "platform_admin" => Some(Role::PlatformAdmin),
            "tenant_admin" => Some(Role::TenantAdmin),
            "viewer" => Some(Role::Viewer),
            _ => None,
        }
    }
}

/// What a token says.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The admin user's id.
    pub sub: String,
    pub email: String,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    pub iat: u64,
    pub exp: u64,
}

/// The authenticated admin making a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub id: Option<uuid::Uuid>,
    pub email: String,
    pub role: Role,
    pub tenant_id: Option<String>,
}

impl Caller {
    /// The process itself (CLI, bootstrap): a platform admin named "system".
    pub fn system() -> Self {
        Self {
            id: None,
            email: "system".into(),
            role: Role::PlatformAdmin,
            tenant_id: None,
        }
    }

    /// Refuses viewers (403).
    pub fn require_writer(&self) -> Result<(), ApiError> {
        match self.role {
            Role::Viewer => Err(ApiError::Forbidden("viewers cannot change anything")),
            Role::PlatformAdmin | Role::TenantAdmin => Ok(()),
        }
    }

    /// Refuses tenant admins (403): platform-wide objects.
    pub fn require_platform_reader(&self) -> Result<(), ApiError> {
        match self.role {
            Role::TenantAdmin => Err(ApiError::Forbidden(
                "tenant admins manage only their tenant's keys",
            )),
            Role::PlatformAdmin | Role::Viewer => Ok(()),
        }
    }

    /// Platform admins only (403).
    pub fn require_platform_admin(&self) -> Result<(), ApiError> {
        match self.role {
            Role::PlatformAdmin => Ok(()),
            Role::TenantAdmin | Role::Viewer => {
                Err(ApiError::Forbidden("only platform admins may do this"))
            }
        }
    }

    /// May change the tenant `tenant_id` itself — its settings, its budget: platform admins
    /// only (a tenant admin must not raise its own limits). Viewers get 403; the admin of
    /// another tenant 404, as for any object of another tenant; the tenant's own admin 403.
    pub fn require_tenant_writer(&self, tenant_id: &str) -> Result<(), ApiError> {
        self.require_writer()?;
        if !self.sees_tenant(tenant_id) {
            return Err(ApiError::not_found("tenant", tenant_id));
        }
        self.require_platform_admin()
    }

    /// Whether the caller may see objects of `tenant_id`. Callers turn `false` into 404.
    pub fn sees_tenant(&self, tenant_id: &str) -> bool {
        match self.role {
            Role::PlatformAdmin | Role::Viewer => true,
            Role::TenantAdmin => self.tenant_id.as_deref() == Some(tenant_id),
        }
    }

    /// The tenant a tenant admin is confined to; `None` for the others.
    pub fn confined_to(&self) -> Option<&str> {
        match self.role {
            Role::TenantAdmin => self.tenant_id.as_deref(),
            Role::PlatformAdmin | Role::Viewer => None,
        }
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
            .ok_or(ApiError::Unauthorized("missing bearer token"))?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or(ApiError::Unauthorized("missing bearer token"))?;
        let claims = verify_token(&state.settings.jwt_secret, token.trim())?;
        Ok(Caller {
            id: claims.sub.parse().ok(),
            email: claims.email,
            role: claims.role,
            tenant_id: claims.tenant_id,
        })
    }
}

/// Signs a token for `claims`.
pub fn issue_token(secret: &[u8], claims: &Claims) -> Result<String, ApiError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| ApiError::Internal(format!("signing a token: {e}")))
}

/// Checks signature, algorithm and expiry (no leeway).
pub fn verify_token(secret: &[u8], token: &str) -> Result<Claims, ApiError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "sub"]);
    jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(secret), &validation)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                ApiError::Unauthorized("the token has expired")
            }
            _ => ApiError::Unauthorized("the token is invalid"),
        })
}

/// An argon2id PHC string for `password`.
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| ApiError::Internal(format!("hashing a password: {e}")))
}

/// Whether `password` matches a stored PHC string.
pub fn verify_password(password: &str, phc: &str) -> bool {
    Argon2::default()
        .verify_password(password.as_bytes(), phc)
        .is_ok()
}

/// A hash that no password matches in reasonable time, checked when the email is unknown so
/// that a login takes as long whether or not the account exists.
pub fn dummy_hash() -> &'static str {
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Zm9vYmFyYmF6cXV4Zm9vYmFyYmF6cXV4Zm9vYmFyYmE"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("anything", dummy_hash()));
    }

    #[test]
    fn tokens_round_trip_and_tampering_or_expiry_is_refused() {
        let secret = [7u8; 32];
        let now = chrono::Utc::now().timestamp() as u64;
        let claims = Claims {
            sub: uuid::Uuid::now_v7().to_string(),
            email: "a@example.com".into(),
            role: Role::Viewer,
            tenant_id: None,
            iat: now,
            exp: now + 60,
        };
        let token = issue_token(&secret, &claims).unwrap();
        assert_eq!(
            verify_token(&secret, &token).unwrap().email,
            "a@example.com"
        );
        assert!(verify_token(&[8u8; 32], &token).is_err());
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = parts[1].replacen('e', "f", 1);
        assert!(verify_token(&secret, &parts.join(".")).is_err());
        let expired = Claims {
            exp: now - 5,
            ..claims
        };
        let token = issue_token(&secret, &expired).unwrap();
        assert!(matches!(
            verify_token(&secret, &token),
            Err(ApiError::Unauthorized("the token has expired"))
        ));
    }
}
