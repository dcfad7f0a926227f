//! The catalog: a snapshot compiled for the request path.
//!
//! A [`Snapshot`] is a document; the catalog is the same content arranged for lookups that cost
//! a hash and a map get: keys by their HMAC, models by name with their deployments in place,
//! each deployment with its ready-made provider adaptor, its upstream model name pre-encoded
//! for the body splice, and its price. Secrets are resolved here, once, so a missing
//! environment variable fails the load, not a request.
//!
//! Mutable per-subject state — rate-limit counters and deployment state ([`crate::fleet`]) —
//! lives in `Arc`s that a new catalog takes over from the previous one by id, so a config
//! reload neither resets a limit nor forgets a cooldown. Budget spend is not held here: each
//! budgeted key and tenant only caches its current period's counter ([`BudgetCell`]), which a
//! new catalog finds again by scope, id and period (in Redis, or in [`crate::budget::local`]).
//!
//! [`Catalog::build`] validates, then compiles one snapshot section at a time, each in its own
//! function: tenants, keys (which point at their tenant), providers (credentials resolved,
//! one adaptor per credential), deployments (which take their provider's adaptor), and the
//! public names (models, groups, content-rule aliases, `tag:` selectors). Per-model runtime
//! state starts fresh with each catalog: the round-robin position, the metrics handles, the
//! prefix index, session affinity's table ([`affinity`]) and the compiled content rules. The catalog reads no request-side module: the selectors
//! and the router read it. A config delta (changed keys only) makes a new catalog from the
//! served one without a rebuild ([`delta`]).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http::HeaderValue;
use switchboard_shared::keys::{KEY_HASH_LEN, parse_key_hash};
use switchboard_shared::price::PriceEntry;
use switchboard_shared::secret::SecretRef;
use switchboard_shared::snapshot::{
    ModelPolicy, Provider, ProviderKind, RateLimits, Snapshot, Strategy, Tenant, TenantStatus,
    Transforms, VirtualKey,
};
use switchboard_shared::validate::{Problem, Problems};

use crate::budget::{BudgetCell, BudgetScope, BudgetSubject, Subjects};
use crate::fleet::DeploymentState;
use crate::fleet::prefix::PrefixIndex;
use crate::limits::{LocalLimitState, Scope, Subject};
use crate::metrics::ModelMetrics;
use crate::providers::ProviderAdaptor;
use crate::providers::bedrock::sigv4::Credentials;
use crate::providers::client::HttpClient;
use crate::providers::keyring::KeyRing;
use crate::providers::registry;
use crate::request::json_string_literal;
use crate::rules::ContentRules;

mod affinity;
mod delta;
mod key;

pub use affinity::{SESSION_TTL_SECONDS, SessionAffinity, unix_seconds};
pub use key::Key;

/// Prefix of model names that select deployments by tag (`tag:fast`); the catalog builds one
/// such model per tag.
pub const TAG_PREFIX: &str = "tag:";

/// A snapshot ready to serve.
#[derive(Debug)]
pub struct Catalog {
    pub revision: u64,
    /// The price-file version the snapshot's prices came from, for usage records.
    pub price_version: Option<u64>,
    pub content_hash: String,
    /// The revision as a header value, for `x-switchboard-config-revision`.
    pub revision_header: HeaderValue,
    keys: HashMap<[u8; KEY_HASH_LEN], Arc<KeyEntry>>,
    /// Rotated-out secrets in their grace window: the key's entry (one set of counters for
    /// both secrets) and when the old secret stops working.
    previous_keys: HashMap<[u8; KEY_HASH_LEN], (Arc<KeyEntry>, DateTime<Utc>)>,
    models: HashMap<String, Arc<ModelEntry>>,
    /// Every public model name, sorted, for `GET /v1/models`.
    model_names: Vec<String>,
    tenants: HashMap<String, Arc<TenantEntry>>,
    /// Every deployment once (models, groups and tags share them).
    all_deployments: Vec<Arc<DeploymentEntry>>,
}

/// A tenant and its rate-limit counters.
#[derive(Debug)]
pub struct TenantEntry {
    pub tenant: Tenant,
    pub limit_state: Arc<LocalLimitState>,
    /// The tenant budget's counter of the current period, cached (empty in a new catalog).
    pub budget_cell: BudgetCell,
}

