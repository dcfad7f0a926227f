//! Tenants: `/admin/v1/tenants`. Platform admins write; tenant admins see only their own.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json as Jsonb;
use switchboard_shared::snapshot::{Budget, RateLimits, TenantStatus};
use utoipa::ToSchema;

use super::{ListParams, Page, Wait, audit_json, check_id, deleted, written};
use crate::auth::Caller;
use crate::body::Body;
use crate::error::{ApiError, Problem};
use crate::rows::{TenantRow, enum_text, limits};
use crate::state::AppState;
use crate::tenant_columns;
use crate::write::{Scope, Write};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TenantView {
    pub id: String,
    pub name: String,
    #[schema(value_type = String, example = "active")]
    pub status: TenantStatus,
    #[schema(value_type = Object)]
    pub limits: RateLimits,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub budget: Option<Budget>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&TenantRow> for TenantView {
    fn from(r: &TenantRow) -> Self {
        Self {
            id: r.id.clone(),
            name: r.name.clone(),
            status: r.status(),
            limits: limits(r.rpm, r.tpm),
            budget: r.budget.as_ref().map(|b| b.0.clone()),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// A new tenant.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// 1–64 of letters, digits, `.`, `_`, `-`.
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub status: TenantStatus,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub limits: RateLimits,
    #[schema(value_type = Option<Object>)]
    pub budget: Option<Budget>,
}

/// A tenant's settings, replaced as a whole.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub status: TenantStatus,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub limits: RateLimits,
    #[schema(value_type = Option<Object>)]
    pub budget: Option<Budget>,
}

async fn load(
    conn: &mut sqlx::PgConnection,
    id: &str,
    lock: bool,
) -> Result<Option<TenantRow>, sqlx::Error> {
    let sql = if lock {
        concat!(
            "SELECT ",
            tenant_columns!(),
            " FROM tenants WHERE id = $1 FOR UPDATE"
        )
    } else {
        concat!("SELECT ", tenant_columns!(), " FROM tenants WHERE id = $1")
    };
    sqlx::query_as(sql).bind(id).fetch_optional(conn).await
}

#[utoipa::path(get, path = "/tenants", tag = "tenants", params(ListParams),
    responses((status = 200, body = Page<TenantView>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: ListParams,
) -> Result<Json<Page<TenantView>>, ApiError> {
    let rows: Vec<TenantRow> = sqlx::query_as(concat!(
        "SELECT ",
        tenant_columns!(),
        " FROM tenants WHERE ($1::text IS NULL OR id = $1) \
         AND ($2::text IS NULL OR id = $2) ORDER BY id LIMIT $3 OFFSET $4"
    ))
    .bind(caller.confined_to())
    .bind(params.tenant_id.as_deref())
    .bind(params.limit() + 1)
    .bind(params.offset())
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(params.page(rows, |r| TenantView::from(r))))
}

#[utoipa::path(get, path = "/tenants/{id}", tag = "tenants", params(("id" = String, Path)),
    responses((status = 200, body = TenantView), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    match load(&mut conn, &id, false).await? {
        Some(row) if caller.sees_tenant(&row.id) => Ok(Json(TenantView::from(&row))),
        _ => Err(ApiError::not_found("tenant", &id)),
    }
}

#[utoipa::path(post, path = "/tenants", tag = "tenants", params(Wait), request_body = CreateTenant,
    responses((status = 201, body = TenantView), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    wait: Wait,
    Body(req): Body<CreateTenant>,
) -> Result<Response, ApiError> {
    caller.require_platform_admin()?;
    check_id("id", &req.id)?;
    let mut w = Write::begin(&state.pool, &caller).await?;
    let row: TenantRow = sqlx::query_as(concat!(
        "INSERT INTO tenants (id, name, status, rpm, tpm, budget) VALUES ($1, $2, $3, $4, $5, $6) \
         RETURNING ",
        tenant_columns!(),
        ""
    ))
    .bind(&req.id)
    .bind(&req.name)
    .bind(enum_text(&req.status))
    .bind(req.limits.rpm.map(i64::from))
    .bind(req.limits.tpm.map(i64::from))
    .bind(req.budget.map(Jsonb))
    .fetch_one(w.conn())
    .await?;
    let view = TenantView::from(&row);
    w.audit(
        "create",
        "tenant",
        &row.id,
        Some(&row.id),
        None,
        audit_json(&view),
    )
    .await?;
    let committed = w
        .commit(Some(&state.publisher), Some(Scope::new("tenants", &row.id)))
        .await?;
    Ok(written(&state, committed, wait, StatusCode::CREATED, view).await)
}

#[utoipa::path(put, path = "/tenants/{id}", tag = "tenants", params(("id" = String, Path), Wait),
    request_body = UpdateTenant,
    responses((status = 200, body = TenantView), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    wait: Wait,
    Body(req): Body<UpdateTenant>,
) -> Result<Response, ApiError> {
    caller.require_writer()?;
    if !caller.sees_tenant(&id) {
        return Err(ApiError::not_found("tenant", &id));
    }
    caller.require_platform_admin()?;
    let mut w = Write::begin(&state.pool, &caller).await?;
    let before = load(w.conn(), &id, true)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant", &id))?;
    let row: TenantRow = sqlx::query_as(concat!(
        "UPDATE tenants SET name = $2, status = $3, rpm = $4, tpm = $5, budget = $6, \
         updated_at = now() WHERE id = $1 RETURNING ",
        tenant_columns!(),
        ""
    ))
    .bind(&id)
    .bind(&req.name)
    .bind(enum_text(&req.status))
    .bind(req.limits.rpm.map(i64::from))
    .bind(req.limits.tpm.map(i64::from))
    .bind(req.budget.map(Jsonb))
    .fetch_one(w.conn())
    .await?;
    let view = TenantView::from(&row);
    w.audit(
        "update",
        "tenant",
        &id,
        Some(&id),
        audit_json(&TenantView::from(&before)),
        audit_json(&view),
    )
    .await?;
    let committed = w
        .commit(Some(&state.publisher), Some(Scope::new("tenants", &id)))
        .await?;
    Ok(written(&state, committed, wait, StatusCode::OK, view).await)
}

#[utoipa::path(delete, path = "/tenants/{id}", tag = "tenants", params(("id" = String, Path), Wait),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    wait: Wait,
) -> Result<Response, ApiError> {
    caller.require_writer()?;
    if !caller.sees_tenant(&id) {
        return Err(ApiError::not_found("tenant", &id));
    }
    caller.require_platform_admin()?;
    let mut w = Write::begin(&state.pool, &caller).await?;
    let before = load(w.conn(), &id, true)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant", &id))?;
    // Keys and tenant admins reference the tenant: deleting it while they exist is a 409.
    sqlx::query("DELETE FROM tenants WHERE id = $1")
        .bind(&id)
        .execute(w.conn())
        .await?;
    w.audit(
        "delete",
        "tenant",
        &id,
        Some(&id),
        audit_json(&TenantView::from(&before)),
        None,
    )
    .await?;
    let committed = w.commit(Some(&state.publisher), None).await?;
    Ok(deleted(&state, committed, wait).await)
}
