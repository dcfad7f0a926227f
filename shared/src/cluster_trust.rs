//! Who may speak on the cluster channels, and how the other side checks it.
//!
//! NATS and the gRPC port can be reachable by more than the two planes, so nothing that travels
//! on them is trusted for arriving there:
//!
//! - **Snapshots** are signed by the control plane with Ed25519 ([`SnapshotSigner`]). The
//!   signature covers [`SnapshotClaims`]: the namespace, the revision, the SHA-256 of the body
//!   and the issue time — so the head (and, through its hash, the body) of a snapshot cannot be
//!   forged, moved to another namespace or edited. Data planes pin one or more public keys
//!   ([`SnapshotVerifier`]) so that a new signing key can be rolled in before the old one is
//!   dropped. **Config deltas** (`crate::config_delta`) are signed with the same keys over
//!   [`DeltaClaims`] (base revision too), under a domain tag of their own.
//! - **Usage events and heartbeats** from data planes carry the sender's id and an
//!   HMAC-SHA-256 under the cluster's ingest key ([`IngestKeys`]), in NATS headers; the control
//!   plane refuses and counts anything whose tag does not verify (optionally with one key per
//!   data-plane id, so a data plane cannot speak for another).
//!
//! Keys are written as standard base64 of their 32 raw bytes: the Ed25519 seed (private, a
//! secret reference on the control plane) and the Ed25519 public key (not secret, a
//! comma-separated list on the data plane). `deploy/gen-secrets` makes a pair with openssl.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// NATS header naming the data plane that sent a usage event or heartbeat.
pub const DATAPLANE_HEADER: &str = "Switchboard-Dataplane";
/// NATS header with the hex HMAC-SHA-256 of a usage event or heartbeat.
pub const SIGNATURE_HEADER: &str = "Switchboard-Signature";

/// A key that cannot be read; says which way, never the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("not base64")]
    NotBase64,
    #[error("must be 32 bytes (base64 of 32 raw bytes), got {0}")]
    WrongLength(usize),
    #[error("not a valid Ed25519 public key")]
    NotAPublicKey,
    #[error("no key given")]
    Empty,
}

fn key_bytes(text: &str) -> Result<[u8; 32], KeyError> {
    let raw = STANDARD
        .decode(text.trim())
        .map_err(|_| KeyError::NotBase64)?;
    <[u8; 32]>::try_from(raw.as_slice()).map_err(|_| KeyError::WrongLength(raw.len()))
}

/// What a snapshot signature covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotClaims<'a> {
    pub namespace: &'a str,
    pub revision: u64,
    /// Hex SHA-256 of the body (compared lower-case).
    pub content_hash: &'a str,
    /// When the control plane signed it, in microseconds since the Unix epoch.
    pub issued_at_micros: i64,
}

impl SnapshotClaims<'_> {
    /// The signed bytes: a domain tag, then each claim on its own line.
    fn message(&self) -> Vec<u8> {
        format!(
            "switchboard-snapshot-v1\n{}\n{}\n{}\n{}",
            self.namespace,
            self.revision,
            self.content_hash.to_ascii_lowercase(),
            self.issued_at_micros
        )
        .into_bytes()
    }
}

/// What a config delta's signature covers (`docs/cluster.md`, "Deltas"): like
/// [`SnapshotClaims`] plus the revision the delta applies on top of, under a domain tag of its
/// own, so a delta's signature can never pass for a head's or the other way round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeltaClaims<'a> {
    pub namespace: &'a str,
    /// The revision the delta applies on top of.
    pub base_revision: u64,
    /// The revision it makes.
    pub revision: u64,
    /// Hex SHA-256 of the delta body (compared lower-case).
    pub content_hash: &'a str,
    /// When the control plane signed it, in microseconds since the Unix epoch.
    pub issued_at_micros: i64,
}

impl DeltaClaims<'_> {
    fn message(&self) -> Vec<u8> {
        format!(
            "switchboard-delta-v1\n{}\n{}\n{}\n{}\n{}",
            self.namespace,
            self.base_revision,
            self.revision,
            self.content_hash.to_ascii_lowercase(),
            self.issued_at_micros
        )
        .into_bytes()
    }
}