/// A virtual key with its tenant and counters.
#[derive(Debug)]
pub struct KeyEntry {
    pub key: Key,
    pub tenant: Arc<TenantEntry>,
    /// The key's rate-limit counters; one shared, never-touched state for keys without
    /// per-minute limits ([`Carryover::limit_state_or_new`]).
    pub limit_state: Arc<LocalLimitState>,
    /// The key budget's counter of the current period, cached (empty in a new catalog).
    pub budget_cell: BudgetCell,
}

impl KeyEntry {
    /// The limit subjects of a request made with this key: the key, then its tenant.
    pub fn subjects(&self) -> [Subject<'_>; 2] {
        [
            Subject {
                scope: Scope::Key,
                id: self.key.id(),
                limits: self.key.limits,
                local: &self.limit_state,
            },
            Subject {
                scope: Scope::Tenant,
                id: &self.tenant.tenant.id,
                limits: self.tenant.tenant.limits,
                local: &self.tenant.limit_state,
            },
        ]
    }

    /// The budgets a request made with this key charges: the key's, then its tenant's;
    /// `None` when neither has one.
    pub fn budget_subjects(&self) -> Option<Subjects<'_>> {
        let tenant = &self.tenant.tenant;
        Subjects::of(
            self.key.budget().map(|budget| BudgetSubject {
                scope: BudgetScope::Key,
                id: self.key.id(),
                tenant_id: &tenant.id,
                budget,
                cell: &self.budget_cell,
            }),
            tenant.budget.as_ref().map(|budget| BudgetSubject {
                scope: BudgetScope::Tenant,
                id: &tenant.id,
                tenant_id: &tenant.id,
                budget,
                cell: &self.tenant.budget_cell,
            }),
        )
    }

    pub fn tenant_active(&self) -> bool {
        self.tenant.tenant.status == TenantStatus::Active
    }
}

/// A public model: its policy and its deployments.
#[derive(Debug)]
pub struct ModelEntry {
    pub name: String,
    pub policy: ModelPolicy,
    pub deployments: Vec<Arc<DeploymentEntry>>,
    /// Sum of the deployments' weights, for weighted choices.
    pub total_weight: u64,
    /// Position of the `round_robin` strategy.
    pub rotation: AtomicU64,
    pub metrics: ModelMetrics,
    /// Which deployment each recent `x-session-id` used.
    pub affinity: SessionAffinity,
    /// Which deployment served which prompt prefix (`prefix_affinity` models only).
    pub prefix: Option<PrefixIndex>,
    /// The policy's content rules, compiled (`None` without rules).
    pub rules: Option<ContentRules>,
}

impl ModelEntry {
    /// Every tag its deployments carry, declared or derived, lower-cased and sorted (for
    /// `GET /v1/models`).
    pub fn tags(&self) -> Vec<String> {
        let mut tags: Vec<String> = self
            .deployments
            .iter()
            .flat_map(|d| d.all_tags())
            .map(|t| t.to_ascii_lowercase())
            .collect();
        tags.sort();
        tags.dedup();
        tags
    }
}

/// A deployment ready to be called.
#[derive(Debug)]
pub struct DeploymentEntry {
    pub id: String,
    pub model: String,
    pub provider_id: String,
    pub provider_kind: ProviderKind,
    pub upstream_model: String,
    /// `upstream_model` as a JSON string literal, spliced into request bodies.
    pub upstream_model_json: Bytes,
    pub weight: u32,
    pub priority: u32,
    pub tags: Vec<String>,
    /// Tags from the words of the model names, when the model's policy says `derive_tags`.
    pub derived_tags: Vec<String>,
    pub limits: RateLimits,
    pub price: Option<PriceEntry>,
    /// Spend caps and request quotas; counted in `state.caps`.
    pub caps: Option<switchboard_shared::snapshot::DeploymentCaps>,
    /// Edits to the body this deployment receives, after its model policy's.
    pub transforms: Transforms,
    pub adaptor: Arc<dyn ProviderAdaptor>,
    /// Load, latency, breaker and quota: carried over by id, shared through Redis.
    pub state: Arc<DeploymentState>,
    pub limit_state: Arc<LocalLimitState>,
}

