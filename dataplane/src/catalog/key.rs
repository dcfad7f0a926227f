//! A virtual key as the catalog holds it: what the request path reads of a snapshot's
//! [`VirtualKey`], and no more, in as few bytes as that takes.
//!
//! A catalog holds one of these per key, and a deployment may have 100,000 keys, so the
//! snapshot's form (ten owned fields, several of them rarely set) is not kept: the tenant id is
//! the entry's tenant, the hash is the catalog map's key, metadata and the creation time are
//! never read by a request; id, name and display prefix share one allocation; the fields few
//! keys set (allowed models, a budget, a cache policy) live behind one optional box.

use chrono::{DateTime, Utc};
use switchboard_shared::snapshot::{Budget, KeyStatus, RateLimits, ResponseCache, VirtualKey};

/// A virtual key, compiled for lookups (see the module header).
#[derive(Debug)]
pub struct Key {
    /// `id`, then `name`, then `display_prefix`, in one string.
    text: Box<str>,
    /// Where `name` starts in `text`.
    name_at: usize,
    /// Where `display_prefix` starts in `text`.
    prefix_at: usize,
    pub status: KeyStatus,
    pub expires_at: Option<DateTime<Utc>>,
    pub limits: RateLimits,
    /// `None` when the key sets none of them.
    extras: Option<Box<Extras>>,
}

/// The key settings that most keys leave unset.
#[derive(Debug)]
struct Extras {
    allowed_models: Vec<String>,
    budget: Option<Budget>,
    cache: Option<ResponseCache>,
}

impl Key {
    pub fn new(k: &VirtualKey) -> Self {
        let text = [k.id.as_str(), &k.name, &k.display_prefix].concat();
        let extras = (!k.allowed_models.is_empty() || k.budget.is_some() || k.cache.is_some())
            .then(|| {
                Box::new(Extras {
                    allowed_models: k.allowed_models.clone(),
                    budget: k.budget.clone(),
                    cache: k.cache,
                })
            });
        Self {
            text: text.into_boxed_str(),
            name_at: k.id.len(),
            prefix_at: k.id.len() + k.name.len(),
            status: k.status,
            expires_at: k.expires_at,
            limits: k.limits,
            extras,
        }
    }

    pub fn id(&self) -> &str {
        self.text.get(..self.name_at).unwrap_or_default()
    }

    pub fn name(&self) -> &str {
        self.text
            .get(self.name_at..self.prefix_at)
            .unwrap_or_default()
    }

    /// The first characters of the secret, for people to recognise the key.
    pub fn display_prefix(&self) -> &str {
        self.text.get(self.prefix_at..).unwrap_or_default()
    }

    /// Public model names this key may use; empty means every model.
    pub fn allowed_models(&self) -> &[String] {
        self.extras
            .as_ref()
            .map_or(&[], |e| e.allowed_models.as_slice())
    }

    pub fn budget(&self) -> Option<&Budget> {
        self.extras.as_ref()?.budget.as_ref()
    }

    /// The key's own response cache policy, in place of each model's.
    pub fn cache(&self) -> Option<ResponseCache> {
        self.extras.as_ref()?.cache
    }

    /// Whether the key may call `model` (a public model name).
    pub fn allows_model(&self, model: &str) -> bool {
        let allowed = self.allowed_models();
        allowed.is_empty() || allowed.iter().any(|m| m == model)
    }

    /// Whether the key is usable at `now`: active and not expired.
    pub fn is_usable_at(&self, now: DateTime<Utc>) -> bool {
        self.status == KeyStatus::Active && self.expires_at.is_none_or(|at| now < at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(yaml: &str) -> VirtualKey {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn keeps_what_requests_read() {
        let k = key(
            "{ id: k1, tenant_id: t, name: Ann's key, key_hash: h, display_prefix: sk-ab, \
             allowed_models: [a, b], budget: { max_usd: 3 }, cache: { ttl_seconds: 9 }, \
             limits: { rpm: 5 }, expires_at: \"2030-01-01T00:00:00Z\", status: revoked }",
        );
        let compact = Key::new(&k);
        assert_eq!(compact.id(), "k1");
        assert_eq!(compact.name(), "Ann's key");
        assert_eq!(compact.display_prefix(), "sk-ab");
        assert_eq!(compact.allowed_models(), ["a", "b"]);
        assert!(compact.allows_model("b") && !compact.allows_model("c"));
        assert_eq!(compact.budget(), k.budget.as_ref());
        assert_eq!(compact.cache(), k.cache);
        assert_eq!(compact.limits, k.limits);
        assert_eq!(compact.expires_at, k.expires_at);
        assert_eq!(compact.status, KeyStatus::Revoked);
        assert!(!compact.is_usable_at(Utc::now()));
    }

    #[test]
    fn a_plain_key_has_no_extras_and_allows_every_model() {
        let compact = Key::new(&key("{ id: k2, tenant_id: t, key_hash: h }"));
        assert!(compact.extras.is_none());
        assert_eq!(
            (compact.id(), compact.name(), compact.display_prefix()),
            ("k2", "", "")
        );
        assert!(compact.allows_model("anything"));
        assert!(compact.budget().is_none() && compact.cache().is_none());
        assert!(compact.is_usable_at(Utc::now()));
    }

    #[test]
    fn an_entry_is_small() {
        // One size class of mimalloc's (128 bytes) holds the whole key entry with its `Arc`
        // counts: id, name and prefix in one allocation, rare fields behind one pointer.
        assert!(size_of::<Key>() <= 88, "{}", size_of::<Key>());
    }
}
