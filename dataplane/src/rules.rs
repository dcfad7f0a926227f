//! Content rules: which model serves a request for a name whose policy has `rules`.
//!
//! Routex-style declarative routing on what a request contains: images, tools, the estimated
//! prompt size, a regular expression or keywords in the last user message, request headers.
//! The catalog compiles each policy's rules once ([`ContentRules::compile`]: regexes built,
//! keywords lower-cased, header names parsed); [`crate::selectors::resolve`] asks
//! [`ContentRules::pick`] for the first rule a request meets and serves the request from that
//! rule's model. Everything a rule reads comes from the one parse of the body
//! ([`RequestView`]); the last user message's text is read from the `messages` span that parse
//! found, only when a rule has a regex or keywords, and only once per request.

use http::{HeaderMap, HeaderName};
use switchboard_shared::snapshot::{ContentRule, RuleMatch};
use switchboard_shared::validate::compile_rule_regex;

use crate::request::RequestView;

/// A policy's rules, ready to match.
#[derive(Debug)]
pub struct ContentRules {
    rules: Vec<Compiled>,
    /// Whether any rule reads the last user message's text.
    reads_text: bool,
}

#[derive(Debug)]
struct Compiled {
    when: RuleMatch,
    regex: Option<regex::Regex>,
    keywords: Vec<String>,
    headers: Vec<(HeaderName, String)>,
    target: String,
}

/// The rule a request met: its position, its model, and which conditions it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched<'a> {
    pub index: usize,
    pub target: &'a str,
}

impl ContentRules {
    /// `None` for a policy without rules. A regex that does not compile (validation refuses
    /// one, so only a snapshot that skipped it) makes its rule never match.
    pub fn compile(rules: &[ContentRule]) -> Option<Self> {
        if rules.is_empty() {
            return None;
        }
        let rules: Vec<Compiled> = rules
            .iter()
            .map(|r| Compiled {
                regex: r
                    .when
                    .regex
                    .as_deref()
                    .map(|p| compile_rule_regex(p).unwrap_or_else(|_| never())),
                keywords: r.when.keywords.iter().map(|k| k.to_lowercase()).collect(),
                headers: r
                    .when
                    .headers
                    .iter()
                    .filter_map(|(name, value)| {
                        let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
                        Some((name, value.clone()))
                    })
                    .collect(),
                when: r.when.clone(),
                target: r.model.clone(),
            })
            .collect();
        let reads_text = rules.iter().any(|r| r.when.reads_text());
        Some(Self { rules, reads_text })
    }

    /// The first rule `view` and `headers` meet, if any.
    pub fn pick(&self, view: &RequestView, headers: &HeaderMap) -> Option<Matched<'_>> {
        let text = self
            .reads_text
            .then(|| view.last_user_text().unwrap_or_default());
        let facts = Facts {
            view,
            headers,
            text: text.as_deref().unwrap_or(""),
            lower: text.as_deref().map(str::to_lowercase).unwrap_or_default(),
        };
        self.rules
            .iter()
            .position(|r| r.meets(&facts))
            .map(|index| Matched {
                index,
                target: &self.rules[index].target,
            })
    }

    /// The condition names of rule `index`, for the explain header.
    pub fn conditions(&self, index: usize) -> Vec<&'static str> {
        self.rules
            .get(index)
            .map(|r| r.when.names())
            .unwrap_or_default()
    }
}

/// What the conditions read from one request.
struct Facts<'a> {
    view: &'a RequestView,
    headers: &'a HeaderMap,
    /// The last user message's text (empty when no rule reads it, or there is none).
    text: &'a str,
    lower: String,
}

impl Compiled {
    fn meets(&self, f: &Facts<'_>) -> bool {
        let w = &self.when;
        let tokens = f.view.estimated_prompt_tokens();
        w.images.is_none_or(|want| want == f.view.has_images)
            && w.tools.is_none_or(|want| want == f.view.uses_tools)
            && w.min_prompt_tokens.is_none_or(|min| tokens >= min)
            && w.max_prompt_tokens.is_none_or(|max| tokens <= max)
            && self.regex.as_ref().is_none_or(|re| re.is_match(f.text))
            && (self.keywords.is_empty() || self.keywords.iter().any(|k| has_word(&f.lower, k)))
            && self.headers.iter().all(|(name, want)| {
                f.headers.get(name).is_some_and(|have| {
                    want == "*" || have.as_bytes().eq_ignore_ascii_case(want.as_bytes())
                })
            })
    }
}

