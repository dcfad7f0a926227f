//! Reading a LiteLLM proxy `config.yaml` into a plan of Switchboard providers, deployments and
//! model policies, with a note for everything that could not be mapped. Pure: no database,
//! no process environment (the caller passes the variables), so it is tested in isolation and
//! a dry run shows exactly what an import would write.
//!
//! Secret values (API keys, AWS credentials) are held only to be sealed by the write path;
//! nothing here formats them: the plan's `Display`s and notes name where a secret comes from
//! (`os.environ/NAME`, "inline in the file"), never its value.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_yaml_ng::{Mapping, Value};
use switchboard_shared::price::PriceEntry;
use switchboard_shared::snapshot::{ProviderKind, Strategy};

/// Where a credential comes from, for the report.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    /// `os.environ/NAME` in the file, or LiteLLM's default variable for the provider.
    Env(String),
    /// Written in the file (the value is never shown).
    Inline,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Env(name) => write!(f, "os.environ/{name}"),
            Source::Inline => f.write_str("inline in the file"),
        }
    }
}

/// A secret and where it came from. `Debug` shows only the source.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    pub source: Source,
    pub value: String,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.source)
    }
}

/// A provider to create: one per distinct upstream account in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedProvider {
    pub id: String,
    pub kind: ProviderKind,
    pub base_url: Option<String>,
    pub api_key: Option<Secret>,
    pub api_version: Option<String>,
    pub region: Option<String>,
    pub aws_access_key_id: Option<Secret>,
    pub aws_secret_access_key: Option<Secret>,
    pub aws_session_token: Option<Secret>,
}

/// A deployment to create (`model_list` entry).
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedDeployment {
    pub id: String,
    pub model: String,
    pub provider: String,
    pub upstream_model: String,
    pub weight: u32,
    pub priority: u32,
    pub rpm: Option<u32>,
    pub tpm: Option<u32>,
    pub price: Option<PriceEntry>,
}

/// A model policy to create (one per public model name).
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedPolicy {
    pub model: String,
    pub strategy: Strategy,
    pub fallbacks: Vec<String>,
    pub retries: Option<u32>,
    pub timeout_ms: Option<u64>,
    pub allowed_failures: Option<u32>,
    pub cooldown_seconds: Option<u64>,
}

/// What the file turns into, and what it could not map.
#[derive(Debug, Default)]
pub struct Plan {
    pub providers: Vec<PlannedProvider>,
    pub deployments: Vec<PlannedDeployment>,
    pub policies: Vec<PlannedPolicy>,
    /// One line per thing not mapped (or mapped with a caveat), by its place in the file.
    pub notes: Vec<String>,
}

/// The file could not be read at all.
#[derive(Debug, thiserror::Error)]
#[error("not a LiteLLM config: {0}")]
pub struct ParseError(String);

/// Router-wide settings applied to every model's policy.
#[derive(Debug, Default, Clone)]
struct RouterSettings {
    strategy: Strategy,
    retries: Option<u32>,
    timeout_ms: Option<u64>,
    allowed_failures: Option<u32>,
    cooldown_seconds: Option<u64>,
    fallbacks: BTreeMap<String, Vec<String>>,
}

/// Reads `text` (a LiteLLM `config.yaml`); `env` resolves `os.environ/NAME` references.
pub fn plan(text: &str, env: &[(String, String)]) -> Result<Plan, ParseError> {
    let root: Value = serde_yaml_ng::from_str(text).map_err(|e| ParseError(e.to_string()))?;
    let Value::Mapping(root) = root else {
        return Err(ParseError("the top level is not a mapping".into()));
    };
    let mut plan = Plan::default();
    let env: BTreeMap<&str, &str> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut router = RouterSettings::default();
    let mut models = Vec::new();
    for (key, value) in &root {
        match key.as_str().unwrap_or_default() {
            "model_list" => match value {
                Value::Sequence(list) => models = list.clone(),
                _ => plan.notes.push("model_list: not a list; ignored".into()),
            },
            "router_settings" => read_router(value, "router_settings", &mut router, &mut plan),
            "litellm_settings" => read_router(value, "litellm_settings", &mut router, &mut plan),
            "general_settings" => general_settings(value, &mut plan),
            other => plan.notes.push(format!(
                "{other}: section not mapped (Switchboard has no equivalent); ignored"
            )),
        }
    }
    if models.is_empty() {
        plan.notes
            .push("model_list: empty or missing; nothing to import".into());
    }
    let mut accounts = Accounts::default();
    for (i, entry) in models.iter().enumerate() {
        model_entry(i, entry, &env, &mut accounts, &mut plan);
    }
    plan.providers = accounts.providers;
    policies(&router, &mut plan);
    Ok(plan)
}

