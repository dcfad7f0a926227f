//! Deployments: `/admin/v1/deployments`, each a provider plus the model name it knows; their
//! health (`/deployments/health`, `/deployments/{id}/health`) and test call
//! (`/deployments/{id}/test`).

use axum::Json;
use axum::extract::{Path, State};

use super::caller::Caller;
use super::error::{ApiError, Problem};
use super::{ListParams, Page, Wait, handler};
use crate::service::crud;
use crate::service::deployments::{self, DeploymentBody, DeploymentRow, DeploymentView};
use crate::service::health::{self, DeploymentHealth};
use crate::service::test_call::{self, TestResult};
use crate::state::AppState;

handler! {
    reads for platform_readers "deployments", "/deployments" [], "/deployments/{id}"("id"),
    DeploymentRow => DeploymentView
}

handler! {
    create "deployments", "/deployments", DeploymentBody => DeploymentView [409],
    by require_platform_admin, deployments::create
}

handler! {
    save put "deployments", "/deployments/{id}", DeploymentBody => DeploymentView,
    by require_platform_admin, deployments::update
}

handler! {
    remove "deployments", "/deployments/{id}"("id") [422], by require_platform_admin,
    crud::delete::<DeploymentRow>
}

/// Every deployment's health (`GET /deployments/health`).
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct HealthList {
    pub data: Vec<DeploymentHealth>,
}

/// Every deployment's health: the data planes' shared state (breaker, in flight, latency,
/// upstream quota, last permanent error) and the request log's last 15 minutes.
#[utoipa::path(get, path = "/deployments/health", tag = "deployments",
    responses((status = 200, body = HealthList), (status = 403, body = Problem)))]
pub async fn health_all(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<HealthList>, ApiError> {
    let data = health::all(state.ctx(), &caller, state.counters.as_ref()).await?;
    Ok(Json(HealthList { data }))
}

/// One deployment's health, with its latest failed attempts.
#[utoipa::path(get, path = "/deployments/{id}/health", tag = "deployments",
    params(("id" = String, Path, description = "The deployment's id")),
    responses((status = 200, body = DeploymentHealth), (status = 403, body = Problem),
        (status = 404, body = Problem)))]
pub async fn health(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeploymentHealth>, ApiError> {
    let one = health::one(state.ctx(), &caller, state.counters.as_ref(), &id).await?;
    Ok(Json(one))
}

/// Sends one minimal real request (a one-token chat) to the deployment's upstream and says
/// what happened. A data plane makes the call through the deployment's adaptor with the
/// credential it serves with (asked over NATS; `via: dataplane`, `answered_by`), recording
/// nothing: a failed test never takes the deployment out of service. When no data plane
/// answers, the control plane makes the call itself (`via: control_plane`, `fallback` says
/// why). Platform admins only.
#[utoipa::path(post, path = "/deployments/{id}/test", tag = "deployments",
    params(("id" = String, Path, description = "The deployment's id")),
    responses((status = 200, body = TestResult), (status = 403, body = Problem),
        (status = 404, body = Problem)))]
pub async fn test(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TestResult>, ApiError> {
    let keys = &state.settings.master_keys;
    Ok(Json(
        test_call::run(state.ctx(), &caller, keys, state.test_calls.as_ref(), &id).await?,
    ))
}