impl DeploymentEntry {
    /// The declared tags, then the derived ones.
    pub fn all_tags(&self) -> impl Iterator<Item = &String> {
        self.tags.iter().chain(&self.derived_tags)
    }

    pub fn subject(&self) -> Subject<'_> {
        Subject {
            scope: Scope::Deployment,
            id: &self.id,
            limits: self.limits,
            local: &self.limit_state,
        }
    }
}

/// What building a catalog needs besides the snapshot.
pub struct BuildContext<'a> {
    pub pepper: &'a [u8],
    pub client: &'a HttpClient,
    /// Looks up environment variables for `{ env: NAME }` secrets.
    pub env: &'a dyn Fn(&str) -> Option<String>,
    /// Opens `{ sealed: ... }` secrets (snapshots from the control plane); `None` when this
    /// data plane holds no master keys.
    pub master_keys: Option<&'a switchboard_shared::sealed::MasterKeys>,
    /// The catalog being replaced, whose counters and health carry over.
    pub previous: Option<&'a Catalog>,
}

impl Catalog {
    /// Validates `snapshot` and compiles it, section by section. `Err` lists every problem,
    /// validation and secret resolution alike.
    pub fn build(snapshot: &Snapshot, ctx: &BuildContext<'_>) -> Result<Catalog, Problems> {
        snapshot.validate()?;
        let carry = Carryover::from(ctx.previous);
        let tenants = build_tenants(&snapshot.tenants, &carry);
        let (keys, previous_keys) = build_keys(&snapshot.virtual_keys, &tenants, &carry);
        let mut problems = Vec::new();
        let adaptors = build_providers(&snapshot.providers, ctx, &mut problems);
        let by_model = build_deployments(snapshot, &adaptors, &carry);
        if !problems.is_empty() {
            return Err(Problems(problems));
        }
        let Models {
            models,
            model_names,
        } = build_models(snapshot, &by_model);
        Ok(Catalog {
            revision: snapshot.revision,
            price_version: snapshot.price_version,
            content_hash: snapshot.content_hash(),
            revision_header: HeaderValue::from(snapshot.revision),
            keys,
            previous_keys,
            models,
            model_names,
            tenants,
            all_deployments: by_model.into_values().flatten().collect(),
        })
    }

    /// The key whose HMAC is `hash`.
    pub fn key(&self, hash: &[u8; KEY_HASH_LEN]) -> Option<&Arc<KeyEntry>> {
        self.keys.get(hash)
    }

    /// The key whose rotated-out secret has the HMAC `hash`, while its grace window lasts at
    /// `now`.
    pub fn previous_key(
        &self,
        hash: &[u8; KEY_HASH_LEN],
        now: DateTime<Utc>,
    ) -> Option<&Arc<KeyEntry>> {
        let (entry, until) = self.previous_keys.get(hash)?;
        (now < *until).then_some(entry)
    }

    pub fn model(&self, name: &str) -> Option<&Arc<ModelEntry>> {
        self.models.get(name)
    }

    pub fn model_names(&self) -> &[String] {
        &self.model_names
    }

    /// Every model entry (ordinary models, groups and `tag:` selectors).
    pub fn models(&self) -> impl Iterator<Item = &Arc<ModelEntry>> {
        self.models.values()
    }

    /// Every deployment of every model.
    pub fn deployments(&self) -> impl Iterator<Item = &Arc<DeploymentEntry>> {
        self.all_deployments.iter()
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }
}

/// The previous catalog's mutable state, indexed by id for the build of its successor.
#[derive(Default)]
struct Carryover<'a> {
    limits: HashMap<(Scope, &'a str), (RateLimits, &'a Arc<LocalLimitState>)>,
    states: HashMap<&'a str, &'a Arc<DeploymentState>>,
}

