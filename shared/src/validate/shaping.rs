//! Transforms (on model policies and deployments) and content rules (on model policies):
//! fields the gateway reads are left alone, numbers are in range, rules point at a model that
//! serves and has no rules of its own, regular expressions compile, an alias ends with a rule
//! that catches every request.

use super::{Collector, Names};
use crate::shaping::{ContentRule, MAX_TOKENS_FIELDS, RESERVED_FIELDS, RuleMatch, Transforms};
use crate::snapshot::ModelPolicy;

/// Largest `max_tokens` a transform may cap to (the data plane's bound on a request's ask).
const MAX_TOKENS: u64 = 1_000_000;

/// Largest compiled size of a content rule's regular expression, so a rule cannot cost a
/// data plane much memory or time per request.
pub const MAX_REGEX_BYTES: usize = 256 * 1024;

/// Body fields the data plane bounds as whole numbers: a default for one must be one too.
const WHOLE_NUMBER_FIELDS: &[&str] = &["n", "best_of"];

/// The problems of one `transforms` block at `path`.
pub(super) fn check_transforms(c: &mut Collector, path: &str, t: &Transforms) {
    if t.max_tokens.is_some_and(|n| !(1..=MAX_TOKENS).contains(&n)) {
        c.push(
            format!("{path}.max_tokens"),
            format!("must be between 1 and {MAX_TOKENS}"),
        );
    }
    let reserved = |c: &mut Collector, at: String, field: &str| {
        if field.trim().is_empty() {
            c.push(at, "a field name must not be empty");
        } else if RESERVED_FIELDS.contains(&field) {
            c.push(
                at,
                format!("`{field}` is read by the gateway and cannot be changed"),
            );
        }
    };
    for (i, field) in t.drop.iter().enumerate() {
        reserved(c, format!("{path}.drop[{i}]"), field);
    }
    for (from, to) in &t.rename {
        reserved(c, format!("{path}.rename.{from}"), from);
        reserved(c, format!("{path}.rename.{from}"), to);
    }
    for (field, value) in &t.defaults {
        let at = format!("{path}.defaults.{field}");
        reserved(c, at.clone(), field);
        let bounded = MAX_TOKENS_FIELDS.contains(&field.as_str())
            || WHOLE_NUMBER_FIELDS.contains(&field.as_str());
        if bounded && value.as_u64().is_none_or(|n| n == 0) {
            c.push(at, "must be a positive whole number");
        }
    }
}

/// The problems of a policy's `rules` at `{path}.rules`.
pub(super) fn check_rules(
    c: &mut Collector,
    path: &str,
    m: &ModelPolicy,
    policies: &[ModelPolicy],
    names: &Names<'_>,
) {
    for (j, rule) in m.rules.iter().enumerate() {
        let at = format!("{path}.rules[{j}]");
        check_target(c, &at, m, rule, policies, names);
        check_match(c, &format!("{at}.when"), &rule.when);
    }
    let alias = m.members.is_empty() && !names.deployed.contains(m.model.as_str());
    if alias
        && let Some(last) = m.rules.last()
        && last.when != RuleMatch::default()
    {
        c.push(
            format!("{path}.rules[{}].when", m.rules.len() - 1),
            "no deployment serves this name, so its last rule must match every request \
             (no conditions)",
        );
    }
}

/// A rule's target serves (a deployed model or a group), is not the alias, and has no rules
/// of its own: one step from the name asked for to the model that serves.
fn check_target(
    c: &mut Collector,
    at: &str,
    m: &ModelPolicy,
    rule: &ContentRule,
    policies: &[ModelPolicy],
    names: &Names<'_>,
) {
    let at = format!("{at}.model");
    if rule.model == m.model {
        c.push(
            at,
            "a rule cannot send a request to the model it is declared on",
        );
    } else if !names.served.contains(rule.model.as_str()) {
        c.push(
            at,
            format!("no deployment or group serves {:?}", rule.model),
        );
    } else if policies
        .iter()
        .any(|p| p.model == rule.model && !p.rules.is_empty())
    {
        c.push(
            at,
            format!(
                "{:?} has content rules of its own; rules do not chain",
                rule.model
            ),
        );
    }
}

