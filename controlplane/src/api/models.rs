//! Model routing policies: `/admin/v1/models/{model}` — strategy, fallbacks, retries,
//! timeouts and cooldown of one public model name. `PUT` creates or replaces.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::types::Json as Jsonb;
use switchboard_shared::snapshot::{Cooldown, ModelPolicy, Strategy, Timeouts};
use utoipa::ToSchema;

use super::{ListParams, Page, Wait, audit_json, deleted, written};
use crate::auth::Caller;
use crate::body::Body;
use crate::error::{ApiError, Problem};
use crate::policy_columns;
use crate::rows::PolicyRow;
use crate::state::AppState;
use crate::write::{Scope, Write};

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

async fn load(
    conn: &mut sqlx::PgConnection,
    model: &str,
    lock: bool,
) -> Result<Option<PolicyRow>, sqlx::Error> {
    let sql = if lock {
        concat!(
            "SELECT ",
            policy_columns!(),
            " FROM model_policies WHERE model = $1 FOR UPDATE"
        )
    } else {
        concat!(
            "SELECT ",
            policy_columns!(),
            " FROM model_policies WHERE model = $1"
        )
    };
    sqlx::query_as(sql).bind(model).fetch_optional(conn).await
}

#[utoipa::path(get, path = "/models", tag = "models", params(ListParams),
    responses((status = 200, body = Page<PolicyView>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: ListParams,
) -> Result<Json<Page<PolicyView>>, ApiError> {
    caller.require_platform_reader()?;
    let rows: Vec<PolicyRow> = sqlx::query_as(concat!(
        "SELECT ",
        policy_columns!(),
        " FROM model_policies ORDER BY model LIMIT $1 OFFSET $2"
    ))
    .bind(params.limit() + 1)
    .bind(params.offset())
    .fetch_all(&state.pool)
    .await?;
    Ok(Json(params.page(rows, |r| PolicyView::from(r))))
}

#[utoipa::path(get, path = "/models/{model}", tag = "models", params(("model" = String, Path)),
    responses((status = 200, body = PolicyView), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(model): Path<String>,
) -> Result<Json<PolicyView>, ApiError> {
    caller.require_platform_reader()?;
    let mut conn = state.pool.acquire().await?;
    load(&mut conn, &model, false)
        .await?
        .map(|r| Json(PolicyView::from(&r)))
        .ok_or_else(|| ApiError::not_found("model policy", &model))
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
    let before = load(w.conn(), &model, true).await?;
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
    let view = PolicyView::from(&row);
    let (action, status) = if before.is_some() {
        ("update", StatusCode::OK)
    } else {
        ("create", StatusCode::CREATED)
    };
    w.audit(
        action,
        "model_policy",
        &model,
        None,
        before
            .as_ref()
            .and_then(|b| audit_json(&PolicyView::from(b))),
        audit_json(&view),
    )
    .await?;
    let committed = w
        .commit(Some(&state.publisher), Some(Scope::new("models", &model)))
        .await?;
    Ok(written(&state, committed, wait, status, view).await)
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
    let mut w = Write::begin(&state.pool, &caller).await?;
    let before = load(w.conn(), &model, true)
        .await?
        .ok_or_else(|| ApiError::not_found("model policy", &model))?;
    sqlx::query("DELETE FROM model_policies WHERE model = $1")
        .bind(&model)
        .execute(w.conn())
        .await?;
    w.audit(
        "delete",
        "model_policy",
        &model,
        None,
        audit_json(&PolicyView::from(&before)),
        None,
    )
    .await?;
    let committed = w.commit(Some(&state.publisher), None).await?;
    Ok(deleted(&state, committed, wait).await)
}
