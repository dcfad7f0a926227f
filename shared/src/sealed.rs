//! Upstream credentials sealed at rest: AES-256-GCM under a master key named by an id.
//!
//! The control plane stores provider credentials as [`Sealed`] values in Postgres and ships
//! them sealed in every snapshot; only a process holding the master key (the control plane to
//! seal, a data plane to open) ever sees the plaintext. Each sealed value names the key that
//! sealed it, so keys rotate by adding a new key first in the list (new writes use it) while
//! the old one stays listed until every value has been re-sealed.
//!
//! Master keys come from the environment as `id:base64key[,id:base64key...]` — 32 random bytes
//! each, e.g. `openssl rand -base64 32`. The first key listed seals; every listed key opens.

use std::collections::BTreeMap;
use std::fmt;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

/// Associated data bound into every seal: a ciphertext made for another purpose won't open.
const AAD: &[u8] = b"switchboard/sealed-secret/v1";

/// A sealed secret as stored and shipped: all fields are safe to log.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sealed {
    /// Id of the master key that sealed it.
    pub key_id: String,
    /// Base64 of the 96-bit nonce.
    pub nonce: String,
    /// Base64 of the ciphertext with its 128-bit tag.
    pub ciphertext: String,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealed(key_id={})", self.key_id)
    }
}

/// Why sealing or opening failed. Never holds key material or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("master keys: {0}")]
    BadKeySpec(String),
    #[error("no master key with id {0:?} is configured")]
    UnknownKey(String),
    #[error("sealed value is malformed or was not sealed by key {0:?}")]
    Corrupt(String),
}

/// The master keys this process holds. `Debug` shows ids only.
#[derive(Clone)]
pub struct MasterKeys {
    sealing: String,
    keys: BTreeMap<String, Key<Aes256Gcm>>,
}

impl fmt::Debug for MasterKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MasterKeys")
            .field("sealing", &self.sealing)
            .field("ids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl MasterKeys {
    /// Parses `id:base64key[,id:base64key...]`; the first key seals.
    pub fn parse(spec: &str) -> Result<Self, SealError> {
        let mut keys = BTreeMap::new();
        let mut sealing = None;
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (id, b64) = part
                .split_once(':')
                .ok_or_else(|| SealError::BadKeySpec("each entry is id:base64key".into()))?;
            let id = id.trim();
            if id.is_empty() {
                return Err(SealError::BadKeySpec("a key id is empty".into()));
            }
            let bytes = B64
                .decode(b64.trim())
                .map_err(|_| SealError::BadKeySpec(format!("key {id:?} is not valid base64")))?;
            if bytes.len() != 32 {
                return Err(SealError::BadKeySpec(format!(
                    "key {id:?} is {} bytes; AES-256 needs 32",
                    bytes.len()
                )));
            }
            if keys
                .insert(id.to_owned(), *Key::<Aes256Gcm>::from_slice(&bytes))
                .is_some()
            {
                return Err(SealError::BadKeySpec(format!(
                    "key id {id:?} is listed twice"
                )));
            }
            sealing.get_or_insert_with(|| id.to_owned());
        }
        let sealing = sealing.ok_or_else(|| SealError::BadKeySpec("no key given".into()))?;
        Ok(Self { sealing, keys })
    }

    /// Id of the key new seals use.
    pub fn sealing_key_id(&self) -> &str {
        &self.sealing
    }

    /// Seals `plaintext` under the first key, with a fresh random nonce.
    pub fn seal(&self, plaintext: &str) -> Sealed {
        let key = &self.keys[&self.sealing];
        let cipher = Aes256Gcm::new(key);
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let payload = Payload {
            msg: plaintext.as_bytes(),
            aad: AAD,
        };
        // Encryption with a valid key and nonce cannot fail for inputs under 64 GiB.
        let ciphertext = cipher.encrypt(&nonce, payload).unwrap_or_default();
        Sealed {
            key_id: self.sealing.clone(),
            nonce: B64.encode(nonce),
            ciphertext: B64.encode(ciphertext),
        }
    }

    /// Opens a sealed value with the key it names.
    pub fn open(&self, sealed: &Sealed) -> Result<String, SealError> {
        let key = self
            .keys
            .get(&sealed.key_id)
            .ok_or_else(|| SealError::UnknownKey(sealed.key_id.clone()))?;
        let corrupt = || SealError::Corrupt(sealed.key_id.clone());
        let nonce = B64.decode(&sealed.nonce).map_err(|_| corrupt())?;
        if nonce.len() != 12 {
            return Err(corrupt());
        }
        let ciphertext = B64.decode(&sealed.ciphertext).map_err(|_| corrupt())?;
        let plaintext = Aes256Gcm::new(key)
            .decrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &ciphertext,
                    aad: AAD,
                },
            )
            .map_err(|_| corrupt())?;
        String::from_utf8(plaintext).map_err(|_| corrupt())
    }

    /// Re-seals under the current sealing key (key rotation).
    pub fn reseal(&self, sealed: &Sealed) -> Result<Sealed, SealError> {
        Ok(self.seal(&self.open(sealed)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const K2: &str = "k2:HxwdHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA=";

    #[test]
    fn seals_and_opens_without_plaintext_in_the_sealed_form() {
        let keys = MasterKeys::parse(K1).unwrap();
        let sealed = keys.seal("sk-upstream-secret");
        assert_eq!(sealed.key_id, "k1");
        let json = serde_json::to_string(&sealed).unwrap();
        assert!(!json.contains("sk-upstream-secret"));
        assert!(!format!("{sealed:?}").contains(&sealed.ciphertext));
        assert_eq!(keys.open(&sealed).unwrap(), "sk-upstream-secret");
        // A fresh nonce each time: the same plaintext seals differently.
        assert_ne!(
            keys.seal("sk-upstream-secret").ciphertext,
            sealed.ciphertext
        );
    }

    #[test]
    fn rotation_opens_old_values_and_seals_with_the_first_key() {
        let old = MasterKeys::parse(K1).unwrap();
        let sealed = old.seal("secret");
        let rotated = MasterKeys::parse(&format!("{K2},{K1}")).unwrap();
        assert_eq!(rotated.open(&sealed).unwrap(), "secret");
        let resealed = rotated.reseal(&sealed).unwrap();
        assert_eq!(resealed.key_id, "k2");
        assert_eq!(old.open(&resealed), Err(SealError::UnknownKey("k2".into())));
    }

    #[test]
    fn tampering_is_detected() {
        let keys = MasterKeys::parse(K1).unwrap();
        let mut sealed = keys.seal("secret");
        let mut raw = B64.decode(&sealed.ciphertext).unwrap();
        raw[0] ^= 1;
        sealed.ciphertext = B64.encode(raw);
        assert_eq!(keys.open(&sealed), Err(SealError::Corrupt("k1".into())));
    }

    #[test]
    fn bad_key_specs_are_refused_without_echoing_key_material() {
        for spec in ["", "k1", "k1:notbase64!!", "k1:AAAA", &format!("{K1},{K1}")] {
            let err = MasterKeys::parse(spec).unwrap_err().to_string();
            assert!(!err.contains("AAECAwQF"), "{err}");
        }
        let keys = MasterKeys::parse(&format!("{K1},{K2}")).unwrap();
        assert!(!format!("{keys:?}").contains("AAECAwQF"));
    }
}
