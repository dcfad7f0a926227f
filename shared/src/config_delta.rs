//! Config deltas: the small changes (today: virtual keys) that travel between two full
//! snapshots, so that creating or revoking one key among 100,000 costs the fleet one small
//! message instead of a 29 MB snapshot (`docs/cluster.md`, "Deltas").
//!
//! A delta names the revision it makes and the one it applies on top of (`revision - 1`: every
//! admin write bumps the revision by one, and a key-only write changes nothing but its keys).
//! Its wire form is one NATS message: a [`DeltaHead`] as one line of JSON, a newline, then the
//! [`ConfigDelta`] body as JSON. The head carries the SHA-256 of the body and an Ed25519
//! signature over [`DeltaClaims`] (namespace, base revision, revision, hash, issue time) under
//! the same cluster keys as snapshot heads, so a data plane refuses a forged, edited or
//! replayed-elsewhere delta exactly as it refuses such a head.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::cluster_trust::DeltaClaims;
use crate::snapshot::VirtualKey;

/// Largest delta message either side accepts (a NATS message is at most 1 MiB by default).
pub const MAX_DELTA_BYTES: usize = 1024 * 1024;

/// What changed between `base_revision` and `revision`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigDelta {
    /// Keys created or changed (revoked ones included: revocation is a status), whole.
    #[serde(default)]
    pub virtual_keys: Vec<VirtualKey>,
    /// Ids of keys deleted.
    #[serde(default)]
    pub removed_virtual_keys: Vec<String>,
}

/// The signed announcement in front of a delta body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaHead {
    pub namespace: String,
    pub base_revision: u64,
    pub revision: u64,
    /// Hex SHA-256 of the body.
    pub content_hash: String,
    pub published_at: DateTime<Utc>,
    /// Base64 Ed25519 signature over [`DeltaHead::claims`]; empty when unsigned.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub signature: String,
}

impl DeltaHead {
    pub fn claims(&self) -> DeltaClaims<'_> {
        DeltaClaims {
            namespace: &self.namespace,
            base_revision: self.base_revision,
            revision: self.revision,
            content_hash: &self.content_hash,
            issued_at_micros: self.published_at.timestamp_micros(),
        }
    }
}

/// Why a delta message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeltaError {
    #[error("the delta message is {0} bytes, more than the {MAX_DELTA_BYTES} accepted")]
    TooLarge(usize),
    #[error("the delta message has no head line")]
    NoHead,
    #[error("the delta head does not parse: {0}")]
    BadHead(String),
    #[error("the delta body hashes to {actual}, {announced} was announced")]
    HashMismatch { actual: String, announced: String },
    #[error("the delta is revision {revision} on top of {base}: not one step")]
    NotOneStep { base: u64, revision: u64 },
    #[error("the delta body does not parse: {0}")]
    BadBody(String),
}

impl DeltaError {
    /// Low-cardinality name, for metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            DeltaError::TooLarge(_) => "too_large",
            DeltaError::NoHead | DeltaError::BadHead(_) => "unreadable",
            DeltaError::HashMismatch { .. } => "hash_mismatch",
            DeltaError::NotOneStep { .. } => "invalid",
            DeltaError::BadBody(_) => "not_a_delta",
        }
    }
}

/// The hex SHA-256 of a delta body.
pub fn body_hash(body: &[u8]) -> String {
    hex::encode(Sha256::digest(body))
}

/// A delta's wire form: `head` (whose `content_hash` must be the body's) and `body`.
pub fn encode(head: &DeltaHead, body: &[u8]) -> Vec<u8> {
    let mut out = serde_json::to_vec(head).unwrap_or_default();
    out.push(b'\n');
    out.extend_from_slice(body);
    out
}

/// The head of a delta message, and the body bytes, whose hash is checked against the head.
/// The signature is the caller's to check (it holds the verifier).
pub fn split(message: &[u8]) -> Result<(DeltaHead, &[u8]), DeltaError> {
    if message.len() > MAX_DELTA_BYTES {
        return Err(DeltaError::TooLarge(message.len()));
    }
    let end = message
        .iter()
        .position(|b| *b == b'\n')
        .ok_or(DeltaError::NoHead)?;
    let head: DeltaHead =
        serde_json::from_slice(&message[..end]).map_err(|e| DeltaError::BadHead(e.to_string()))?;
    if head.base_revision.checked_add(1) != Some(head.revision) {
        return Err(DeltaError::NotOneStep {
            base: head.base_revision,
            revision: head.revision,
        });
    }
    let body = &message[end + 1..];
    let actual = body_hash(body);
    if !actual.eq_ignore_ascii_case(&head.content_hash) {
        return Err(DeltaError::HashMismatch {
            actual,
            announced: head.content_hash,
        });
    }
    Ok((head, body))
}

/// Parses a delta body.
pub fn parse_body(body: &[u8]) -> Result<ConfigDelta, DeltaError> {
    serde_json::from_slice(body).map_err(|e| DeltaError::BadBody(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(body: &[u8]) -> DeltaHead {
        DeltaHead {
            namespace: "ns".into(),
            base_revision: 4,
            revision: 5,
            content_hash: body_hash(body),
            published_at: Utc::now(),
            signature: String::new(),
        }
    }

    #[test]
    fn a_message_splits_into_its_head_and_checked_body() {
        let body = serde_json::to_vec(&ConfigDelta {
            virtual_keys: Vec::new(),
            removed_virtual_keys: vec!["k1".into()],
        })
        .unwrap();
        let message = encode(&head(&body), &body);
        let (h, b) = split(&message).unwrap();
        assert_eq!(h.revision, 5);
        assert_eq!(parse_body(b).unwrap().removed_virtual_keys, ["k1"]);
        // An edited body no longer matches its head.
        let mut edited = message.clone();
        *edited.last_mut().unwrap() = b' ';
        assert_eq!(split(&edited).unwrap_err().reason(), "hash_mismatch");
        let skipping = DeltaHead {
            base_revision: 3,
            ..head(&body)
        };
        assert_eq!(
            split(&encode(&skipping, &body)).unwrap_err().reason(),
            "invalid"
        );
        assert_eq!(split(b"no newline").unwrap_err(), DeltaError::NoHead);
    }
}
