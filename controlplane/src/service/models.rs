//! Model routing policies: strategy, fallbacks, retries, timeouts and cooldown of one public
//! model name. A put creates or replaces.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use switchboard_shared::snapshot::{Cooldown, ModelPolicy, ResponseCache, Strategy, Timeouts};
use utoipa::ToSchema;

use super::crud::{self, resource};
use super::write::{Committed, Write};
use super::{Actor, Ctx, Result};
use crate::repo;
pub use crate::repo::rows::PolicyRow;

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PolicyView {
    pub model: String,
    #[schema(value_type = String, example = "weighted_random")]
    pub strategy: Strategy,
    pub fallbacks: Vec<String>,
    pub retries: u32,
    #[schema(value_type = Object)]
    pub timeouts: Timeouts,
    #[schema(value_type = Object)]
    pub cooldown: Cooldown,
    /// The exact response cache (`enabled`, `ttl_seconds`, `max_entry_bytes`,
    /// `shared_across_tenants`); absent: nothing is cached.
    #[schema(value_type = Option<Object>)]
    pub cache: Option<ResponseCache>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&PolicyRow> for PolicyView {
    fn from(r: &PolicyRow) -> Self {
        let p = &r.policy.0;
        Self {
            model: r.model.clone(),
            strategy: p.strategy,
            fallbacks: p.fallbacks.clone(),
            retries: p.retries,
            timeouts: p.timeouts,
            cooldown: p.cooldown,
            cache: p.cache,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// A model's policy; absent fields take their defaults.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyBody {
    #[serde(default)]
    #[schema(value_type = Option<String>, example = "round_robin")]
    pub strategy: Strategy,
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Extra attempts after the first fails (default 2, at most 10).
    pub retries: Option<u32>,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub timeouts: Timeouts,
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub cooldown: Cooldown,
    /// The exact response cache: `{enabled, ttl_seconds, max_entry_bytes,
    /// shared_across_tenants}` (defaults true, 300, 1048576, false); absent: nothing cached.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub cache: Option<ResponseCache>,
}

resource!(PolicyRow => PolicyView, repo: models, noun: "model policy",
    object_type: "model_policy", section: "models", tenant: |_r| None, removed_by: delete);

/// Creates or replaces the policy of `model`; whether it was created.
pub async fn put(
    cx: Ctx<'_>,
    actor: &Actor,
    model: &str,
    req: PolicyBody,
) -> Result<(PolicyView, Committed, bool)> {
    let mut policy = ModelPolicy::default_for(model);
    policy.strategy = req.strategy;
    policy.fallbacks = req.fallbacks;
    policy.retries = req.retries.unwrap_or(policy.retries);
    policy.timeouts = req.timeouts;
    policy.cooldown = req.cooldown;
    policy.cache = req.cache;
    let mut w = Write::begin(cx.pool, actor).await?;
    let before = repo::models::get(w.conn(), model, true).await?;
    let row = repo::models::upsert(w.conn(), model, &policy).await?;
    let (view, committed) = crud::saved(cx, w, model, before.as_ref(), &row).await?;
    Ok((view, committed, before.is_none()))
}
