//! Request shaping an operator declares in the snapshot: **transforms** (edits to the body a
//! deployment receives) and **content rules** (which model a request for an alias goes to).
//!
//! Both exist so that platform teams can adapt traffic without touching clients: cap
//! `max_tokens`, set sampling defaults, strip or rename a field a provider rejects, strip
//! `cache_control` where it is unsupported; send requests with images to a vision model, long
//! prompts to a long-context model, code questions to a code model. The types live here (the
//! schema both planes share); [`Transforms::apply`] is here too so that what a transform does
//! is defined once, next to its declaration. The data plane compiles content rules
//! (`dataplane/src/rules.rs`) and applies transforms after routing, per attempt.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Body fields the gateway itself reads to route and splice; transforms may not drop, rename
/// or default them.
pub const RESERVED_FIELDS: &[&str] = &["model", "stream", "stream_options"];

/// The body fields a transform's `max_tokens` caps (whichever the request uses).
pub const MAX_TOKENS_FIELDS: &[&str] =
    &["max_tokens", "max_completion_tokens", "max_output_tokens"];

/// Edits made to a request's body before it is sent to a deployment, declared on a model
/// policy (every deployment of the model) or on one deployment (applied after the policy's).
/// Fields are top-level body fields, in the client's request shape.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transforms {
    /// Lowers `max_tokens` (or `max_completion_tokens`, `max_output_tokens`) to this when the
    /// request asks for more; a request that sets none is left alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u64>,
    /// Fields set when the request does not set them, e.g. `{temperature: 0.2}`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub defaults: BTreeMap<String, Value>,
    /// Fields removed, e.g. `[logit_bias, seed]` for a provider that rejects them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drop: Vec<String>,
    /// Fields renamed, old name to new, e.g. `{max_tokens: max_completion_tokens}`. A field the
    /// request already has under the new name is replaced.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rename: BTreeMap<String, String>,
    /// Removes every `cache_control` object, at any depth (prompt-caching hints that some
    /// Anthropic-compatible upstreams refuse).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub strip_cache_control: bool,
}

impl Transforms {
    /// Whether applying these changes nothing.
    pub fn is_empty(&self) -> bool {
        // Field by field (a new field must be added here to compile), not against a default
        // value: building and dropping one cost 200 instructions, twice a request.
        let Transforms {
            max_tokens,
            defaults,
            drop,
            rename,
            strip_cache_control,
        } = self;
        max_tokens.is_none()
            && defaults.is_empty()
            && drop.is_empty()
            && rename.is_empty()
            && !strip_cache_control
    }

    /// The names of the transforms set, in the order they are applied (for the explain header).
    pub fn names(&self) -> Vec<&'static str> {
        let all = [
            ("rename", !self.rename.is_empty()),
            ("drop", !self.drop.is_empty()),
            ("defaults", !self.defaults.is_empty()),
            ("max_tokens", self.max_tokens.is_some()),
            ("strip_cache_control", self.strip_cache_control),
        ];
        all.into_iter()
            .filter_map(|(name, set)| set.then_some(name))
            .collect()
    }

    /// Edits `body` (a request's top-level object): rename, drop, defaults, the `max_tokens`
    /// cap, then `cache_control` stripping.
    pub fn apply(&self, body: &mut Map<String, Value>) {
        for (from, to) in &self.rename {
            if let Some(value) = body.remove(from) {
                body.insert(to.clone(), value);
            }
        }
        for field in &self.drop {
            body.remove(field);
        }
        for (field, value) in &self.defaults {
            if !body.contains_key(field) || body[field].is_null() {
                body.insert(field.clone(), value.clone());
            }
        }
        if let Some(cap) = self.max_tokens {
            for field in MAX_TOKENS_FIELDS {
                if let Some(asked) = body.get_mut(*field)
                    && asked.as_u64().is_some_and(|n| n > cap)
                {
                    *asked = Value::from(cap);
                }
            }
        }
        if self.strip_cache_control {
            for value in body.values_mut() {
                strip_cache_control(value);
            }
            body.remove("cache_control");
        }
    }
}

/// Removes `cache_control` from every object inside `value`.
fn strip_cache_control(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.remove("cache_control");
            map.values_mut().for_each(strip_cache_control);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_cache_control),
        _ => {}
    }
}

