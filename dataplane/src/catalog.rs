//! The catalog: a snapshot compiled for the request path.
//!
//! A [`Snapshot`] is a document; the catalog is the same content arranged for lookups that cost
//! a hash and a map get: keys by their HMAC, models by name with their deployments in place,
//! each deployment with its ready-made provider adaptor, its upstream model name pre-encoded
//! for the body splice, and its price. Secrets are resolved here, once, so a missing
//! environment variable fails the load, not a request.
//!
//! Mutable per-subject state — rate-limit counters and deployment health — lives in `Arc`s that
//! a new catalog takes over from the previous one by id, so a config reload neither resets a
//! limit nor forgets a cooldown.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use http::HeaderValue;
use switchboard_shared::keys::{KEY_HASH_LEN, parse_key_hash};
use switchboard_shared::price::PriceEntry;
use switchboard_shared::secret::SecretRef;
use switchboard_shared::snapshot::{
    ModelPolicy, ProviderKind, RateLimits, Snapshot, Tenant, TenantStatus, VirtualKey,
};
use switchboard_shared::validate::{Problem, Problems};

use crate::health::DeploymentHealth;
use crate::limits::{LocalLimitState, Scope, Subject};
use crate::metrics::ModelMetrics;
use crate::providers::ProviderAdaptor;
use crate::providers::anthropic::AnthropicAdaptor;
use crate::providers::azure::AzureAdaptor;
use crate::providers::bedrock::BedrockAdaptor;
use crate::providers::bedrock::sigv4::Credentials;
use crate::providers::client::HttpClient;
use crate::providers::gemini::GeminiAdaptor;
use crate::providers::mock::MockAdaptor;
use crate::providers::openai::OpenAiAdaptor;
use crate::request::json_string_literal;

/// A snapshot ready to serve.
#[derive(Debug)]
pub struct Catalog {
    pub revision: u64,
    pub content_hash: String,
    /// The revision as a header value, for `x-switchboard-config-revision`.
    pub revision_header: HeaderValue,
    keys: HashMap<[u8; KEY_HASH_LEN], Arc<KeyEntry>>,
    models: HashMap<String, Arc<ModelEntry>>,
    /// Every public model name, sorted, for `GET /v1/models`.
    model_names: Vec<String>,
    tenants: HashMap<String, Arc<TenantEntry>>,
}

/// A tenant and its rate-limit counters.
#[derive(Debug)]
pub struct TenantEntry {
    pub tenant: Tenant,
    pub limit_state: Arc<LocalLimitState>,
}

/// A virtual key with its tenant and counters.
#[derive(Debug)]
pub struct KeyEntry {
    pub key: VirtualKey,
    pub tenant: Arc<TenantEntry>,
    pub limit_state: Arc<LocalLimitState>,
}

