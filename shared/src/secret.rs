//! References to secrets inside a snapshot or config file.
//!
//! A standalone file should not hold an upstream credential, so a secret may name an
//! environment variable instead; a snapshot published by the control plane carries credentials
//! sealed under a master key ([`crate::sealed`]). Resolution happens once, when a snapshot is
//! loaded; the
//! resolved value never reaches a log line, an error message or a metric label — `Debug` here
//! prints only where the secret comes from.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::sealed::{MasterKeys, SealError, Sealed};

/// Where a secret's value comes from. Written as `{ env: NAME }`, `{ value: "..." }` or
/// `{ sealed: { key_id, nonce, ciphertext } }`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "SecretRefFields", into = "SecretRefFields")]
pub enum SecretRef {
    /// Read from this environment variable when the snapshot is loaded.
    Env(String),
    /// Held inline. Fine for local development; avoid in shared files.
    Value(String),
    /// AES-256-GCM ciphertext, opened with the master key it names.
    Sealed(Sealed),
}

/// The written form: exactly one of the two fields. (YAML would spell an enum as a tag.)
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretRefFields {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed: Option<Sealed>,
}

impl TryFrom<SecretRefFields> for SecretRef {
    type Error = &'static str;

    fn try_from(f: SecretRefFields) -> Result<Self, Self::Error> {
        match (f.env, f.value, f.sealed) {
            (Some(name), None, None) => Ok(SecretRef::Env(name)),
            (None, Some(value), None) => Ok(SecretRef::Value(value)),
            (None, None, Some(sealed)) => Ok(SecretRef::Sealed(sealed)),
            _ => Err(
                "a secret is exactly one of { env: VARIABLE }, { value: \"...\" } or { sealed: {...} }",
            ),
        }
    }
}

impl From<SecretRef> for SecretRefFields {
    fn from(s: SecretRef) -> Self {
        match s {
            SecretRef::Env(name) => Self {
                env: Some(name),
                value: None,
                sealed: None,
            },
            SecretRef::Value(value) => Self {
                env: None,
                value: Some(value),
                sealed: None,
            },
            SecretRef::Sealed(sealed) => Self {
                env: None,
                value: None,
                sealed: Some(sealed),
            },
        }
    }
}

/// A secret that could not be resolved. Names the variable, never a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    #[error("environment variable {0} is empty")]
    EmptyEnv(String),
    #[error("a sealed secret needs master keys, and none are configured")]
    NoMasterKeys,
    #[error(transparent)]
    Seal(#[from] SealError),
}

impl SecretRef {
    /// The secret's value, looked up through `env` (normally `std::env::var`) and opened
    /// with `keys` when sealed.
    pub fn resolve_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
        keys: Option<&MasterKeys>,
    ) -> Result<String, SecretError> {
        match self {
            SecretRef::Value(v) => Ok(v.clone()),
            SecretRef::Sealed(sealed) => Ok(keys.ok_or(SecretError::NoMasterKeys)?.open(sealed)?),
            SecretRef::Env(name) => match env(name) {
                None => Err(SecretError::MissingEnv(name.clone())),
                Some(v) if v.is_empty() => Err(SecretError::EmptyEnv(name.clone())),
                Some(v) => Ok(v),
            },
        }
    }

    /// The secret's value from the process environment (sealed values need
    /// [`Self::resolve_with`] and master keys).
    pub fn resolve(&self) -> Result<String, SecretError> {
        self.resolve_with(|name| std::env::var(name).ok(), None)
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(name) => write!(f, "SecretRef::Env({name})"),
            SecretRef::Value(_) => f.write_str("SecretRef::Value(<redacted>)"),
            SecretRef::Sealed(s) => write!(f, "SecretRef::{s:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_an_inline_value() {
        let s = SecretRef::Value("sk-very-secret".into());
        assert!(!format!("{s:?}").contains("very-secret"));
    }

    #[test]
    fn env_references_resolve_or_name_the_variable() {
        let r = SecretRef::Env("UPSTREAM_KEY".into());
        assert_eq!(
            r.resolve_with(|_| Some("abc".into()), None),
            Ok("abc".into())
        );
        assert_eq!(
            r.resolve_with(|_| None, None),
            Err(SecretError::MissingEnv("UPSTREAM_KEY".into()))
        );
        assert_eq!(
            r.resolve_with(|_| Some(String::new()), None),
            Err(SecretError::EmptyEnv("UPSTREAM_KEY".into()))
        );
    }

    #[test]
    fn parses_from_yaml_as_a_single_key_map() {
        let r: SecretRef = serde_yaml_ng::from_str("env: OPENAI_API_KEY").unwrap();
        assert_eq!(r, SecretRef::Env("OPENAI_API_KEY".into()));
        assert!(serde_yaml_ng::from_str::<SecretRef>("file: x").is_err());
        assert!(serde_yaml_ng::from_str::<SecretRef>("{ env: A, value: b }").is_err());
        assert!(serde_yaml_ng::from_str::<SecretRef>("{}").is_err());
    }

    #[test]
    fn sealed_secrets_open_only_with_master_keys() {
        let keys = MasterKeys::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
        let r = SecretRef::Sealed(keys.seal("sk-upstream"));
        let json = serde_json::to_string(&r).unwrap();
        assert!(!json.contains("sk-upstream"), "{json}");
        let back: SecretRef = serde_json::from_str(&json).unwrap();
        assert_eq!(
            back.resolve_with(|_| None, Some(&keys)),
            Ok("sk-upstream".into())
        );
        assert_eq!(
            back.resolve_with(|_| None, None),
            Err(SecretError::NoMasterKeys)
        );
        assert!(!format!("{back:?}").contains("sk-upstream"));
    }
}
