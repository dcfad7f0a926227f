//! The snapshot: the one document that tells a data plane everything it needs to serve.
//!
//! A snapshot is an immutable value with a `revision` (monotonic, assigned by whoever produced
//! it: the control plane's config revision, or the number written in a standalone file) and a
//! content hash computed over its canonical JSON form. Data planes hold it behind an `ArcSwap`
//! and ignore any snapshot whose revision is older than the one they serve.
//!
//! Every struct here denies unknown fields, so a typo in a standalone file is an error with a
//! path rather than a silently ignored setting. Maps are `BTreeMap`s so that serialisation, and
//! therefore the content hash, is deterministic.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::price::PriceEntry;
use crate::secret::SecretRef;
pub use crate::shaping::{ContentRule, RuleMatch, Transforms};

/// The schema version this crate reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// Everything a data plane needs to authenticate, admit, route and price a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    /// Schema version of this document; only [`SCHEMA_VERSION`] is accepted.
    #[serde(default = "default_schema_version")]
    pub schema_version: u32,
    /// Monotonic revision. A data plane never replaces a snapshot with an older revision.
    #[serde(default)]
    pub revision: u64,
    /// The control plane's price-file version (`price_versions.id`) that priced the
    /// deployments without a `price` of their own; usage records carry it so that every
    /// cost can be traced to the prices that made it. Absent in standalone files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_version: Option<u64>,
    #[serde(default)]
    pub tenants: Vec<Tenant>,
    #[serde(default)]
    pub virtual_keys: Vec<VirtualKey>,
    #[serde(default)]
    pub providers: Vec<Provider>,
    #[serde(default)]
    pub deployments: Vec<Deployment>,
    /// Routing policies by public model name. A model served by deployments but absent here
    /// gets [`ModelPolicy::default_for`].
    #[serde(default)]
    pub models: Vec<ModelPolicy>,
}

fn default_schema_version() -> u32 {
    SCHEMA_VERSION
}

/// Errors from reading a snapshot document (not from validating its content).
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("invalid YAML: {0}")]
    Yaml(#[from] serde_yaml_ng::Error),
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
}

impl Snapshot {
    /// Parses a snapshot from YAML (which also accepts JSON, a subset of YAML).
    pub fn from_yaml(text: &str) -> Result<Self, ParseError> {
        Ok(serde_yaml_ng::from_str(text)?)
    }

    /// Parses a snapshot from JSON, the form in which it travels between processes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ParseError> {
        Ok(serde_json::from_slice(bytes)?)
    }

    /// The canonical JSON form: fields in declaration order, maps sorted.
    pub fn to_canonical_json(&self) -> Vec<u8> {
        // Serialising plain data with string map keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Hex SHA-256 of the canonical JSON form. Two snapshots with equal content have equal
    /// hashes, whatever file layout they were read from.
    pub fn content_hash(&self) -> String {
        // Streamed into the hash: the canonical form of 100,000 keys is tens of megabytes.
        let mut writer = std::io::BufWriter::with_capacity(64 * 1024, HashWriter(Sha256::new()));
        // Writing plain data with string map keys into a hash cannot fail.
        let _ = serde_json::to_writer(&mut writer, self);
        let _ = std::io::Write::flush(&mut writer);
        let (HashWriter(hasher), _) = writer.into_parts();
        hex::encode(hasher.finalize())
    }

    /// The routing policy for a public model name: its own, or the default.
    pub fn policy_for(&self, model: &str) -> ModelPolicy {
        self.models
            .iter()
            .find(|m| m.model == model)
            .cloned()
            .unwrap_or_else(|| ModelPolicy::default_for(model))
    }
}

/// An [`std::io::Write`] that feeds a SHA-256.
struct HashWriter(Sha256);

impl std::io::Write for HashWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A customer of the platform; virtual keys belong to exactly one tenant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tenant {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub status: TenantStatus,
    /// Limits shared by all of the tenant's keys.
    #[serde(default)]
    pub limits: RateLimits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Keep each request's content (prompt and answer, cut to the data plane's
    /// `server.capture_max_bytes`) in the request log. Off unless the tenant opts in.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub capture_content: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantStatus {
    #[default]
    Active,
    /// Every key of a suspended tenant is refused.
    Suspended,
}