impl<'a> Carryover<'a> {
    fn from(previous: Option<&'a Catalog>) -> Self {
        let mut carry = Carryover::default();
        let Some(previous) = previous else {
            return carry;
        };
        for t in previous.tenants.values() {
            carry.limits.insert(
                (Scope::Tenant, t.tenant.id.as_str()),
                (t.tenant.limits, &t.limit_state),
            );
        }
        // Keys without per-minute limits share one untouched state: nothing to carry.
        for k in previous
            .keys
            .values()
            .filter(|k| !k.key.limits.is_unlimited())
        {
            carry
                .limits
                .insert((Scope::Key, k.key.id()), (k.key.limits, &k.limit_state));
        }
        for d in previous.models.values().flat_map(|m| m.deployments.iter()) {
            carry.limits.insert(
                (Scope::Deployment, d.id.as_str()),
                (d.limits, &d.limit_state),
            );
            carry.states.insert(d.id.as_str(), &d.state);
        }
        carry
    }

    /// The counters of a subject carried over ([`Carryover::limit_state`]), else fresh ones.
    /// A subject without per-minute limits never touches its counters (the limiters read
    /// `rpm` and `tpm` first), so all of them share one state instead of an allocation each.
    fn limit_state_or_new(
        &self,
        scope: Scope,
        id: &str,
        limits: RateLimits,
    ) -> Arc<LocalLimitState> {
        static UNLIMITED: LazyLock<Arc<LocalLimitState>> = LazyLock::new(Arc::default);
        if limits.is_unlimited() {
            return Arc::clone(&UNLIMITED);
        }
        self.limit_state(scope, id, limits).unwrap_or_default()
    }

    /// The counters of a subject, if it existed with the same limits. Changed limits start
    /// from fresh counters: a GCRA state only means something for the limit it was built with.
    fn limit_state(
        &self,
        scope: Scope,
        id: &str,
        limits: RateLimits,
    ) -> Option<Arc<LocalLimitState>> {
        self.limits
            .get(&(scope, id))
            .filter(|(old, _)| *old == limits)
            .map(|(_, state)| Arc::clone(state))
    }

    fn state(&self, id: &str) -> Option<Arc<DeploymentState>> {
        self.states.get(id).map(|h| Arc::clone(h))
    }
}

/// Tenants by id, with their counters carried over.
fn build_tenants(tenants: &[Tenant], carry: &Carryover<'_>) -> HashMap<String, Arc<TenantEntry>> {
    tenants
        .iter()
        .map(|t| {
            let entry = TenantEntry {
                tenant: t.clone(),
                limit_state: carry.limit_state_or_new(Scope::Tenant, &t.id, t.limits),
                budget_cell: BudgetCell::default(),
            };
            (t.id.clone(), Arc::new(entry))
        })
        .collect()
}

/// The keys by their current secret's HMAC, and by a rotated-out secret's HMAC with when it
/// stops working.
type KeyMaps = (
    HashMap<[u8; KEY_HASH_LEN], Arc<KeyEntry>>,
    HashMap<[u8; KEY_HASH_LEN], (Arc<KeyEntry>, DateTime<Utc>)>,
);

/// Keys by their HMAC, each with its tenant and counters, and by their rotated-out secret's
/// HMAC (the same entry).
fn build_keys(
    keys: &[VirtualKey],
    tenants: &HashMap<String, Arc<TenantEntry>>,
    carry: &Carryover<'_>,
) -> KeyMaps {
    let mut built = HashMap::with_capacity(keys.len());
    let mut previous = HashMap::new();
    for k in keys {
        // Validation has checked both the hash format and the tenant reference.
        let (Some(hash), Some(tenant)) = (parse_key_hash(&k.key_hash), tenants.get(&k.tenant_id))
        else {
            continue;
        };
        let entry = KeyEntry {
            key: Key::new(k),
            tenant: Arc::clone(tenant),
            limit_state: carry.limit_state_or_new(Scope::Key, &k.id, k.limits),
            budget_cell: BudgetCell::default(),
        };
        let entry = Arc::new(entry);
        if let Some(old) = &k.previous_secret
            && let Some(old_hash) = parse_key_hash(&old.key_hash)
        {
            previous.insert(old_hash, (Arc::clone(&entry), old.expires_at));
        }
        built.insert(hash, entry);
    }
    (built, previous)
}