/// Reads one `router_settings` / `litellm_settings` section into `router`.
fn read_router(value: &Value, section: &str, router: &mut RouterSettings, plan: &mut Plan) {
    let Value::Mapping(map) = value else {
        plan.notes
            .push(format!("{section}: not a mapping; ignored"));
        return;
    };
    for (key, v) in map {
        let key = key.as_str().unwrap_or_default();
        let at = format!("{section}.{key}");
        match key {
            "routing_strategy" => match v.as_str().and_then(strategy) {
                Some(s) => router.strategy = s,
                None => plan.notes.push(format!(
                    "{at}: {v:?} has no Switchboard equivalent; models keep weighted_random"
                )),
            },
            "num_retries" => router.retries = number(v).map(clamp_u32),
            "timeout" | "request_timeout" => {
                router.timeout_ms = number(v).map(|s| s.saturating_mul(1000));
            }
            "allowed_fails" => router.allowed_failures = number(v).map(clamp_u32),
            "cooldown_time" => router.cooldown_seconds = number(v),
            "fallbacks" => read_fallbacks(v, &at, router, plan),
            // Logging switches of LiteLLM itself: nothing to carry over.
            "set_verbose" | "json_logs" | "drop_params" => {}
            "callbacks" | "success_callback" | "failure_callback"
                if v.as_sequence().is_some_and(|s| s.is_empty()) => {}
            _ => plan.notes.push(format!("{at}: not mapped; ignored")),
        }
    }
}

/// LiteLLM's routing strategies by their config names.
fn strategy(name: &str) -> Option<Strategy> {
    Some(match name {
        "simple-shuffle" => Strategy::WeightedRandom,
        "least-busy" => Strategy::LeastBusy,
        "latency-based-routing" => Strategy::LowestLatency,
        "usage-based-routing" | "usage-based-routing-v2" => Strategy::LowestUsage,
        "cost-based-routing" => Strategy::LowestCost,
        _ => return None,
    })
}

/// `fallbacks: [{model: [fallback, ...]}, ...]`.
fn read_fallbacks(v: &Value, at: &str, router: &mut RouterSettings, plan: &mut Plan) {
    let Some(list) = v.as_sequence() else {
        plan.notes.push(format!("{at}: not a list; ignored"));
        return;
    };
    for item in list {
        let Some(map) = item.as_mapping() else {
            plan.notes
                .push(format!("{at}: an entry is not a mapping; ignored"));
            continue;
        };
        for (model, to) in map {
            let names: Vec<String> = match to {
                Value::Sequence(s) => s
                    .iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect(),
                Value::String(s) => vec![s.clone()],
                _ => Vec::new(),
            };
            if let Some(model) = model.as_str() {
                router.fallbacks.insert(model.to_owned(), names);
            }
        }
    }
}

fn general_settings(value: &Value, plan: &mut Plan) {
    let Some(map) = value.as_mapping() else {
        return;
    };
    for key in map.keys().filter_map(Value::as_str) {
        let why = match key {
            "master_key" => {
                "not imported (the value is not shown): create virtual keys with POST /admin/v1/keys"
            }
            "database_url" => "not imported: Switchboard keeps its own Postgres (database.url)",
            _ => "not mapped; ignored",
        };
        plan.notes.push(format!("general_settings.{key}: {why}"));
    }
}

