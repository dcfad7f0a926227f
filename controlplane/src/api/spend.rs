//! Spend queries: totals over a range of days, grouped by tenant, key, model or deployment,
//! answered from the daily rollups (`spend_daily`), so months of history cost one index scan.

use axum::Json;
use axum::extract::{Query, State};
use chrono::NaiveDate;
use serde::Deserialize;
use utoipa::IntoParams;

use super::caller::Caller;
use super::error::{ApiError, Problem};
use crate::service::spend::{self, GroupBy, SpendReport};
use crate::state::AppState;

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
    let report = spend::report(
        state.ctx(),
        &caller,
        params.group_by,
        params.from,
        params.to,
        params.tenant_id.as_deref(),
    );
    Ok(Json(report.await?))
}
