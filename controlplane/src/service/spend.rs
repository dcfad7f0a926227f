//! Spend queries: totals over a range of days, grouped by tenant, key, model or deployment,
//! answered from the daily rollups (`spend_daily`), so months of history cost one index scan.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Actor, Ctx, Result};
use crate::repo;
pub use crate::repo::spend::SpendRow;

/// What to group spend by.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    Tenant,
    Key,
    Model,
    Deployment,
}

impl GroupBy {
    /// The rollup column.
    fn column(self) -> &'static str {
        match self {
            GroupBy::Tenant => "tenant_id",
            GroupBy::Key => "key_id",
            GroupBy::Model => "model",
            GroupBy::Deployment => "deployment_id",
        }
    }
}

/// The answer: one row per group, dearest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SpendReport {
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub rows: Vec<SpendRow>,
}

/// Spend per `group_by` over the days `from..=to`; a tenant admin's own tenant only,
/// `tenant_id`: only that tenant's.
pub async fn report(
    cx: Ctx<'_>,
    actor: &Actor,
    group_by: GroupBy,
    from: NaiveDate,
    to: NaiveDate,
    tenant_id: Option<&str>,
) -> Result<SpendReport> {
    let rows = repo::spend::report(
        cx.pool,
        group_by.column(),
        from,
        to,
        actor.confined_to(),
        tenant_id,
    )
    .await?;
    Ok(SpendReport { from, to, rows })
}
