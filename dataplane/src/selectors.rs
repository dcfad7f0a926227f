//! Selectors: what narrows a model's deployments before the strategy orders them.
//!
//! - **Tags.** A model name `tag:a,b` means every deployment, of any model the key may use,
//!   that carries all of the tags; the `x-switchboard-tags: a,b` header narrows an ordinary
//!   model's deployments the same way.
//! - **Capabilities.** A request with images needs a deployment whose price entry does not say
//!   `supports_vision: false`; one with `tools`/`functions` needs `supports_function_calling`
//!   not false; a prompt larger than a deployment's `max_input_tokens` skips it. Unknown
//!   means capable: the price entry is a hint, not a whitelist.
//! - **Session affinity.** `x-session-id` keeps a conversation on the deployment it last used
//!   while that deployment's breaker is closed, so a provider-side prompt cache stays warm.
//!   The memory is a small direct-mapped table of atomics per model (bounded, lock-free,
//!   entries expire after [`SESSION_TTL_SECONDS`]; a colliding session evicts the older one).
//!
//! Model groups (a policy with `members`) need nothing here: the catalog builds them as
//! models whose deployments are their members'.

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use http::HeaderMap;
use switchboard_shared::snapshot::VirtualKey;

use std::sync::Arc;

use crate::catalog::{Catalog, DeploymentEntry, ModelEntry};
use crate::error::ApiError;
use crate::request::RequestView;

/// Prefix of model names that select deployments by tag.
pub const TAG_PREFIX: &str = "tag:";
/// Request header naming tags that narrow the model's deployments.
pub const TAGS_HEADER: &str = "x-switchboard-tags";
/// Request header that keeps a conversation on one deployment.
pub const SESSION_HEADER: &str = "x-session-id";
/// How long a session remembers its deployment after its last request.
pub const SESSION_TTL_SECONDS: u32 = 1800;
/// Slots of the affinity table of each model.
const AFFINITY_SLOTS: usize = 4096;

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
}

impl Exclusion {
    pub fn as_str(self) -> &'static str {
        match self {
            Exclusion::Tags => "tags",
            Exclusion::NotAllowed => "not_allowed",
            Exclusion::Vision => "no_vision",
            Exclusion::Tools => "no_tools",
            Exclusion::ContextWindow => "context_window",
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
}

impl Selection {
    /// Whether `d` may serve this request, or why not.
    pub fn check(&self, d: &DeploymentEntry, key: &VirtualKey) -> Result<(), Exclusion> {
        if self.per_deployment_access && !key.allows_model(&d.model) {
            return Err(Exclusion::NotAllowed);
        }
        if !self
            .tags
            .iter()
            .all(|t| d.tags.iter().any(|have| have == t))
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

    /// Whether nothing narrows: every deployment passes [`Selection::check`].
    pub fn is_open(&self) -> bool {
        !self.per_deployment_access
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
    key: &VirtualKey,
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
            .model(&format!("{TAG_PREFIX}{first}"))
            .ok_or_else(|| ApiError::ModelNotFound {
                model: view.model.clone(),
            })?;
        selection.per_deployment_access = !key.allowed_models.is_empty();
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
        model
    };
    selection.tags.extend(header_tags(headers));
    Ok((model, selection))
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

/// Session → deployment, bounded and lock-free: each slot packs 24 bits of the session hash,
/// the deployment's index + 1 (8 bits) and the expiry in Unix seconds (32 bits).
#[derive(Debug)]
pub struct SessionAffinity {
    slots: Box<[AtomicU64]>,
}

impl Default for SessionAffinity {
    fn default() -> Self {
        Self::new()
    }
}

impl SessionAffinity {
    pub fn new() -> Self {
        Self {
            slots: (0..AFFINITY_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn slot(&self, session: u64) -> (&AtomicU64, u64) {
        let index = (session as usize) % self.slots.len();
        let tag = (session >> 40) & 0xFF_FFFF;
        (&self.slots[index], tag)
    }

    /// The deployment index this session last used, if remembered and not expired.
    pub fn get(&self, session: u64, now_s: u32) -> Option<usize> {
        let (slot, tag) = self.slot(session);
        let v = slot.load(Ordering::Relaxed);
        let (stored_tag, index, expires) = (v >> 40, (v >> 32) & 0xFF, v as u32);
        (v != 0 && stored_tag == tag && index != 0 && now_s < expires).then(|| index as usize - 1)
    }

    /// Remembers that this session used deployment `index`.
    pub fn set(&self, session: u64, index: usize, now_s: u32) {
        if index >= 0xFF {
            return;
        }
        let (slot, tag) = self.slot(session);
        let expires = u64::from(now_s.saturating_add(SESSION_TTL_SECONDS));
        slot.store(
            (tag << 40) | ((index as u64 + 1) << 32) | expires,
            Ordering::Relaxed,
        );
    }
}

/// Unix seconds, for session expiry.
pub fn unix_seconds(now_ms: u64) -> u32 {
    u32::try_from(now_ms / 1000).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_remembers_expires_and_tells_sessions_apart() {
        let a = SessionAffinity::new();
        let s1 = 0xABCD_EF01_2345_6789u64;
        assert_eq!(a.get(s1, 100), None);
        a.set(s1, 3, 100);
        assert_eq!(a.get(s1, 100), Some(3));
        assert_eq!(a.get(s1, 100 + SESSION_TTL_SECONDS), None, "expired");
        // Same slot, other session: not mistaken for s1, and it evicts s1.
        let s2 = s1 ^ (1 << 50);
        assert_eq!(a.get(s2, 100), None);
        a.set(s2, 1, 100);
        assert_eq!(a.get(s2, 100), Some(1));
        assert_eq!(a.get(s1, 100), None);
    }

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
    fn tags_parse_and_narrow() {
        assert_eq!(parse_tags(" a, b ,,c"), vec!["a", "b", "c"]);
        assert!(parse_tags("").is_empty());
    }
}