/// Each provider's adaptor by provider id. A provider whose credentials do not resolve or
/// whose adaptor cannot be built is left out, its problems in `problems`.
fn build_providers<'s>(
    providers: &'s [Provider],
    ctx: &BuildContext<'_>,
    problems: &mut Vec<Problem>,
) -> HashMap<&'s str, (ProviderKind, Arc<dyn ProviderAdaptor>)> {
    let mut adaptors = HashMap::new();
    for (i, p) in providers.iter().enumerate() {
        if let Some(adaptor) = build_provider(i, p, ctx, problems) {
            adaptors.insert(p.id.as_str(), (p.kind, adaptor));
        }
    }
    adaptors
}

/// The adaptor of `providers[i]`: one per credential, several behind a [`KeyRing`].
fn build_provider(
    i: usize,
    p: &Provider,
    ctx: &BuildContext<'_>,
    problems: &mut Vec<Problem>,
) -> Option<Arc<dyn ProviderAdaptor>> {
    let resolve = |problems: &mut Vec<Problem>, path: String, secret: Option<&SecretRef>| {
        resolve_secret(ctx, problems, path, secret)
    };
    let aws = |field: &str| format!("providers[{i}].{field}");
    let (Ok(aws_key_id), Ok(aws_secret), Ok(aws_token)) = (
        resolve(
            problems,
            aws("aws_access_key_id"),
            p.aws_access_key_id.as_ref(),
        ),
        resolve(
            problems,
            aws("aws_secret_access_key"),
            p.aws_secret_access_key.as_ref(),
        ),
        resolve(
            problems,
            aws("aws_session_token"),
            p.aws_session_token.as_ref(),
        ),
    ) else {
        return None;
    };
    let aws = Credentials {
        access_key_id: aws_key_id.unwrap_or_default(),
        secret_access_key: aws_secret.unwrap_or_default(),
        session_token: aws_token,
    };
    let mut built: Vec<(Arc<dyn ProviderAdaptor>, u32)> = Vec::new();
    for (path, secret, weight) in credentials(i, p) {
        let Ok(api_key) = resolve(problems, path, secret) else {
            continue;
        };
        match registry::build(p, ctx.client, api_key.as_deref(), &aws) {
            Ok(adaptor) => built.push((adaptor, weight)),
            Err(message) => problems.push(Problem {
                path: format!("providers[{i}]"),
                message,
            }),
        }
    }
    match built.len() {
        0 => None, // reported above
        1 if p.api_keys.len() <= 1 => built.pop().map(|(adaptor, _)| adaptor),
        _ => Some(Arc::new(KeyRing::new(&p.id, built))),
    }
}

/// One credential (`api_key`, or none) or several (`api_keys`, each with a weight), each
/// with its path for problems.
fn credentials(i: usize, p: &Provider) -> Vec<(String, Option<&SecretRef>, u32)> {
    if p.api_keys.is_empty() {
        return vec![(format!("providers[{i}].api_key"), p.api_key.as_ref(), 1)];
    }
    p.api_keys
        .iter()
        .enumerate()
        .map(|(j, k)| {
            let path = format!("providers[{i}].api_keys[{j}].key");
            (path, Some(&k.key), k.weight)
        })
        .collect()
}

/// A secret's value (`None` for no secret); a failure is reported at `path`.
fn resolve_secret(
    ctx: &BuildContext<'_>,
    problems: &mut Vec<Problem>,
    path: String,
    secret: Option<&SecretRef>,
) -> Result<Option<String>, ()> {
    match secret.map(|s| s.resolve_with(ctx.env, ctx.master_keys)) {
        None => Ok(None),
        Some(Ok(v)) => Ok(Some(v)),
        Some(Err(e)) => {
            problems.push(Problem {
                path,
                message: e.to_string(),
            });
            Err(())
        }
    }
}

