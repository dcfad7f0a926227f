//! Read-only views of the system: the audit log, the fleet and the config revision.

use axum::Json;
use axum::extract::State;

use super::caller::Caller;
use super::error::{ApiError, Problem};
use super::{ListParams, Page, handler};
use crate::service::fleet::{self, AuditEntry, FleetView, RevisionView};
use crate::state::AppState;

handler! {
    #[utoipa::path(get, path = "/audit", tag = "status", params(ListParams),
        responses((status = 200, body = Page<AuditEntry>)))]
    page audit(state, caller, params) -> AuditEntry {
        fleet::audit(state.ctx(), &caller, params.paging(), params.tenant_id.as_deref())
    }
}

#[utoipa::path(get, path = "/fleet", tag = "status",
    responses((status = 200, body = FleetView), (status = 403, body = Problem)))]
pub async fn fleet(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<FleetView>, ApiError> {
    caller.require_platform_reader()?;
    Ok(Json(fleet::fleet(state.ctx(), &state.fleet).await?))
}

#[utoipa::path(get, path = "/config/revision", tag = "status",
    responses((status = 200, body = RevisionView)))]
pub async fn revision(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<RevisionView>, ApiError> {
    Ok(Json(fleet::revision(state.ctx(), &state.publisher).await?))
}
