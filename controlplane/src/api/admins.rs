//! Admin users: `/admin/v1/admins`, platform admins only. Passwords are stored as argon2id
//! hashes and never returned. [`create_admin`] is also what the CLI and the bootstrap use.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, PgPool};
use utoipa::ToSchema;

use super::crud::{self, ListSql};
use super::{ListParams, Page, Wait, deleted, written};
use crate::auth::{Caller, Role, hash_password};
use crate::body::Body;
use crate::error::{ApiError, Problem};
use crate::publish::Publisher;
use crate::rows::TenantRow;
use crate::state::AppState;
use crate::write::{Change, Committed, Write};

/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;

#[derive(Debug, Clone, Serialize, ToSchema, FromRow)]
pub struct AdminView {
    pub id: uuid::Uuid,
    pub email: String,
    /// `platform_admin`, `tenant_admin` or `viewer`.
    pub role: String,
    pub tenant_id: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

macro_rules! admin_columns {
    () => {
        "id, email, role, tenant_id, created_at, updated_at"
    };
}

/// The audit log's `object_type` of admin users.
const OBJECT_TYPE: &str = "admin_user";

// Tenant admins never get here (`require_platform_reader`): `$1` is always NULL.
const LIST: ListSql = ListSql::Tenant(concat!(
    "SELECT ",
    admin_columns!(),
    " FROM admin_users WHERE ($1::text IS NULL OR tenant_id = $1) \
     AND ($2::text IS NULL OR tenant_id = $2) ORDER BY email LIMIT $3 OFFSET $4"
));

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAdmin {
    pub email: String,
    /// At least 12 characters. Write-only.
    pub password: String,
    pub role: Role,
    /// Required for (and only for) tenant admins.
    pub tenant_id: Option<String>,
}

/// Creates an admin user in its own write (revision bump and audit row included).
pub async fn create_admin(
    pool: &PgPool,
    publisher: Option<&Arc<Publisher>>,
    caller: &Caller,
    req: CreateAdmin,
) -> Result<(AdminView, Committed), ApiError> {
    let mut problems = Vec::new();
    let email = req.email.trim().to_owned();
    if !(email.contains('@') && email.len() <= 254 && !email.contains(char::is_whitespace)) {
        problems.push(crate::error::FieldError::new(
            "email",
            "must be an email address",
        ));
    }
    if req.password.chars().count() < MIN_PASSWORD_CHARS {
        problems.push(crate::error::FieldError::new(
            "password",
            format!("must be at least {MIN_PASSWORD_CHARS} characters"),
        ));
    }
    match (req.role, &req.tenant_id) {
        (Role::TenantAdmin, None) => problems.push(crate::error::FieldError::new(
            "tenant_id",
            "is required for a tenant admin",
        )),
        (Role::PlatformAdmin | Role::Viewer, Some(_)) => problems.push(
            crate::error::FieldError::new("tenant_id", "only tenant admins belong to a tenant"),
        ),
        _ => {}
    }
    if !problems.is_empty() {
        return Err(ApiError::Invalid(problems));
    }
    let password = req.password;
    let hash = tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| ApiError::Internal(format!("hashing task: {e}")))??;
    let mut w = Write::begin(pool, caller).await?;
    if let Some(tenant) = &req.tenant_id
        && !crud::exists::<TenantRow>(w.conn(), tenant).await?
    {
        return Err(ApiError::invalid("tenant_id", "unknown tenant"));
    }
    let taken: Option<(uuid::Uuid,)> =
        sqlx::query_as("SELECT id FROM admin_users WHERE lower(email) = lower($1)")
            .bind(&email)
            .fetch_optional(w.conn())
            .await?;
    if taken.is_some() {
        return Err(ApiError::Conflict(
            "an admin with this email already exists".into(),
        ));
    }
    let view: AdminView = sqlx::query_as(concat!(
        "INSERT INTO admin_users (id, email, password_hash, role, tenant_id) \
         VALUES ($1, $2, $3, $4, $5) RETURNING ",
        admin_columns!(),
        ""
    ))
    .bind(uuid::Uuid::now_v7())
    .bind(&email)
    .bind(&hash)
    .bind(req.role.as_str())
    .bind(&req.tenant_id)
    .fetch_one(w.conn())
    .await?;
    let id = view.id.to_string();
    let change = Change::of(
        "create",
        OBJECT_TYPE,
        &id,
        view.tenant_id.as_deref(),
        None,
        Some(&view),
    );
    let committed = w.finish(publisher, change, None).await?;
    Ok((view, committed))
}

/// Whether any admin user exists (the bootstrap creates one only when none does).
pub async fn any_admin(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let (exists,): (bool,) = sqlx::query_as("SELECT EXISTS (SELECT 1 FROM admin_users)")
        .fetch_one(pool)
        .await?;
    Ok(exists)
}

#[utoipa::path(get, path = "/admins", tag = "admins", params(ListParams),
    responses((status = 200, body = Page<AdminView>), (status = 403, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: ListParams,
) -> Result<Json<Page<AdminView>>, ApiError> {
    caller.require_platform_reader()?;
    crud::page(&state, &caller, &params, LIST, AdminView::clone).await
}

#[utoipa::path(post, path = "/admins", tag = "admins", params(Wait), request_body = CreateAdmin,
    responses((status = 201, body = AdminView), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    wait: Wait,
    Body(req): Body<CreateAdmin>,
) -> Result<Response, ApiError> {
    caller.require_platform_admin()?;
    let (view, committed) = create_admin(&state.pool, Some(&state.publisher), &caller, req).await?;
    Ok(written(&state, committed, wait, StatusCode::CREATED, view).await)
}

#[utoipa::path(delete, path = "/admins/{id}", tag = "admins", params(("id" = String, Path), Wait),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    wait: Wait,
) -> Result<Response, ApiError> {
    caller.require_platform_admin()?;
    let uuid: uuid::Uuid = id
        .parse()
        .map_err(|_| ApiError::not_found("admin user", &id))?;
    if caller.id == Some(uuid) {
        return Err(ApiError::Conflict("an admin cannot delete itself".into()));
    }
    let mut w = Write::begin(&state.pool, &caller).await?;
    let before: AdminView = sqlx::query_as(concat!(
        "DELETE FROM admin_users WHERE id = $1 RETURNING ",
        admin_columns!(),
        ""
    ))
    .bind(uuid)
    .fetch_optional(w.conn())
    .await?
    .ok_or_else(|| ApiError::not_found("admin user", &id))?;
    let change = Change::of(
        "delete",
        OBJECT_TYPE,
        &id,
        before.tenant_id.as_deref(),
        Some(&before),
        None,
    );
    let committed = w.finish(Some(&state.publisher), change, None).await?;
    Ok(deleted(&state, committed, wait).await)
}