/// Why a snapshot's origin was not accepted. [`TrustError::reason`] is the metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("the snapshot is not signed")]
    Unsigned,
    #[error("the snapshot's signature is not valid under any trusted key")]
    BadSignature,
    #[error("the snapshot is for namespace {got:?}, this cluster is {expected:?}")]
    WrongNamespace { expected: String, got: String },
}

impl TrustError {
    pub fn reason(&self) -> &'static str {
        match self {
            TrustError::Unsigned => "unsigned",
            TrustError::BadSignature => "bad_signature",
            TrustError::WrongNamespace { .. } => "wrong_namespace",
        }
    }
}

/// The control plane's snapshot signing key. `Debug` never shows it.
#[derive(Clone)]
pub struct SnapshotSigner {
    key: SigningKey,
}

impl std::fmt::Debug for SnapshotSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SnapshotSigner(public {})", self.public_key_base64())
    }
}

impl SnapshotSigner {
    /// From the base64 of a 32-byte Ed25519 seed.
    pub fn from_base64(seed: &str) -> Result<Self, KeyError> {
        Ok(Self {
            key: SigningKey::from_bytes(&key_bytes(seed)?),
        })
    }

    /// The matching public key, in the form data planes are configured with.
    pub fn public_key_base64(&self) -> String {
        STANDARD.encode(self.key.verifying_key().as_bytes())
    }

    /// Base64 signature over `claims`.
    pub fn sign(&self, claims: &SnapshotClaims<'_>) -> String {
        STANDARD.encode(self.key.sign(&claims.message()).to_bytes())
    }

    /// Base64 signature over a delta's `claims`.
    pub fn sign_delta(&self, claims: &DeltaClaims<'_>) -> String {
        STANDARD.encode(self.key.sign(&claims.message()).to_bytes())
    }
}

/// The public keys a snapshot may be signed with, and the namespace it must name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotVerifier {
    namespace: String,
    keys: Vec<VerifyingKey>,
}

impl SnapshotVerifier {
    /// From a comma-separated list of base64 public keys (at least one).
    pub fn parse(namespace: &str, list: &str) -> Result<Self, KeyError> {
        let mut keys = Vec::new();
        for one in list.split(',').map(str::trim).filter(|k| !k.is_empty()) {
            let bytes = key_bytes(one)?;
            keys.push(VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::NotAPublicKey)?);
        }
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Self {
            namespace: namespace.to_owned(),
            keys,
        })
    }

    /// Trusting `signer`'s own public key, plus any in `extra` (comma-separated).
    pub fn for_signer(
        namespace: &str,
        signer: &SnapshotSigner,
        extra: &str,
    ) -> Result<Self, KeyError> {
        let mut verifier = Self::parse(namespace, &signer.public_key_base64())?;
        if !extra.trim().is_empty() {
            verifier.keys.extend(Self::parse(namespace, extra)?.keys);
        }
        Ok(verifier)
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Whether `claims` are this cluster's and `signature` (base64) is valid under one of the
    /// trusted keys.
    pub fn verify(&self, claims: &SnapshotClaims<'_>, signature: &str) -> Result<(), TrustError> {
        self.verify_message(claims.namespace, &claims.message(), signature)
    }

    /// Whether a delta's `claims` are this cluster's and `signature` is valid under one of the
    /// trusted keys.
    pub fn verify_delta(
        &self,
        claims: &DeltaClaims<'_>,
        signature: &str,
    ) -> Result<(), TrustError> {
        self.verify_message(claims.namespace, &claims.message(), signature)
    }

    fn verify_message(
        &self,
        namespace: &str,
        message: &[u8],
        signature: &str,
    ) -> Result<(), TrustError> {
        if namespace != self.namespace {
            return Err(TrustError::WrongNamespace {
                expected: self.namespace.clone(),
                got: namespace.chars().take(64).collect(),
            });
        }
        if signature.is_empty() {
            return Err(TrustError::Unsigned);
        }
        let signature = STANDARD
            .decode(signature)
            .ok()
            .and_then(|raw| Signature::from_slice(&raw).ok())
            .ok_or(TrustError::BadSignature)?;
        self.keys
            .iter()
            .any(|key| key.verify(message, &signature).is_ok())
            .then_some(())
            .ok_or(TrustError::BadSignature)
    }
}

