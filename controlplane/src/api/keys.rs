//! Virtual keys: `/admin/v1/keys`. The secret is returned once, by create and rotate; Postgres
//! and snapshots hold only its keyed hash and display prefix. Tenant admins see and change
//! only their tenant's keys; another tenant's key is 404.

use std::collections::BTreeMap;

use aes_gcm::aead::OsRng;
use aes_gcm::aead::rand_core::RngCore;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json as Jsonb;
use switchboard_shared::keys::{display_prefix, hash_key_hex};
use switchboard_shared::snapshot::{Budget, KeyStatus, RateLimits};
use utoipa::ToSchema;

use super::crud::{self, ListSql, Resource};
use super::{ListParams, Page, Wait, double_option, written};
use crate::auth::Caller;
use crate::body::Body;
use crate::db::ById;
use crate::error::{ApiError, Problem};
use crate::rows::{KeyRow, TenantRow, limits};
use crate::state::AppState;
use crate::write::{Change, Write};
use crate::{by_id, key_columns};

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
    #[schema(value_type = Object)]
    pub limits: RateLimits,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub budget: Option<Budget>,
    pub metadata: BTreeMap<String, String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
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
            limits: limits(r.rpm, r.tpm),
            budget: r.budget.as_ref().map(|b| b.0.clone()),
            metadata: r.metadata.0.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
            revoked_at: r.revoked_at,
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
    #[schema(value_type = Option<Object>)]
    pub limits: RateLimits,
    #[schema(value_type = Option<Object>)]
    pub budget: Option<Budget>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// Fields to change; absent fields stay, `null` clears `expires_at` and `budget`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    pub expires_at: Option<Option<DateTime<Utc>>>,
    pub allowed_models: Option<Vec<String>>,
    #[schema(value_type = Option<Object>)]
    pub limits: Option<RateLimits>,
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<Object>)]
    pub budget: Option<Option<Budget>>,
    pub metadata: Option<BTreeMap<String, String>>,
}

impl Resource for KeyRow {
    type View = KeyView;
    const NOUN: &'static str = "virtual key";
    const OBJECT_TYPE: &'static str = "virtual_key";
    const SECTION: &'static str = "virtual_keys";
    const BY_ID: ById = by_id!(
        "SELECT ",
        key_columns!(),
        " FROM virtual_keys WHERE id = $1"
    );

    fn view(&self) -> KeyView {
        KeyView::from(self)
    }

    fn tenant_id(&self) -> Option<&str> {
        Some(&self.tenant_id)
    }
}

const LIST: ListSql = ListSql::Tenant(concat!(
    "SELECT ",
    key_columns!(),
    " FROM virtual_keys WHERE ($1::text IS NULL OR tenant_id = $1) \
     AND ($2::text IS NULL OR tenant_id = $2) ORDER BY id LIMIT $3 OFFSET $4"
));

