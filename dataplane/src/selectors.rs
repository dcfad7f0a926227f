//! Selectors: what narrows a model's deployments before the strategy orders them.
//!
//! - **Tags.** A model name `tag:a,b` means every deployment, of any model the key may use,
//!   that carries all of the tags; the `x-switchboard-tags: a,b` header narrows an ordinary
//!   model's deployments the same way. Tags compare without regard to ASCII case, and a
//!   model whose policy says `derive_tags` gives its deployments the words of their model
//!   names as tags too ([`crate::catalog::derived_tags`]). When no deployment of the model
//!   carries the tags asked for, those tagged `default` serve
//!   ([`Selection::default_tag_fallback`]).
//! - **Capabilities.** A request with images needs a deployment whose price entry does not say
//!   `supports_vision: false`; one with `tools`/`functions` needs `supports_function_calling`
//!   not false; a prompt larger than a deployment's `max_input_tokens` skips it. Unknown
//!   means capable: the price entry is a hint, not a whitelist.
//! - **Session affinity.** `x-session-id` keeps a conversation on the deployment it last used
//!   while that deployment's breaker is closed, so a provider-side prompt cache stays warm.
//!   Here the header becomes a session hash; the memory itself is runtime state of each
//!   model, kept in the catalog ([`crate::catalog::SessionAffinity`]).
//!
//! - **Content rules.** A model whose policy has `rules` hands a request to the model of the
//!   first rule it meets (images, tools, prompt size, text of the last user message, headers;
//!   [`crate::rules`]) before anything else narrows.
//! - **Fallbacks.** A model's fallbacks pass the same checks as the model asked for: the key's
//!   `allowed_models` ([`fallbacks`]), then the capabilities and tags per deployment.
//!
//! Model groups (a policy with `members`) need nothing here: the catalog builds them as
//! models whose deployments are their members'. This module reads the catalog; the catalog
//! never reads it.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use http::{HeaderMap, HeaderName};

use crate::catalog::{Catalog, DeploymentEntry, Key, ModelEntry};
use crate::error::ApiError;
use crate::request::RequestView;

// Session affinity's table is runtime state of a model, so it lives with the catalog (and
// `tag:` models are built there); the names stay reachable here, where requests use them.
pub use crate::catalog::{TAG_PREFIX, unix_seconds};

/// Request header naming tags that narrow the model's deployments (a `HeaderName`: a `&str`
/// would be parsed again on every lookup).
pub const TAGS_HEADER: HeaderName = HeaderName::from_static("x-switchboard-tags");
/// The tag of the deployments that serve a request whose tags no deployment carries.
pub const DEFAULT_TAG: &str = "default";
/// Request header that keeps a conversation on one deployment.
pub const SESSION_HEADER: HeaderName = HeaderName::from_static("x-session-id");

/// What a request needs from a deployment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Needs {
    pub vision: bool,
    pub tools: bool,
    pub prompt_tokens: u64,
}

/// Why a deployment was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exclusion {
    Tags,
    NotAllowed,
    Vision,
    Tools,
    ContextWindow,
    /// A passthrough names another provider kind.
    ProviderKind,
}

impl Exclusion {
    pub fn as_str(self) -> &'static str {
        match self {
            Exclusion::Tags => "tags",
            Exclusion::NotAllowed => "not_allowed",
            Exclusion::Vision => "no_vision",
            Exclusion::Tools => "no_tools",
            Exclusion::ContextWindow => "context_window",
            Exclusion::ProviderKind => "provider_kind",
        }
    }

    /// The client's message when this left no deployment at all.
    pub fn message(self, model: &str) -> String {
        match self {
            Exclusion::Tags => format!("no deployment of `{model}` has the requested tags"),
            Exclusion::NotAllowed => {
                format!("this API key may not use any deployment of `{model}`")
            }
            Exclusion::Vision => format!("no deployment of `{model}` accepts images"),
            Exclusion::Tools => format!("no deployment of `{model}` supports tools"),
            Exclusion::ContextWindow => {
                format!("the prompt is longer than any deployment of `{model}` accepts")
            }
            Exclusion::ProviderKind => {
                format!(
                    "no deployment of `{model}` is on a provider of the kind this request needs \
                     (the passthrough's kind; `openai` for images and audio)"
                )
            }
        }
    }
}

