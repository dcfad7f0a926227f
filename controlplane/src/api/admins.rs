//! Admin users: `/admin/v1/admins`, platform admins only.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::body::Body;
use super::caller::Caller;
use super::error::{ApiError, Problem};
use super::{ListParams, Page, Wait, answer, deleted};
use crate::service::admins::{self, AdminView, CreateAdmin};
use crate::state::AppState;

#[utoipa::path(get, path = "/admins", tag = "admins", params(ListParams),
    responses((status = 200, body = Page<AdminView>), (status = 403, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: ListParams,
) -> Result<Json<Page<AdminView>>, ApiError> {
    caller.require_platform_reader()?;
    let page = admins::list(state.ctx(), params.paging(), params.tenant_id.as_deref());
    Ok(Json(page.await?))
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
    let done = admins::create(state.ctx(), &caller, req).await?;
    Ok(answer(&state, wait, StatusCode::CREATED, done).await)
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
    let committed = admins::delete(state.ctx(), &caller, &id).await?;
    Ok(deleted(&state, committed, wait).await)
}