/// One content rule of a model alias: when every condition of `when` holds, the request goes
/// to `model`. A policy's rules are tried in order; the first match wins.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentRule {
    /// The conditions, all of which must hold; none means every request matches.
    #[serde(default)]
    pub when: RuleMatch,
    /// The public model (or group) that serves a matching request.
    pub model: String,
}

/// The conditions of a [`ContentRule`]. Absent conditions are not checked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleMatch {
    /// Whether the request carries an image (`true`) or carries none (`false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<bool>,
    /// Whether the request offers tools (`tools` or `functions`), or offers none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<bool>,
    /// The estimated prompt (about four bytes a token) is at least this many tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_prompt_tokens: Option<u64>,
    /// The estimated prompt is at most this many tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prompt_tokens: Option<u64>,
    /// A regular expression (Rust `regex` syntax) found in the last user message's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Words of which at least one appears in the last user message's text, ignoring case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keywords: Vec<String>,
    /// Request headers (name to value, both ignoring ASCII case) that must all be present;
    /// the value `*` accepts any value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

impl RuleMatch {
    /// Whether the rule reads the last user message's text.
    pub fn reads_text(&self) -> bool {
        self.regex.is_some() || !self.keywords.is_empty()
    }

    /// The conditions set, by name (for the explain header).
    pub fn names(&self) -> Vec<&'static str> {
        let all = [
            ("images", self.images.is_some()),
            ("tools", self.tools.is_some()),
            ("min_prompt_tokens", self.min_prompt_tokens.is_some()),
            ("max_prompt_tokens", self.max_prompt_tokens.is_some()),
            ("regex", self.regex.is_some()),
            ("keywords", !self.keywords.is_empty()),
            ("headers", !self.headers.is_empty()),
        ];
        all.into_iter()
            .filter_map(|(name, set)| set.then_some(name))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn apply(t: &str, body: Value) -> Value {
        let t: Transforms = serde_yaml_ng::from_str(t).unwrap();
        let Value::Object(mut map) = body else {
            unreachable!()
        };
        t.apply(&mut map);
        Value::Object(map)
    }

    #[test]
    fn max_tokens_caps_only_larger_asks() {
        let t = "max_tokens: 100";
        let out = apply(t, json!({"max_tokens": 4000, "max_completion_tokens": 50}));
        assert_eq!(out, json!({"max_tokens": 100, "max_completion_tokens": 50}));
        assert_eq!(apply(t, json!({"model": "m"})), json!({"model": "m"}));
    }

    #[test]
    fn defaults_fill_absent_and_null_fields_only() {
        let t = "defaults: { temperature: 0.2, top_p: 0.9 }";
        let out = apply(t, json!({"temperature": 1.0, "top_p": null}));
        assert_eq!(out, json!({"temperature": 1.0, "top_p": 0.9}));
    }

    #[test]
    fn rename_then_drop() {
        let t = "rename: { max_tokens: max_completion_tokens }\ndrop: [seed]";
        let out = apply(t, json!({"max_tokens": 5, "seed": 1, "user": "u"}));
        assert_eq!(out, json!({"max_completion_tokens": 5, "user": "u"}));
    }

    #[test]
    fn strip_cache_control_at_any_depth() {
        let t = "strip_cache_control: true";
        let body = json!({
            "system": [{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
            "messages": [{"role": "user", "content": [
                {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}]
        });
        let out = apply(t, body);
        assert!(!out.to_string().contains("cache_control"), "{out}");
        assert_eq!(out["messages"][0]["content"][0]["text"], "hi");
    }

    #[test]
    fn names_list_what_is_set() {
        let t: Transforms = serde_yaml_ng::from_str("drop: [a]\nmax_tokens: 9").unwrap();
        assert_eq!(t.names(), ["drop", "max_tokens"]);
        assert!(Transforms::default().is_empty());
        for one in [
            "max_tokens: 9",
            "defaults: {temperature: 0.2}",
            "drop: [seed]",
            "rename: {a: b}",
            "strip_cache_control: true",
        ] {
            let t: Transforms = serde_yaml_ng::from_str(one).unwrap();
            assert!(!t.is_empty(), "{one}");
        }
    }
}
