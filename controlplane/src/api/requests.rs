//! The request log: `GET /admin/v1/requests` (filters, cursor pages) and
//! `GET /admin/v1/requests/{id}` (one request with its attempt timeline). Tenant admins see
//! only their tenant's requests.

use axum::Json;
use axum::extract::{Path, Query, State};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::IntoParams;

use super::caller::Caller;
use super::error::{ApiError, Problem};
use crate::service::requests::{self, RequestDetail, RequestPage};
use crate::state::AppState;

/// `GET /admin/v1/requests` parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RequestParams {
    /// Only this tenant's requests (a tenant admin always gets only its own).
    pub tenant_id: Option<String>,
    pub key_id: Option<String>,
    /// The public model name the client asked for.
    pub model: Option<String>,
    /// The deployment of the last attempt.
    pub deployment_id: Option<String>,
    /// The HTTP status the client got.
    pub status: Option<i16>,
    /// Started at or after (RFC 3339).
    pub from: Option<DateTime<Utc>>,
    /// Started before (RFC 3339).
    pub to: Option<DateTime<Utc>>,
    /// Text the client's `x-request-id` contains.
    pub q: Option<String>,
    /// The previous page's `next_cursor`.
    pub cursor: Option<String>,
    /// Rows per page, 1–500 (default 100).
    pub limit: Option<i64>,
}

#[utoipa::path(get, path = "/requests", tag = "requests", params(RequestParams),
    responses((status = 200, body = RequestPage), (status = 400, body = Problem),
        (status = 422, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: Result<Query<RequestParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<RequestPage>, ApiError> {
    let Query(p) = params.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let query = requests::Query {
        tenant_id: p.tenant_id,
        key_id: p.key_id,
        model: p.model,
        deployment_id: p.deployment_id,
        status: p.status,
        from: p.from,
        to: p.to,
        client_request_id: p.q,
        cursor: p.cursor,
        limit: p.limit,
    };
    Ok(Json(requests::list(state.ctx(), &caller, &query).await?))
}

#[utoipa::path(get, path = "/requests/{id}", tag = "requests",
    params(("id" = String, Path, description = "The gateway's request id")),
    responses((status = 200, body = RequestDetail), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<RequestDetail>, ApiError> {
    Ok(Json(requests::get(state.ctx(), &caller, &id).await?))
}
