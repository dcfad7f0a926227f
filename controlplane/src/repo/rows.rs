//! Rows as Postgres stores them, and their snapshot form. The service layer's views and the
//! snapshot builder both start from these, so a column is read one way everywhere. The
//! repository's `query_as!` statements fill them by column name, checked at compile time.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use switchboard_shared::price::PriceEntry;
use switchboard_shared::sealed::Sealed;
use switchboard_shared::secret::SecretRef;
use switchboard_shared::snapshot::{
    Budget, Deployment, DeploymentCaps, KeyStatus, ModelPolicy, PreviousSecret, Provider,
    ProviderKind, RateLimits, ResponseCache, Tenant, TenantStatus, Transforms, VirtualKey,
};

/// Stored limit columns as the snapshot's [`RateLimits`].
pub fn limits(rpm: Option<i64>, tpm: Option<i64>, concurrency: Option<i64>) -> RateLimits {
    RateLimits {
        rpm: rpm.map(clamp_u32),
        tpm: tpm.map(clamp_u32),
        concurrency: concurrency.map(clamp_u32),
    }
}

pub fn clamp_u32(v: i64) -> u32 {
    u32::try_from(v.max(0)).unwrap_or(u32::MAX)
}

/// Text columns holding a snake_case enum (checked by the schema).
pub fn parse_enum<T: serde::de::DeserializeOwned>(text: &str) -> Option<T> {
    serde_json::from_value(serde_json::Value::String(text.to_owned())).ok()
}

pub fn enum_text<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

#[derive(Debug, Clone)]
pub struct TenantRow {
    pub id: String,
    pub name: String,
    pub status: String,
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub concurrency: Option<i64>,
    pub budget: Option<Json<Budget>>,
    pub capture_content: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl TenantRow {
    pub fn status(&self) -> TenantStatus {
        parse_enum(&self.status).unwrap_or(TenantStatus::Suspended)
    }

    pub fn to_snapshot(&self) -> Tenant {
        Tenant {
            id: self.id.clone(),
            name: self.name.clone(),
            status: self.status(),
            limits: limits(self.rpm, self.tpm, self.concurrency),
            budget: self.budget.as_ref().map(|b| b.0.clone()),
            capture_content: self.capture_content,
        }
    }
}

#[derive(Debug, Clone)]
pub struct KeyRow {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub key_hash: String,
    pub display_prefix: String,
    pub status: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub allowed_models: Vec<String>,
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub concurrency: Option<i64>,
    pub budget: Option<Json<Budget>>,
    pub metadata: Json<BTreeMap<String, String>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The hash of the secret the last rotation replaced, accepted until `previous_expires_at`.
    pub previous_key_hash: Option<String>,
    pub previous_expires_at: Option<DateTime<Utc>>,
    /// The key's own response cache, in place of the model policies' (absent: theirs).
    pub cache: Option<Json<ResponseCache>>,
}

impl KeyRow {
    pub fn status(&self) -> KeyStatus {
        parse_enum(&self.status).unwrap_or(KeyStatus::Revoked)
    }

    pub fn to_snapshot(&self) -> VirtualKey {
        VirtualKey {
            id: self.id.clone(),
            tenant_id: self.tenant_id.clone(),
            name: self.name.clone(),
            key_hash: self.key_hash.clone(),
            display_prefix: self.display_prefix.clone(),
            status: self.status(),
            created_at: Some(self.created_at),
            expires_at: self.expires_at,
            allowed_models: self.allowed_models.clone(),
            limits: limits(self.rpm, self.tpm, self.concurrency),
            budget: self.budget.as_ref().map(|b| b.0.clone()),
            metadata: self.metadata.0.clone(),
            cache: self.cache.as_ref().map(|c| c.0),
            previous_secret: self.previous_secret(),
        }
    }

