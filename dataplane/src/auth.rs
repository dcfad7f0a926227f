//! Authentication: a virtual key from the request headers to its catalog entry.
//!
//! The key is read from `Authorization: Bearer <key>` or `x-api-key`, hashed with the pepper
//! (HMAC-SHA-256, its pads computed once per process: about a microsecond) and looked up in
//! the catalog's map — no lock, no I/O. The secret itself is never stored, logged or echoed.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use http::HeaderMap;
use http::header::AUTHORIZATION;
use switchboard_shared::keys::KeyHasher;
use switchboard_shared::snapshot::KeyStatus;

use crate::catalog::{Catalog, KeyEntry};
use crate::error::ApiError;

/// The presented secret, if any.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let value = value.trim();
        let (scheme, rest) = value.split_at_checked(7).unwrap_or(("", ""));
        if scheme.eq_ignore_ascii_case("bearer ") && !rest.trim().is_empty() {
            return Some(rest.trim());
        }
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// The key entry for the request at `now`, or the 401 that explains why not. A key's
/// rotated-out secret works like its current one until its grace window ends; after that it
/// is an unknown key.
pub fn authenticate(
    catalog: &Catalog,
    hasher: &KeyHasher,
    headers: &HeaderMap,
    now: DateTime<Utc>,
) -> Result<Arc<KeyEntry>, ApiError> {
    let secret = presented_key(headers).ok_or(ApiError::MissingKey)?;
    let hash = hasher.hash(secret);
    let entry = catalog
        .key(&hash)
        .or_else(|| catalog.previous_key(&hash, now))
        .ok_or(ApiError::InvalidKey)?;
    if entry.key.status == KeyStatus::Revoked {
        return Err(ApiError::RevokedKey);
    }
    if !entry.key.is_usable_at(now) {
        return Err(ApiError::ExpiredKey);
    }
    if !entry.tenant_active() {
        return Err(ApiError::TenantSuspended);
    }
    Ok(Arc::clone(entry))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn reads_bearer_or_x_api_key() {
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer sk-1")])),
            Some("sk-1")
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "bearer  sk-1 ")])),
            Some("sk-1")
        );
        assert_eq!(
            presented_key(&headers(&[("x-api-key", "sk-2")])),
            Some("sk-2")
        );
        assert_eq!(
            presented_key(&headers(&[
                ("authorization", "Basic abc"),
                ("x-api-key", "sk-3")
            ])),
            Some("sk-3")
        );
        assert_eq!(
            presented_key(&headers(&[("authorization", "Bearer ")])),
            None
        );
        assert_eq!(presented_key(&headers(&[])), None);
    }
}