/// A credential handed to a client. Only its keyed hash is stored anywhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualKey {
    pub id: String,
    pub tenant_id: String,
    #[serde(default)]
    pub name: String,
    /// Lower-case hex HMAC-SHA-256 of the secret under the server pepper (see [`crate::keys`]).
    pub key_hash: String,
    /// The first characters of the secret, for people to recognise a key in listings.
    #[serde(default)]
    pub display_prefix: String,
    #[serde(default)]
    pub status: KeyStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Public model names this key may use; empty means every model.
    #[serde(default)]
    pub allowed_models: Vec<String>,
    #[serde(default)]
    pub limits: RateLimits,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// The exact response cache for this key's requests, in place of each model's own
    /// (`enabled: false` turns it off for the key). Absent: the model's policy decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<ResponseCache>,
    /// The secret a rotation replaced, still accepted until its expiry (the rotation's grace
    /// window). Absent when the key was never rotated with a grace window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret: Option<PreviousSecret>,
}

/// A rotated-out secret of a [`VirtualKey`]: its keyed hash and when it stops working.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousSecret {
    /// Lower-case hex HMAC-SHA-256 of the old secret, like [`VirtualKey::key_hash`].
    pub key_hash: String,
    /// The old secret is refused from this instant on.
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyStatus {
    #[default]
    Active,
    Revoked,
}

impl VirtualKey {
    /// Whether the key may call `model` (a public model name).
    pub fn allows_model(&self, model: &str) -> bool {
        self.allowed_models.is_empty() || self.allowed_models.iter().any(|m| m == model)
    }

    /// Whether the key is usable at `now`: active and not expired.
    pub fn is_usable_at(&self, now: DateTime<Utc>) -> bool {
        self.status == KeyStatus::Active && self.expires_at.is_none_or(|at| now < at)
    }
}

/// Requests and tokens per minute. `None` means unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u32>,
    /// Requests in flight at once, across every replica (held as leases in Redis that expire
    /// if a replica dies). `None` means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

impl RateLimits {
    /// Whether no per-minute limit is set (`concurrency` is held separately, as leases).
    pub fn is_unlimited(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none()
    }
}

/// Spend settings of a key or tenant. Carried in schema v1; enforcement belongs to the budget
/// work (Redis counters), which reads exactly these fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Hard limit in USD per period: requests are refused once spend reaches it.
    pub max_usd: f64,
    /// Soft threshold in USD: crossing it raises an alert, nothing is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_usd: Option<f64>,
    #[serde(default)]
    pub period: BudgetPeriod,
    /// IANA time zone in which periods are calendar-aligned; UTC when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    Daily,
    Weekly,
    #[default]
    Monthly,
    /// One budget for the life of the key or tenant.
    None,
}

/// An upstream account: where to send requests and how to authenticate them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    pub id: String,
    pub kind: ProviderKind,
    /// Base URL including the API version path, e.g. `https://api.openai.com/v1`. Required for
    /// every kind except `mock`, `bedrock` and `vertex`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    /// The upstream credential, if the upstream needs one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<SecretRef>,
    /// Azure OpenAI's `api-version` query parameter (e.g. `2024-10-21`). Required for
    /// `azure`, refused for every other kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// AWS region (e.g. `us-east-1`) for `bedrock`, or the Google Cloud location for `vertex`
    /// (`us-central1`, `europe-west4`, `global`). Required for both, refused for every other
    /// kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The Google Cloud project that Vertex AI bills (`vertex` only; defaults to the service
    /// account's own `project_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// AWS access key id, for SigV4. Required for `bedrock`, refused for every other kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_access_key_id: Option<SecretRef>,
    /// AWS secret access key, for SigV4. Required for `bedrock`, refused for every other kind.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_secret_access_key: Option<SecretRef>,
    /// AWS session token, for temporary credentials. `bedrock` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws_session_token: Option<SecretRef>,
    /// Several credentials of the same upstream, used by weight (instead of `api_key`): a key
    /// the upstream rate limits is left alone until its reset, one it rejects is taken out,
    /// and the others keep serving.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_keys: Vec<ProviderKey>,
}

