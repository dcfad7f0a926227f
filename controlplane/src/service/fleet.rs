//! Read-only views of the system: the audit log, the fleet of data planes (as heard from
//! their heartbeats, [`crate::fleet`]) and the config revision.

use chrono::{DateTime, Utc};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Actor, Ctx, Page, Paging, Result};
use crate::fleet::{DataPlane, Fleet};
use crate::publish::Publisher;
use crate::repo;
use crate::repo::rows::AuditRow;

#[derive(Debug, Clone, Serialize, ToSchema)]
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

impl From<AuditRow> for AuditEntry {
    fn from(r: AuditRow) -> Self {
        Self {
            id: r.id,
            at: r.at,
            actor_id: r.actor_id,
            actor: r.actor,
            action: r.action,
            object_type: r.object_type,
            object_id: r.object_id,
            tenant_id: r.tenant_id,
            revision: r.revision,
            before: r.before,
            after: r.after,
        }
    }
}

/// The audit log, newest first; a tenant admin sees its tenant's entries only.
pub async fn audit(
    cx: Ctx<'_>,
    actor: &Actor,
    paging: Paging,
    tenant_id: Option<&str>,
) -> Result<Page<AuditEntry>> {
    let rows = repo::audit::list(cx.pool, paging.rows(actor.confined_to(), tenant_id)).await?;
    Ok(paging.page(rows, |r| AuditEntry::from(r.clone())))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FleetView {
    /// The committed config revision.
    pub revision: u64,
    /// Data planes heard from within 3 heartbeat intervals.
    pub dataplanes: Vec<DataPlane>,
}

/// The live data planes, against the committed revision.
pub async fn fleet(cx: Ctx<'_>, fleet: &Fleet) -> Result<FleetView> {
    let revision = repo::revision::current(cx.pool).await?;
    Ok(FleetView {
        revision,
        dataplanes: fleet.live(revision),
    })
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RevisionView {
    /// The committed config revision (Postgres).
    pub revision: u64,
    /// The newest snapshot this replica has built or seen published.
    pub snapshot_revision: u64,
}

pub async fn revision(cx: Ctx<'_>, publisher: &Publisher) -> Result<RevisionView> {
    Ok(RevisionView {
        revision: repo::revision::current(cx.pool).await?,
        snapshot_revision: publisher.latest_revision(),
    })
}
