//! Applying a config delta (`shared::config_delta`) to the catalog served, without a rebuild.
//!
//! A delta changes keys only, so the next catalog is this one with those keys replaced:
//! the two key maps are copied (one reference count per key: a few milliseconds at 100,000
//! keys, against most of a second to parse and compile the whole snapshot), the changed keys'
//! entries are dropped, and the delta's keys compiled into them by the same [`build_keys`] as a
//! full build, their counters carried over (a key whose limits did not change keeps its
//! counters, exactly as a full install). Tenants, providers, deployments and models are the same
//! `Arc`s as before, so their counters, health, round-robin position and affinity tables go on
//! untouched. The checks a full build gets from validation and that the keys' compilation
//! would otherwise skip silently are made here: the tenant exists, the hashes are well formed
//! and belong to no other key.

use std::collections::HashSet;

use switchboard_shared::config_delta::ConfigDelta;
use switchboard_shared::keys::parse_key_hash;
use switchboard_shared::validate::{Problem, Problems};

use super::{Carryover, Catalog, HeaderValue, Scope, build_keys};

impl Catalog {
    /// The catalog `delta` makes of this one, at `revision`; `content_hash` names what the
    /// catalog now holds (the delta's hash). `Err` lists every problem; nothing changes then.
    pub fn apply_delta(
        &self,
        delta: &ConfigDelta,
        revision: u64,
        content_hash: String,
    ) -> Result<Catalog, Problems> {
        let mut problems = self.delta_problems(delta);
        let changed: HashSet<&str> = delta
            .virtual_keys
            .iter()
            .map(|k| k.id.as_str())
            .chain(delta.removed_virtual_keys.iter().map(String::as_str))
            .collect();
        let mut keys = self.keys.clone();
        let mut previous_keys = self.previous_keys.clone();
        let mut carry = Carryover::default();
        for (hash, entry) in &self.keys {
            if changed.contains(entry.key.id()) {
                keys.remove(hash);
                // Keys without per-minute limits share one untouched state: nothing to carry.
                if !entry.key.limits.is_unlimited() {
                    carry.limits.insert(
                        (Scope::Key, entry.key.id()),
                        (entry.key.limits, &entry.limit_state),
                    );
                }
            }
        }
        previous_keys.retain(|_, (entry, _)| !changed.contains(entry.key.id()));
        let (new_keys, new_previous) = build_keys(&delta.virtual_keys, &self.tenants, &carry);
        for (hash, entry) in new_keys {
            if keys.contains_key(&hash) || previous_keys.contains_key(&hash) {
                problems.push(same_hash(entry.key.id()));
            }
            keys.insert(hash, entry);
        }
        for (hash, (entry, until)) in new_previous {
            if keys.contains_key(&hash) || previous_keys.contains_key(&hash) {
                problems.push(same_hash(entry.key.id()));
            }
            previous_keys.insert(hash, (entry, until));
        }
        if !problems.is_empty() {
            return Err(Problems(problems));
        }
        Ok(Catalog {
            revision,
            price_version: self.price_version,
            content_hash,
            revision_header: HeaderValue::from(revision),
            keys,
            previous_keys,
            models: self.models.clone(),
            model_names: self.model_names.clone(),
            tenants: self.tenants.clone(),
            all_deployments: self.all_deployments.clone(),
        })
    }

    /// What validation would say of the delta's keys against this catalog's tenants.
    fn delta_problems(&self, delta: &ConfigDelta) -> Vec<Problem> {
        let mut problems = Vec::new();
        let mut push = |path: String, message: String| problems.push(Problem { path, message });
        let mut ids = HashSet::new();
        for (i, k) in delta.virtual_keys.iter().enumerate() {
            let path = format!("virtual_keys[{i}]");
            if !ids.insert(k.id.as_str()) {
                push(format!("{path}.id"), format!("{:?} appears twice", k.id));
            }
            if !self.tenants.contains_key(&k.tenant_id) {
                push(
                    format!("{path}.tenant_id"),
                    format!("unknown tenant {:?}", k.tenant_id),
                );
            }
            let previous = k.previous_secret.as_ref().map(|p| p.key_hash.as_str());
            for hash in std::iter::once(k.key_hash.as_str()).chain(previous) {
                if parse_key_hash(hash).is_none() {
                    push(
                        format!("{path}.key_hash"),
                        "must be 64 hex digits (HMAC-SHA-256 of the key under the pepper)".into(),
                    );
                }
            }
        }
        problems
    }
}