/// The cluster's ingest keys: data planes tag usage events and heartbeats with the first,
/// the control plane accepts a tag under any of them (so the key can be rotated: add the new
/// one on the control plane, move the data planes to it, drop the old one).
///
/// The control plane may also hold keys per data-plane id ([`IngestKeys::with_dataplanes`]):
/// a data plane listed there is authenticated under its own keys only, so the shared key (or
/// another data plane's) cannot speak for it; with no shared key at all, an id not listed is
/// unknown. `Debug` never shows a key.
#[derive(Clone)]
pub struct IngestKeys {
    keys: Vec<Vec<u8>>,
    dataplanes: std::collections::HashMap<String, Vec<Vec<u8>>>,
}

impl std::fmt::Debug for IngestKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "IngestKeys({} keys, {} data planes, <redacted>)",
            self.keys.len(),
            self.dataplanes.len()
        )
    }
}

/// Why a usage event or heartbeat was not authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagRefusal {
    /// No sender id in the headers.
    NoSender,
    /// A sender id with no key of its own, and no shared key to try.
    UnknownSender,
    /// No tag, or one that does not verify under the sender's keys.
    BadTag,
}

impl TagRefusal {
    /// Low-cardinality name, for metric labels.
    pub fn reason(self) -> &'static str {
        match self {
            Self::NoSender => "no_sender",
            Self::UnknownSender => "unknown_dataplane",
            Self::BadTag => "bad_tag",
        }
    }
}

/// Splits a comma-separated list of secrets, each at least 16 bytes.
fn key_list(list: &str) -> Result<Vec<Vec<u8>>, String> {
    let keys: Vec<Vec<u8>> = list
        .split(',')
        .map(str::trim)
        .filter(|k| !k.is_empty())
        .map(|k| k.as_bytes().to_vec())
        .collect();
    if keys.is_empty() {
        return Err("no key given".into());
    }
    if keys.iter().any(|k| k.len() < 16) {
        return Err("each key must be at least 16 bytes long".into());
    }
    Ok(keys)
}

type HmacSha256 = Hmac<Sha256>;

impl IngestKeys {
    /// From a comma-separated list of secrets (each at least 16 bytes).
    pub fn parse(list: &str) -> Result<Self, String> {
        Ok(Self {
            keys: key_list(list)?,
            dataplanes: std::collections::HashMap::new(),
        })
    }

    /// Only keys per data plane (no shared key): see [`IngestKeys::with_dataplanes`].
    pub fn dataplanes_only(list: &str) -> Result<Self, String> {
        Self {
            keys: Vec::new(),
            dataplanes: std::collections::HashMap::new(),
        }
        .with_dataplanes(list)
    }

    /// Adds keys per data plane from `ID:KEY` entries, comma-separated (an id may appear
    /// twice while its key is rotated). A listed data plane is authenticated under its own
    /// keys only. The error never shows a key.
    pub fn with_dataplanes(mut self, list: &str) -> Result<Self, String> {
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((id, key)) = entry.split_once(':') else {
                return Err("each entry must be DATAPLANE_ID:KEY".into());
            };
            let (id, key) = (id.trim(), key.trim());
            if id.is_empty() {
                return Err("an entry has no data-plane id".into());
            }
            if key.len() < 16 {
                return Err(format!(
                    "the key of data plane {id:?} must be at least 16 bytes long"
                ));
            }
            let keys = self.dataplanes.entry(id.to_owned()).or_default();
            keys.push(key.as_bytes().to_vec());
        }
        if self.dataplanes.is_empty() {
            return Err("no key given".into());
        }
        Ok(self)
    }

    fn mac(key: &[u8], kind: &str, dataplane_id: &str, payload: &[u8]) -> HmacSha256 {
        // Any length is a valid HMAC key.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
        mac.update(format!("switchboard-{kind}-v1\n{dataplane_id}\n").as_bytes());
        mac.update(payload);
        mac
    }

    /// Hex tag of a message of `kind` (`usage`, `heartbeat`) from `dataplane_id`, under the
    /// first shared key (a data plane's set; one with only per-data-plane keys tags under its
    /// first key for `dataplane_id`).
    pub fn tag(&self, kind: &str, dataplane_id: &str, payload: &[u8]) -> String {
        let key = self
            .keys
            .first()
            .or_else(|| self.dataplanes.get(dataplane_id)?.first())
            .map_or(&[][..], Vec::as_slice);
        hex::encode(
            Self::mac(key, kind, dataplane_id, payload)
                .finalize()
                .into_bytes(),
        )
    }

    /// Whether `tag` (hex) is valid for the message from `dataplane_id`: under that data
    /// plane's own keys if it has any, else under a shared key; constant time per key.
    pub fn check(
        &self,
        kind: &str,
        dataplane_id: &str,
        payload: &[u8],
        tag: &str,
    ) -> Result<(), TagRefusal> {
        if dataplane_id.is_empty() {
            return Err(TagRefusal::NoSender);
        }
        let keys = match self.dataplanes.get(dataplane_id) {
            Some(own) => own,
            None if self.keys.is_empty() => return Err(TagRefusal::UnknownSender),
            None => &self.keys,
        };
        let tag = hex::decode(tag).map_err(|_| TagRefusal::BadTag)?;
        let valid = keys.iter().any(|key| {
            Self::mac(key, kind, dataplane_id, payload)
                .verify_slice(&tag)
                .is_ok()
        });
        valid.then_some(()).ok_or(TagRefusal::BadTag)
    }

    /// Whether [`IngestKeys::check`] accepts the message.
    pub fn verify(&self, kind: &str, dataplane_id: &str, payload: &[u8], tag: &str) -> bool {
        self.check(kind, dataplane_id, payload, tag).is_ok()
    }
}