    /// The rotated-out secret, when the last rotation left one in its grace window.
    pub fn previous_secret(&self) -> Option<PreviousSecret> {
        Some(PreviousSecret {
            key_hash: self.previous_key_hash.clone()?,
            expires_at: self.previous_expires_at?,
        })
    }
}

/// A provider's settings beyond one credential, as stored in `providers.extra`. Every
/// credential is sealed.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProviderExtra {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_access_key_id: Option<Sealed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_secret_access_key: Option<Sealed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_session_token: Option<Sealed>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<SealedKey>,
}

/// One of several weighted credentials, sealed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SealedKey {
    pub key: Sealed,
    pub weight: u32,
}

#[derive(Debug, Clone)]
pub struct ProviderRow {
    pub id: String,
    pub kind: String,
    pub base_url: Option<String>,
    pub credential: Option<Json<Sealed>>,
    pub extra: Json<ProviderExtra>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl ProviderRow {
    /// `None` when the stored kind is one this build does not know.
    pub fn kind(&self) -> Option<ProviderKind> {
        parse_enum(&self.kind)
    }

    pub fn to_snapshot(&self) -> Option<Provider> {
        Some(Provider {
            id: self.id.clone(),
            kind: self.kind()?,
            base_url: self.base_url.clone(),
            api_key: self
                .credential
                .as_ref()
                .map(|c| SecretRef::Sealed(c.0.clone())),
            api_version: self.extra.0.api_version.clone(),
            region: self.extra.0.region.clone(),
            project: self.extra.0.project.clone(),
            aws_access_key_id: sealed(self.extra.0.aws_access_key_id.as_ref()),
            aws_secret_access_key: sealed(self.extra.0.aws_secret_access_key.as_ref()),
            aws_session_token: sealed(self.extra.0.aws_session_token.as_ref()),
            api_keys: self
                .extra
                .0
                .api_keys
                .iter()
                .map(|k| switchboard_shared::snapshot::ProviderKey {
                    key: SecretRef::Sealed(k.key.clone()),
                    weight: k.weight,
                })
                .collect(),
        })
    }
}

fn sealed(s: Option<&Sealed>) -> Option<SecretRef> {
    s.map(|s| SecretRef::Sealed(s.clone()))
}

#[derive(Debug, Clone)]
pub struct DeploymentRow {
    pub id: String,
    pub model: String,
    pub provider_id: String,
    pub upstream_model: String,
    pub weight: i64,
    pub tags: Vec<String>,
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub concurrency: Option<i64>,
    pub priority: i64,
    pub price: Option<Json<PriceEntry>>,
    pub caps: Option<Json<DeploymentCaps>>,
    pub transforms: Option<Json<Transforms>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl DeploymentRow {
    pub fn to_snapshot(&self) -> Deployment {
        Deployment {
            id: self.id.clone(),
            model: self.model.clone(),
            provider: self.provider_id.clone(),
            upstream_model: self.upstream_model.clone(),
            weight: clamp_u32(self.weight),
            tags: self.tags.clone(),
            limits: limits(self.rpm, self.tpm, self.concurrency),
            priority: clamp_u32(self.priority),
            price: self.price.as_ref().map(|p| p.0.clone()),
            caps: self.caps.as_ref().map(|c| c.0),
            transforms: self
                .transforms
                .as_ref()
                .map(|t| t.0.clone())
                .unwrap_or_default(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PolicyRow {
    pub model: String,
    pub policy: Json<ModelPolicy>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

// The admin users and the audit log are answered as stored: their rows are their API views
// (no secret in either), so they carry their serde and OpenAPI derives here.

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AdminView {
    pub id: uuid::Uuid,
    pub email: String,
    /// `platform_admin`, `tenant_admin` or `viewer`.
    pub role: String,
    pub tenant_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor_id: Option<uuid::Uuid>,
    pub actor: String,
    pub action: String,
    pub object_type: String,
    pub object_id: String,
    pub tenant_id: Option<String>,
    pub revision: i64,
    /// The object before the change, secrets redacted.
    #[schema(value_type = Option<Object>)]
    pub before: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    pub after: Option<serde_json::Value>,
}
