//! Deployments: `/admin/v1/deployments`, each a provider plus the model name it knows.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json as Jsonb;
use switchboard_shared::price::PriceEntry;
use switchboard_shared::snapshot::RateLimits;
use utoipa::ToSchema;

use super::{ListParams, Page, Wait, audit_json, check_id, deleted, written};
use crate::auth::Caller;
use crate::body::Body;
use crate::deployment_columns;
use crate::error::{ApiError, FieldError, Problem};
use crate::rows::{DeploymentRow, clamp_u32, limits};
use crate::state::AppState;
use crate::write::{Scope, Write};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeploymentView {
    pub id: String,
    /// The public model name clients ask for.
    pub model: String,
    /// Id of the provider serving it.
    pub provider: String,
    pub upstream_model: String,
    pub weight: u32,
    pub tags: Vec<String>,
    #[schema(value_type = Object)]
    pub limits: RateLimits,
    pub priority: u32,
    /// LiteLLM-style price entry (USD per token).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub price: Option<PriceEntry>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&DeploymentRow> for DeploymentView {
    fn from(r: &DeploymentRow) -> Self {
        Self {
            id: r.id.clone(),
            model: r.model.clone(),
            provider: r.provider_id.clone(),
            upstream_model: r.upstream_model.clone(),
            weight: clamp_u32(r.weight),
            tags: r.tags.clone(),
            limits: limits(r.rpm, r.tpm),
            priority: clamp_u32(r.priority),
            price: r.price.as_ref().map(|p| p.0.clone()),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// A deployment's settings (`id` only when creating).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentBody {
    /// Required when creating; must be absent or equal to the path's id when replacing.
    pub id: Option<String>,
    pub model: String,
    pub provider: String,
    pub upstream_model: String,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub limits: RateLimits,
    #[serde(default)]
    pub priority: u32,
    /// LiteLLM-style price entry, e.g. `{"input_cost_per_token": 2.5e-06}`.
    #[schema(value_type = Option<Object>)]
    pub price: Option<PriceEntry>,
}

fn one() -> u32 {
    1
}

async fn load(
    conn: &mut sqlx::PgConnection,
    id: &str,
    lock: bool,
) -> Result<Option<DeploymentRow>, sqlx::Error> {
    let sql = if lock {
        concat!(
            "SELECT ",
            deployment_columns!(),
            " FROM deployments WHERE id = $1 FOR UPDATE"
        )
    } else {
        concat!(
            "SELECT ",
            deployment_columns!(),
            " FROM deployments WHERE id = $1"
        )
    };
    sqlx::query_as(sql).bind(id).fetch_optional(conn).await
}

async fn provider_exists(w: &mut Write, id: &str) -> Result<(), ApiError> {
    let found: Option<(String,)> = sqlx::query_as("SELECT id FROM providers WHERE id = $1")
        .bind(id)
        .fetch_optional(w.conn())
        .await?;
    match found {
        Some(_) => Ok(()),
        None => Err(ApiError::Invalid(vec![FieldError::new(
            "provider",
            format!("unknown provider {id:?}"),
        )])),
    }
}

#[utoipa::path(get, path = "/deployments", tag = "deployments", params(ListParams),
    responses((status = 200, body = Page<DeploymentView>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: ListParams,
) -> Result<Json<Page<DeploymentView>>, ApiError> {
    caller.require_platform_reader()?;
    let rows: Vec<DeploymentRow> = sqlx::query_as(concat!(
        "SELECT ",
        deployment_columns!(),
        " FROM deployments ORDER BY id LIMIT $1 OFFSET $2"
    ))
    .bind(params.limit() + 1)
    .bind(params.offset())
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(params.page(rows, |r| DeploymentView::from(r))))
}

#[utoipa::path(get, path = "/deployments/{id}", tag = "deployments", params(("id" = String, Path)),
    responses((status = 200, body = DeploymentView), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeploymentView>, ApiError> {
    caller.require_platform_reader()?;
    let mut conn = state.pool.acquire().await?;
    load(&mut conn, &id, false)
        .await?
        .map(|r| Json(DeploymentView::from(&r)))
        .ok_or_else(|| ApiError::not_found("deployment", &id))
}

#[utoipa::path(post, path = "/deployments", tag = "deployments", params(Wait), request_body = DeploymentBody,
    responses((status = 201, body = DeploymentView), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    wait: Wait,
    Body(req): Body<DeploymentBody>,
) -> Result<Response, ApiError> {
    caller.require_platform_admin()?;
    let id = req
        .id
        .clone()
        .ok_or_else(|| ApiError::invalid("id", "is required"))?;
    check_id("id", &id)?;
    let mut w = Write::begin(&state.pool, &caller).await?;
    provider_exists(&mut w, &req.provider).await?;
    let row: DeploymentRow = sqlx::query_as(concat!(
        "INSERT INTO deployments (id, model, provider_id, upstream_model, weight, tags, rpm, tpm, \
         priority, price) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         RETURNING ",
        deployment_columns!(),
        ""
    ))
    .bind(&id)
    .bind(&req.model)
    .bind(&req.provider)
    .bind(&req.upstream_model)
    .bind(i64::from(req.weight))
    .bind(&req.tags)
    .bind(req.limits.rpm.map(i64::from))
    .bind(req.limits.tpm.map(i64::from))
    .bind(i64::from(req.priority))
    .bind(req.price.map(Jsonb))
    .fetch_one(w.conn())
    .await?;
    let view = DeploymentView::from(&row);
    w.audit("create", "deployment", &id, None, None, audit_json(&view))
        .await?;
    let committed = w
        .commit(Some(&state.publisher), Some(Scope::new("deployments", &id)))
        .await?;
    Ok(written(&state, committed, wait, StatusCode::CREATED, view).await)
}

#[utoipa::path(put, path = "/deployments/{id}", tag = "deployments", params(("id" = String, Path), Wait),
    request_body = DeploymentBody,
    responses((status = 200, body = DeploymentView), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    wait: Wait,
    Body(req): Body<DeploymentBody>,
) -> Result<Response, ApiError> {
    caller.require_platform_admin()?;
    if req.id.as_ref().is_some_and(|body_id| body_id != &id) {
        return Err(ApiError::invalid("id", "differs from the id in the path"));
    }
    let mut w = Write::begin(&state.pool, &caller).await?;
    let before = load(w.conn(), &id, true)
        .await?
        .ok_or_else(|| ApiError::not_found("deployment", &id))?;
    provider_exists(&mut w, &req.provider).await?;
    let row: DeploymentRow = sqlx::query_as(concat!(
        "UPDATE deployments SET model = $2, provider_id = $3, upstream_model = $4, weight = $5, \
         tags = $6, rpm = $7, tpm = $8, priority = $9, price = $10, updated_at = now() \
         WHERE id = $1 RETURNING ",
        deployment_columns!(),
        ""
    ))
    .bind(&id)
    .bind(&req.model)
    .bind(&req.provider)
    .bind(&req.upstream_model)
    .bind(i64::from(req.weight))
    .bind(&req.tags)
    .bind(req.limits.rpm.map(i64::from))
    .bind(req.limits.tpm.map(i64::from))
    .bind(i64::from(req.priority))
    .bind(req.price.map(Jsonb))
    .fetch_one(w.conn())
    .await?;
    let view = DeploymentView::from(&row);
    w.audit(
        "update",
        "deployment",
        &id,
        None,
        audit_json(&DeploymentView::from(&before)),
        audit_json(&view),
    )
    .await?;
    let committed = w
        .commit(Some(&state.publisher), Some(Scope::new("deployments", &id)))
        .await?;
    Ok(written(&state, committed, wait, StatusCode::OK, view).await)
}

#[utoipa::path(delete, path = "/deployments/{id}", tag = "deployments", params(("id" = String, Path), Wait),
    responses((status = 204), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    wait: Wait,
) -> Result<Response, ApiError> {
    caller.require_platform_admin()?;
    let mut w = Write::begin(&state.pool, &caller).await?;
    let before = load(w.conn(), &id, true)
        .await?
        .ok_or_else(|| ApiError::not_found("deployment", &id))?;
    sqlx::query("DELETE FROM deployments WHERE id = $1")
        .bind(&id)
        .execute(w.conn())
        .await?;
    w.audit(
        "delete",
        "deployment",
        &id,
        None,
        audit_json(&DeploymentView::from(&before)),
        None,
    )
    .await?;
    let committed = w.commit(Some(&state.publisher), None).await?;
    Ok(deleted(&state, committed, wait).await)
}