#[utoipa::path(get, path = "/keys", tag = "keys", params(ListParams),
    responses((status = 200, body = Page<KeyView>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: ListParams,
) -> Result<Json<Page<KeyView>>, ApiError> {
    crud::page(&state, &caller, &params, LIST, KeyRow::view).await
}

#[utoipa::path(get, path = "/keys/{id}", tag = "keys", params(("id" = String, Path)),
    responses((status = 200, body = KeyView), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    crud::get::<KeyRow>(&state, &caller, &id).await
}

#[utoipa::path(post, path = "/keys", tag = "keys", params(Wait), request_body = CreateKey,
    responses((status = 201, body = KeyWithSecret), (status = 422, body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    wait: Wait,
    Body(req): Body<CreateKey>,
) -> Result<Response, ApiError> {
    caller.require_writer()?;
    let tenant_id = match (req.tenant_id, caller.confined_to()) {
        (Some(t), _) => t,
        (None, Some(own)) => own.to_owned(),
        (None, None) => return Err(ApiError::invalid("tenant_id", "is required")),
    };
    let mut w = Write::begin(&state.pool, &caller).await?;
    // Another tenant's id reads exactly like an unknown one.
    if !crud::exists::<TenantRow>(w.conn(), &tenant_id).await? || !caller.sees_tenant(&tenant_id) {
        return Err(ApiError::invalid("tenant_id", "unknown tenant"));
    }
    let secret = new_secret();
    let id = uuid::Uuid::now_v7().to_string();
    let row: KeyRow = sqlx::query_as(concat!(
        "INSERT INTO virtual_keys (id, tenant_id, name, key_hash, display_prefix, expires_at, \
         allowed_models, rpm, tpm, budget, metadata) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING ",
        key_columns!(),
        ""
    ))
    .bind(&id)
    .bind(&tenant_id)
    .bind(&req.name)
    .bind(hash_key_hex(&state.settings.pepper, &secret))
    .bind(display_prefix(&secret))
    .bind(req.expires_at)
    .bind(&req.allowed_models)
    .bind(req.limits.rpm.map(i64::from))
    .bind(req.limits.tpm.map(i64::from))
    .bind(req.budget.map(Jsonb))
    .bind(Jsonb(&req.metadata))
    .fetch_one(w.conn())
    .await?;
    let change = crud::change("create", &id, None, Some(&row));
    let scope = crud::body_scope::<KeyRow>(&id);
    let committed = w
        .finish(Some(&state.publisher), change, Some(scope))
        .await?;
    let body = KeyWithSecret {
        key: secret,
        virtual_key: row.view(),
    };
    Ok(written(&state, committed, wait, StatusCode::CREATED, body).await)
}

#[utoipa::path(patch, path = "/keys/{id}", tag = "keys", params(("id" = String, Path), Wait),
    request_body = UpdateKey,
    responses((status = 200, body = KeyView), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    wait: Wait,
    Body(req): Body<UpdateKey>,
) -> Result<Response, ApiError> {
    caller.require_writer()?;
    let (mut w, before) = crud::begin::<KeyRow>(&state, &caller, &id).await?;
    let limits = req.limits.unwrap_or(limits(before.rpm, before.tpm));
    let budget = match req.budget {
        Some(b) => b,
        None => before.budget.as_ref().map(|b| b.0.clone()),
    };
    let row: KeyRow = sqlx::query_as(concat!(
        "UPDATE virtual_keys SET name = $2, expires_at = $3, allowed_models = $4, rpm = $5, \
         tpm = $6, budget = $7, metadata = $8, updated_at = now() WHERE id = $1 \
         RETURNING ",
        key_columns!(),
        ""
    ))
    .bind(&id)
    .bind(req.name.as_ref().unwrap_or(&before.name))
    .bind(req.expires_at.unwrap_or(before.expires_at))
    .bind(
        req.allowed_models
            .as_ref()
            .unwrap_or(&before.allowed_models),
    )
    .bind(limits.rpm.map(i64::from))
    .bind(limits.tpm.map(i64::from))
    .bind(budget.map(Jsonb))
    .bind(Jsonb(req.metadata.as_ref().unwrap_or(&before.metadata.0)))
    .fetch_one(w.conn())
    .await?;
    crud::updated(&state, w, wait, &id, &before, &row).await
}

/// The tail of revoke and rotate, which have no body: snapshot problems keep their snapshot
/// paths. Answers `body`, 200.
async fn changed_without_body<T: Serialize + Send>(
    state: &AppState,
    w: Write,
    wait: Wait,
    change: Change<'_>,
    body: T,
) -> Result<Response, ApiError> {
    let committed = w.finish(Some(&state.publisher), change, None).await?;
    Ok(written(state, committed, wait, StatusCode::OK, body).await)
}

#[utoipa::path(post, path = "/keys/{id}/revoke", tag = "keys", params(("id" = String, Path), Wait),
    responses((status = 200, body = KeyView), (status = 404, body = Problem)))]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    wait: Wait,
) -> Result<Response, ApiError> {
    caller.require_writer()?;
    let (mut w, before) = crud::begin::<KeyRow>(&state, &caller, &id).await?;
    let row: KeyRow = sqlx::query_as(concat!(
        "UPDATE virtual_keys SET status = 'revoked', revoked_at = coalesce(revoked_at, now()), \
         updated_at = now() WHERE id = $1 RETURNING ",
        key_columns!(),
        ""
    ))
    .bind(&id)
    .fetch_one(w.conn())
    .await?;
    let change = crud::change("revoke", &id, Some(&before), Some(&row));
    changed_without_body(&state, w, wait, change, row.view()).await
}

#[utoipa::path(post, path = "/keys/{id}/rotate", tag = "keys", params(("id" = String, Path), Wait),
    responses((status = 200, body = KeyWithSecret), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn rotate(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    wait: Wait,
) -> Result<Response, ApiError> {
    caller.require_writer()?;
    let (mut w, before) = crud::begin::<KeyRow>(&state, &caller, &id).await?;
    if before.status() == KeyStatus::Revoked {
        return Err(ApiError::Conflict("a revoked key cannot be rotated".into()));
    }
    let secret = new_secret();
    let row: KeyRow = sqlx::query_as(concat!(
        "UPDATE virtual_keys SET key_hash = $2, display_prefix = $3, updated_at = now() \
         WHERE id = $1 RETURNING ",
        key_columns!(),
        ""
    ))
    .bind(&id)
    .bind(hash_key_hex(&state.settings.pepper, &secret))
    .bind(display_prefix(&secret))
    .fetch_one(w.conn())
    .await?;
    let change = crud::change("rotate", &id, Some(&before), Some(&row));
    let body = KeyWithSecret {
        key: secret,
        virtual_key: row.view(),
    };
    changed_without_body(&state, w, wait, change, body).await
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