/// One of a provider's several credentials.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderKey {
    pub key: SecretRef,
    /// Relative share of the provider's traffic.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

/// The wire protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Any OpenAI-compatible API: OpenAI, vLLM, Ollama, Groq, DeepSeek, Together, ...
    Openai,
    /// Answers inside the data plane, deterministically and offline. For demos and tests.
    Mock,
    /// Anthropic's Messages API (`base_url` like `https://api.anthropic.com/v1`).
    Anthropic,
    /// Azure OpenAI: `base_url` is the resource endpoint (`https://NAME.openai.azure.com`),
    /// the deployment's `upstream_model` is the Azure deployment name, and `api_version` is
    /// required.
    Azure,
    /// Google's Gemini API (`base_url` like
    /// `https://generativelanguage.googleapis.com/v1beta`).
    Gemini,
    /// Amazon Bedrock's Converse API, SigV4-signed with the `aws_*` credentials in `region`;
    /// `base_url` defaults to `https://bedrock-runtime.{region}.amazonaws.com`.
    Bedrock,
    /// Google Cloud's Vertex AI: Gemini models (`generateContent`) and Anthropic's models
    /// (`rawPredict`), with an OAuth2 token from the service-account JSON in `api_key`, in
    /// project `project` and location `region`; `base_url` defaults to
    /// `https://{region}-aiplatform.googleapis.com` (`https://aiplatform.googleapis.com` for
    /// `global`).
    Vertex,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Openai => "openai",
            ProviderKind::Mock => "mock",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::Azure => "azure",
            ProviderKind::Gemini => "gemini",
            ProviderKind::Bedrock => "bedrock",
            ProviderKind::Vertex => "vertex",
        }
    }
}

/// One way to serve a public model: a provider plus the model name the provider knows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    pub id: String,
    /// The public model name clients ask for.
    pub model: String,
    /// Id of the [`Provider`] that serves it.
    pub provider: String,
    /// The model name sent upstream in place of the public one.
    pub upstream_model: String,
    /// Relative share of traffic among deployments of the same model and priority.
    #[serde(default = "default_weight")]
    pub weight: u32,
    #[serde(default)]
    pub tags: Vec<String>,
    /// The upstream's own limits for this deployment.
    #[serde(default)]
    pub limits: RateLimits,
    /// Lower is preferred by the `priority` strategy; ties share traffic by weight.
    #[serde(default)]
    pub priority: u32,
    /// Prices, in LiteLLM's field names. Without one, usage is recorded at zero cost.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<PriceEntry>,
    /// Spend caps and request quotas per UTC day and month: once one is used up, the
    /// deployment is out of rotation until its period ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caps: Option<DeploymentCaps>,
    /// Edits to the body this deployment receives, applied after the model policy's.
    #[serde(default, skip_serializing_if = "Transforms::is_empty")]
    pub transforms: Transforms,
}

/// A deployment's own spend caps (USD, priced by its `price` entry) and request quotas, per
/// UTC calendar day and month. Absent fields are unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentCaps {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd_per_day: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usd_per_month: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_day: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_month: Option<u64>,
}

fn default_weight() -> u32 {
    1
}

