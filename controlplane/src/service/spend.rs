//! Spend queries: totals over a range of days, grouped by tenant, key, model or deployment,
//! answered from the daily rollups (`spend_daily`), so months of history cost one index scan.

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{Actor, Ctx, Result};
use crate::repo;
use crate::repo::spend::SpendTotals;

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

/// One group's totals.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SpendRow {
    /// The tenant, key, model or deployment id ('' for requests that reached no deployment).
    pub group: String,
    pub requests: i64,
    pub errors: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cached_read_tokens: i64,
    pub cache_creation_tokens: i64,
    pub cost_usd: f64,
}

impl From<SpendTotals> for SpendRow {
    fn from(t: SpendTotals) -> Self {
        Self {
            group: t.group,
            requests: t.requests,
            errors: t.errors,
            prompt_tokens: t.prompt_tokens,
            completion_tokens: t.completion_tokens,
            cached_read_tokens: t.cached_read_tokens,
            cache_creation_tokens: t.cache_creation_tokens,
            cost_usd: t.cost_usd,
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
    Ok(SpendReport {
        from,
        to,
        rows: rows.into_iter().map(SpendRow::from).collect(),
    })
}
