//! Who is acting: admin passwords (argon2id), the JWTs handed out at login (HS256, short
//! lived, with issuer, audience and the admin's token version), the session check every
//! authenticated request makes ([`session_actor`]: the admin's current role, tenant and token
//! version, read from Postgres, so a deleted, demoted or revoked admin loses its rights at
//! once), the [`Actor`] every service function is given — a plain value that the admin API
//! makes from a token and the CLI and the bootstrap make with [`Actor::system`] — and what
//! each role may do.
//!
//! Roles: a platform admin may do everything; a tenant admin only sees and changes its own
//! tenant's objects (another tenant's object is 404, never 403, so ids do not leak); a viewer
//! reads everything and writes nothing (403).

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::error::{Error, Result};
use super::login_guard::LoginGuard;
use crate::config::AdminAuthSettings;

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
    /// The admin's token version when the token was issued; a bump ends the session.
    pub ver: i64,
    pub iss: String,
    pub aud: String,
}

/// Who a change is made by: an authenticated admin, or the process itself.
#[derive(Debug, Clone)]
pub struct Actor {
    pub id: Option<uuid::Uuid>,
    pub email: String,
    pub role: Role,
    pub tenant_id: Option<String>,
}

impl Actor {
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
    pub fn require_writer(&self) -> Result<()> {
        match self.role {
            Role::Viewer => Err(Error::Forbidden("viewers cannot change anything")),
            Role::PlatformAdmin | Role::TenantAdmin => Ok(()),
        }
    }

    /// Refuses tenant admins (403): platform-wide objects.
    pub fn require_platform_reader(&self) -> Result<()> {
        match self.role {
            Role::TenantAdmin => Err(Error::Forbidden(
                "tenant admins manage only their tenant's keys",
            )),
            Role::PlatformAdmin | Role::Viewer => Ok(()),
        }
    }

    /// Platform admins only (403).
    pub fn require_platform_admin(&self) -> Result<()> {
        match self.role {
            Role::PlatformAdmin => Ok(()),
            Role::TenantAdmin | Role::Viewer => {
                Err(Error::Forbidden("only platform admins may do this"))
            }
        }
    }

    /// May change the tenant `tenant_id` itself — its settings, its budget: platform admins
    /// only (a tenant admin must not raise its own limits). Viewers get 403; the admin of
    /// another tenant 404, as for any object of another tenant; the tenant's own admin 403.
    pub fn require_tenant_writer(&self, tenant_id: &str) -> Result<()> {
        self.require_writer()?;
        if !self.sees_tenant(tenant_id) {
            return Err(Error::not_found("tenant", tenant_id));
        }
        self.require_platform_admin()
    }

    /// Whether the actor may see objects of `tenant_id`. Refusals turn `false` into 404.
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

/// Signs a token for `claims`.
pub fn issue_token(secret: &[u8], claims: &Claims) -> Result<String> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| Error::Internal(format!("signing a token: {e}")))
}

/// Checks signature, algorithm, expiry (no leeway), issuer and audience.
pub fn verify_token(secret: &[u8], auth: &AdminAuthSettings, token: &str) -> Result<Claims> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
    validation.set_issuer(&[auth.issuer.as_str()]);
    validation.set_audience(&[auth.audience.as_str()]);
    jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(secret), &validation)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                Error::Unauthenticated("the token has expired")
            }
            _ => Error::Unauthenticated("the token is invalid"),
        })
}

/// An argon2id PHC string for `password`.
pub fn hash_password(password: &str) -> Result<String> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| Error::Internal(format!("hashing a password: {e}")))
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

/// A token handed out at login.
#[derive(Debug)]
pub struct Token {
    pub access_token: String,
    /// Seconds until it expires.
    pub expires_in: u64,
}

/// What a login needs besides the request: the JWT settings and the replica's guard.
#[derive(Clone, Copy)]
pub struct LoginCtx<'a> {
    pub jwt_secret: &'a [u8],
    pub ttl: std::time::Duration,
    pub auth: &'a AdminAuthSettings,
    pub guard: &'a LoginGuard,
    /// The client's address, when known (rate limited per address).
    pub ip: Option<std::net::IpAddr>,
}

