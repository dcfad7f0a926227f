//! Tenants: `/admin/v1/tenants`. Platform admins write; tenant admins see only their own.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use sqlx::types::Json as Jsonb;
use switchboard_shared::snapshot::{Budget, RateLimits, TenantStatus};
use utoipa::ToSchema;

use super::crud::{self, ListSql, Resource};
use super::{ListParams, Page, Wait, check_id};
use crate::auth::Caller;
use crate::body::Body;
use crate::db::ById;
use crate::error::{ApiError, Problem};
use crate::rows::{TenantRow, enum_text, limits};
use crate::state::AppState;
use crate::write::Write;
use crate::{by_id, tenant_columns};

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

// `CreateTenant` repeats these fields: serde's `flatten` does not work with
// `deny_unknown_fields`, which every body needs.
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

impl Resource for TenantRow {
    type View = TenantView;
    const NOUN: &'static str = "tenant";
    const OBJECT_TYPE: &'static str = "tenant";
    const SECTION: &'static str = "tenants";
    const BY_ID: ById = by_id!("SELECT ", tenant_columns!(), " FROM tenants WHERE id = $1");

    fn view(&self) -> TenantView {
        TenantView::from(self)
    }

    fn tenant_id(&self) -> Option<&str> {
        Some(&self.id)
    }
}

const LIST: ListSql = ListSql::Tenant(concat!(
    "SELECT ",
    tenant_columns!(),
    " FROM tenants WHERE ($1::text IS NULL OR id = $1) \
     AND ($2::text IS NULL OR id = $2) ORDER BY id LIMIT $3 OFFSET $4"
));
const INSERT: &str = concat!(
    "INSERT INTO tenants (id, name, status, rpm, tpm, budget) VALUES ($1, $2, $3, $4, $5, $6) \
     RETURNING ",
    tenant_columns!()
);
const UPDATE: &str = concat!(
    "UPDATE tenants SET name = $2, status = $3, rpm = $4, tpm = $5, budget = $6, \
     updated_at = now() WHERE id = $1 RETURNING ",
    tenant_columns!()
);
// Keys and tenant admins reference the tenant: deleting it while they exist is a 409.
const DELETE: &str = "DELETE FROM tenants WHERE id = $1";

/// Runs [`INSERT`] or [`UPDATE`], which take the same parameters.
async fn save(
    conn: &mut PgConnection,
    sql: &'static str,
    id: &str,
    settings: UpdateTenant,
) -> Result<TenantRow, sqlx::Error> {
    sqlx::query_as(sql)
        .bind(id)
        .bind(&settings.name)
        .bind(enum_text(&settings.status))
        .bind(settings.limits.rpm.map(i64::from))
        .bind(settings.limits.tpm.map(i64::from))
        .bind(settings.budget.map(Jsonb))
        .fetch_one(conn)
        .await
}

#[utoipa::path(get, path = "/tenants", tag = "tenants", params(ListParams),
    responses((status = 200, body = Page<TenantView>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: ListParams,
) -> Result<Json<Page<TenantView>>, ApiError> {
    crud::page(&state, &caller, &params, LIST, TenantRow::view).await
}

#[utoipa::path(get, path = "/tenants/{id}", tag = "tenants", params(("id" = String, Path)),
    responses((status = 200, body = TenantView), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    crud::get::<TenantRow>(&state, &caller, &id).await
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
    let CreateTenant {
        id,
        name,
        status,
        limits,
        budget,
    } = req;
    let settings = UpdateTenant {
        name,
        status,
        limits,
        budget,
    };
    let mut w = Write::begin(&state.pool, &caller).await?;
    let row = save(w.conn(), INSERT, &id, settings).await?;
    crud::created(&state, w, wait, &row.id, &row).await
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
    caller.require_tenant_writer(&id)?;
    let (mut w, before) = crud::begin::<TenantRow>(&state, &caller, &id).await?;
    let row = save(w.conn(), UPDATE, &id, req).await?;
    crud::updated(&state, w, wait, &id, &before, &row).await
}

#[utoipa::path(delete, path = "/tenants/{id}", tag = "tenants", params(("id" = String, Path), Wait),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    wait: Wait,
) -> Result<Response, ApiError> {
    caller.require_tenant_writer(&id)?;
    crud::delete::<TenantRow>(&state, &caller, &id, wait, DELETE).await
}