/// The routing policy of one public model: how to pick among its deployments and what to do
/// when one fails.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPolicy {
    /// The public model name this policy governs.
    pub model: String,
    /// Makes this name a *model group*: one public name over the deployments of these
    /// models, routed by this policy. Empty for an ordinary model.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<String>,
    #[serde(default)]
    pub strategy: Strategy,
    /// Models to try, in order, once this model's own attempts are spent.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Extra attempts on this model's deployments after the first one fails.
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub cooldown: Cooldown,
    /// Weights of the `weighted_score` strategy (a preset or explicit weights). Only read by
    /// that strategy; absent means the `balanced` preset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scoring: Option<Scoring>,
    /// Settings of the `prefix_affinity` strategy; absent means the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_affinity: Option<PrefixAffinity>,
    /// When every deployment is cooling down, how long a request may wait for the first one
    /// to come back before it is refused with 503. 0 refuses at once.
    #[serde(default = "default_wait_for_cooldown_ms")]
    pub wait_for_cooldown_ms: u64,
    /// When every deployment (or the key or tenant) is at its `concurrency` limit, how long a
    /// request may wait for a slot before it is refused with 429. 0 refuses at once.
    #[serde(default)]
    pub concurrency_wait_ms: u64,
    /// `lowest_latency` only: deployments whose latency is within this percentage of the
    /// fastest share the first place at random, so traffic is not herded onto one. 0: off.
    #[serde(default)]
    pub latency_buffer_pct: f64,
    /// A preset that puts some deployments before the strategy's order (which still orders
    /// each part): `free_first` or `local_first`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefer: Option<Preference>,
    /// A deployment left at the default `weight: 1` weighs its `limits.rpm`, or
    /// `limits.tpm / 1000`, instead: traffic in proportion to what each account may take.
    #[serde(default)]
    pub weights_from_limits: bool,
    /// The model's deployments also carry the words of their public and upstream model
    /// names as tags (`gpt-4o-mini` gives `gpt`, `4o`, `mini`; numbers alone are left out),
    /// for `tag:` names and the tags header; `GET /v1/models` lists every model's tags.
    #[serde(default)]
    pub derive_tags: bool,
    /// Edits to the body every deployment of this model receives (after routing, before a
    /// deployment's own `transforms`).
    #[serde(default, skip_serializing_if = "Transforms::is_empty")]
    pub transforms: Transforms,
    /// Content rules: the first whose conditions a request meets sends it to that rule's
    /// model instead. A name with rules need not be served by deployments of its own (an
    /// alias), but then its last rule must match every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<ContentRule>,
    /// The exact response cache: identical requests answered from a stored answer for a
    /// while. Absent: nothing is cached (unless a key says otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<ResponseCache>,
}

/// Settings of the exact response cache (`docs/response-cache.md`), on a model policy or a
/// key. An entry is keyed by the tenant, the public model, the endpoint and the request body in
/// canonical form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResponseCache {
    /// Whether answers are cached and served from the cache.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How long a stored answer is served.
    #[serde(default = "default_cache_ttl_seconds")]
    pub ttl_seconds: u64,
    /// The largest answer stored (bytes as the client got them); a larger one is not kept.
    #[serde(default = "default_cache_max_entry_bytes")]
    pub max_entry_bytes: u64,
    /// One entry for every tenant instead of one per tenant. Only on a model policy: a key
    /// cannot reach into other tenants' answers.
    #[serde(default)]
    pub shared_across_tenants: bool,
}

fn default_true() -> bool {
    true
}

fn default_cache_ttl_seconds() -> u64 {
    300
}

fn default_cache_max_entry_bytes() -> u64 {
    1 << 20
}

/// Longest `ttl_seconds` of a [`ResponseCache`]: 30 days.
pub const MAX_CACHE_TTL_SECONDS: u64 = 30 * 24 * 3600;
/// Largest `max_entry_bytes` of a [`ResponseCache`]: 16 MiB.
pub const MAX_CACHE_ENTRY_BYTES: u64 = 16 << 20;

impl Default for ResponseCache {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_seconds: default_cache_ttl_seconds(),
            max_entry_bytes: default_cache_max_entry_bytes(),
            shared_across_tenants: false,
        }
    }
}

/// Which deployments a [`ModelPolicy`]'s `prefer` tries first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preference {
    /// Deployments that cost nothing: tagged `free`, or priced at zero per input and output
    /// token. Paid ones only when no free one can serve.
    FreeFirst,
    /// Deployments tagged `local` (self-hosted engines), then the hosted ones.
    LocalFirst,
}

fn default_wait_for_cooldown_ms() -> u64 {
    1_000
}

/// Longest `wait_for_cooldown_ms` accepted: a request should not hang on a cooling model.
pub const MAX_WAIT_FOR_COOLDOWN_MS: u64 = 30_000;

