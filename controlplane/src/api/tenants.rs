//! Tenants: `/admin/v1/tenants`. Platform admins write; tenant admins see only their own.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::body::Body;
use super::caller::Caller;
use super::error::{ApiError, Problem};
use super::{ListParams, Page, Wait, answer, deleted};
use crate::service::crud;
use crate::service::tenants::{self, CreateTenant, TenantRow, TenantView, UpdateTenant};
use crate::state::AppState;

#[utoipa::path(get, path = "/tenants", tag = "tenants", params(ListParams),
    responses((status = 200, body = Page<TenantView>)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: ListParams,
) -> Result<Json<Page<TenantView>>, ApiError> {
    let page = crud::list::<TenantRow>(
        state.ctx(),
        &caller,
        params.paging(),
        params.tenant_id.as_deref(),
    );
    Ok(Json(page.await?))
}

#[utoipa::path(get, path = "/tenants/{id}", tag = "tenants", params(("id" = String, Path)),
    responses((status = 200, body = TenantView), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    Ok(Json(
        crud::get::<TenantRow>(state.ctx(), &caller, &id).await?,
    ))
}

#[utoipa::path(post, path = "/tenants", tag = "tenants", params(Wait), request_body = CreateTenant,
    responses((status = 201, body = TenantView), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    wait: Wait,
    Body(req): Body<CreateTenant>,
) -> Result<Response, ApiError> {
    caller.require_platform_admin()?;
    let done = tenants::create(state.ctx(), &caller, req).await?;
    Ok(answer(&state, wait, StatusCode::CREATED, done).await)
}

#[utoipa::path(put, path = "/tenants/{id}", tag = "tenants", params(("id" = String, Path), Wait),
    request_body = UpdateTenant,
    responses((status = 200, body = TenantView), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    wait: Wait,
    Body(req): Body<UpdateTenant>,
) -> Result<Response, ApiError> {
    caller.require_tenant_writer(&id)?;
    let done = tenants::update(state.ctx(), &caller, &id, req).await?;
    Ok(answer(&state, wait, StatusCode::OK, done).await)
}

#[utoipa::path(delete, path = "/tenants/{id}", tag = "tenants", params(("id" = String, Path), Wait),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    wait: Wait,
) -> Result<Response, ApiError> {
    caller.require_tenant_writer(&id)?;
    let committed = crud::delete::<TenantRow>(state.ctx(), &caller, &id).await?;
    Ok(deleted(&state, committed, wait).await)
}
