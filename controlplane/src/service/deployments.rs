//! Deployments: each a provider plus the model name it knows, with weight, limits, priority
//! and an optional price of its own.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use switchboard_shared::price::PriceEntry;
use switchboard_shared::snapshot::RateLimits;
use utoipa::ToSchema;

use super::crud::{self, resource};
use super::write::{Committed, Write};
use super::{Actor, Ctx, Error, Result, check_id};
use crate::repo;
use crate::repo::deployments::DeploymentFields;
pub use crate::repo::rows::DeploymentRow;
use crate::repo::rows::{ProviderRow, clamp_u32, limits};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeploymentView {
    pub id: String,
    /// The public model name clients ask for.
    pub model: String,
    /// Id of the provider serving it.
    pub provider: String,
    pub upstream_model: String,
    pub weight: u32,
    pub tags: Vec<String>,
    #[schema(value_type = super::RateLimitsBody)]
    pub limits: RateLimits,
    pub priority: u32,
    /// LiteLLM-style price entry (USD per token).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<super::price_book::PriceEntryDoc>)]
    pub price: Option<PriceEntry>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&DeploymentRow> for DeploymentView {
    fn from(r: &DeploymentRow) -> Self {
        Self {
            id: r.id.clone(),
            model: r.model.clone(),
            provider: r.provider_id.clone(),
            upstream_model: r.upstream_model.clone(),
            weight: clamp_u32(r.weight),
            tags: r.tags.clone(),
            limits: limits(r.rpm, r.tpm),
            priority: clamp_u32(r.priority),
            price: r.price.as_ref().map(|p| p.0.clone()),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// A deployment's settings (`id` only when creating).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentBody {
    /// Required when creating; must be absent or equal to the path's id when replacing.
    pub id: Option<String>,
    pub model: String,
    pub provider: String,
    pub upstream_model: String,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Option<super::RateLimitsBody>)]
    pub limits: RateLimits,
    #[serde(default)]
    pub priority: u32,
    /// LiteLLM-style price entry, e.g. `{"input_cost_per_token": 2.5e-06}`.
    #[schema(value_type = Option<super::price_book::PriceEntryDoc>)]
    pub price: Option<PriceEntry>,
}

fn one() -> u32 {
    1
}

resource!(DeploymentRow => DeploymentView, repo: deployments, noun: "deployment",
    object_type: "deployment", section: "deployments", tenant: |_r| None, removed_by: delete);

impl DeploymentBody {
    fn fields(&self) -> DeploymentFields<'_> {
        DeploymentFields {
            model: &self.model,
            provider_id: &self.provider,
            upstream_model: &self.upstream_model,
            weight: i64::from(self.weight),
            tags: &self.tags,
            rpm: self.limits.rpm.map(i64::from),
            tpm: self.limits.tpm.map(i64::from),
            priority: i64::from(self.priority),
            price: self.price.as_ref(),
        }
    }
}

/// Refuses a body whose `provider` names no provider (at `provider`).
async fn check_provider(w: &mut Write, req: &DeploymentBody) -> Result<()> {
    if crud::exists::<ProviderRow>(w.conn(), &req.provider).await? {
        Ok(())
    } else {
        Err(Error::invalid(
            "provider",
            format!("unknown provider {:?}", req.provider),
        ))
    }
}

pub async fn create(
    cx: Ctx<'_>,
    actor: &Actor,
    req: DeploymentBody,
) -> Result<(DeploymentView, Committed)> {
    let id = req
        .id
        .clone()
        .ok_or_else(|| Error::invalid("id", "is required"))?;
    check_id("id", &id)?;
    super::check_stored_limits(&req.limits)?;
    let mut w = Write::begin(cx.pool, actor).await?;
    check_provider(&mut w, &req).await?;
    let row = repo::deployments::insert(w.conn(), &id, &req.fields()).await?;
    crud::saved(cx, w, &id, None, &row).await
}

/// Replaces a deployment's settings; a body `id` must equal `id`.
pub async fn update(
    cx: Ctx<'_>,
    actor: &Actor,
    id: &str,
    req: DeploymentBody,
) -> Result<(DeploymentView, Committed)> {
    if req.id.as_ref().is_some_and(|body_id| body_id != id) {
        return Err(Error::invalid("id", "differs from the id in the path"));
    }
    super::check_stored_limits(&req.limits)?;
    let (mut w, before) = crud::begin::<DeploymentRow>(cx, actor, id).await?;
    check_provider(&mut w, &req).await?;
    let row = repo::deployments::update(w.conn(), id, &req.fields()).await?;
    crud::saved(cx, w, id, Some(&before), &row).await
}