fn same_hash(id: &str) -> Problem {
    Problem {
        path: format!("virtual_keys[{id}].key_hash"),
        message: "same hash as another key: one secret, two keys".into(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use switchboard_shared::keys::hash_key_hex;
    use switchboard_shared::snapshot::{KeyStatus, Snapshot, VirtualKey};

    use crate::accounting::LogSink;
    use crate::config::ServerConfig;
    use crate::state::AppState;

    fn state_with(keys: usize) -> Arc<AppState> {
        let server: ServerConfig = serde_yaml_ng::from_str("key_pepper: { value: \"p\" }").unwrap();
        let state = crate::server::build_state(&server, None, Arc::new(LogSink)).unwrap();
        let mut text = String::from(
            "revision: 1\ntenants: [{ id: t1 }]\nproviders: [{ id: m, kind: mock }]\ndeployments: [{ id: d, model: demo, provider: m, upstream_model: mock-1 }]\nvirtual_keys:\n",
        );
        for i in 0..keys {
            let hash = hash_key_hex(b"p", &format!("sk-{i}"));
            text.push_str(&format!(
                "  - {{ id: k{i}, tenant_id: t1, key_hash: \"{hash}\", limits: {{ rpm: 5 }} }}\n"
            ));
        }
        let snapshot = Snapshot::from_yaml(&text).unwrap();
        state
            .install_under(&snapshot, crate::state::Rule::Higher)
            .unwrap();
        state
    }

    fn key(id: &str, secret: &str) -> VirtualKey {
        let text = format!(
            "{{ id: {id}, tenant_id: t1, key_hash: \"{}\", limits: {{ rpm: 5 }} }}",
            hash_key_hex(b"p", secret)
        );
        serde_yaml_ng::from_str(&text).unwrap()
    }

    fn hash(secret: &str) -> [u8; 32] {
        switchboard_shared::keys::parse_key_hash(&hash_key_hex(b"p", secret)).unwrap()
    }

    #[test]
    fn a_delta_replaces_only_its_keys_and_keeps_the_rest_shared() {
        let state = state_with(3);
        let before = state.catalog().unwrap();
        let mut revoked = key("k1", "sk-1");
        revoked.status = KeyStatus::Revoked;
        let delta = super::ConfigDelta {
            virtual_keys: vec![key("k9", "sk-9"), revoked],
            removed_virtual_keys: vec!["k2".into()],
        };
        let after = before.apply_delta(&delta, 2, "h".into()).unwrap();
        assert_eq!((after.revision, after.key_count()), (2, 3));
        assert!(after.key(&hash("sk-9")).is_some());
        assert!(after.key(&hash("sk-2")).is_none());
        assert_eq!(
            after.key(&hash("sk-1")).unwrap().key.status,
            KeyStatus::Revoked
        );
        // Untouched keys are the same entries; a changed key with the same limits keeps its
        // counters.
        let same = |secret: &str| {
            Arc::ptr_eq(
                before.key(&hash(secret)).unwrap(),
                after.key(&hash(secret)).unwrap(),
            )
        };
        assert!(same("sk-0"));
        assert!(Arc::ptr_eq(
            &before.key(&hash("sk-1")).unwrap().limit_state,
            &after.key(&hash("sk-1")).unwrap().limit_state
        ));
        assert!(Arc::ptr_eq(
            before.model("demo").unwrap(),
            after.model("demo").unwrap()
        ));
    }

    #[test]
    fn a_bad_delta_changes_nothing() {
        let state = state_with(2);
        let before = state.catalog().unwrap();
        let mut stranger = key("k7", "sk-7");
        stranger.tenant_id = "t-unknown".into();
        let twin = key("k8", "sk-0");
        let delta = super::ConfigDelta {
            virtual_keys: vec![stranger, twin],
            removed_virtual_keys: Vec::new(),
        };
        let problems = before.apply_delta(&delta, 2, "h".into()).unwrap_err();
        let text = problems.to_string();
        assert!(text.contains("unknown tenant"), "{text}");
        assert!(text.contains("same hash"), "{text}");
    }

    /// `cargo test --release -p switchboard-dataplane --lib -- --ignored --nocapture applies_a_delta_to_100k`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn applies_a_delta_to_100k_keys() {
        let state = state_with(100_000);
        let before = state.catalog().unwrap();
        let delta = super::ConfigDelta {
            virtual_keys: vec![key("k-new", "sk-new")],
            removed_virtual_keys: vec!["k5".into()],
        };
        let started = std::time::Instant::now();
        let after = before.apply_delta(&delta, 2, "h".into()).unwrap();
        eprintln!(
            "one-key delta on 100,000 keys applied in {:?}",
            started.elapsed()
        );
        assert_eq!(after.key_count(), 100_000);
    }
}
