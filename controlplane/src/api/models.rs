//! Model routing policies: `/admin/v1/models/{model}` — strategy, fallbacks, retries,
//! timeouts and cooldown of one public model name. `PUT` creates or replaces.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::body::Body;
use super::caller::Caller;
use super::error::{ApiError, Problem};
use super::{ListParams, Page, Wait, handler, written};
use crate::service::crud;
use crate::service::models::{self, PolicyBody, PolicyRow, PolicyView};
use crate::state::AppState;

handler! {
    reads for platform_readers "models", "/models" [], "/models/{model}"("model"),
    PolicyRow => PolicyView
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

handler! {
    remove "models", "/models/{model}"("model") [], by require_platform_admin,
    crud::delete::<PolicyRow>
}
