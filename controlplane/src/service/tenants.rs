//! Tenants: who they are, their limits and budget. Platform admins write; a tenant admin sees
//! only its own.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use switchboard_shared::snapshot::{Budget, RateLimits, TenantStatus};
use utoipa::ToSchema;

use super::crud::{self, resource};
use super::write::{Committed, Write};
use super::{Actor, Ctx, Result, check_id};
use crate::repo;
pub use crate::repo::rows::TenantRow;
use crate::repo::rows::{enum_text, limits};
use crate::repo::tenants::TenantFields;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TenantView {
    pub id: String,
    pub name: String,
    #[schema(value_type = String, example = "active")]
    pub status: TenantStatus,
    #[schema(value_type = super::RateLimitsBody)]
    pub limits: RateLimits,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<super::budgets::BudgetBody>)]
    pub budget: Option<Budget>,
    /// Requests' content (prompt and answer, cut to the data planes' `capture_max_bytes`) is
    /// kept in the request log (`GET /admin/v1/requests/{id}`), for
    /// `spend.content_retention_days`.
    pub capture_content: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&TenantRow> for TenantView {
    fn from(r: &TenantRow) -> Self {
        Self {
            id: r.id.clone(),
            name: r.name.clone(),
            status: r.status(),
            limits: limits(r.rpm, r.tpm, r.concurrency),
            budget: r.budget.as_ref().map(|b| b.0.clone()),
            capture_content: r.capture_content,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

resource!(TenantRow => TenantView, repo: tenants, noun: "tenant", object_type: "tenant",
    section: "tenants", tenant: |r| Some(&r.id), removed_by: delete);

/// A new tenant.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// 1–64 of letters, digits, `.`, `_`, `-`.
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub status: TenantStatus,
    #[serde(default)]
    #[schema(value_type = Option<super::RateLimitsBody>)]
    pub limits: RateLimits,
    #[schema(value_type = Option<super::budgets::BudgetBody>)]
    pub budget: Option<Budget>,
    /// Keep requests' content in the request log (default false: never kept).
    #[serde(default)]
    pub capture_content: bool,
}

// `CreateTenant` repeats these fields: serde's `flatten` does not work with
// `deny_unknown_fields`, which every body needs.
/// A tenant's settings, replaced as a whole.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTenant {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub status: TenantStatus,
    #[serde(default)]
    #[schema(value_type = Option<super::RateLimitsBody>)]
    pub limits: RateLimits,
    #[schema(value_type = Option<super::budgets::BudgetBody>)]
    pub budget: Option<Budget>,
    /// Keep requests' content in the request log (default false: never kept).
    #[serde(default)]
    pub capture_content: bool,
}

impl UpdateTenant {
    fn fields(&self) -> TenantFields<'_> {
        TenantFields {
            name: &self.name,
            status: enum_text(&self.status),
            rpm: self.limits.rpm.map(i64::from),
            tpm: self.limits.tpm.map(i64::from),
            concurrency: self.limits.concurrency.map(i64::from),
            budget: self.budget.as_ref(),
            capture_content: self.capture_content,
        }
    }
}

pub async fn create(
    cx: Ctx<'_>,
    actor: &Actor,
    req: CreateTenant,
) -> Result<(TenantView, Committed)> {
    check_id("id", &req.id)?;
    let CreateTenant {
        id,
        name,
        status,
        limits,
        budget,
        capture_content,
    } = req;
    let settings = UpdateTenant {
        name,
        status,
        limits,
        budget,
        capture_content,
    };
    let mut w = Write::begin(cx.pool, actor).await?;
    let row = repo::tenants::insert(w.conn(), &id, &settings.fields()).await?;
    crud::saved(cx, w, &id, None, &row).await
}

impl crud::Edit<TenantRow> for UpdateTenant {
    async fn apply(self, w: &mut Write, id: &str, _before: &TenantRow) -> Result<TenantRow> {
        Ok(repo::tenants::update(w.conn(), id, &self.fields()).await?)
    }
}
