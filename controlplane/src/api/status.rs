//! Read-only views of the system: the audit log, the fleet and the config revision.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::FromRow;
use utoipa::ToSchema;

use super::crud::{self, ListSql};
use super::{ListParams, Page};
use crate::auth::Caller;
use crate::error::{ApiError, Problem};
use crate::fleet::DataPlane;
use crate::state::AppState;

#[derive(Debug, Clone, Serialize, ToSchema, FromRow)]
pub struct AuditEntry {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub actor_id: Option<uuid::Uuid>,
    pub actor: String,
    pub action: String,
    pub object_type: String,
    pub object_id: String,
    pub tenant_id: Option<String>,
    pub revision: i64,
    /// The object before the change, secrets redacted.
    #[schema(value_type = Option<Object>)]
    pub before: Option<serde_json::Value>,
    #[schema(value_type = Option<Object>)]
    pub after: Option<serde_json::Value>,
}

/// Newest first. Tenant admins see their tenant's entries only.
const AUDIT: ListSql = ListSql::Tenant(
    "SELECT id, at, actor_id, actor, action, object_type, object_id, tenant_id, revision, \
     before, after FROM audit_log WHERE ($1::text IS NULL OR tenant_id = $1) \
     AND ($2::text IS NULL OR tenant_id = $2) ORDER BY id DESC LIMIT $3 OFFSET $4",
);

#[utoipa::path(get, path = "/audit", tag = "status", params(ListParams),
    responses((status = 200, body = Page<AuditEntry>)))]
pub async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    params: ListParams,
) -> Result<Json<Page<AuditEntry>>, ApiError> {
    crud::page(&state, &caller, &params, AUDIT, AuditEntry::clone).await
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FleetView {
    /// The committed config revision.
    pub revision: u64,
    /// Data planes heard from within 3 heartbeat intervals.
    pub dataplanes: Vec<DataPlane>,
}

#[utoipa::path(get, path = "/fleet", tag = "status",
    responses((status = 200, body = FleetView), (status = 403, body = Problem)))]
pub async fn fleet(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<FleetView>, ApiError> {
    caller.require_platform_reader()?;
    let revision = crate::db::current_revision(&state.pool).await?;
    Ok(Json(FleetView {
        revision,
        dataplanes: state.fleet.live(revision),
    }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RevisionView {
    /// The committed config revision (Postgres).
    pub revision: u64,
    /// The newest snapshot this replica has built or seen published.
    pub snapshot_revision: u64,
}

#[utoipa::path(get, path = "/config/revision", tag = "status",
    responses((status = 200, body = RevisionView)))]
pub async fn revision(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<RevisionView>, ApiError> {
    Ok(Json(RevisionView {
        revision: crate::db::current_revision(&state.pool).await?,
        snapshot_revision: state.publisher.latest_revision(),
    }))
}