/// Whether `a` and `b` are equal, in time independent of where they differ (and of their
/// lengths, which are hidden by hashing both first).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let (a, b) = (Sha256::digest(a), Sha256::digest(b));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    const OTHER: &str = "HxwdHh8AAQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRo=";

    fn claims(revision: u64) -> SnapshotClaims<'static> {
        SnapshotClaims {
            namespace: "ns",
            revision,
            content_hash: "ab",
            issued_at_micros: 7,
        }
    }

    #[test]
    fn a_signature_verifies_only_for_what_it_signed() {
        let signer = SnapshotSigner::from_base64(SEED).unwrap();
        let other = SnapshotSigner::from_base64(OTHER).unwrap();
        let verifier = SnapshotVerifier::parse("ns", &signer.public_key_base64()).unwrap();
        let signature = signer.sign(&claims(3));
        assert_eq!(verifier.verify(&claims(3), &signature), Ok(()));
        assert_eq!(
            verifier.verify(&claims(u64::MAX), &signature),
            Err(TrustError::BadSignature)
        );
        let mut moved = claims(3);
        moved.namespace = "other";
        assert_eq!(
            verifier.verify(&moved, &signature).unwrap_err().reason(),
            "wrong_namespace"
        );
        assert_eq!(verifier.verify(&claims(3), ""), Err(TrustError::Unsigned));
        assert_eq!(
            verifier.verify(&claims(3), &other.sign(&claims(3))),
            Err(TrustError::BadSignature)
        );
        assert_eq!(
            verifier.verify(&claims(3), "not base64!"),
            Err(TrustError::BadSignature)
        );
        // Rotation: both keys trusted.
        let both = SnapshotVerifier::parse(
            "ns",
            &format!(
                "{}, {}",
                signer.public_key_base64(),
                other.public_key_base64()
            ),
        )
        .unwrap();
        assert_eq!(both.verify(&claims(3), &other.sign(&claims(3))), Ok(()));
        assert!(!format!("{signer:?}").contains(SEED));
        // The RFC 8032 key of this seed, as `openssl pkey -pubout` prints it (gen-secrets).
        assert_eq!(
            signer.public_key_base64(),
            "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg="
        );
    }

    #[test]
    fn a_delta_signature_is_not_a_head_signature() {
        let signer = SnapshotSigner::from_base64(SEED).unwrap();
        let verifier = SnapshotVerifier::parse("ns", &signer.public_key_base64()).unwrap();
        let delta = DeltaClaims {
            namespace: "ns",
            base_revision: 2,
            revision: 3,
            content_hash: "ab",
            issued_at_micros: 7,
        };
        let signature = signer.sign_delta(&delta);
        assert_eq!(verifier.verify_delta(&delta, &signature), Ok(()));
        // Neither a head with the same numbers nor another base passes.
        assert_eq!(
            verifier.verify(&claims(3), &signature),
            Err(TrustError::BadSignature)
        );
        assert_eq!(
            verifier.verify_delta(&claims_on(&delta, 1), &signature),
            Err(TrustError::BadSignature)
        );
        assert_eq!(
            verifier.verify_delta(&delta, &signer.sign(&claims(3))),
            Err(TrustError::BadSignature)
        );
        let moved = DeltaClaims {
            namespace: "other",
            ..delta.clone()
        };
        assert_eq!(
            verifier
                .verify_delta(&moved, &signature)
                .unwrap_err()
                .reason(),
            "wrong_namespace"
        );
        assert_eq!(verifier.verify_delta(&delta, ""), Err(TrustError::Unsigned));
    }

    fn claims_on<'a>(delta: &DeltaClaims<'a>, base_revision: u64) -> DeltaClaims<'a> {
        DeltaClaims {
            base_revision,
            ..delta.clone()
        }
    }

    #[test]
    fn bad_keys_are_named_without_their_value() {
        assert_eq!(
            SnapshotVerifier::parse("ns", "").unwrap_err(),
            KeyError::Empty
        );
        assert_eq!(
            SnapshotVerifier::parse("ns", "AAAA").unwrap_err(),
            KeyError::WrongLength(3)
        );
        assert_eq!(
            SnapshotSigner::from_base64("%%").unwrap_err(),
            KeyError::NotBase64
        );
    }

    #[test]
    fn ingest_tags_bind_kind_sender_and_payload() {
        let keys = IngestKeys::parse("an-ingest-key-of-32-bytes-length").unwrap();
        let tag = keys.tag("usage", "dp-1", b"{}");
        assert!(keys.verify("usage", "dp-1", b"{}", &tag));
        assert!(!keys.verify("usage", "dp-2", b"{}", &tag));
        assert!(!keys.verify("heartbeat", "dp-1", b"{}", &tag));
        assert!(!keys.verify("usage", "dp-1", b"{ }", &tag));
        assert!(!keys.verify("usage", "dp-1", b"{}", "zz"));
        let rotated =
            IngestKeys::parse("a-new-ingest-key-0123456789, an-ingest-key-of-32-bytes-length")
                .unwrap();
        assert!(rotated.verify("usage", "dp-1", b"{}", &tag));
        assert!(IngestKeys::parse("short").is_err());
        assert!(!format!("{keys:?}").contains("ingest-key"));
        assert!(constant_time_eq(b"abc", b"abc") && !constant_time_eq(b"abc", b"abd"));
    }

    #[test]
    fn a_data_plane_with_its_own_key_is_authenticated_by_it_alone() {
        let shared = "the-shared-ingest-key-0123456789";
        let own = IngestKeys::parse("dp-1-own-ingest-key-0123456789").unwrap();
        let shared_keys = IngestKeys::parse(shared).unwrap();
        let keys = IngestKeys::parse(shared)
            .unwrap()
            .with_dataplanes("dp-1:dp-1-own-ingest-key-0123456789")
            .unwrap();
        let check =
            |k: &IngestKeys, id: &str| keys.check("usage", id, b"{}", &k.tag("usage", id, b"{}"));
        assert_eq!(check(&own, "dp-1"), Ok(()));
        // The shared key no longer speaks for dp-1, but still for ids with no key of their own.
        assert_eq!(check(&shared_keys, "dp-1"), Err(TagRefusal::BadTag));
        assert_eq!(check(&shared_keys, "dp-2"), Ok(()));
        assert_eq!(
            keys.check("usage", "", b"{}", "00"),
            Err(TagRefusal::NoSender)
        );
        // Without a shared key, an id with no key is unknown.
        let strict = IngestKeys::dataplanes_only("dp-1:dp-1-own-ingest-key-0123456789").unwrap();
        assert_eq!(
            strict.check("usage", "dp-2", b"{}", &own.tag("usage", "dp-2", b"{}")),
            Err(TagRefusal::UnknownSender)
        );
        assert_eq!(
            strict.check("usage", "dp-1", b"{}", &own.tag("usage", "dp-1", b"{}")),
            Ok(())
        );
        assert!(IngestKeys::dataplanes_only("dp-1=short").is_err());
        assert!(IngestKeys::dataplanes_only("dp-1:short").is_err());
        assert!(!format!("{strict:?}").contains("own-ingest"));
    }
}
