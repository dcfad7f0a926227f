//! Virtual keys. The secret is made here and returned once, by create and rotate; Postgres and
//! snapshots hold only its keyed hash and display prefix. A tenant admin sees and changes only
//! its tenant's keys; another tenant's key is "not found".

use std::collections::BTreeMap;

use aes_gcm::aead::OsRng;
use aes_gcm::aead::rand_core::RngCore;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use switchboard_shared::keys::{display_prefix, hash_key_hex};
use switchboard_shared::snapshot::{Budget, KeyStatus, RateLimits, ResponseCache};
use utoipa::ToSchema;

use super::crud::{self, resource};
use super::write::{Committed, Write};
use super::{Actor, Ctx, Error, Result, double_option};
use crate::repo;
use crate::repo::keys::{KeyFields, SecretFields};
pub use crate::repo::rows::KeyRow;
use crate::repo::rows::{TenantRow, limits};

/// What every virtual key starts with.
pub const KEY_PREFIX: &str = "sk-sb-";

/// A fresh secret: `sk-sb-` and 32 URL-safe characters (192 random bits).
pub fn new_secret() -> String {
    let mut bytes = [0u8; 24];
    OsRng.fill_bytes(&mut bytes);
    format!("{KEY_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// A key as listed: never its secret or hash.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct KeyView {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    /// The first characters of the secret.
    pub display_prefix: String,
    #[schema(value_type = String, example = "active")]
    pub status: KeyStatus,
    pub expires_at: Option<DateTime<Utc>>,
    pub allowed_models: Vec<String>,
    #[schema(value_type = super::RateLimitsBody)]
    pub limits: RateLimits,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<super::budgets::BudgetBody>)]
    pub budget: Option<Budget>,
    pub metadata: BTreeMap<String, String>,
    /// The key's own exact response cache (`enabled`, `ttl_seconds`, `max_entry_bytes`), used
    /// for its requests in place of each model policy's; absent: the model policy decides.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub cache: Option<ResponseCache>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// Until when the secret replaced by the last rotation still works (its grace window);
    /// absent when no old secret works.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
}

impl From<&KeyRow> for KeyView {
    fn from(r: &KeyRow) -> Self {
        Self {
            id: r.id.clone(),
            tenant_id: r.tenant_id.clone(),
            name: r.name.clone(),
            display_prefix: r.display_prefix.clone(),
            status: r.status(),
            expires_at: r.expires_at,
            allowed_models: r.allowed_models.clone(),
            limits: limits(r.rpm, r.tpm, r.concurrency),
            budget: r.budget.as_ref().map(|b| b.0.clone()),
            metadata: r.metadata.0.clone(),
            cache: r.cache.as_ref().map(|c| c.0),
            created_at: r.created_at,
            updated_at: r.updated_at,
            revoked_at: r.revoked_at,
            previous_secret_expires_at: r.previous_expires_at.filter(|at| *at > Utc::now()),
        }
    }
}

/// The answer to create and rotate: the key, with its secret this one time.
#[derive(Debug, Serialize, ToSchema)]
pub struct KeyWithSecret {
    /// The secret. Shown once; store it now.
    pub key: String,
    #[serde(flatten)]
    pub virtual_key: KeyView,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Required for platform admins; a tenant admin's own tenant when absent.
    pub tenant_id: Option<String>,
    #[serde(default)]
    pub name: String,
    pub expires_at: Option<DateTime<Utc>>,
    /// Public model names; empty means every model.
    #[serde(default)]
    pub allowed_models: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Option<super::RateLimitsBody>)]
    pub limits: RateLimits,
    #[schema(value_type = Option<super::budgets::BudgetBody>)]
    pub budget: Option<Budget>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The key's own exact response cache, in place of each model policy's:
    /// `{enabled, ttl_seconds, max_entry_bytes}` (defaults true, 300, 1048576); `enabled:
    /// false` turns caching off for the key. Absent: the model policy decides.
    #[schema(value_type = Option<Object>)]
    pub cache: Option<ResponseCache>,
}

/// Fields to change; absent fields stay, `null` clears `expires_at`, `budget` and `cache`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub expires_at: Option<Option<DateTime<Utc>>>,
    pub allowed_models: Option<Vec<String>>,
    #[schema(value_type = Option<super::RateLimitsBody>)]
    pub limits: Option<RateLimits>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<super::budgets::BudgetBody>)]
    pub budget: Option<Option<Budget>>,
    pub metadata: Option<BTreeMap<String, String>>,
    /// The key's own response cache (see `CreateKey`); `null`: the model policy decides.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Object>)]
    pub cache: Option<Option<ResponseCache>>,
}

/// The longest grace window a rotation may give the old secret: one week.
pub const MAX_GRACE_MINUTES: u32 = 7 * 24 * 60;

/// How to rotate: how long the old secret keeps working.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// Minutes the old secret keeps working beside the new one (0, the default: it stops at
    /// once; at most 10080, a week). A later rotation replaces the old secret it left.
    #[serde(default)]
    pub grace_minutes: u32,
}

// Deleting a key removes it from the next snapshot. It cannot come back: data planes install
// only snapshots newer than the one they hold, the key id (UUID v7) is never reused, and its
// secret's hash (192 random bits) is never made again; the audit log keeps the deleted row.
resource!(KeyRow => KeyView, repo: keys, noun: "virtual key", object_type: "virtual_key",
    section: "virtual_keys", tenant: |r| Some(&r.tenant_id), removed_by: delete);

/// A new secret's stored form, with the secret.
fn secret_fields(pepper: &[u8], secret: &str) -> (String, String) {
    (hash_key_hex(pepper, secret), display_prefix(secret))
}