fn check_match(c: &mut Collector, at: &str, when: &RuleMatch) {
    if let (Some(min), Some(max)) = (when.min_prompt_tokens, when.max_prompt_tokens)
        && min > max
    {
        c.push(
            format!("{at}.max_prompt_tokens"),
            format!("{max} is less than min_prompt_tokens {min}"),
        );
    }
    if let Some(pattern) = &when.regex
        && let Err(e) = compile_rule_regex(pattern)
    {
        c.push(format!("{at}.regex"), e.to_string());
    }
    for (k, word) in when.keywords.iter().enumerate() {
        if word.trim().is_empty() {
            c.push(format!("{at}.keywords[{k}]"), "must not be empty");
        }
    }
    for name in when.headers.keys() {
        let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
        if name.is_empty() || !name.bytes().all(token) {
            c.push(format!("{at}.headers.{name}"), "not a valid header name");
        }
    }
}

/// A content rule's regular expression, compiled the one way both planes do it: bounded in
/// size, case-sensitive unless it says `(?i)`.
pub fn compile_rule_regex(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(pattern)
        .size_limit(MAX_REGEX_BYTES)
        .build()
}

#[cfg(test)]
mod tests {
    use crate::snapshot::Snapshot;

    const BASE: &str = r#"
tenants: [{ id: t }]
virtual_keys: [{ id: k, tenant_id: t, key_hash: "1111111111111111111111111111111111111111111111111111111111111111", allowed_models: [auto] }]
providers: [{ id: p, kind: mock }]
deployments:
  - { id: d1, model: big, provider: p, upstream_model: u }
  - { id: d2, model: small, provider: p, upstream_model: u, transforms: { drop: [seed] } }
models:
  - model: auto
    transforms: { max_tokens: 100, defaults: { temperature: 0.2 } }
    rules:
      - { when: { images: true, regex: "(?i)code", headers: { x-team: "*" } }, model: big }
      - { model: small }
"#;

    fn paths(yaml: &str) -> Vec<String> {
        match Snapshot::from_yaml(yaml).unwrap().validate() {
            Ok(()) => Vec::new(),
            Err(p) => p.0.into_iter().map(|p| p.path).collect(),
        }
    }

    #[test]
    fn an_alias_with_rules_and_transforms_passes() {
        assert_eq!(paths(BASE), Vec::<String>::new());
    }

    /// Each edit breaks one rule; the problem is reported at exactly its path.
    #[test]
    fn each_bad_shaping_is_reported_at_its_path() {
        let cases: &[(&str, &str, &str)] = &[
            (
                "max_tokens: 100",
                "max_tokens: 0",
                "models[0].transforms.max_tokens",
            ),
            (
                "drop: [seed]",
                "drop: [model]",
                "deployments[1].transforms.drop[0]",
            ),
            (
                "temperature: 0.2",
                "n: 1.5",
                "models[0].transforms.defaults.n",
            ),
            (
                "max_tokens: 100,",
                "rename: { stream: s },",
                "models[0].transforms.rename.stream",
            ),
            ("model: big }", "model: ghost }", "models[0].rules[0].model"),
            ("model: big }", "model: auto }", "models[0].rules[0].model"),
            ("(?i)code", "(unclosed", "models[0].rules[0].when.regex"),
            (
                "x-team",
                "\"bad header\"",
                "models[0].rules[0].when.headers.bad header",
            ),
            (
                "images: true,",
                "min_prompt_tokens: 9, max_prompt_tokens: 1,",
                "models[0].rules[0].when.max_prompt_tokens",
            ),
            (
                "{ model: small }",
                "{ when: { tools: true }, model: small }",
                "models[0].rules[1].when",
            ),
            (
                "{ model: small }",
                "{ model: small }\n  - { model: big, rules: [{ model: small }] }",
                "models[0].rules[0].model",
            ),
        ];
        for (from, to, path) in cases {
            let yaml = BASE.replacen(from, to, 1);
            assert_ne!(yaml, BASE, "case {path}: edit {from:?} did not apply");
            let found = paths(&yaml);
            assert!(
                found.iter().any(|p| p == path),
                "case {path}: got {found:#?}"
            );
        }
    }
}
