//! The `virtual_keys` section: a known tenant, well-formed and unique key hashes (the current
//! secret's and a rotated-out one's), an expiry after creation, allowed models that exist,
//! limits and budget.

use std::collections::HashMap;

use super::{Collector, Names, check_limits_and_budget};
use crate::keys::parse_key_hash;
use crate::snapshot::VirtualKey;

pub(super) fn check(c: &mut Collector, keys: &[VirtualKey], names: &Names<'_>) {
    let mut key_hashes: HashMap<&str, usize> = HashMap::new();
    for (i, k) in keys.iter().enumerate() {
        let path = format!("virtual_keys[{i}]");
        if !names.tenants.contains(k.tenant_id.as_str()) {
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
        if let Some(previous) = &k.previous_secret {
            let at = format!("{path}.previous_secret.key_hash");
            if parse_key_hash(&previous.key_hash).is_none() {
                c.push(
                    at,
                    "must be 64 hex digits (HMAC-SHA-256 of the key under the pepper)",
                );
            } else if let Some(first) = key_hashes.insert(previous.key_hash.as_str(), i) {
                c.push(
                    at,
                    format!("same hash as virtual_keys[{first}]: one secret, two keys"),
                );
            }
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
            if !names.served.contains(m.as_str()) && !names.aliases.contains(m.as_str()) {
                c.push(
                    format!("{path}.allowed_models[{j}]"),
                    format!("no deployment serves model {m:?}"),
                );
            }
        }
        check_limits_and_budget(c, &path, k.limits, k.budget.as_ref());
        if let Some(cache) = &k.cache {
            super::cache::check(c, &format!("{path}.cache"), cache, true);
        }
    }
}
