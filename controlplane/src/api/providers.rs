//! Providers: `/admin/v1/providers`, platform-wide. The upstream credentials are write-only.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::body::Body;
use super::caller::Caller;
use super::error::{ApiError, Problem};
use super::{ListParams, Page, Wait, answer, deleted};
use crate::service::crud;
use crate::service::providers::{self, CreateProvider, ProviderRow, ProviderView, UpdateProvider};
use crate::state::AppState;

#[utoipa::path(get, path = "/providers", tag = "providers", params(ListParams),
    responses((status = 200, body = Page<ProviderView>), (status = 403, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: ListParams,
) -> Result<Json<Page<ProviderView>>, ApiError> {
    caller.require_platform_reader()?;
    Ok(Json(
        crud::list::<ProviderRow>(state.ctx(), &caller, params.paging(), None).await?,
    ))
}

#[utoipa::path(get, path = "/providers/{id}", tag = "providers", params(("id" = String, Path)),
    responses((status = 200, body = ProviderView), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ProviderView>, ApiError> {
    caller.require_platform_reader()?;
    Ok(Json(
        crud::get::<ProviderRow>(state.ctx(), &caller, &id).await?,
    ))
}

#[utoipa::path(post, path = "/providers", tag = "providers", params(Wait), request_body = CreateProvider,
    responses((status = 201, body = ProviderView), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    wait: Wait,
    Body(req): Body<CreateProvider>,
) -> Result<Response, ApiError> {
    caller.require_platform_admin()?;
    let keys = &state.settings.master_keys;
    let done = providers::create(state.ctx(), &caller, keys, req).await?;
    Ok(answer(&state, wait, StatusCode::CREATED, done).await)
}

#[utoipa::path(put, path = "/providers/{id}", tag = "providers", params(("id" = String, Path), Wait),
    request_body = UpdateProvider,
    responses((status = 200, body = ProviderView), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    wait: Wait,
    Body(req): Body<UpdateProvider>,
) -> Result<Response, ApiError> {
    caller.require_platform_admin()?;
    let keys = &state.settings.master_keys;
    let done = providers::update(state.ctx(), &caller, keys, &id, req).await?;
    Ok(answer(&state, wait, StatusCode::OK, done).await)
}

#[utoipa::path(delete, path = "/providers/{id}", tag = "providers", params(("id" = String, Path), Wait),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    wait: Wait,
) -> Result<Response, ApiError> {
    caller.require_platform_admin()?;
    let committed = crud::delete::<ProviderRow>(state.ctx(), &caller, &id).await?;
    Ok(deleted(&state, committed, wait).await)
}
