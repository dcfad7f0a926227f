//! Virtual-key hashing.
//!
//! A virtual key is stored only as HMAC-SHA-256(pepper, secret): a keyed hash is as fast to
//! check as a map lookup (about a microsecond), where a per-request argon2 check would cost
//! milliseconds, and a leaked database without the pepper does not let anyone test guesses.
//! The pepper lives in the data plane's and control plane's configuration, never in a snapshot.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Length of a key hash in bytes.
pub const KEY_HASH_LEN: usize = 32;

/// How many characters of a secret are kept as its display prefix.
pub const DISPLAY_PREFIX_LEN: usize = 10;

/// HMAC-SHA-256 of `secret` under `pepper`.
pub fn hash_key(pepper: &[u8], secret: &str) -> [u8; KEY_HASH_LEN] {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(pepper) else {
        unreachable!("HMAC takes keys of any length")
    };
    mac.update(secret.as_bytes());
    mac.finalize().into_bytes().into()
}

/// [`hash_key`] with the pepper's HMAC pads computed once: the data plane hashes every
/// request's key, and keying the HMAC anew each time doubles the SHA-256 work (two of the four
/// compressions are the pads). Same output as [`hash_key`].
#[derive(Clone)]
pub struct KeyHasher {
    keyed: Hmac<Sha256>,
}

impl KeyHasher {
    pub fn new(pepper: &[u8]) -> Self {
        let Ok(keyed) = Hmac::<Sha256>::new_from_slice(pepper) else {
            unreachable!("HMAC takes keys of any length")
        };
        Self { keyed }
    }

    /// HMAC-SHA-256 of `secret` under the pepper.
    pub fn hash(&self, secret: &str) -> [u8; KEY_HASH_LEN] {
        let mut mac = self.keyed.clone();
        mac.update(secret.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHasher(..)")
    }
}

/// [`hash_key`] as the lower-case hex string stored in snapshots.
pub fn hash_key_hex(pepper: &[u8], secret: &str) -> String {
    hex::encode(hash_key(pepper, secret))
}

/// Parses a stored hex hash back into bytes; `None` if it is not 64 hex digits.
pub fn parse_key_hash(hex_hash: &str) -> Option<[u8; KEY_HASH_LEN]> {
    let mut out = [0u8; KEY_HASH_LEN];
    hex::decode_to_slice(hex_hash, &mut out).ok()?;
    Some(out)
}

/// The display prefix of a secret: its first [`DISPLAY_PREFIX_LEN`] characters.
pub fn display_prefix(secret: &str) -> String {
    secret.chars().take(DISPLAY_PREFIX_LEN).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_rfc_4231_test_vector() {
        // RFC 4231, test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            hash_key_hex(b"Jefe", "what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn the_prekeyed_hasher_matches_hash_key() {
        let hasher = KeyHasher::new(b"pepper-a");
        for secret in ["", "sk-123", &"x".repeat(200)] {
            assert_eq!(hasher.hash(secret), hash_key(b"pepper-a", secret));
        }
        assert_ne!(hasher.hash("sk-123"), hash_key(b"pepper-b", "sk-123"));
    }

    #[test]
    fn the_pepper_changes_the_hash_and_hex_round_trips() {
        let a = hash_key(b"pepper-a", "sk-123");
        let b = hash_key(b"pepper-b", "sk-123");
        assert_ne!(a, b);
        assert_eq!(parse_key_hash(&hex::encode(a)), Some(a));
        assert_eq!(parse_key_hash("zz"), None);
        assert_eq!(parse_key_hash(&"0".repeat(62)), None);
    }

    #[test]
    fn display_prefix_is_short_and_char_safe() {
        assert_eq!(display_prefix("sk-sb-demo-0123456789"), "sk-sb-demo");
        assert_eq!(display_prefix("ключ"), "ключ");
    }
}