impl ModelPolicy {
    /// The policy of a model that has none of its own.
    pub fn default_for(model: &str) -> Self {
        Self {
            model: model.to_owned(),
            members: Vec::new(),
            strategy: Strategy::default(),
            fallbacks: Vec::new(),
            retries: default_retries(),
            timeouts: Timeouts::default(),
            cooldown: Cooldown::default(),
            scoring: None,
            prefix_affinity: None,
            wait_for_cooldown_ms: default_wait_for_cooldown_ms(),
            concurrency_wait_ms: 0,
            latency_buffer_pct: 0.0,
            prefer: None,
            weights_from_limits: false,
            derive_tags: false,
            transforms: Transforms::default(),
            rules: Vec::new(),
            cache: None,
        }
    }
}

fn default_retries() -> u32 {
    2
}

/// Deployment selection strategy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Random, proportional to weight.
    #[default]
    WeightedRandom,
    /// Deterministic rotation, proportional to weight.
    RoundRobin,
    /// Lowest `priority` first; weighted random among equals.
    Priority,
    /// Fewest requests in flight across the cluster; ties go to the higher weight.
    LeastBusy,
    /// Lowest recent latency (time to first token for streams); unmeasured ones first.
    LowestLatency,
    /// Most headroom: the smallest used share of the deployment's RPM/TPM limits or of the
    /// upstream's reported quota, then the fewest tokens used this minute.
    LowestUsage,
    /// Cheapest for this request by the deployments' price entries; unpriced ones last.
    LowestCost,
    /// A weighted sum of cost, latency, reliability and headroom (see [`Scoring`]).
    WeightedScore,
    /// For self-hosted engines with a prefix (KV) cache, e.g. vLLM, SGLang: the deployment
    /// that most recently served the longest matching prompt prefix, unless it is busier
    /// than the least busy one by more than a margin (see [`PrefixAffinity`]); least busy
    /// otherwise.
    PrefixAffinity,
}

/// Settings of the `prefix_affinity` strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrefixAffinity {
    /// The prompt is hashed in blocks of this many bytes (about a quarter as many tokens).
    #[serde(default = "default_block_bytes")]
    pub block_bytes: u32,
    /// Requests in flight by which the cached deployment may exceed the least busy one and
    /// still be chosen.
    #[serde(default = "default_load_margin")]
    pub load_margin: u32,
}

fn default_block_bytes() -> u32 {
    512
}

fn default_load_margin() -> u32 {
    4
}

impl Default for PrefixAffinity {
    fn default() -> Self {
        Self {
            block_bytes: default_block_bytes(),
            load_margin: default_load_margin(),
        }
    }
}

/// Weights of the `weighted_score` strategy: a named preset, or explicit weights.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Scoring {
    /// `{ preset: cost_first }`
    Preset(PresetChoice),
    /// `{ cost: 2, latency: 1 }` (missing weights are 0)
    Weights(ScoreWeights),
}

/// `{ preset: ... }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PresetChoice {
    pub preset: ScoringPreset,
}

/// Named weight sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoringPreset {
    /// Equal weights.
    Balanced,
    /// Mostly price, a little of everything else.
    CostFirst,
    /// Mostly latency, a little of everything else.
    SpeedFirst,
}

/// How much each signal counts; each is normalised to 0..1 across the candidates, lower is
/// better, and the deployment with the lowest weighted sum goes first.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreWeights {
    #[serde(default)]
    pub cost: f64,
    #[serde(default)]
    pub latency: f64,
    /// Recent failure rate.
    #[serde(default)]
    pub reliability: f64,
    /// Used share of the limits (less headroom scores worse).
    #[serde(default)]
    pub headroom: f64,
}

impl ScoringPreset {
    pub fn weights(self) -> ScoreWeights {
        let w = |cost, latency, reliability, headroom| ScoreWeights {
            cost,
            latency,
            reliability,
            headroom,
        };
        match self {
            ScoringPreset::Balanced => w(1.0, 1.0, 1.0, 1.0),
            ScoringPreset::CostFirst => w(0.7, 0.1, 0.1, 0.1),
            ScoringPreset::SpeedFirst => w(0.1, 0.7, 0.1, 0.1),
        }
    }
}

impl Scoring {
    pub fn weights(self) -> ScoreWeights {
        match self {
            Scoring::Preset(p) => p.preset.weights(),
            Scoring::Weights(w) => w,
        }
    }
}

