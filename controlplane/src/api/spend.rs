//! Spend queries: totals over a range of days, grouped by tenant, key, model or deployment,
//! answered from the daily rollups (`spend_daily`), so months of history cost one index scan.

use axum::Json;
use axum::extract::{Query, State};
use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use utoipa::{IntoParams, ToSchema};

use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::state::AppState;

/// What to group spend by.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    Tenant,
    Key,
    Model,
    Deployment,
}

impl GroupBy {
    /// The rollup column, from a closed set (never from the request's text).
    fn column(self) -> &'static str {
        match self {
            GroupBy::Tenant => "tenant_id",
            GroupBy::Key => "key_id",
            GroupBy::Model => "model",
            GroupBy::Deployment => "deployment_id",
        }
    }
}

/// `GET /admin/v1/spend` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SpendParams {
    /// tenant, key, model or deployment.
    #[param(value_type = String)]
    pub group_by: GroupBy,
    /// First day (UTC), inclusive, `YYYY-MM-DD`.
    pub from: NaiveDate,
    /// Last day (UTC), inclusive.
    pub to: NaiveDate,
    /// Only this tenant's spend (a tenant admin always gets only its own).
    pub tenant_id: Option<String>,
}

/// One group's totals.
#[derive(Debug, Clone, Serialize, ToSchema, FromRow)]
pub struct SpendRow {
    /// The tenant, key, model or deployment id ('' for requests that reached no deployment).
    pub group: String,
    pub requests: i64,
    pub errors: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cached_read_tokens: i64,
    pub cache_creation_tokens: i64,
    pub cost_usd: f64,
}

/// The answer: one row per group, dearest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SpendReport {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub rows: Vec<SpendRow>,
}

#[utoipa::path(get, path = "/spend", tag = "spend", params(SpendParams),
    responses((status = 200, body = SpendReport), (status = 400, body = Problem)))]
pub async fn report(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<SpendParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<SpendReport>, ApiError> {
    let Query(params) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if params.to < params.from {
        return Err(ApiError::BadRequest("`to` is before `from`".into()));
    }
    if (params.to - params.from).num_days() > 3660 {
        return Err(ApiError::BadRequest("at most ten years at once".into()));
    }
    let sql = format!(
        "SELECT {col} AS \"group\", sum(requests)::bigint AS requests, sum(errors)::bigint AS errors, \
         sum(prompt_tokens)::bigint AS prompt_tokens, sum(completion_tokens)::bigint AS completion_tokens, \
         sum(cached_read_tokens)::bigint AS cached_read_tokens, \
         sum(cache_creation_tokens)::bigint AS cache_creation_tokens, sum(cost_usd) AS cost_usd \
         FROM spend_daily WHERE day BETWEEN $1 AND $2 \
         AND ($3::text IS NULL OR tenant_id = $3) AND ($4::text IS NULL OR tenant_id = $4) \
         GROUP BY {col} ORDER BY cost_usd DESC, {col}",
        col = params.group_by.column()
    );
    // The column comes from GroupBy's closed set; every value is a bind parameter.
    let rows: Vec<SpendRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(params.from)
        .bind(params.to)
        .bind(caller.confined_to())
        .bind(params.tenant_id.as_deref())
        .fetch_all(&state.pool)
        .await?;
    Ok(Json(SpendReport {
        from: params.from,
        to: params.to,
        rows,
    }))
}
