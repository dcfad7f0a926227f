//! The `cache` settings of model policies and keys: a TTL and an entry size within their
//! bounds; sharing entries across tenants only on a model policy.

use super::Collector;
use crate::snapshot::{MAX_CACHE_ENTRY_BYTES, MAX_CACHE_TTL_SECONDS, ResponseCache};

/// Checks `cache` at `path` (`models[i].cache` or `virtual_keys[i].cache`).
pub(super) fn check(c: &mut Collector, path: &str, cache: &ResponseCache, on_key: bool) {
    if cache.ttl_seconds == 0 || cache.ttl_seconds > MAX_CACHE_TTL_SECONDS {
        c.push(
            format!("{path}.ttl_seconds"),
            format!("must be between 1 and {MAX_CACHE_TTL_SECONDS}"),
        );
    }
    if cache.max_entry_bytes == 0 || cache.max_entry_bytes > MAX_CACHE_ENTRY_BYTES {
        c.push(
            format!("{path}.max_entry_bytes"),
            format!("must be between 1 and {MAX_CACHE_ENTRY_BYTES}"),
        );
    }
    if on_key && cache.shared_across_tenants {
        c.push(
            format!("{path}.shared_across_tenants"),
            "only a model policy may share cached answers across tenants",
        );
    }
}