/// Per-attempt time limits, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// From sending the request until the upstream's response head *and* its first body bytes
    /// have arrived. Until then a failed attempt can still be retried.
    #[serde(default = "default_first_byte_ms")]
    pub first_byte_ms: u64,
    /// The whole attempt, streaming included. A stream cut by it ends early.
    #[serde(default = "default_total_ms")]
    pub total_ms: u64,
}

fn default_first_byte_ms() -> u64 {
    60_000
}

fn default_total_ms() -> u64 {
    600_000
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            first_byte_ms: default_first_byte_ms(),
            total_ms: default_total_ms(),
        }
    }
}

/// When a failing deployment is taken out of rotation, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cooldown {
    /// Consecutive failures (5xx, connect errors, timeouts) that put a deployment in cooldown.
    /// A 429 does so at once.
    #[serde(default = "default_allowed_failures")]
    pub allowed_failures: u32,
    /// How long a cooldown lasts when the upstream gave no `Retry-After`.
    #[serde(default = "default_cooldown_seconds")]
    pub seconds: u64,
}

fn default_allowed_failures() -> u32 {
    3
}

fn default_cooldown_seconds() -> u64 {
    30
}

impl Default for Cooldown {
    fn default() -> Self {
        Self {
            allowed_failures: default_allowed_failures(),
            seconds: default_cooldown_seconds(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
revision: 7
tenants: [{ id: t1 }]
virtual_keys:
  - { id: k1, tenant_id: t1, key_hash: "00" }
providers:
  - { id: p1, kind: openai, base_url: "http://127.0.0.1:9/v1" }
deployments:
  - { id: d1, model: gpt-4o, provider: p1, upstream_model: gpt-4o-2024-08-06 }
models:
  - { model: gpt-4o, strategy: round_robin, retries: 1, fallbacks: [] }
"#;

    #[test]
    fn defaults_fill_in_and_policy_flattens() {
        let s = Snapshot::from_yaml(MINIMAL).unwrap();
        assert_eq!(s.schema_version, SCHEMA_VERSION);
        assert_eq!(s.revision, 7);
        assert_eq!(s.deployments[0].weight, 1);
        let p = s.policy_for("gpt-4o");
        assert_eq!(p.strategy, Strategy::RoundRobin);
        assert_eq!(p.retries, 1);
        assert_eq!(p.timeouts, Timeouts::default());
        assert_eq!(s.policy_for("other"), ModelPolicy::default_for("other"));
    }

    #[test]
    fn unknown_fields_are_rejected_with_their_name() {
        let bad = MINIMAL.replace("upstream_model:", "upstream_modle:");
        let err = Snapshot::from_yaml(&bad).unwrap_err().to_string();
        assert!(err.contains("upstream_modle"), "{err}");
        let bad = MINIMAL.replace("retries: 1", "retrys: 1");
        let err = Snapshot::from_yaml(&bad).unwrap_err().to_string();
        assert!(err.contains("retrys"), "{err}");
    }

    #[test]
    fn json_round_trip_keeps_content_and_hash() {
        let s = Snapshot::from_yaml(MINIMAL).unwrap();
        let back = Snapshot::from_json(&s.to_canonical_json()).unwrap();
        assert_eq!(s, back);
        assert_eq!(s.content_hash(), back.content_hash());
        assert_eq!(
            s.content_hash(),
            hex::encode(Sha256::digest(s.to_canonical_json())),
            "the hash is the canonical form's"
        );
        let mut changed = back.clone();
        changed.deployments[0].weight = 2;
        assert_ne!(s.content_hash(), changed.content_hash());
    }

    #[test]
    fn key_usability_follows_status_and_expiry() {
        let s = Snapshot::from_yaml(MINIMAL).unwrap();
        let mut key = s.virtual_keys[0].clone();
        let now = Utc::now();
        assert!(key.is_usable_at(now));
        key.expires_at = Some(now);
        assert!(
            !key.is_usable_at(now),
            "a key is expired at its expiry instant"
        );
        key.expires_at = None;
        key.status = KeyStatus::Revoked;
        assert!(!key.is_usable_at(now));
        assert!(key.allows_model("anything"));
        key.allowed_models = vec!["gpt-4o".into()];
        assert!(key.allows_model("gpt-4o") && !key.allows_model("gpt-4"));
    }
}