/// Deployments by model name, each with its provider's adaptor and its state carried over.
fn build_deployments(
    snapshot: &Snapshot,
    adaptors: &HashMap<&str, (ProviderKind, Arc<dyn ProviderAdaptor>)>,
    carry: &Carryover<'_>,
) -> HashMap<String, Vec<Arc<DeploymentEntry>>> {
    let derive = |model: &str| {
        snapshot
            .models
            .iter()
            .any(|m| m.model == model && m.derive_tags)
    };
    let mut by_model: HashMap<String, Vec<Arc<DeploymentEntry>>> = HashMap::new();
    for d in &snapshot.deployments {
        let Some((kind, adaptor)) = adaptors.get(d.provider.as_str()) else {
            continue; // its provider failed and is already reported
        };
        let entry = DeploymentEntry {
            id: d.id.clone(),
            model: d.model.clone(),
            provider_id: d.provider.clone(),
            provider_kind: *kind,
            upstream_model: d.upstream_model.clone(),
            upstream_model_json: json_string_literal(&d.upstream_model),
            weight: d.weight,
            priority: d.priority,
            tags: d.tags.clone(),
            derived_tags: if derive(&d.model) {
                derived_tags(&[&d.model, &d.upstream_model], &d.tags)
            } else {
                Vec::new()
            },
            limits: d.limits,
            price: d.price.clone(),
            caps: d.caps,
            transforms: d.transforms.clone(),
            adaptor: Arc::clone(adaptor),
            state: carry.state(&d.id).unwrap_or_default(),
            limit_state: carry.limit_state_or_new(Scope::Deployment, &d.id, d.limits),
        };
        by_model
            .entry(d.model.clone())
            .or_default()
            .push(Arc::new(entry));
    }
    by_model
}

/// The catalog's public names.
struct Models {
    models: HashMap<String, Arc<ModelEntry>>,
    /// Listed in `GET /v1/models`: ordinary models and groups, sorted.
    model_names: Vec<String>,
}

/// Every public name: each deployed model with its policy, each model group over its
/// members' deployments, each content-rule alias (no deployments of its own), and `tag:<t>`
/// over every deployment carrying tag `t`.
fn build_models(
    snapshot: &Snapshot,
    by_model: &HashMap<String, Vec<Arc<DeploymentEntry>>>,
) -> Models {
    let mut models: HashMap<String, Arc<ModelEntry>> = HashMap::new();
    let mut model_names: Vec<String> = by_model.keys().cloned().collect();
    for (name, deployments) in by_model {
        let policy = snapshot.policy_for(name);
        models.insert(name.clone(), model_entry(name, policy, deployments.clone()));
    }
    // Model groups: one public name over the deployments of several models.
    for policy in snapshot.models.iter().filter(|m| !m.members.is_empty()) {
        let deployments: Vec<Arc<DeploymentEntry>> = policy
            .members
            .iter()
            .filter_map(|m| by_model.get(m))
            .flatten()
            .cloned()
            .collect();
        let entry = model_entry(&policy.model, policy.clone(), deployments);
        models.insert(policy.model.clone(), entry);
        model_names.push(policy.model.clone());
    }
    // Content-rule aliases: a public name whose rules pick the model that serves.
    let aliases = snapshot.models.iter().filter(|m| {
        m.members.is_empty() && !m.rules.is_empty() && !by_model.contains_key(&m.model)
    });
    for policy in aliases {
        let entry = model_entry(&policy.model, policy.clone(), Vec::new());
        models.insert(policy.model.clone(), entry);
        model_names.push(policy.model.clone());
    }
    // `tag:<t>`: every deployment carrying tag `t` (any case), whatever its model (not
    // listed).
    let mut by_tag: HashMap<String, Vec<Arc<DeploymentEntry>>> = HashMap::new();
    for d in by_model.values().flatten() {
        let mut tags: Vec<String> = d.all_tags().map(|t| t.to_ascii_lowercase()).collect();
        tags.sort();
        tags.dedup();
        for tag in tags {
            by_tag.entry(tag).or_default().push(Arc::clone(d));
        }
    }
    for (tag, deployments) in by_tag {
        let name = format!("{TAG_PREFIX}{tag}");
        let policy = ModelPolicy::default_for(&name);
        models.insert(name.clone(), model_entry(&name, policy, deployments));
    }
    model_names.sort();
    Models {
        models,
        model_names,
    }
}

/// The lower-cased words of `names` (split at anything not a letter or digit), without pure
/// numbers, the tags in `declared` (any case) and repeats: the tags a deployment gets from its
/// model names when its policy says `derive_tags`.
pub fn derived_tags(names: &[&str], declared: &[String]) -> Vec<String> {
    let mut tags: Vec<String> = Vec::new();
    let words = names
        .iter()
        .flat_map(|n| n.split(|c: char| !c.is_alphanumeric()));
    for word in words {
        let word = word.to_lowercase();
        let numeric = word.chars().all(|c| c.is_ascii_digit());
        let known = declared.iter().any(|t| t.eq_ignore_ascii_case(&word)) || tags.contains(&word);
        if !word.is_empty() && !numeric && !known {
            tags.push(word);
        }
    }
    tags
}

