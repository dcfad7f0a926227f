//! Model routing policies: `/admin/v1/models/{model}` — strategy, fallbacks, retries,
//! timeouts and cooldown of one public model name. `PUT` creates or replaces.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json as Jsonb;
use switchboard_shared::snapshot::{Cooldown, ModelPolicy, Strategy, Timeouts};
use utoipa::ToSchema;

use super::crud::{self, ListSql, Resource};
use super::{ListParams, Page, Wait};
use crate::auth::Caller;
use crate::body::Body;
use crate::db::ById;
use crate::error::{ApiError, Problem};
use crate::rows::PolicyRow;
use crate::state::AppState;
use crate::write::Write;
use crate::{by_id, policy_columns};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PolicyView {
    pub model: String,
    #[schema(value_type = String, example = "weighted_random")]
    pub strategy: Strategy,
    pub fallbacks: Vec<String>,
    pub retries: u32,
    #[schema(value_type = Object)]
    pub timeouts: Timeouts,
    #[schema(value_type = Object)]
    pub cooldown: Cooldown,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&PolicyRow> for PolicyView {
    fn from(r: &PolicyRow) -> Self {
        let p = &r.policy.0;
        Self {
            model: r.model.clone(),
            strategy: p.strategy,
            fallbacks: p.fallbacks.clone(),
            retries: p.retries,
            timeouts: p.timeouts,
            cooldown: p.cooldown,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// A model's policy; absent fields take their defaults.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "round_robin")]
    pub strategy: Strategy,
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Extra attempts after the first fails (default 2, at most 10).
    pub retries: Option<u32>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub timeouts: Timeouts,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub cooldown: Cooldown,
}

impl Resource for PolicyRow {
    type View = PolicyView;
    const NOUN: &'static str = "model policy";
    const OBJECT_TYPE: &'static str = "model_policy";
    const SECTION: &'static str = "models";
    const BY_ID: ById = by_id!(
        "SELECT ",
        policy_columns!(),
        " FROM model_policies WHERE model = $1"
    );

    fn view(&self) -> PolicyView {
        PolicyView::from(self)
    }

    fn tenant_id(&self) -> Option<&str> {
        None
    }
}

const LIST: ListSql = ListSql::Platform(concat!(
    "SELECT ",
    policy_columns!(),
    " FROM model_policies ORDER BY model LIMIT $1 OFFSET $2"
));
const DELETE: &str = "DELETE FROM model_policies WHERE model = $1";

#[utoipa::path(get, path = "/models", tag = "models", params(ListParams),
    responses((status = 200, body = Page<PolicyView>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: ListParams,
) -> Result<Json<Page<PolicyView>>, ApiError> {
    caller.require_platform_reader()?;
    crud::page(&state, &caller, &params, LIST, PolicyRow::view).await
}

#[utoipa::path(get, path = "/models/{model}", tag = "models", params(("model" = String, Path)),
    responses((status = 200, body = PolicyView), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(model): Path<String>,
) -> Result<Json<PolicyView>, ApiError> {
    caller.require_platform_reader()?;
    crud::get::<PolicyRow>(&state, &caller, &model).await
}

#[utoipa::path(put, path = "/models/{model}", tag = "models", params(("model" = String, Path), Wait),
    request_body = PolicyBody,
    responses((status = 200, body = PolicyView), (status = 201, body = PolicyView), (status = 422, body = Problem)))]
pub async fn put(
    State(state): State<AppState>,
    caller: Caller,
    Path(model): Path<String>,
    wait: Wait,
    Body(req): Body<PolicyBody>,
) -> Result<Response, ApiError> {
    caller.require_platform_admin()?;
    let mut policy = ModelPolicy::default_for(&model);
    policy.strategy = req.strategy;
    policy.fallbacks = req.fallbacks;
    policy.retries = req.retries.unwrap_or(policy.retries);
    policy.timeouts = req.timeouts;
    policy.cooldown = req.cooldown;
    let mut w = Write::begin(&state.pool, &caller).await?;
    let before: Option<PolicyRow> = PolicyRow::BY_ID.fetch(w.conn(), &model, true).await?;
    let row: PolicyRow = sqlx::query_as(concat!(
        "INSERT INTO model_policies (model, policy) VALUES ($1, $2) \
         ON CONFLICT (model) DO UPDATE SET policy = EXCLUDED.policy, updated_at = now() \
         RETURNING ",
        policy_columns!(),
        ""
    ))
    .bind(&model)
    .bind(Jsonb(&policy))
    .fetch_one(w.conn())
    .await?;
    match &before {
        Some(before) => crud::updated(&state, w, wait, &model, before, &row).await,
        None => crud::created(&state, w, wait, &model, &row).await,
    }
}

#[utoipa::path(delete, path = "/models/{model}", tag = "models", params(("model" = String, Path), Wait),
    responses((status = 204), (status = 404, body = Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(model): Path<String>,
    wait: Wait,
) -> Result<Response, ApiError> {
    caller.require_platform_admin()?;
    crud::delete::<PolicyRow>(&state, &caller, &model, wait, DELETE).await
}
