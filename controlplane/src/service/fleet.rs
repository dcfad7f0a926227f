//! Read-only views of the system: the audit log, the fleet of data planes (as heard from
//! their heartbeats, [`crate::fleet`]) and the config revision.

use serde::Serialize;
use utoipa::ToSchema;

use super::{Actor, Ctx, Page, Paging, Result};
use crate::fleet::{DataPlane, Fleet};
use crate::publish::Publisher;
use crate::repo;
pub use crate::repo::rows::AuditEntry;

/// The audit log, newest first; a tenant admin sees its tenant's entries only.
pub async fn audit(
    cx: Ctx<'_>,
    actor: &Actor,
    paging: Paging,
    tenant_id: Option<&str>,
) -> Result<Page<AuditEntry>> {
    let rows = repo::audit::list(cx.pool, paging.rows(actor.confined_to(), tenant_id)).await?;
    Ok(paging.page(rows, AuditEntry::clone))
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
