//! Virtual keys: `/admin/v1/keys`. The secret is returned once, by create and rotate. Tenant
//! admins see and change only their tenant's keys; another tenant's key is 404.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::body::Body;
use super::caller::Caller;
use super::error::{ApiError, Problem};
use super::{ListParams, Page, Wait, answer};
use crate::service::crud;
use crate::service::keys::{self, CreateKey, KeyRow, KeyView, KeyWithSecret, UpdateKey};
use crate::state::AppState;

#[utoipa::path(get, path = "/keys", tag = "keys", params(ListParams),
    responses((status = 200, body = Page<KeyView>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: ListParams,
) -> Result<Json<Page<KeyView>>, ApiError> {
    let page = crud::list::<KeyRow>(
        state.ctx(),
        &caller,
        params.paging(),
        params.tenant_id.as_deref(),
    );
    Ok(Json(page.await?))
}

#[utoipa::path(get, path = "/keys/{id}", tag = "keys", params(("id" = String, Path)),
    responses((status = 200, body = KeyView), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<KeyView>, ApiError> {
    Ok(Json(crud::get::<KeyRow>(state.ctx(), &caller, &id).await?))
}

#[utoipa::path(post, path = "/keys", tag = "keys", params(Wait), request_body = CreateKey,
    responses((status = 201, body = KeyWithSecret), (status = 422, body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    wait: Wait,
    Body(req): Body<CreateKey>,
) -> Result<Response, ApiError> {
    caller.require_writer()?;
    let done = keys::create(state.ctx(), &caller, &state.settings.pepper, req).await?;
    Ok(answer(&state, wait, StatusCode::CREATED, done).await)
}

#[utoipa::path(patch, path = "/keys/{id}", tag = "keys", params(("id" = String, Path), Wait),
    request_body = UpdateKey,
    responses((status = 200, body = KeyView), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    wait: Wait,
    Body(req): Body<UpdateKey>,
) -> Result<Response, ApiError> {
    caller.require_writer()?;
    let done = keys::update(state.ctx(), &caller, &id, req).await?;
    Ok(answer(&state, wait, StatusCode::OK, done).await)
}

#[utoipa::path(post, path = "/keys/{id}/revoke", tag = "keys", params(("id" = String, Path), Wait),
    responses((status = 200, body = KeyView), (status = 404, body = Problem)))]
pub async fn revoke(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    wait: Wait,
) -> Result<Response, ApiError> {
    caller.require_writer()?;
    let done = keys::revoke(state.ctx(), &caller, &id).await?;
    Ok(answer(&state, wait, StatusCode::OK, done).await)
}

#[utoipa::path(post, path = "/keys/{id}/rotate", tag = "keys", params(("id" = String, Path), Wait),
    responses((status = 200, body = KeyWithSecret), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn rotate(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    wait: Wait,
) -> Result<Response, ApiError> {
    caller.require_writer()?;
    let done = keys::rotate(state.ctx(), &caller, &state.settings.pepper, &id).await?;
    Ok(answer(&state, wait, StatusCode::OK, done).await)
}