/// Whether `word` occurs in `text` as a whole word (not inside a longer one).
fn has_word(text: &str, word: &str) -> bool {
    let inner = |c: Option<char>| c.is_some_and(char::is_alphanumeric);
    text.match_indices(word).any(|(at, _)| {
        !inner(text[..at].chars().next_back()) && !inner(text[at + word.len()..].chars().next())
    })
}

/// A regex that matches nothing.
fn never() -> regex::Regex {
    // `[^\s\S]` is a class with no member; it always compiles.
    regex::Regex::new(r"[^\s\S]").unwrap_or_else(|_| unreachable!())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn rules(yaml: &str) -> ContentRules {
        let rules: Vec<ContentRule> = serde_yaml_ng::from_str(yaml).unwrap();
        ContentRules::compile(&rules).unwrap()
    }

    fn pick(
        rules: &ContentRules,
        body: serde_json::Value,
        headers: &[(&str, &str)],
    ) -> Option<usize> {
        let view = RequestView::parse(Bytes::from(body.to_string())).unwrap();
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        rules.pick(&view, &map).map(|m| m.index)
    }

    fn chat(text: &str) -> serde_json::Value {
        serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": text}]})
    }

    #[test]
    fn images_pick_the_vision_rule() {
        let r = rules("[{ when: { images: true }, model: v }, { model: d }]");
        let image = serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]});
        assert_eq!(pick(&r, image, &[]), Some(0));
        assert_eq!(pick(&r, chat("hi"), &[]), Some(1));
    }

    #[test]
    fn tools_present_or_absent() {
        let r =
            rules("[{ when: { tools: true }, model: t }, { when: { tools: false }, model: n }]");
        let mut with_tools = chat("hi");
        with_tools["tools"] = serde_json::json!([{"type": "function", "function": {"name": "f"}}]);
        assert_eq!(pick(&r, with_tools, &[]), Some(0));
        assert_eq!(pick(&r, chat("hi"), &[]), Some(1));
    }

    #[test]
    fn prompt_size_bounds() {
        let r = rules(
            "[{ when: { min_prompt_tokens: 500 }, model: long }, { when: { max_prompt_tokens: 100 }, model: short }]",
        );
        assert_eq!(pick(&r, chat(&"word ".repeat(500)), &[]), Some(0));
        assert_eq!(pick(&r, chat("hi"), &[]), Some(1));
        assert_eq!(pick(&r, chat(&"word ".repeat(150)), &[]), None);
    }

    #[test]
    fn regex_reads_the_last_user_message_only() {
        let r = rules(r#"[{ when: { regex: "(?i)\\bfn\\s+\\w+\\(" }, model: code }]"#);
        assert_eq!(pick(&r, chat("why does FN main() fail?"), &[]), Some(0));
        let earlier = serde_json::json!({"model": "auto", "messages": [
            {"role": "user", "content": "fn main() {}"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "thanks"}]});
        assert_eq!(pick(&r, earlier, &[]), None);
    }

    #[test]
    fn keywords_match_whole_words_ignoring_case() {
        let r = rules("[{ when: { keywords: [rust, Python] }, model: code }]");
        assert_eq!(pick(&r, chat("A PYTHON question"), &[]), Some(0));
        assert_eq!(pick(&r, chat("trusty old car"), &[]), None);
        let parts = serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": [
            {"type": "text", "text": "help with rust"}]}]});
        assert_eq!(pick(&r, parts, &[]), Some(0));
    }

    #[test]
    fn headers_must_all_be_present() {
        let r = rules(r#"[{ when: { headers: { x-team: Search, x-tier: "*" } }, model: s }]"#);
        assert_eq!(
            pick(&r, chat("hi"), &[("x-team", "search"), ("x-tier", "gold")]),
            Some(0)
        );
        assert_eq!(pick(&r, chat("hi"), &[("x-team", "search")]), None);
        assert_eq!(
            pick(&r, chat("hi"), &[("x-team", "ads"), ("x-tier", "1")]),
            None
        );
    }

    #[test]
    fn first_match_wins_and_conditions_combine() {
        let r = rules(
            "[{ when: { images: true, keywords: [diagram] }, model: a }, { when: { keywords: [diagram] }, model: b }]",
        );
        assert_eq!(pick(&r, chat("draw a diagram"), &[]), Some(1));
        assert_eq!(r.conditions(0), ["images", "keywords"]);
    }
}