/// Creates a key with a fresh secret under `pepper`; a tenant admin's own tenant when the
/// request names none.
pub async fn create(
    cx: Ctx<'_>,
    actor: &Actor,
    pepper: &[u8],
    req: CreateKey,
) -> Result<(KeyWithSecret, Committed)> {
    let tenant_id = match (&req.tenant_id, actor.confined_to()) {
        (Some(t), _) => t.clone(),
        (None, Some(own)) => own.to_owned(),
        (None, None) => return Err(Error::invalid("tenant_id", "is required")),
    };
    let mut w = Write::begin(cx.pool, actor).await?;
    // Another tenant's id reads exactly like an unknown one.
    if !crud::exists::<TenantRow>(w.conn(), &tenant_id).await? || !actor.sees_tenant(&tenant_id) {
        return Err(Error::invalid("tenant_id", "unknown tenant"));
    }
    let secret = new_secret();
    let (key_hash, display_prefix) = secret_fields(pepper, &secret);
    let id = uuid::Uuid::now_v7().to_string();
    let fields = KeyFields {
        name: &req.name,
        expires_at: req.expires_at,
        allowed_models: &req.allowed_models,
        rpm: req.limits.rpm.map(i64::from),
        tpm: req.limits.tpm.map(i64::from),
        concurrency: req.limits.concurrency.map(i64::from),
        budget: req.budget.as_ref(),
        metadata: &req.metadata,
        cache: req.cache.as_ref(),
    };
    let secret_fields = SecretFields {
        key_hash: &key_hash,
        display_prefix: &display_prefix,
    };
    let row = repo::keys::insert(w.conn(), &id, &tenant_id, &secret_fields, &fields).await?;
    let (view, committed) = crud::saved(cx, w, &id, None, &row).await?;
    Ok((with_secret(secret, view), committed))
}

fn with_secret(key: String, virtual_key: KeyView) -> KeyWithSecret {
    KeyWithSecret { key, virtual_key }
}

/// Changes the fields present in the request.
impl crud::Edit<KeyRow> for UpdateKey {
    async fn apply(self, w: &mut Write, id: &str, before: &KeyRow) -> Result<KeyRow> {
        let req = self;
        let limits = req
            .limits
            .unwrap_or(limits(before.rpm, before.tpm, before.concurrency));
        let budget = match req.budget {
            Some(b) => b,
            None => before.budget.as_ref().map(|b| b.0.clone()),
        };
        let cache = req.cache.unwrap_or(before.cache.as_ref().map(|c| c.0));
        let fields = KeyFields {
            name: req.name.as_ref().unwrap_or(&before.name),
            expires_at: req.expires_at.unwrap_or(before.expires_at),
            allowed_models: req
                .allowed_models
                .as_ref()
                .unwrap_or(&before.allowed_models),
            rpm: limits.rpm.map(i64::from),
            tpm: limits.tpm.map(i64::from),
            concurrency: limits.concurrency.map(i64::from),
            budget: budget.as_ref(),
            metadata: req.metadata.as_ref().unwrap_or(&before.metadata.0),
            cache: cache.as_ref(),
        };
        Ok(repo::keys::update(w.conn(), id, &fields).await?)
    }
}

/// The tail of revoke and rotate, which have no body: snapshot problems keep their snapshot
/// paths.
async fn finish_without_body(
    cx: Ctx<'_>,
    w: Write,
    action: &str,
    before: &KeyRow,
    row: &KeyRow,
) -> Result<Committed> {
    let change = crud::change(action, &row.id, Some(before), Some(row));
    w.finish(cx.publisher, change, None).await
}

pub async fn revoke(cx: Ctx<'_>, actor: &Actor, id: &str) -> Result<(KeyView, Committed)> {
    let (mut w, before) = crud::begin::<KeyRow>(cx, actor, id).await?;
    let row = repo::keys::revoke(w.conn(), id).await?;
    let committed = finish_without_body(cx, w, "revoke", &before, &row).await?;
    Ok((KeyView::from(&row), committed))
}

/// Gives the key a fresh secret, the old one working on for `req.grace_minutes`; a revoked
/// key cannot be rotated.
pub async fn rotate(
    cx: Ctx<'_>,
    actor: &Actor,
    pepper: &[u8],
    id: &str,
    req: RotateKey,
) -> Result<(KeyWithSecret, Committed)> {
    if req.grace_minutes > MAX_GRACE_MINUTES {
        return Err(Error::invalid(
            "grace_minutes",
            format!("must be at most {MAX_GRACE_MINUTES} (a week)"),
        ));
    }
    let (mut w, before) = crud::begin::<KeyRow>(cx, actor, id).await?;
    if before.status() == KeyStatus::Revoked {
        return Err(Error::Conflict("a revoked key cannot be rotated".into()));
    }
    let secret = new_secret();
    let (key_hash, display_prefix) = secret_fields(pepper, &secret);
    let secret_fields = SecretFields {
        key_hash: &key_hash,
        display_prefix: &display_prefix,
    };
    let row = repo::keys::set_secret(w.conn(), id, &secret_fields, req.grace_minutes).await?;
    let committed = finish_without_body(cx, w, "rotate", &before, &row).await?;
    Ok((with_secret(secret, KeyView::from(&row)), committed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_have_the_documented_shape_and_differ() {
        let a = new_secret();
        assert!(a.starts_with(KEY_PREFIX));
        let tail = &a[KEY_PREFIX.len()..];
        assert_eq!(tail.len(), 32);
        assert!(
            tail.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
        assert_ne!(a, new_secret());
    }
}