impl KeyEntry {
    /// The limit subjects of a request made with this key: the key, then its tenant.
    pub fn subjects(&self) -> [Subject<'_>; 2] {
        [
            Subject {
                scope: Scope::Key,
                id: &self.key.id,
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
    pub limits: RateLimits,
    pub price: Option<PriceEntry>,
    pub adaptor: Arc<dyn ProviderAdaptor>,
    pub health: Arc<DeploymentHealth>,
    pub limit_state: Arc<LocalLimitState>,
}

impl DeploymentEntry {
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
    /// Validates `snapshot` and compiles it. `Err` lists every problem, validation and secret
    /// resolution alike.
    pub fn build(snapshot: &Snapshot, ctx: &BuildContext<'_>) -> Result<Catalog, Problems> {
        snapshot.validate()?;
        let mut problems = Vec::new();

        let carry = Carryover::from(ctx.previous);
        let previous_limit = |scope: Scope, id: &str, limits: RateLimits| {
            carry.limit_state(scope, id, limits).unwrap_or_default()
        };

        let tenants: HashMap<String, Arc<TenantEntry>> = snapshot
            .tenants
            .iter()
            .map(|t| {
                let entry = TenantEntry {
                    tenant: t.clone(),
                    limit_state: previous_limit(Scope::Tenant, &t.id, t.limits),
                };
                (t.id.clone(), Arc::new(entry))
            })
            .collect();

        let mut keys = HashMap::with_capacity(snapshot.virtual_keys.len());
        for k in &snapshot.virtual_keys {
            // Validation has checked both the hash format and the tenant reference.
            let (Some(hash), Some(tenant)) =
                (parse_key_hash(&k.key_hash), tenants.get(&k.tenant_id))
            else {
                continue;
            };
            let entry = KeyEntry {
                key: k.clone(),
                tenant: Arc::clone(tenant),
                limit_state: previous_limit(Scope::Key, &k.id, k.limits),
            };
            keys.insert(hash, Arc::new(entry));
        }

        let mut adaptors: HashMap<&str, (ProviderKind, Arc<dyn ProviderAdaptor>)> = HashMap::new();
        for (i, p) in snapshot.providers.iter().enumerate() {
            // Every credential of the provider, resolved; a failure is reported at its path.
            let mut resolve = |field: &str, secret: Option<&SecretRef>| match secret
                .map(|s| s.resolve_with(ctx.env, ctx.master_keys))
            {
                None => Ok(None),
                Some(Ok(v)) => Ok(Some(v)),
                Some(Err(e)) => {
                    problems.push(Problem {
                        path: format!("providers[{i}].{field}"),
                        message: e.to_string(),
                    });
                    Err(())
                }
            };
            let (Ok(api_key), Ok(aws_key_id), Ok(aws_secret), Ok(aws_token)) = (
                resolve("api_key", p.api_key.as_ref()),
                resolve("aws_access_key_id", p.aws_access_key_id.as_ref()),
                resolve("aws_secret_access_key", p.aws_secret_access_key.as_ref()),
                resolve("aws_session_token", p.aws_session_token.as_ref()),
            ) else {
                continue;
            };
            let base = p.base_url.as_deref().unwrap_or_default();
            let key = api_key.as_deref();
            let built: Result<Arc<dyn ProviderAdaptor>, String> = match p.kind {
                ProviderKind::Mock => Ok(Arc::new(MockAdaptor)),
                ProviderKind::Openai => OpenAiAdaptor::new(ctx.client, base, key)
                    .map(|a| Arc::new(a) as Arc<dyn ProviderAdaptor>),
                ProviderKind::Anthropic => AnthropicAdaptor::new(ctx.client, base, key)
                    .map(|a| Arc::new(a) as Arc<dyn ProviderAdaptor>),
                ProviderKind::Gemini => GeminiAdaptor::new(ctx.client, base, key)
                    .map(|a| Arc::new(a) as Arc<dyn ProviderAdaptor>),
                ProviderKind::Bedrock => {
                    let credentials = Credentials {
                        access_key_id: aws_key_id.unwrap_or_default(),
                        secret_access_key: aws_secret.unwrap_or_default(),
                        session_token: aws_token,
                    };
                    let region = p.region.as_deref().unwrap_or_default();
                    BedrockAdaptor::new(ctx.client, p.base_url.as_deref(), region, credentials)
                        .map(|a| Arc::new(a) as Arc<dyn ProviderAdaptor>)
                }
                ProviderKind::Azure => {
                    let version = p.api_version.as_deref().unwrap_or_default();
                    AzureAdaptor::new(ctx.client, base, version, key)
                        .map(|a| Arc::new(a) as Arc<dyn ProviderAdaptor>)
                }
            };
            let adaptor = match built {
                Ok(adaptor) => adaptor,
                Err(message) => {
                    problems.push(Problem {
                        path: format!("providers[{i}]"),
                        message,
                    });
                    continue;
                }
            };
            adaptors.insert(p.id.as_str(), (p.kind, adaptor));
        }

        let mut by_model: HashMap<String, Vec<Arc<DeploymentEntry>>> = HashMap::new();
        for d in &snapshot.deployments {
            let Some((kind, adaptor)) = adaptors.get(d.provider.as_str()) else {
                continue; // its provider failed above and is already reported
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
                limits: d.limits,
                price: d.price.clone(),
                adaptor: Arc::clone(adaptor),
                health: carry.health(&d.id).unwrap_or_default(),
                limit_state: previous_limit(Scope::Deployment, &d.id, d.limits),
            };
            by_model
                .entry(d.model.clone())
                .or_default()
                .push(Arc::new(entry));
        }

        if !problems.is_empty() {
            return Err(Problems(problems));
        }

        let mut model_names: Vec<String> = by_model.keys().cloned().collect();
        model_names.sort();
        let models = by_model
            .into_iter()
            .map(|(name, deployments)| {
                let entry = ModelEntry {
                    policy: snapshot.policy_for(&name),
                    total_weight: deployments.iter().map(|d| u64::from(d.weight)).sum(),
                    deployments,
                    name: name.clone(),
                    rotation: AtomicU64::new(0),
                    metrics: ModelMetrics::new(&name),
                };
                (name, Arc::new(entry))
            })
            .collect();

        Ok(Catalog {
            revision: snapshot.revision,
            content_hash: snapshot.content_hash(),
            revision_header: HeaderValue::from(snapshot.revision),
            keys,
            models,
            model_names,
            tenants,
        })
    }

    /// The key whose HMAC is `hash`.
    pub fn key(&self, hash: &[u8; KEY_HASH_LEN]) -> Option<&Arc<KeyEntry>> {
        self.keys.get(hash)
    }

    pub fn model(&self, name: &str) -> Option<&Arc<ModelEntry>> {
        self.models.get(name)
    }

    pub fn model_names(&self) -> &[String] {
        &self.model_names
    }

    pub fn key_count(&self) -> usize {
        self.keys.len()
    }
}

/// The previous catalog's mutable state, indexed by id for the build of its successor.
#[derive(Default)]
struct Carryover<'a> {
    limits: HashMap<(Scope, &'a str), (RateLimits, &'a Arc<LocalLimitState>)>,
    health: HashMap<&'a str, &'a Arc<DeploymentHealth>>,
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
        for k in previous.keys.values() {
            carry.limits.insert(
                (Scope::Key, k.key.id.as_str()),
                (k.key.limits, &k.limit_state),
            );
        }
        for d in previous.models.values().flat_map(|m| m.deployments.iter()) {
            carry.limits.insert(
                (Scope::Deployment, d.id.as_str()),
                (d.limits, &d.limit_state),
            );
            carry.health.insert(d.id.as_str(), &d.health);
        }
        carry
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

    fn health(&self, id: &str) -> Option<Arc<DeploymentHealth>> {
        self.health.get(id).map(|h| Arc::clone(h))
    }
}

#[cfg(test)]
mod provider_tests {
    use super::*;

    fn build(yaml: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<Catalog, Problems> {
        crate::install_crypto_provider();
        let snapshot = Snapshot::from_yaml(yaml).unwrap();
        let client = crate::providers::client::build(
            crate::providers::client::ClientSettings {
                connect_timeout: std::time::Duration::from_secs(1),
                pool_idle_timeout: std::time::Duration::from_secs(1),
                pool_max_idle_per_host: 1,
            },
            Vec::new(),
        )
        .unwrap();
        Catalog::build(
            &snapshot,
            &BuildContext {
                pepper: b"p",
                client: &client,
                env,
                master_keys: None,
                previous: None,
            },
        )
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
