//! Model routing policies: strategy, fallbacks, retries, timeouts, cooldown, the routing
//! refinements (waits, latency buffer, preference, weights from limits, derived tags),
//! transforms and content rules of one public name. A put creates or replaces.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use switchboard_shared::snapshot::{
    ContentRule, Cooldown, ModelPolicy, Preference, ResponseCache, Strategy, Timeouts, Transforms,
};
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
    #[serde(flatten)]
    pub routing: Routing,
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
            routing: Routing::of(p),
            cache: p.cache,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// A model's policy; absent fields take their defaults.
#[derive(Debug, Default, Deserialize, ToSchema)]
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
    /// How long a request may wait for a cooling deployment (default 1000, at most 30000).
    pub wait_for_cooldown_ms: Option<u64>,
    /// How long a request may wait for a concurrency slot (default 0, at most 30000).
    #[serde(default)]
    pub concurrency_wait_ms: u64,
    /// `lowest_latency`: deployments within this percentage of the fastest share first place.
    #[serde(default)]
    pub latency_buffer_pct: f64,
    /// `free_first` or `local_first`.
    #[schema(value_type = Option<String>, example = "free_first")]
    pub prefer: Option<Preference>,
    /// Deployments at the default weight weigh their `limits.rpm` (or `tpm / 1000`).
    #[serde(default)]
    pub weights_from_limits: bool,
    /// Deployments also carry the words of their model names as tags.
    #[serde(default)]
    pub derive_tags: bool,
    /// Edits to the body every deployment of the model receives, e.g.
    /// `{"max_tokens": 4096, "defaults": {"temperature": 0.2}}` (see docs/routing.md).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub transforms: Transforms,
    /// Content rules: the first a request meets picks the model that serves it, e.g.
    /// `[{"when": {"images": true}, "model": "gpt-4o"}, {"model": "gpt-4o-mini"}]`.
    #[serde(default)]
    #[schema(value_type = Option<Vec<Object>>)]
    pub rules: Vec<ContentRule>,
}

/// The routing settings of a stored policy beyond strategy, fallbacks, retries, timeouts and
/// cooldown, as `GET` shows them.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Routing {
    pub wait_for_cooldown_ms: u64,
    pub concurrency_wait_ms: u64,
    pub latency_buffer_pct: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub prefer: Option<Preference>,
    pub weights_from_limits: bool,
    pub derive_tags: bool,
    #[serde(skip_serializing_if = "Transforms::is_empty")]
    #[schema(value_type = Object)]
    pub transforms: Transforms,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<Object>)]
    pub rules: Vec<ContentRule>,
}

impl Routing {
    fn of(p: &ModelPolicy) -> Self {
        Self {
            wait_for_cooldown_ms: p.wait_for_cooldown_ms,
            concurrency_wait_ms: p.concurrency_wait_ms,
            latency_buffer_pct: p.latency_buffer_pct,
            prefer: p.prefer,
            weights_from_limits: p.weights_from_limits,
            derive_tags: p.derive_tags,
            transforms: p.transforms.clone(),
            rules: p.rules.clone(),
        }
    }
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
    policy.wait_for_cooldown_ms = req
        .wait_for_cooldown_ms
        .unwrap_or(policy.wait_for_cooldown_ms);
    policy.concurrency_wait_ms = req.concurrency_wait_ms;
    policy.latency_buffer_pct = req.latency_buffer_pct;
    policy.prefer = req.prefer;
    policy.weights_from_limits = req.weights_from_limits;
    policy.derive_tags = req.derive_tags;
    policy.transforms = req.transforms;
    policy.rules = req.rules;
    policy.cache = req.cache;
    let mut w = Write::begin(cx.pool, actor).await?;
    let before = repo::models::get(w.conn(), model, true).await?;
    let row = repo::models::upsert(w.conn(), model, &policy).await?;
    let (view, committed) = crud::saved(cx, w, model, before.as_ref(), &row).await?;
    Ok((view, committed, before.is_none()))
}
