//! Deployments: each a provider plus the model name it knows, with weight, limits (requests
//! in flight included), priority, and optionally a price of its own, spend caps and request
//! quotas, and transforms of the body it receives.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use switchboard_shared::price::PriceEntry;
use switchboard_shared::snapshot::{DeploymentCaps, RateLimits, Transforms};
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
    /// Spend caps and request quotas per UTC day and month.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub caps: Option<DeploymentCaps>,
    /// Edits to the body this deployment receives (after its model policy's).
    #[serde(skip_serializing_if = "Transforms::is_empty")]
    #[schema(value_type = Object)]
    pub transforms: Transforms,
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
            limits: limits(r.rpm, r.tpm, r.concurrency),
            priority: clamp_u32(r.priority),
            price: r.price.as_ref().map(|p| p.0.clone()),
            caps: r.caps.as_ref().map(|c| c.0),
            transforms: r
                .transforms
                .as_ref()
                .map(|t| t.0.clone())
                .unwrap_or_default(),
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
    /// Spend caps and request quotas per UTC day and month, e.g. `{"usd_per_day": 5}`:
    /// once one is used up, the deployment is out of rotation until its period ends.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub caps: Option<DeploymentCaps>,
    /// Edits to the body this deployment receives, e.g. `{"max_tokens": 4096, "drop":
    /// ["logit_bias"], "strip_cache_control": true}` (see docs/routing.md).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub transforms: Transforms,
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
            concurrency: self.limits.concurrency.map(i64::from),
            priority: i64::from(self.priority),
            price: self.price.as_ref(),
            caps: self.caps.as_ref(),
            transforms: (!self.transforms.is_empty()).then_some(&self.transforms),
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
    let (mut w, before) = crud::begin::<DeploymentRow>(cx, actor, id).await?;
    check_provider(&mut w, &req).await?;
    let row = repo::deployments::update(w.conn(), id, &req.fields()).await?;
    crud::saved(cx, w, id, Some(&before), &row).await
}
