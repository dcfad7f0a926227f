//! Deployments: `/admin/v1/deployments`, each a provider plus the model name it knows.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json as Jsonb;
use switchboard_shared::price::PriceEntry;
use switchboard_shared::snapshot::RateLimits;
use utoipa::ToSchema;

use super::crud::{self, ListSql, Resource};
use super::{ListParams, Page, Wait, check_id};
use crate::auth::Caller;
use crate::body::Body;
use crate::db::ById;
use crate::error::{ApiError, FieldError, Problem};
use crate::rows::{DeploymentRow, ProviderRow, clamp_u32, limits};
use crate::state::AppState;
use crate::write::Write;
use crate::{by_id, deployment_columns};

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

impl Resource for DeploymentRow {
    type View = DeploymentView;
    const NOUN: &'static str = "deployment";
    const OBJECT_TYPE: &'static str = "deployment";
    const SECTION: &'static str = "deployments";
    const BY_ID: ById = by_id!(
        "SELECT ",
        deployment_columns!(),
        " FROM deployments WHERE id = $1"
    );

    fn view(&self) -> DeploymentView {
        DeploymentView::from(self)
    }

    fn tenant_id(&self) -> Option<&str> {
        None
    }
}

const LIST: ListSql = ListSql::Platform(concat!(
    "SELECT ",
    deployment_columns!(),
    " FROM deployments ORDER BY id LIMIT $1 OFFSET $2"
));
const INSERT: &str = concat!(
    "INSERT INTO deployments (id, model, provider_id, upstream_model, weight, tags, rpm, tpm, \
     priority, price) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
     RETURNING ",
    deployment_columns!()
);
const UPDATE: &str = concat!(
    "UPDATE deployments SET model = $2, provider_id = $3, upstream_model = $4, weight = $5, \
     tags = $6, rpm = $7, tpm = $8, priority = $9, price = $10, updated_at = now() \
     WHERE id = $1 RETURNING ",
    deployment_columns!()
);
const DELETE: &str = "DELETE FROM deployments WHERE id = $1";

/// Runs [`INSERT`] or [`UPDATE`], which take the same parameters; 422 at `provider` when it
/// names no provider.
async fn save(
    w: &mut Write,
    sql: &'static str,
    id: &str,
    req: DeploymentBody,
) -> Result<DeploymentRow, ApiError> {
    if !crud::exists::<ProviderRow>(w.conn(), &req.provider).await? {
        return Err(ApiError::Invalid(vec![FieldError::new(
            "provider",
            format!("unknown provider {:?}", req.provider),
        )]));
    }
    Ok(sqlx::query_as(sql)
        .bind(id)
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
        .await?)
}

#[utoipa::path(get, path = "/deployments", tag = "deployments", params(ListParams),
    responses((status = 200, body = Page<DeploymentView>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: ListParams,
) -> Result<Json<Page<DeploymentView>>, ApiError> {
    caller.require_platform_reader()?;
    crud::page(&state, &caller, &params, LIST, DeploymentRow::view).await
}

#[utoipa::path(get, path = "/deployments/{id}", tag = "deployments", params(("id" = String, Path)),
    responses((status = 200, body = DeploymentView), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeploymentView>, ApiError> {
    caller.require_platform_reader()?;
    crud::get::<DeploymentRow>(&state, &caller, &id).await
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
    let row = save(&mut w, INSERT, &id, req).await?;
    crud::created(&state, w, wait, &id, &row).await
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
    let (mut w, before) = crud::begin::<DeploymentRow>(&state, &caller, &id).await?;
    let row = save(&mut w, UPDATE, &id, req).await?;
    crud::updated(&state, w, wait, &id, &before, &row).await
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
    crud::delete::<DeploymentRow>(&state, &caller, &id, wait, DELETE).await
}