/// The narrowing a request asks for.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub needs: Needs,
    /// Every one of these tags must be on the deployment.
    pub tags: Vec<String>,
    /// Check the key's `allowed_models` per deployment (for `tag:` names, which cross models).
    pub per_deployment_access: bool,
    /// Hash of `x-session-id`.
    pub session: Option<u64>,
    /// Only deployments on a provider of this kind (a metered passthrough).
    pub provider_kind: Option<switchboard_shared::snapshot::ProviderKind>,
    /// The content rule that chose the model, as the explain header shows it:
    /// `auto: rules[0](images) -> vision`.
    pub rule: Option<String>,
}

impl Selection {
    /// Whether `d` may serve this request, or why not.
    pub fn check(&self, d: &DeploymentEntry, key: &Key) -> Result<(), Exclusion> {
        if self.per_deployment_access && !key.allows_model(&d.model) {
            return Err(Exclusion::NotAllowed);
        }
        if self
            .provider_kind
            .is_some_and(|kind| kind != d.provider_kind)
        {
            return Err(Exclusion::ProviderKind);
        }
        if !self
            .tags
            .iter()
            .all(|t| d.all_tags().any(|have| have.eq_ignore_ascii_case(t)))
        {
            return Err(Exclusion::Tags);
        }
        if let Some(price) = &d.price {
            if self.needs.vision && price.supports_vision == Some(false) {
                return Err(Exclusion::Vision);
            }
            if self.needs.tools && price.supports_function_calling == Some(false) {
                return Err(Exclusion::Tools);
            }
            if price
                .max_input_tokens
                .is_some_and(|max| self.needs.prompt_tokens > max)
            {
                return Err(Exclusion::ContextWindow);
            }
        }
        Ok(())
    }

    /// The selection to retry with when no deployment carries the tags asked for: the same,
    /// with the one tag `default` instead. `None` when no tags were asked for or `default`
    /// already was.
    pub fn default_tag_fallback(&self) -> Option<Selection> {
        if self.tags.is_empty()
            || self
                .tags
                .iter()
                .any(|t| t.eq_ignore_ascii_case(DEFAULT_TAG))
        {
            return None;
        }
        Some(Selection {
            tags: vec![DEFAULT_TAG.to_owned()],
            ..self.clone()
        })
    }

    /// Whether nothing narrows: every deployment passes [`Selection::check`].
    pub fn is_open(&self) -> bool {
        !self.per_deployment_access
            && self.provider_kind.is_none()
            && self.tags.is_empty()
            && !self.needs.vision
            && !self.needs.tools
    }
}

/// The model a request names (an ordinary model, a group, or `tag:a,b`) and the narrowing it
/// asks for. Errors are the client's: unknown model (404), a model the key may not use (403),
/// an empty tag list (400).
pub fn resolve<'c>(
    catalog: &'c Catalog,
    key: &Key,
    view: &RequestView,
    headers: &HeaderMap,
) -> Result<(&'c Arc<ModelEntry>, Selection), ApiError> {
    let mut selection = Selection {
        needs: Needs {
            vision: view.has_images,
            tools: view.uses_tools,
            prompt_tokens: view.estimated_prompt_tokens(),
        },
        session: session_of(headers),
        ..Selection::default()
    };
    let model = if let Some(list) = view.model.strip_prefix(TAG_PREFIX) {
        selection.tags = parse_tags(list);
        let Some(first) = selection.tags.first() else {
            return Err(ApiError::bad_request(
                "`tag:` needs at least one tag, e.g. `tag:fast,eu`",
                Some("model"),
            ));
        };
        let model = catalog
            .model(&format!("{TAG_PREFIX}{}", first.to_ascii_lowercase()))
            .ok_or_else(|| ApiError::ModelNotFound {
                model: view.model.clone(),
            })?;
        selection.per_deployment_access = !key.allowed_models().is_empty();
        model
    } else {
        let model = catalog
            .model(&view.model)
            .ok_or_else(|| ApiError::ModelNotFound {
                model: view.model.clone(),
            })?;
        if !key.allows_model(&model.name) {
            return Err(ApiError::ModelNotAllowed {
                model: model.name.clone(),
            });
        }
        apply_rules(catalog, model, view, headers, &mut selection)?
    };
    selection.tags.extend(header_tags(headers));
    Ok((model, selection))
}