/// Checks `email` and `password` and signs a token valid for `ttl`. A wrong password and an
/// unknown email take as long and answer alike. Rate limits and the password-check cap answer
/// 429 before any hashing.
pub async fn login(
    pool: &sqlx::PgPool,
    cx: LoginCtx<'_>,
    email: &str,
    password: String,
) -> Result<Token> {
    cx.guard.admit(email, cx.ip)?;
    let slot = cx.guard.check_slot()?;
    let row = crate::repo::admins::credentials(pool, email).await?;
    let phc = row
        .as_ref()
        .map_or_else(|| dummy_hash().to_owned(), |r| r.password_hash.clone());
    // argon2 takes tens of milliseconds of CPU: keep it off the async workers. The slot
    // travels with the check, so it is held until the hash is done even if the client left.
    let matches = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        verify_password(&password, &phc)
    })
    .await
    .unwrap_or(false);
    let Some(admin) = row.filter(|_| matches) else {
        return Err(Error::Unauthenticated("wrong email or password"));
    };
    let role = Role::parse(&admin.role).ok_or(Error::Internal(format!(
        "admin {} has an unknown role",
        admin.id
    )))?;
    let now = u64::try_from(chrono::Utc::now().timestamp()).unwrap_or(0);
    let ttl = cx.ttl.as_secs();
    let claims = Claims {
        sub: admin.id.to_string(),
        email: admin.email,
        role,
        tenant_id: admin.tenant_id,
        iat: now,
        exp: now + ttl,
        ver: admin.token_version,
        iss: cx.auth.issuer.clone(),
        aud: cx.auth.audience.clone(),
    };
    Ok(Token {
        access_token: issue_token(cx.jwt_secret, &claims)?,
        expires_in: ttl,
    })
}

/// The actor a verified token's claims stand for, as the admin is now: its current role and
/// tenant from Postgres (one primary-key read). A deleted admin, or a token issued before the
/// admin's token version was bumped, is 401.
pub async fn session_actor(pool: &sqlx::PgPool, claims: &Claims) -> Result<Actor> {
    let id: uuid::Uuid = claims
        .sub
        .parse()
        .map_err(|_| Error::Unauthenticated("the token is invalid"))?;
    let Some(now) = crate::repo::admins::session(pool, id).await? else {
        return Err(Error::Unauthenticated("the session has ended"));
    };
    if now.token_version != claims.ver {
        return Err(Error::Unauthenticated("the session has been revoked"));
    }
    let role = Role::parse(&now.role)
        .ok_or_else(|| Error::Internal(format!("admin {id} has an unknown role")))?;
    Ok(Actor {
        id: Some(id),
        email: now.email,
        role,
        tenant_id: now.tenant_id,
    })
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
        let auth = AdminAuthSettings::default();
        let now = chrono::Utc::now().timestamp() as u64;
        let claims = Claims {
            sub: uuid::Uuid::now_v7().to_string(),
            email: "a@example.com".into(),
            role: Role::Viewer,
            tenant_id: None,
            iat: now,
            exp: now + 60,
            ver: 0,
            iss: auth.issuer.clone(),
            aud: auth.audience.clone(),
        };
        let token = issue_token(&secret, &claims).unwrap();
        assert_eq!(
            verify_token(&secret, &auth, &token).unwrap().email,
            "a@example.com"
        );
        assert!(verify_token(&[8u8; 32], &auth, &token).is_err());
        for (iss, aud) in [
            ("someone-else", "switchboard-admin"),
            ("switchboard-controlplane", "another-app"),
        ] {
            let foreign = Claims {
                iss: iss.into(),
                aud: aud.into(),
                ..claims.clone()
            };
            let token = issue_token(&secret, &foreign).unwrap();
            assert!(verify_token(&secret, &auth, &token).is_err(), "{iss} {aud}");
        }
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = parts[1].replacen('e', "f", 1);
        assert!(verify_token(&secret, &auth, &parts.join(".")).is_err());
        let expired = Claims {
            exp: now - 5,
            ..claims
        };
        let token = issue_token(&secret, &expired).unwrap();
        assert!(matches!(
            verify_token(&secret, &auth, &token),
            Err(Error::Unauthenticated("the token has expired"))
        ));
    }
}
