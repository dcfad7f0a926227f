//! Who is acting: admin passwords (argon2id), the JWTs handed out at login (HS256, short
//! lived), the [`Actor`] every service function is given — a plain value that the admin API
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

    /// The actor a token's claims name.
    pub fn from_claims(claims: Claims) -> Self {
        Self {
            id: claims.sub.parse().ok(),
            email: claims.email,
            role: claims.role,
            tenant_id: claims.tenant_id,
        }
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

/// Checks signature, algorithm and expiry (no leeway).
pub fn verify_token(secret: &[u8], token: &str) -> Result<Claims> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = 0;
    validation.set_required_spec_claims(&["exp", "sub"]);
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

/// Checks `email` and `password` and signs a token valid for `ttl`. A wrong password and an
/// unknown email take as long and answer alike.
pub async fn login(
    pool: &sqlx::PgPool,
    jwt_secret: &[u8],
    ttl: std::time::Duration,
    email: &str,
    password: String,
) -> Result<Token> {
    let row = crate::repo::admins::credentials(pool, email).await?;
    let phc = row
        .as_ref()
        .map_or_else(|| dummy_hash().to_owned(), |r| r.password_hash.clone());
    // argon2 takes tens of milliseconds of CPU: keep it off the async workers.
    let matches = tokio::task::spawn_blocking(move || verify_password(&password, &phc))
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
    let ttl = ttl.as_secs();
    let claims = Claims {
        sub: admin.id.to_string(),
        email: admin.email,
        role,
        tenant_id: admin.tenant_id,
        iat: now,
        exp: now + ttl,
    };
    Ok(Token {
        access_token: issue_token(jwt_secret, &claims)?,
        expires_in: ttl,
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
            Err(Error::Unauthenticated("the token has expired"))
        ));
    }
}
