//! Whole-snapshot validation.
//!
//! Parsing catches wrong types and unknown fields; this catches what only the document as a
//! whole can show: dangling references, duplicate ids, fallbacks to nowhere, impossible limits.
//! It reports *every* problem at once, each with the path of the offending value, so that an
//! operator fixes a file in one pass rather than one error per restart.
//!
//! One module per snapshot section, each reading its section with the names the others
//! define ([`Names`], collected first, with the duplicate-id checks):
//! [`tenants`], [`providers`], [`keys`] (`virtual_keys`), [`deployments`] and [`models`]
//! (routing policies, model groups and content-rule aliases), with [`shaping`] checking the
//! transforms and content rules both of the last two carry. Problems come out in that order, after the schema
//! version and the ids. Rate limits and budgets, which several sections carry, are checked
//! here.

mod cache;
mod deployments;
mod keys;
mod models;
mod providers;
mod shaping;
mod tenants;

pub use shaping::{MAX_REGEX_BYTES, compile_rule_regex};

use std::collections::{HashMap, HashSet};
use std::fmt;

use crate::snapshot::{Budget, RateLimits, SCHEMA_VERSION, Snapshot};

/// Most extra attempts a model may make on its own deployments.
pub const MAX_RETRIES: u32 = 10;

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

/// The problems found so far, in the order found.
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

/// The names that sections refer to in one another.
struct Names<'a> {
    tenants: HashSet<&'a str>,
    providers: HashSet<&'a str>,
    /// Models that deployments serve.
    deployed: HashSet<&'a str>,
    /// Every public model name that deployments serve: the deployed models and the model
    /// groups (what fallbacks and content rules may lead to).
    served: HashSet<&'a str>,
    /// Names with content rules that no deployment serves of its own: public too (a key may
    /// list them), but only as names clients ask for.
    aliases: HashSet<&'a str>,
}

impl<'a> Names<'a> {
    /// Collects the names, reporting duplicate and empty ids on the way.
    fn collect(c: &mut Collector, s: &'a Snapshot) -> Self {
        let tenants = c.unique_ids("tenants", s.tenants.iter().map(|t| t.id.as_str()));
        let providers = c.unique_ids("providers", s.providers.iter().map(|p| p.id.as_str()));
        c.unique_ids("deployments", s.deployments.iter().map(|d| d.id.as_str()));
        c.unique_ids("virtual_keys", s.virtual_keys.iter().map(|k| k.id.as_str()));
        let deployed: HashSet<&'a str> = s.deployments.iter().map(|d| d.model.as_str()).collect();
        // Model groups are public names too.
        let groups = s.models.iter().filter(|m| !m.members.is_empty());
        let served = deployed
            .iter()
            .copied()
            .chain(groups.map(|m| m.model.as_str()))
            .collect();
        let aliases = s
            .models
            .iter()
            .filter(|m| m.members.is_empty() && !m.rules.is_empty())
            .map(|m| m.model.as_str())
            .filter(|name| !deployed.contains(name))
            .collect();
        Names {
            tenants,
            providers,
            deployed,
            served,
            aliases,
        }
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
        let names = Names::collect(&mut c, self);
        tenants::check(&mut c, &self.tenants);
        providers::check(&mut c, &self.providers);
        keys::check(&mut c, &self.virtual_keys, &names);
        deployments::check(&mut c, &self.deployments, &names);
        models::check(&mut c, &self.models, &names);
        if c.0.is_empty() {
            Ok(())
        } else {
            Err(Problems(c.0))
        }
    }
}

fn check_limits(c: &mut Collector, path: &str, limits: RateLimits) {
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
    if limits.concurrency == Some(0) {
        c.push(
            format!("{path}.concurrency"),
            "0 would refuse every request; omit it for no limit",
        );
    }
}

/// Every problem with one budget, at paths under `path` (`""`: the budget itself, so the
/// paths are `max_usd`, `soft_usd`, `time_zone`). The admin API checks a budget body with
/// this before it writes; snapshot validation runs the same check on every budget.
pub fn budget_problems(path: &str, b: &Budget) -> Vec<Problem> {
    let mut c = Collector(Vec::new());
    check_budget(&mut c, path, b);
    c.0
}

fn check_budget(c: &mut Collector, path: &str, b: &Budget) {
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

/// A section's limits and budget, at `{path}.limits` and `{path}.budget`.
fn check_limits_and_budget(
    c: &mut Collector,
    path: &str,
    limits: RateLimits,
    budget: Option<&Budget>,
) {
    check_limits(c, &format!("{path}.limits"), limits);
    if let Some(b) = budget {
        check_budget(c, &format!("{path}.budget"), b);
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
            "  - { id: m, kind: mock }\n  - { id: a, kind: anthropic, base_url: \"https://api.anthropic.com/v1\" }\n  - { id: z, kind: azure, base_url: \"https://x.openai.azure.com\", api_version: 2025-01-01-preview }\n  - { id: b, kind: bedrock, region: eu-west-1, aws_access_key_id: { env: AK }, aws_secret_access_key: { env: SK } }\n  - { id: g, kind: gemini, base_url: \"https://generativelanguage.googleapis.com/v1beta\" }\n  - { id: v, kind: vertex, region: global, project: my-proj, api_key: { env: SA } }",
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
                "fallbacks: [small] }",
                "fallbacks: [small], cache: { ttl_seconds: 0 } }",
                "models[0].cache.ttl_seconds",
            ),
            (
                "fallbacks: [small] }",
                "fallbacks: [small], cache: { max_entry_bytes: 999999999 } }",
                "models[0].cache.max_entry_bytes",
            ),
            (
                "allowed_models: [gpt-4o] }",
                "allowed_models: [gpt-4o], cache: { shared_across_tenants: true } }",
                "virtual_keys[0].cache.shared_across_tenants",
            ),
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
            ("kind: openai,", "kind: vertex,", "providers[0].region"),
            (
                "kind: openai,",
                "kind: vertex, region: global,",
                "providers[0].api_key",
            ),
            (
                "kind: openai,",
                "kind: vertex, region: \"us central\",",
                "providers[0].region",
            ),
            (
                "kind: openai,",
                "kind: openai, project: p,",
                "providers[0].project",
            ),
            (
                "kind: openai,",
                "kind: vertex, region: global, aws_access_key_id: { env: A },",
                "providers[0].aws_access_key_id",
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
    fn a_rotated_out_secret_must_be_well_formed_and_unique() {
        let previous = |hash: &str| {
            good().replacen(
                "virtual_keys:\n",
                &format!(
                    "virtual_keys:\n  - {{ id: k0, tenant_id: t1, key_hash: \"{}\", \
                     previous_secret: {{ key_hash: \"{hash}\", \
                     expires_at: \"2030-01-01T00:00:00Z\" }} }}\n",
                    "2".repeat(64)
                ),
                1,
            )
        };
        assert!(problems(&previous(&"3".repeat(64))).is_empty());
        for (hash, why) in [(HASH_A, "same hash as"), ("xyz", "must be 64 hex digits")] {
            let found = problems(&previous(hash));
            assert!(found.iter().any(|p| p.contains(why)), "{hash}: {found:#?}");
        }
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
