//! Deployments: `/admin/v1/deployments`, each a provider plus the model name it knows.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::body::Body;
use super::caller::Caller;
use super::error::{ApiError, Problem};
use super::{ListParams, Page, Wait, answer, deleted};
use crate::service::crud;
use crate::service::deployments::{self, DeploymentBody, DeploymentRow, DeploymentView};
use crate::state::AppState;

#[utoipa::path(get, path = "/deployments", tag = "deployments", params(ListParams),
    responses((status = 200, body = Page<DeploymentView>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: ListParams,
) -> Result<Json<Page<DeploymentView>>, ApiError> {
    caller.require_platform_reader()?;
    Ok(Json(
        crud::list::<DeploymentRow>(state.ctx(), &caller, params.paging(), None).await?,
    ))
}

#[utoipa::path(get, path = "/deployments/{id}", tag = "deployments", params(("id" = String, Path)),
    responses((status = 200, body = DeploymentView), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeploymentView>, ApiError> {
    caller.require_platform_reader()?;
    Ok(Json(
        crud::get::<DeploymentRow>(state.ctx(), &caller, &id).await?,
    ))
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
    let done = deployments::create(state.ctx(), &caller, req).await?;
    Ok(answer(&state, wait, StatusCode::CREATED, done).await)
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
    let done = deployments::update(state.ctx(), &caller, &id, req).await?;
    Ok(answer(&state, wait, StatusCode::OK, done).await)
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
    let committed = crud::delete::<DeploymentRow>(state.ctx(), &caller, &id).await?;
    Ok(deleted(&state, committed, wait).await)
}