/// One public name over `deployments`, with fresh runtime state.
fn model_entry(
    name: &str,
    policy: ModelPolicy,
    deployments: Vec<Arc<DeploymentEntry>>,
) -> Arc<ModelEntry> {
    let prefix = (policy.strategy == Strategy::PrefixAffinity).then(PrefixIndex::new);
    Arc::new(ModelEntry {
        rules: ContentRules::compile(&policy.rules),
        prefix,
        policy,
        total_weight: deployments.iter().map(|d| u64::from(d.weight)).sum(),
        deployments,
        name: name.to_owned(),
        rotation: AtomicU64::new(0),
        metrics: ModelMetrics::new(name),
        affinity: SessionAffinity::new(),
    })
}

/// A catalog built the way tests need it: a throwaway client, no master keys, no previous.
#[cfg(test)]
pub(crate) fn build_for_test(
    snapshot: &Snapshot,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Catalog, Problems> {
    crate::install_crypto_provider();
    let client = crate::providers::client::build(
        crate::providers::client::ClientSettings {
            connect_timeout: std::time::Duration::from_secs(1),
            pool_idle_timeout: std::time::Duration::from_secs(1),
            pool_max_idle_per_host: 1,
            caps: Default::default(),
        },
        Vec::new(),
    )
    .map_err(|message| {
        Problems(vec![Problem {
            path: String::new(),
            message,
        }])
    })?;
    Catalog::build(
        snapshot,
        &BuildContext {
            pepper: b"p",
            client: &client,
            env,
            master_keys: None,
            previous: None,
        },
    )
}

#[cfg(test)]
mod provider_tests {
    use super::*;

    fn build(yaml: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Catalog, Problems> {
        build_for_test(&Snapshot::from_yaml(yaml).unwrap(), env)
    }

    const YAML: &str = "
providers:
  - { id: b, kind: bedrock, region: us-west-2, aws_access_key_id: { env: AK }, aws_secret_access_key: { env: SK } }
  - { id: g, kind: gemini, base_url: \"https://generativelanguage.googleapis.com/v1beta\", api_key: { env: GK } }
  - { id: a, kind: anthropic, base_url: \"https://api.anthropic.com/v1\" }
  - { id: z, kind: azure, base_url: \"https://r.openai.azure.com\", api_version: 2024-10-21 }
deployments:
  - { id: d1, model: m, provider: b, upstream_model: \"anthropic.claude-3-5-sonnet-20240620-v1:0\" }
  - { id: d2, model: m, provider: g, upstream_model: gemini-2.5-flash }
  - { id: d3, model: m, provider: a, upstream_model: claude-sonnet-4-5 }
  - { id: d4, model: m, provider: z, upstream_model: gpt-4o-prod }
";

    #[test]
    fn every_provider_kind_builds_with_its_credentials() {
        let env = |name: &str| matches!(name, "AK" | "SK" | "GK").then(|| format!("v-{name}"));
        let catalog = build(YAML, &env).unwrap();
        let kinds: Vec<ProviderKind> = catalog
            .model("m")
            .unwrap()
            .deployments
            .iter()
            .map(|d| d.provider_kind)
            .collect();
        assert_eq!(
            kinds,
            [
                ProviderKind::Bedrock,
                ProviderKind::Gemini,
                ProviderKind::Anthropic,
                ProviderKind::Azure
            ]
        );
    }

    #[test]
    fn a_missing_aws_secret_is_reported_at_its_path_without_its_value() {
        let env = |name: &str| (name == "AK").then(|| "v-AK".to_owned());
        let problems = build(YAML, &env).err().unwrap().0;
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert!(
            paths.contains(&"providers[0].aws_secret_access_key"),
            "{paths:?}"
        );
        assert!(paths.contains(&"providers[1].api_key"), "{paths:?}");
        assert!(problems.iter().all(|p| !p.message.contains("v-AK")));
    }
}
