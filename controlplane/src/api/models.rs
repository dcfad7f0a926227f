//! Model routing policies: `/admin/v1/models/{model}` — strategy, fallbacks, retries,
//! timeouts and cooldown of one public model name. `PUT` creates or replaces.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::body::Body;
use super::caller::Caller;
use super::error::{ApiError, Problem};
use super::{ListParams, Page, Wait, deleted, written};
use crate::service::crud;
use crate::service::models::{self, PolicyBody, PolicyRow, PolicyView};
use crate::state::AppState;

#[utoipa::path(get, path = "/models", tag = "models", params(ListParams),
    responses((status = 200, body = Page<PolicyView>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: ListParams,
) -> Result<Json<Page<PolicyView>>, ApiError> {
    caller.require_platform_reader()?;
    Ok(Json(
        crud::list::<PolicyRow>(state.ctx(), &caller, params.paging(), None).await?,
    ))
}

#[utoipa::path(get, path = "/models/{model}", tag = "models", params(("model" = String, Path)),
    responses((status = 200, body = PolicyView), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(model): Path<String>,
) -> Result<Json<PolicyView>, ApiError> {
    caller.require_platform_reader()?;
    Ok(Json(
        crud::get::<PolicyRow>(state.ctx(), &caller, &model).await?,
    ))
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
    let (view, committed, created) = models::put(state.ctx(), &caller, &model, req).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
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
    let committed = crud::delete::<PolicyRow>(state.ctx(), &caller, &model).await?;
    Ok(deleted(&state, committed, wait).await)
}
