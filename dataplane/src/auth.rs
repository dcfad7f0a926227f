//! Authentication: a virtual key from the request headers to its catalog entry.
//!
//! The key is read from `Authorization: Bearer <key>` or `x-api-key`, hashed with the pepper
//! (HMAC-SHA-256, its pads computed once per process: about a microsecond, and remembered for
//! secrets that named a key, [`KeyDigests`]) and looked up in the catalog's map — no I/O. The
//! secret itself is never stored, logged or echoed.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::{Arc, PoisonError, RwLock};

use chrono::{DateTime, Utc};
use http::HeaderMap;
use http::header::AUTHORIZATION;
use switchboard_shared::keys::{KEY_HASH_LEN, KeyHasher};
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

/// The pepper's HMAC of presented secrets, remembered for the secrets that named a key in the
/// catalog, so that a key's every request after its first costs a fingerprint and a map read
/// instead of SHA-256 (several thousand instructions a request on a CPU without SHA
/// extensions).
///
/// The map holds no secret: its key is a 128-bit fingerprint of the secret, two SipHashes
/// under keys drawn at random for this process, which nobody outside it can compute, so a
/// secret that is not a key's cannot be made to land on a key's entry. Only secrets whose
/// HMAC names a catalog key are remembered (random secrets sprayed at the gateway add
/// nothing), at most [`KeyDigests::CAPACITY`] of them; a full map starts again empty.
/// Revocation and expiry are unaffected: the catalog is asked about the HMAC on every request.
pub struct KeyDigests {
    hasher: KeyHasher,
    seeds: [RandomState; 2],
    known: RwLock<HashMap<u128, [u8; KEY_HASH_LEN], BuildHasherDefault<Fingerprinted>>>,
}

impl KeyDigests {
    /// Secrets remembered at most (about 64 bytes each).
    pub const CAPACITY: usize = 100_000;

    pub fn new(pepper: &[u8]) -> Self {
        Self {
            hasher: KeyHasher::new(pepper),
            seeds: [RandomState::new(), RandomState::new()],
            known: RwLock::default(),
        }
    }

    /// The HMAC of `secret`; `names_a_key` says whether one is worth remembering.
    pub fn digest(
        &self,
        secret: &str,
        names_a_key: impl FnOnce(&[u8; KEY_HASH_LEN]) -> bool,
    ) -> [u8; KEY_HASH_LEN] {
        let [a, b] = &self.seeds;
        let print = (u128::from(a.hash_one(secret)) << 64) | u128::from(b.hash_one(secret));
        let known = self.known.read().unwrap_or_else(PoisonError::into_inner);
        if let Some(digest) = known.get(&print) {
            return *digest;
        }
        drop(known);
        let digest = self.hasher.hash(secret);
        if names_a_key(&digest) {
            let mut known = self.known.write().unwrap_or_else(PoisonError::into_inner);
            if known.len() >= Self::CAPACITY {
                known.clear();
            }
            known.insert(print, digest);
        }
        digest
    }

    /// Secrets remembered now.
    pub fn remembered(&self) -> usize {
        self.known
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl std::fmt::Debug for KeyDigests {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyDigests(..)")
    }
}

/// The map's own hash of a fingerprint, which is already uniformly random: its low bits.
#[derive(Default)]
struct Fingerprinted(u64);

impl Hasher for Fingerprinted {
    fn write(&mut self, bytes: &[u8]) {
        // Only `u128` fingerprints are hashed; any other input still hashes, byte by byte.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// The key entry for the request at `now`, or the 401 that explains why not. A key's
/// rotated-out secret works like its current one until its grace window ends; after that it
/// is an unknown key.
pub fn authenticate(
    catalog: &Catalog,
    digests: &KeyDigests,
    headers: &HeaderMap,
    now: DateTime<Utc>,
) -> Result<Arc<KeyEntry>, ApiError> {
    let secret = presented_key(headers).ok_or(ApiError::MissingKey)?;
    let hash = digests.digest(secret, |hash| {
        catalog.key(hash).is_some() || catalog.previous_key(hash, now).is_some()
    });
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

    #[test]
    fn digests_are_the_peppers_hmac_and_only_keys_are_remembered() {
        let digests = KeyDigests::new(b"pepper");
        let hasher = KeyHasher::new(b"pepper");
        let stranger = digests.digest("sk-nobody", |_| false);
        assert_eq!(stranger, hasher.hash("sk-nobody"));
        assert_eq!(
            digests.remembered(),
            0,
            "a secret that names no key is not kept"
        );
        let mut asked = 0;
        for _ in 0..3 {
            let known = digests.digest("sk-someone", |hash| {
                asked += 1;
                *hash == hasher.hash("sk-someone")
            });
            assert_eq!(known, hasher.hash("sk-someone"));
        }
        assert_eq!(asked, 1, "once remembered, the catalog is not asked again");
        assert_eq!(digests.remembered(), 1);
        // Secrets that differ in one byte never share an entry.
        assert_eq!(
            digests.digest("sk-someonf", |_| true),
            hasher.hash("sk-someonf")
        );
        assert_eq!(digests.remembered(), 2);
    }

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
