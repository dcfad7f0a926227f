//! Whole-snapshot validation.
//!
//! Parsing catches wrong types and unknown fields; this catches what only the document as a
//! whole can show: dangling references, duplicate ids, fallbacks to nowhere, impossible limits.
//! It reports *every* problem at once, each with the path of the offending value, so that an
//! operator fixes a file in one pass rather than one error per restart.

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::keys::parse_key_hash;
use crate::snapshot::{ProviderKind, SCHEMA_VERSION, Snapshot};

/// Most extra attempts a model may make on its own deployments.
pub const MAX_RETRIES: u32 = 10;

/// Whether `v` is safe to put in a query string as Azure's `api-version` (letters, digits,
/// dashes, dots).
fn is_api_version(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 40
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Whether `r` looks like an AWS region (it becomes part of a host name and the signature).
fn is_region(r: &str) -> bool {
    !r.is_empty()
        && r.len() <= 30
        && r.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// One problem in a snapshot, at a path such as `deployments[2].provider`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a snapshot. Never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problems(pub Vec<Problem>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} problem(s):", self.0.len())?;
        for p in &self.0 {
            write!(f, "\n  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

struct Collector(Vec<Problem>);

impl Collector {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Reports ids that are empty or seen before; returns the set of ids.
    fn unique_ids<'a>(
        &mut self,
        section: &str,
        ids: impl Iterator<Item = &'a str>,
    ) -> HashSet<&'a str> {
        let mut first_seen: HashMap<&str, usize> = HashMap::new();
        for (i, id) in ids.enumerate() {
            if id.trim().is_empty() {
                self.push(format!("{section}[{i}].id"), "must not be empty");
            } else if let Some(first) = first_seen.get(id) {
                self.push(
                    format!("{section}[{i}].id"),
                    format!("duplicate id {id:?} (first used at {section}[{first}])"),
                );
            } else {
                first_seen.insert(id, i);
            }
        }
        first_seen.into_keys().collect()
    }
}

impl Snapshot {
    /// Checks the snapshot as a whole. `Err` lists every problem found.
    pub fn validate(&self) -> Result<(), Problems> {
        let mut c = Collector(Vec::new());

        if self.schema_version != SCHEMA_VERSION {
            c.push(
                "schema_version",
                format!(
                    "unsupported schema version {} (this build reads {SCHEMA_VERSION})",
                    self.schema_version
                ),
            );
        }

        let tenants = c.unique_ids("tenants", self.tenants.iter().map(|t| t.id.as_str()));
        let providers = c.unique_ids("providers", self.providers.iter().map(|p| p.id.as_str()));
        c.unique_ids(
            "deployments",
            self.deployments.iter().map(|d| d.id.as_str()),
        );
        c.unique_ids(
            "virtual_keys",
            self.virtual_keys.iter().map(|k| k.id.as_str()),
        );
        let served_by_deployments: HashSet<&str> =
            self.deployments.iter().map(|d| d.model.as_str()).collect();
        // Model groups are public names too.
        let served: HashSet<&str> = served_by_deployments
            .iter()
            .copied()
            .chain(
                self.models
                    .iter()
                    .filter(|m| !m.members.is_empty())
                    .map(|m| m.model.as_str()),
            )
            .collect();

        for (i, t) in self.tenants.iter().enumerate() {
            check_limits(&mut c, &format!("tenants[{i}].limits"), t.limits);
            if let Some(b) = &t.budget {
                check_budget(&mut c, &format!("tenants[{i}].budget"), b);
            }
        }

        for (i, p) in self.providers.iter().enumerate() {
            let path = format!("providers[{i}]");
            if p.api_key.is_some() && !p.api_keys.is_empty() {
                c.push(
                    format!("{path}.api_keys"),
                    "give either api_key or api_keys, not both",
                );
            }
            if p.api_keys.len() > 64 {
                c.push(format!("{path}.api_keys"), "at most 64 keys per provider");
            }
            for (j, k) in p.api_keys.iter().enumerate() {
                if k.weight == 0 {
                    c.push(format!("{path}.api_keys[{j}].weight"), "must be at least 1");
                }
            }
            match (p.kind, &p.base_url) {
                (ProviderKind::Mock, _) | (ProviderKind::Bedrock, None) => {}
                (_, None) => c.push(format!("{path}.base_url"), "is required for this kind"),
                (_, Some(url)) => {
                    if !(url.starts_with("http://") || url.starts_with("https://")) {
                        c.push(
                            format!("{path}.base_url"),
                            format!("{url:?} must start with http:// or https://"),
                        );
                    }
                }
            }
            match (p.kind, &p.api_version) {
                (ProviderKind::Azure, None) => {
                    c.push(format!("{path}.api_version"), "is required for kind azure");
                }
                (ProviderKind::Azure, Some(v)) if !is_api_version(v) => c.push(
                    format!("{path}.api_version"),
                    format!("{v:?} must look like 2024-10-21 or 2025-01-01-preview"),
                ),
                (ProviderKind::Azure, Some(_)) | (_, None) => {}
                (_, Some(_)) => c.push(
                    format!("{path}.api_version"),
                    "is only allowed for kind azure",
                ),
            }
            let aws = [
                ("aws_access_key_id", p.aws_access_key_id.is_some()),
                ("aws_secret_access_key", p.aws_secret_access_key.is_some()),
                ("aws_session_token", p.aws_session_token.is_some()),
                ("region", p.region.is_some()),
            ];
            if p.kind == ProviderKind::Bedrock {
                for (field, present) in &aws[..2] {
                    if !present {
                        c.push(format!("{path}.{field}"), "is required for kind bedrock");
                    }
                }
                match &p.region {
                    None => c.push(format!("{path}.region"), "is required for kind bedrock"),
                    Some(r) if !is_region(r) => c.push(
                        format!("{path}.region"),
                        format!("{r:?} must look like us-east-1"),
                    ),
                    Some(_) => {}
                }
                if p.api_key.is_some() {
                    c.push(
                        format!("{path}.api_key"),
                        "is not used by kind bedrock: give aws_access_key_id and aws_secret_access_key",
                    );
                }
            } else {
                for (field, present) in aws {
                    if present {
                        c.push(
                            format!("{path}.{field}"),
                            "is only allowed for kind bedrock",
                        );
                    }
                }
            }
        }

        let mut key_hashes: HashMap<&str, usize> = HashMap::new();
        for (i, k) in self.virtual_keys.iter().enumerate() {
            let path = format!("virtual_keys[{i}]");
            if !tenants.contains(k.tenant_id.as_str()) {
                c.push(
                    format!("{path}.tenant_id"),
                    format!("unknown tenant {:?}", k.tenant_id),
                );
            }
            if parse_key_hash(&k.key_hash).is_none() {
                c.push(
                    format!("{path}.key_hash"),
                    "must be 64 hex digits (HMAC-SHA-256 of the key under the pepper)",
                );
            } else if let Some(first) = key_hashes.insert(k.key_hash.as_str(), i) {
                c.push(
                    format!("{path}.key_hash"),
                    format!("same hash as virtual_keys[{first}]: one secret, two keys"),
                );
            }
            if let (Some(created), Some(expires)) = (k.created_at, k.expires_at)
                && expires < created
            {
                c.push(
                    format!("{path}.expires_at"),
                    format!("{expires} is before created_at {created}"),
                );
            }
            for (j, m) in k.allowed_models.iter().enumerate() {
                if !served.contains(m.as_str()) {
                    c.push(
                        format!("{path}.allowed_models[{j}]"),
                        format!("no deployment serves model {m:?}"),
                    );
                }
            }
            check_limits(&mut c, &format!("{path}.limits"), k.limits);
            if let Some(b) = &k.budget {
                check_budget(&mut c, &format!("{path}.budget"), b);
            }
        }

        for (i, d) in self.deployments.iter().enumerate() {
            let path = format!("deployments[{i}]");
            if d.model.trim().is_empty() {
                c.push(format!("{path}.model"), "must not be empty");
            }
            if d.upstream_model.trim().is_empty() {
                c.push(format!("{path}.upstream_model"), "must not be empty");
            }
            if !providers.contains(d.provider.as_str()) {
                c.push(
                    format!("{path}.provider"),
                    format!("unknown provider {:?}", d.provider),
                );
            }
            if d.weight == 0 {
                c.push(
                    format!("{path}.weight"),
                    "must be at least 1 (remove the deployment to stop using it)",
                );
            }
            check_limits(&mut c, &format!("{path}.limits"), d.limits);
        }

        let mut policy_seen: HashMap<&str, usize> = HashMap::new();
        for (i, m) in self.models.iter().enumerate() {
            let path = format!("models[{i}]");
            if let Some(first) = policy_seen.insert(m.model.as_str(), i) {
                c.push(
                    format!("{path}.model"),
                    format!("second policy for {:?} (first at models[{first}])", m.model),
                );
            }
            if m.members.is_empty() {
                if !served.contains(m.model.as_str()) {
                    c.push(
                        format!("{path}.model"),
                        format!("no deployment serves model {:?}", m.model),
                    );
                }
            } else {
                if served_by_deployments.contains(m.model.as_str()) {
                    c.push(
                        format!("{path}.model"),
                        format!(
                            "{:?} is served by deployments; a group needs a name of its own",
                            m.model
                        ),
                    );
                }
                for (j, member) in m.members.iter().enumerate() {
                    if !served_by_deployments.contains(member.as_str()) {
                        c.push(
                            format!("{path}.members[{j}]"),
                            format!("no deployment serves model {member:?}"),
                        );
                    }
                }
            }
            if m.model.starts_with("tag:") {
                c.push(
                    format!("{path}.model"),
                    "names starting with `tag:` select deployments by tag",
                );
            }
            for (j, f) in m.fallbacks.iter().enumerate() {
                if f == &m.model {
                    c.push(
                        format!("{path}.fallbacks[{j}]"),
                        "a model cannot fall back to itself",
                    );
                } else if !served.contains(f.as_str()) {
                    c.push(
                        format!("{path}.fallbacks[{j}]"),
                        format!("fallback to unknown model {f:?}"),
                    );
                }
            }
            if m.retries > MAX_RETRIES {
                c.push(
                    format!("{path}.retries"),
                    format!(
                        "{} is more than {MAX_RETRIES}; use fallbacks to try other models",
                        m.retries
                    ),
                );
            }
            let t = m.timeouts;
            if t.first_byte_ms == 0 {
                c.push(format!("{path}.timeouts.first_byte_ms"), "must be positive");
            }
            if t.total_ms < t.first_byte_ms {
                c.push(
                    format!("{path}.timeouts.total_ms"),
                    format!(
                        "{} is shorter than first_byte_ms {}",
                        t.total_ms, t.first_byte_ms
                    ),
                );
            }
            if let Some(scoring) = m.scoring {
                if m.strategy != crate::snapshot::Strategy::WeightedScore {
                    c.push(
                        format!("{path}.scoring"),
                        "only the weighted_score strategy reads scoring",
                    );
                }
                let w = scoring.weights();
                let all = [
                    ("cost", w.cost),
                    ("latency", w.latency),
                    ("reliability", w.reliability),
                    ("headroom", w.headroom),
                ];
                for (name, value) in all {
                    if !(value.is_finite() && value >= 0.0) {
                        c.push(
                            format!("{path}.scoring.{name}"),
                            "must be a non-negative number",
                        );
                    }
                }
                if all.iter().all(|(_, v)| *v == 0.0) {
                    c.push(
                        format!("{path}.scoring"),
                        "at least one weight must be positive",
                    );
                }
            }
            if let Some(p) = m.prefix_affinity {
                if m.strategy != crate::snapshot::Strategy::PrefixAffinity {
                    c.push(
                        format!("{path}.prefix_affinity"),
                        "only the prefix_affinity strategy reads it",
                    );
                }
                if !(64..=65_536).contains(&p.block_bytes) {
                    c.push(
                        format!("{path}.prefix_affinity.block_bytes"),
                        "must be between 64 and 65536",
                    );
                }
            }
            if m.wait_for_cooldown_ms > crate::snapshot::MAX_WAIT_FOR_COOLDOWN_MS {
                c.push(
                    format!("{path}.wait_for_cooldown_ms"),
                    format!(
                        "{} is more than {}",
                        m.wait_for_cooldown_ms,
                        crate::snapshot::MAX_WAIT_FOR_COOLDOWN_MS
                    ),
                );
            }
            if m.cooldown.allowed_failures == 0 {
                c.push(
                    format!("{path}.cooldown.allowed_failures"),
                    "must be at least 1",
                );
            }
        }

        if c.0.is_empty() {
            Ok(())
        } else {
            Err(Problems(c.0))
        }
    }
}

fn check_limits(c: &mut Collector, path: &str, limits: crate::snapshot::RateLimits) {
    if limits.rpm == Some(0) {
        c.push(
            format!("{path}.rpm"),
            "0 would refuse every request; omit it for no limit",
        );
    }
    if limits.tpm == Some(0) {
        c.push(
            format!("{path}.tpm"),
            "0 would refuse every request; omit it for no limit",
        );
    }
}

/// Every problem with one budget, at paths under `path` (`""`: the budget itself, so the
/// paths are `max_usd`, `soft_usd`, `time_zone`). The admin API checks a budget body with
/// this before it writes; snapshot validation runs the same check on every budget.
pub fn budget_problems(path: &str, b: &crate::snapshot::Budget) -> Vec<Problem> {
    let mut c = Collector(Vec::new());
    check_budget(&mut c, path, b);
    c.0
}

fn check_budget(c: &mut Collector, path: &str, b: &crate::snapshot::Budget) {
    let at = |field: &str| {
        if path.is_empty() {
            field.to_owned()
        } else {
            format!("{path}.{field}")
        }
    };
    if let Err(message) = crate::budget::parse_time_zone(b.time_zone.as_deref()) {
        c.push(at("time_zone"), &message);
    }
    // Like a zero rate limit, a zero budget would refuse every request: omit the budget (or
    // revoke the key, suspend the tenant) instead.
    if !(b.max_usd.is_finite() && b.max_usd > 0.0) {
        c.push(at("max_usd"), "must be a positive number");
    }
    if let Some(soft) = b.soft_usd
        && !(soft.is_finite() && soft > 0.0 && soft <= b.max_usd)
    {
        c.push(
            at("soft_usd"),
            "must be a positive number no larger than max_usd",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH_A: &str = "1111111111111111111111111111111111111111111111111111111111111111";

    fn good() -> String {
        format!(
            r#"
tenants: [{{ id: t1 }}]
virtual_keys:
  - {{ id: k1, tenant_id: t1, key_hash: "{HASH_A}", allowed_models: [gpt-4o] }}
providers:
  - {{ id: p1, kind: openai, base_url: "https://api.openai.com/v1" }}
  - {{ id: m, kind: mock }}
deployments:
  - {{ id: d1, model: gpt-4o, provider: p1, upstream_model: gpt-4o }}
  - {{ id: d2, model: small, provider: m, upstream_model: mock-small }}
models:
  - {{ model: gpt-4o, fallbacks: [small] }}
"#
        )
    }

    fn problems(yaml: &str) -> Vec<String> {
        let s = Snapshot::from_yaml(yaml).unwrap();
        match s.validate() {
            Ok(()) => Vec::new(),
            Err(p) => p.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn a_good_snapshot_passes() {
        assert_eq!(problems(&good()), Vec::<String>::new());
        let more = good().replace(
            "  - { id: m, kind: mock }",
            "  - { id: m, kind: mock }\n  - { id: a, kind: anthropic, base_url: \"https://api.anthropic.com/v1\" }\n  - { id: z, kind: azure, base_url: \"https://x.openai.azure.com\", api_version: 2025-01-01-preview }\n  - { id: b, kind: bedrock, region: eu-west-1, aws_access_key_id: { env: AK }, aws_secret_access_key: { env: SK } }\n  - { id: g, kind: gemini, base_url: \"https://generativelanguage.googleapis.com/v1beta\" }",
        );
        assert_eq!(problems(&more), Vec::<String>::new());
    }

    /// Each edit breaks one rule; the report must name the path of exactly that rule.
    #[test]
    fn each_bad_file_is_reported_at_its_path() {
        let cases: &[(&str, &str, &str)] = &[
            ("provider: p1", "provider: nope", "deployments[0].provider"),
            ("id: d2", "id: d1", "deployments[1].id"),
            (
                "{ id: m, kind: mock }",
                "{ id: p1, kind: mock }",
                "providers[1].id",
            ),
            (
                "fallbacks: [small]",
                "fallbacks: [ghost]",
                "models[0].fallbacks[0]",
            ),
            (
                "fallbacks: [small]",
                "fallbacks: [gpt-4o]",
                "models[0].fallbacks[0]",
            ),
            (
                "tenant_id: t1",
                "tenant_id: t9",
                "virtual_keys[0].tenant_id",
            ),
            (HASH_A, "xyz", "virtual_keys[0].key_hash"),
            (
                "allowed_models: [gpt-4o]",
                "allowed_models: [gpt-5]",
                "virtual_keys[0].allowed_models[0]",
            ),
            (
                "allowed_models: [gpt-4o]",
                "created_at: 2026-02-01T00:00:00Z, expires_at: 2026-01-01T00:00:00Z",
                "virtual_keys[0].expires_at",
            ),
            (
                ", base_url: \"https://api.openai.com/v1\"",
                "",
                "providers[0].base_url",
            ),
            (
                "https://api.openai.com/v1",
                "ftp://x",
                "providers[0].base_url",
            ),
            ("kind: openai,", "kind: azure,", "providers[0].api_version"),
            (
                "kind: openai,",
                "kind: azure, api_version: \"2024-10-21&x=1\",",
                "providers[0].api_version",
            ),
            (
                "kind: openai,",
                "kind: anthropic, api_version: \"2024-10-21\",",
                "providers[0].api_version",
            ),
            (
                "kind: openai,",
                "kind: bedrock, region: us-east-1, aws_access_key_id: { env: A },",
                "providers[0].aws_secret_access_key",
            ),
            (
                "kind: openai,",
                "kind: bedrock, region: \"us east\", aws_access_key_id: { env: A }, aws_secret_access_key: { env: B },",
                "providers[0].region",
            ),
            (
                "kind: openai,",
                "kind: openai, region: us-east-1,",
                "providers[0].region",
            ),
            (
                "upstream_model: gpt-4o }",
                "upstream_model: gpt-4o, weight: 0 }",
                "deployments[0].weight",
            ),
            (
                "upstream_model: gpt-4o }",
                "upstream_model: \"\" }",
                "deployments[0].upstream_model",
            ),
            (
                "{ model: gpt-4o, fallbacks",
                "{ model: gpt-9, fallbacks",
                "models[0].model",
            ),
            (
                "fallbacks: [small] }",
                "fallbacks: [small], timeouts: { first_byte_ms: 5000, total_ms: 10 } }",
                "models[0].timeouts.total_ms",
            ),
            (
                "{ id: t1 }",
                "{ id: t1, limits: { rpm: 0 } }",
                "tenants[0].limits.rpm",
            ),
            (
                "allowed_models: [gpt-4o] }",
                "allowed_models: [gpt-4o], budget: { max_usd: 1.0, soft_usd: 2.0 } }",
                "virtual_keys[0].budget.soft_usd",
            ),
            (
                "{ id: t1 }",
                "{ id: t1, budget: { max_usd: 5, period: daily, time_zone: Mars/Olympus } }",
                "tenants[0].budget.time_zone",
            ),
            (
                "{ id: t1 }",
                "{ id: t1, budget: { max_usd: 0 } }",
                "tenants[0].budget.max_usd",
            ),
            (
                "{ id: t1 }",
                "{ id: t1, budget: { max_usd: 5, soft_usd: 0 } }",
                "tenants[0].budget.soft_usd",
            ),
            (
                "tenants: [{ id: t1 }]",
                "schema_version: 2\ntenants: [{ id: t1 }]",
                "schema_version",
            ),
            (
                "{ model: gpt-4o, fallbacks",
                "{ model: gpt-4o, scoring: { preset: cost_first }, fallbacks",
                "models[0].scoring",
            ),
            (
                "{ model: gpt-4o, fallbacks",
                "{ model: gpt-4o, strategy: weighted_score, scoring: { cost: -1 }, fallbacks",
                "models[0].scoring.cost",
            ),
            (
                "{ model: gpt-4o, fallbacks",
                "{ model: gpt-4o, strategy: weighted_score, scoring: { cost: 0 }, fallbacks",
                "models[0].scoring",
            ),
            (
                "{ model: gpt-4o, fallbacks",
                "{ model: gpt-4o, wait_for_cooldown_ms: 60000, fallbacks",
                "models[0].wait_for_cooldown_ms",
            ),
            (
                "{ model: gpt-4o, fallbacks",
                "{ model: gpt-4o, members: [small], fallbacks",
                "models[0].model",
            ),
            (
                "{ model: gpt-4o, fallbacks",
                "{ model: gpt-4o, strategy: prefix_affinity, prefix_affinity: { block_bytes: 8 }, fallbacks",
                "models[0].prefix_affinity.block_bytes",
            ),
            (
                "base_url: \"https://api.openai.com/v1\"",
                "base_url: \"https://api.openai.com/v1\", api_keys: [{ key: { value: a } }, { key: { value: b }, weight: 0 }]",
                "providers[0].api_keys[1].weight",
            ),
            (
                "base_url: \"https://api.openai.com/v1\"",
                "base_url: \"https://api.openai.com/v1\", api_key: { value: a }, api_keys: [{ key: { value: b } }]",
                "providers[0].api_keys",
            ),
            (
                "{ model: gpt-4o, fallbacks: [small] }",
                "{ model: gpt-4o, fallbacks: [small] }\n  - { model: g, members: [small, nope] }",
                "models[1].members[1]",
            ),
        ];
        for (from, to, path) in cases {
            let yaml = good().replacen(from, to, 1);
            assert_ne!(yaml, good(), "case {path}: edit {from:?} did not apply");
            let found = problems(&yaml);
            assert!(
                found.iter().any(|p| p.starts_with(&format!("{path}:"))),
                "case {path}: expected a problem there, got {found:#?}"
            );
        }
    }

    #[test]
    fn a_model_group_is_a_public_name() {
        let yaml = good()
            .replacen(
                "{ model: gpt-4o, fallbacks: [small] }",
                "{ model: gpt-4o, fallbacks: [both] }\n  - { model: both, members: [gpt-4o, small] }",
                1,
            )
            .replacen("allowed_models: [gpt-4o]", "allowed_models: [both]", 1);
        assert_eq!(problems(&yaml), Vec::<String>::new());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let yaml = good()
            .replacen("provider: p1", "provider: nope", 1)
            .replacen("fallbacks: [small]", "fallbacks: [ghost]", 1)
            .replacen("tenant_id: t1", "tenant_id: t9", 1);
        let found = problems(&yaml);
        assert_eq!(found.len(), 3, "{found:#?}");
    }

    #[test]
    fn two_keys_with_one_hash_are_refused() {
        let yaml = good().replacen(
            "virtual_keys:\n",
            &format!("virtual_keys:\n  - {{ id: k0, tenant_id: t1, key_hash: \"{HASH_A}\" }}\n"),
            1,
        );
        let found = problems(&yaml);
        assert!(
            found
                .iter()
                .any(|p| p.starts_with("virtual_keys[1].key_hash:")),
            "{found:#?}"
        );
    }

    #[test]
    fn one_budget_is_checked_at_its_own_paths() {
        let budget =
            |max_usd: f64, soft_usd: Option<f64>, tz: Option<&str>| crate::snapshot::Budget {
                max_usd,
                soft_usd,
                period: crate::snapshot::BudgetPeriod::Daily,
                time_zone: tz.map(str::to_owned),
            };
        let paths = |b| -> Vec<String> {
            budget_problems("", &b)
                .into_iter()
                .map(|p| p.path)
                .collect()
        };
        assert_eq!(
            paths(budget(10.0, Some(5.0), Some("Europe/Berlin"))),
            Vec::<String>::new()
        );
        assert_eq!(paths(budget(10.0, Some(10.0), None)), Vec::<String>::new());
        assert_eq!(
            paths(budget(f64::NAN, Some(-1.0), Some("Mars/Olympus"))),
            ["time_zone", "max_usd", "soft_usd"]
        );
        assert_eq!(paths(budget(-2.0, None, None)), ["max_usd"]);
        assert_eq!(paths(budget(f64::INFINITY, None, None)), ["max_usd"]);
        assert_eq!(paths(budget(1.0, Some(0.0), None)), ["soft_usd"]);
        assert_eq!(
            budget_problems("tenants[3].budget", &budget(0.0, None, None))[0].path,
            "tenants[3].budget.max_usd"
        );
    }
}