/// A non-negative whole number (YAML int, float or numeric string).
fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0).map(|f| f.round() as u64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn clamp_u32(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn float(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The providers found so far, deduplicated by everything that identifies an account.
#[derive(Default)]
struct Accounts {
    providers: Vec<PlannedProvider>,
    deployment_ids: BTreeSet<String>,
}

impl Accounts {
    /// The id of the provider equal to `p` (ignoring ids), adding it under a fresh id if new.
    fn provider_id(&mut self, mut p: PlannedProvider) -> String {
        if let Some(same) = self.providers.iter().find(|q| {
            PlannedProvider {
                id: p.id.clone(),
                ..(*q).clone()
            } == p
        }) {
            return same.id.clone();
        }
        let place = p
            .base_url
            .as_deref()
            .map(host)
            .or(p.region.clone())
            .unwrap_or_default();
        let base = slug(&format!("{}-{place}", p.kind.as_str()));
        p.id = fresh(&base, |id| self.providers.iter().any(|q| q.id == id));
        let id = p.id.clone();
        self.providers.push(p);
        id
    }

    fn deployment_id(&mut self, wanted: &str) -> String {
        let id = fresh(&slug(wanted), |id| self.deployment_ids.contains(id));
        self.deployment_ids.insert(id.clone());
        id
    }
}

/// The host (and port) of a URL, for a readable provider id.
fn host(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap_or_default().to_owned()
}

/// `base`, or `base-2`, `base-3`, ... whichever is not `taken`.
fn fresh(base: &str, taken: impl Fn(&str) -> bool) -> String {
    if !taken(base) {
        return base.to_owned();
    }
    (2..)
        .map(|n| format!("{base}-{n}"))
        .find(|id| !taken(id))
        .unwrap_or_default()
}

/// An id-safe form of `name` (letters, digits, `.`, `_`, `-`; at most 56 characters, leaving
/// room for a `-N` suffix).
fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(56)
        .collect();
    if s.is_empty() { "model".to_owned() } else { s }
}

/// How a LiteLLM provider prefix maps: the kind, its default base URL and the environment
/// variable LiteLLM reads the key from when the entry names none.
struct Route {
    kind: ProviderKind,
    base_url: Option<&'static str>,
    key_env: Option<&'static str>,
}

fn route(prefix: &str) -> Option<Route> {
    let r = |kind, base_url, key_env| Route {
        kind,
        base_url,
        key_env,
    };
    use ProviderKind::*;
    Some(match prefix {
        "openai" | "custom_openai" => r(
            Openai,
            Some("https://api.openai.com/v1"),
            Some("OPENAI_API_KEY"),
        ),
        "hosted_vllm" | "openai_compatible" | "litellm_proxy" | "lm_studio" | "llamafile" => {
            r(Openai, None, None)
        }
        "ollama" | "ollama_chat" => r(Openai, Some("http://localhost:11434/v1"), None),
        "groq" => r(
            Openai,
            Some("https://api.groq.com/openai/v1"),
            Some("GROQ_API_KEY"),
        ),
        "deepseek" => r(
            Openai,
            Some("https://api.deepseek.com/v1"),
            Some("DEEPSEEK_API_KEY"),
        ),
        "together_ai" => r(
            Openai,
            Some("https://api.together.xyz/v1"),
            Some("TOGETHERAI_API_KEY"),
        ),
        "mistral" => r(
            Openai,
            Some("https://api.mistral.ai/v1"),
            Some("MISTRAL_API_KEY"),
        ),
        "openrouter" => r(
            Openai,
            Some("https://openrouter.ai/api/v1"),
            Some("OPENROUTER_API_KEY"),
        ),
        "fireworks_ai" => r(
            Openai,
            Some("https://api.fireworks.ai/inference/v1"),
            Some("FIREWORKS_AI_API_KEY"),
        ),
        "xai" => r(Openai, Some("https://api.x.ai/v1"), Some("XAI_API_KEY")),
        "perplexity" => r(
            Openai,
            Some("https://api.perplexity.ai"),
            Some("PERPLEXITYAI_API_KEY"),
        ),
        "anthropic" => r(
            Anthropic,
            Some("https://api.anthropic.com/v1"),
            Some("ANTHROPIC_API_KEY"),
        ),
        "azure" => r(Azure, None, Some("AZURE_API_KEY")),
        "gemini" => r(
            Gemini,
            Some("https://generativelanguage.googleapis.com/v1beta"),
            Some("GEMINI_API_KEY"),
        ),
        "bedrock" => r(Bedrock, None, None),
        _ => return None,
    })
}

/// The provider prefix and upstream model of a `litellm_params.model`; a bare model name is
/// routed the way LiteLLM infers it from well-known names.
fn split_model(model: &str) -> (String, String) {
    if let Some((prefix, rest)) = model.split_once('/') {
        let rest = match prefix {
            "bedrock" => rest.strip_prefix("converse/").unwrap_or(rest).to_owned(),
            _ => rest.to_owned(),
        };
        return (prefix.to_owned(), rest);
    }
    let inferred = if model.starts_with("claude") {
        "anthropic"
    } else if model.starts_with("gemini") {
        "gemini"
    } else if [
        "gpt-",
        "o1",
        "o3",
        "o4",
        "chatgpt",
        "text-embedding",
        "davinci",
    ]
    .iter()
    .any(|p| model.starts_with(p))
    {
        "openai"
    } else {
        ""
    };
    (inferred.to_owned(), model.to_owned())
}

/// The params every entry may carry that this importer reads.
const KNOWN_PARAMS: &[&str] = &[
    "model",
    "api_base",
    "base_url",
    "api_key",
    "api_version",
    "rpm",
    "tpm",
    "weight",
    "order",
    "aws_access_key_id",
    "aws_secret_access_key",
    "aws_session_token",
    "aws_region_name",
    "aws_bedrock_runtime_endpoint",
    "input_cost_per_token",
    "output_cost_per_token",
];

/// Resolves a string param: `os.environ/NAME` from `env`, else the literal.
fn resolve(
    v: Option<&Value>,
    env: &BTreeMap<&str, &str>,
    at: &str,
    plan: &mut Plan,
) -> Result<Option<Secret>, ()> {
    let Some(v) = v else { return Ok(None) };
    let text = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => {
            plan.notes.push(format!("{at}: not a string; ignored"));
            return Ok(None);
        }
    };
    match text.strip_prefix("os.environ/") {
        Some(name) => match env.get(name) {
            Some(value) if !value.trim().is_empty() => Ok(Some(Secret {
                source: Source::Env(name.to_owned()),
                value: (*value).to_owned(),
            })),
            _ => {
                plan.notes.push(format!(
                    "{at}: environment variable {name} is not set; set it and import again"
                ));
                Err(())
            }
        },
        None => Ok(Some(Secret {
            source: Source::Inline,
            value: text,
        })),
    }
}

/// Maps one `model_list` entry into `plan` (or a note saying why not).
fn model_entry(
    i: usize,
    entry: &Value,
    env: &BTreeMap<&str, &str>,
    accounts: &mut Accounts,
    plan: &mut Plan,
) {
    let at = format!("model_list[{i}]");
    let Some(name) = entry.get("model_name").and_then(Value::as_str) else {
        plan.notes.push(format!("{at}: no model_name; skipped"));
        return;
    };
    let Some(params) = entry.get("litellm_params").and_then(Value::as_mapping) else {
        plan.notes
            .push(format!("{at} ({name}): no litellm_params; skipped"));
        return;
    };
    let at = format!("{at} ({name})");
    let Some(model) = params.get("model").and_then(Value::as_str) else {
        plan.notes
            .push(format!("{at}: no litellm_params.model; skipped"));
        return;
    };
    let (prefix, upstream_model) = split_model(model);
    let Some(route) = route(&prefix) else {
        plan.notes.push(format!(
            "{at}: provider {prefix:?} of model {model:?} is not supported by Switchboard \
             (openai-compatible, anthropic, azure, gemini, bedrock are); skipped"
        ));
        return;
    };
    for key in params.keys().filter_map(Value::as_str) {
        if !KNOWN_PARAMS.contains(&key) {
            plan.notes
                .push(format!("{at}: litellm_params.{key} not mapped; ignored"));
        }
    }
    if let Some(info) = entry.get("model_info").and_then(Value::as_mapping) {
        for key in info.keys().filter_map(Value::as_str).filter(|k| *k != "id") {
            plan.notes
                .push(format!("{at}: model_info.{key} not mapped; ignored"));
        }
    }
    let Ok(provider) = provider_of(&route, params, env, &at, plan) else {
        plan.notes
            .push(format!("{at}: skipped (its provider could not be set up)"));
        return;
    };
    let provider = accounts.provider_id(provider);
    let wanted = entry
        .get("model_info")
        .and_then(|m| m.get("id"))
        .and_then(Value::as_str)
        .unwrap_or(name);
    let id = accounts.deployment_id(wanted);
    plan.deployments
        .push(deployment(id, name, provider, upstream_model, params));
}

fn deployment(
    id: String,
    name: &str,
    provider: String,
    upstream_model: String,
    params: &Mapping,
) -> PlannedDeployment {
    let get = |k: &str| params.get(k).and_then(number);
    let input = params.get("input_cost_per_token").and_then(float);
    let output = params.get("output_cost_per_token").and_then(float);
    let price = (input.is_some() || output.is_some()).then(|| PriceEntry {
        input_cost_per_token: input,
        output_cost_per_token: output,
        ..PriceEntry::default()
    });
    PlannedDeployment {
        id,
        model: name.to_owned(),
        provider,
        upstream_model,
        weight: get("weight").map_or(1, clamp_u32).max(1),
        priority: get("order").map_or(0, clamp_u32),
        rpm: get("rpm").map(clamp_u32),
        tpm: get("tpm").map(clamp_u32),
        price,
    }
}

/// The provider an entry's params describe; `Err` after noting why when one it needs is
/// missing.
fn provider_of(
    route: &Route,
    params: &Mapping,
    env: &BTreeMap<&str, &str>,
    at: &str,
    plan: &mut Plan,
) -> Result<PlannedProvider, ()> {
    let p = |k: &str| params.get(k);
    let base_param = p("api_base")
        .or(p("base_url"))
        .or(p("aws_bedrock_runtime_endpoint"));
    let base = resolve(base_param, env, &format!("{at}: api_base"), plan)?;
    let base_url = base
        .map(|s| s.value.trim_end_matches('/').to_owned())
        .or(route.base_url.map(str::to_owned));
    let mut api_key = resolve(p("api_key"), env, &format!("{at}: api_key"), plan)?;
    if api_key.is_none()
        && let Some(name) = route.key_env
    {
        api_key = resolve(
            Some(&Value::String(format!("os.environ/{name}"))),
            env,
            &format!("{at}: api_key (LiteLLM's default)"),
            plan,
        )?;
    }
    let mut provider = PlannedProvider {
        id: String::new(),
        kind: route.kind,
        base_url,
        api_key,
        api_version: None,
        region: None,
        aws_access_key_id: None,
        aws_secret_access_key: None,
        aws_session_token: None,
    };
    match route.kind {
        ProviderKind::Azure => azure(&mut provider, params, env, at, plan)?,
        ProviderKind::Bedrock => bedrock(&mut provider, params, env, at, plan)?,
        _ => {}
    }
    if provider.base_url.is_none() && provider.kind != ProviderKind::Bedrock {
        plan.notes
            .push(format!("{at}: api_base is required for this provider"));
        return Err(());
    }
    Ok(provider)
}

fn azure(
    provider: &mut PlannedProvider,
    params: &Mapping,
    env: &BTreeMap<&str, &str>,
    at: &str,
    plan: &mut Plan,
) -> Result<(), ()> {
    let version = match params.get("api_version") {
        Some(v) => resolve(Some(v), env, &format!("{at}: api_version"), plan)?,
        None => env.get("AZURE_API_VERSION").map(|v| Secret {
            source: Source::Env("AZURE_API_VERSION".into()),
            value: (*v).to_owned(),
        }),
    };
    let Some(version) = version else {
        plan.notes.push(format!(
            "{at}: azure needs api_version (or AZURE_API_VERSION in the environment)"
        ));
        return Err(());
    };
    provider.api_version = Some(version.value);
    Ok(())
}

fn bedrock(
    provider: &mut PlannedProvider,
    params: &Mapping,
    env: &BTreeMap<&str, &str>,
    at: &str,
    plan: &mut Plan,
) -> Result<(), ()> {
    let mut field = |key: &str, default_env: &str, required: bool| {
        let v = params.get(key).cloned().or_else(|| {
            (required || env.contains_key(default_env))
                .then(|| Value::String(format!("os.environ/{default_env}")))
        });
        resolve(v.as_ref(), env, &format!("{at}: {key}"), plan)
    };
    let region = field("aws_region_name", "AWS_REGION", true)?;
    provider.aws_access_key_id = field("aws_access_key_id", "AWS_ACCESS_KEY_ID", true)?;
    provider.aws_secret_access_key = field("aws_secret_access_key", "AWS_SECRET_ACCESS_KEY", true)?;
    provider.aws_session_token = field("aws_session_token", "AWS_SESSION_TOKEN", false)?;
    provider.region = region.map(|r| r.value);
    provider.api_key = None;
    Ok(())
}

/// One policy per public model, with the router's settings and the model's fallbacks.
fn policies(router: &RouterSettings, plan: &mut Plan) {
    let names: BTreeSet<String> = plan.deployments.iter().map(|d| d.model.clone()).collect();
    for (model, to) in &router.fallbacks {
        if !names.contains(model) {
            plan.notes.push(format!(
                "fallbacks: {model:?} is not a model in model_list; its fallbacks are ignored"
            ));
        }
        for target in to.iter().filter(|t| !names.contains(*t)) {
            plan.notes.push(format!(
                "fallbacks: {model:?} -> {target:?}: {target:?} is not a model in model_list; dropped"
            ));
        }
    }
    for model in names {
        let fallbacks = router
            .fallbacks
            .get(&model)
            .map(|to| {
                to.iter()
                    .filter(|t| plan.deployments.iter().any(|d| &d.model == *t))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        plan.policies.push(PlannedPolicy {
            model,
            strategy: router.strategy,
            fallbacks,
            retries: router.retries,
            timeout_ms: router.timeout_ms,
            allowed_failures: router.allowed_failures,
            cooldown_seconds: router.cooldown_seconds,
        });
    }
}