/// The model that serves a request for `model`: the target of the first content rule the
/// request meets (noted in `selection.rule`), else `model` itself. The key's access was
/// checked on the name it asked for; a rule's target is the operator's choice.
fn apply_rules<'c>(
    catalog: &'c Catalog,
    model: &'c Arc<ModelEntry>,
    view: &RequestView,
    headers: &HeaderMap,
    selection: &mut Selection,
) -> Result<&'c Arc<ModelEntry>, ApiError> {
    let Some(rules) = &model.rules else {
        return Ok(model);
    };
    let Some(matched) = rules.pick(view, headers) else {
        return Ok(model);
    };
    let target = catalog
        .model(matched.target)
        .ok_or_else(|| ApiError::ModelNotFound {
            model: matched.target.to_owned(),
        })?;
    selection.rule = Some(format!(
        "{}: rules[{}]({}) -> {}",
        model.name,
        matched.index,
        rules.conditions(matched.index).join("+"),
        target.name
    ));
    Ok(target)
}

/// The fallbacks of `model` that may serve a request of `key`, in order: those that exist and
/// that the key's `allowed_models` admits. A fallback is a model like any other: the key's
/// access is checked here, the selection (capabilities, tags) per deployment as for the model
/// asked for ([`Selection::check`]), and the budget reservation is priced over all of them.
pub fn fallbacks<'a>(
    catalog: &'a Catalog,
    key: &'a Key,
    model: &'a ModelEntry,
) -> impl Iterator<Item = &'a Arc<ModelEntry>> + 'a {
    model
        .policy
        .fallbacks
        .iter()
        .filter_map(|name| catalog.model(name))
        .filter(|fallback| key.allows_model(&fallback.name))
}

/// Splits `a,b` into tags (trimmed, empties dropped).
pub fn parse_tags(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The tags of the tags header, if any.
pub fn header_tags(headers: &HeaderMap) -> Vec<String> {
    headers
        .get(TAGS_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(parse_tags)
        .unwrap_or_default()
}

/// A hash of the session header, if present and non-empty.
pub fn session_of(headers: &HeaderMap) -> Option<u64> {
    let value = headers.get(SESSION_HEADER)?.as_bytes();
    if value.is_empty() {
        return None;
    }
    // One hasher state for the process: a session must hash alike on every request.
    let mut h = FIXED.build_hasher();
    h.write(value);
    Some(h.finish())
}

/// One hasher state for the process's lifetime.
static FIXED: std::sync::LazyLock<std::hash::RandomState> =
    std::sync::LazyLock::new(std::hash::RandomState::new);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_hashes_are_stable_within_the_process() {
        let mut h = HeaderMap::new();
        assert_eq!(session_of(&h), None);
        h.insert(SESSION_HEADER, "conv-1".parse().unwrap());
        let first = session_of(&h);
        assert!(first.is_some());
        assert_eq!(session_of(&h), first);
        h.insert(SESSION_HEADER, "conv-2".parse().unwrap());
        assert_ne!(session_of(&h), first);
    }

    #[test]
    fn tags_ignore_case_and_fall_back_to_default() {
        crate::install_crypto_provider();
        let yaml = "providers: [{ id: p, kind: mock }]\ndeployments:\n  - { id: d0, model: m, provider: p, upstream_model: u, tags: [Fast, EU] }\n  - { id: d1, model: m, provider: p, upstream_model: u, tags: [default] }\nmodels: [{ model: m }]\ntenants: [{ id: t }]\nvirtual_keys: [{ id: k, tenant_id: t, key_hash: \"{}\" }]\n";
        let yaml = yaml.replace("{}", &"ab".repeat(32));
        let snapshot = switchboard_shared::snapshot::Snapshot::from_yaml(&yaml).unwrap();
        let c = crate::catalog::build_for_test(&snapshot, &|_| None).unwrap();
        let m = c.model("m").unwrap();
        let key = Key::new(&snapshot.virtual_keys[0]);
        let asked = Selection {
            tags: vec!["fast".into(), "eu".into()],
            ..Selection::default()
        };
        assert_eq!(asked.check(&m.deployments[0], &key), Ok(()), "case ignored");
        let other = Selection {
            tags: vec!["gpu".into()],
            ..Selection::default()
        };
        assert_eq!(other.check(&m.deployments[0], &key), Err(Exclusion::Tags));
        let fallback = other.default_tag_fallback().unwrap();
        assert_eq!(fallback.check(&m.deployments[1], &key), Ok(()));
        assert_eq!(
            fallback.check(&m.deployments[0], &key),
            Err(Exclusion::Tags)
        );
        assert!(Selection::default().default_tag_fallback().is_none());
        assert!(fallback.default_tag_fallback().is_none(), "no loop");
    }

    #[test]
    fn tags_parse_and_narrow() {
        assert_eq!(parse_tags(" a, b ,,c"), vec!["a", "b", "c"]);
        assert!(parse_tags("").is_empty());
    }
}
