//! OAuth2 access tokens for a Google service account, by the JWT bearer grant (RFC 7523).
//!
//! Google Cloud APIs take `Authorization: Bearer <access token>`; a service account gets one by
//! posting an RS256-signed assertion (`iss` = the account, `aud` = its `token_uri`, `scope` =
//! cloud-platform, one hour at most) to its `token_uri`. Tokens last an hour, so a
//! [`TokenSource`] keeps the current one and fetches the next [`REFRESH_BEFORE`] its expiry;
//! requests that find it stale wait for one shared fetch instead of each signing their own,
//! and a token that the API refused (401) is dropped so the next request fetches another.
//!
//! The catalog builds a new adaptor for every snapshot, so that a configuration change does not
//! cost every Vertex provider a token fetch, token sources are shared by key file ([`shared`]):
//! the new adaptor finds the source the old one still holds.
//!
//! The private key never leaves this module: it is parsed once (PKCS#8 or PKCS#1 PEM, as
//! Google issues it) into jsonwebtoken's key, and errors never quote the JSON key file.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::{ACCEPT, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, StatusCode, Uri};
use http_body_util::BodyExt;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::RsaPrivateKey;
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs8::DecodePrivateKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::providers::client::{self, HttpClient};
use crate::providers::common::{JSON, sensitive};

/// The scope of every Vertex AI call.
pub const SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Where a key file without `token_uri` gets its tokens.
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
/// How long before its expiry a token is replaced (Google's client libraries refresh 3m45s
/// ahead; a little more leaves room for a slow token endpoint).
pub const REFRESH_BEFORE: Duration = Duration::from_secs(300);
/// The assertion's lifetime: Google accepts at most an hour.
const ASSERTION_SECONDS: u64 = 3600;
/// A token fetch that takes longer fails (requests waiting for it fail over).
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The token endpoint's answer is small; a larger one is refused.
const MAX_TOKEN_BODY_BYTES: usize = 64 * 1024;
/// `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`, form-encoded.
const GRANT: &str = "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=";
static FORM: HeaderValue = HeaderValue::from_static("application/x-www-form-urlencoded");

/// The fields of a service account's JSON key that the gateway reads.
#[derive(Deserialize)]
pub struct KeyFile {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub project_id: Option<String>,
    #[serde(default)]
    pub private_key_id: Option<String>,
    pub private_key: String,
    pub client_email: String,
    #[serde(default)]
    pub token_uri: Option<String>,
}

impl KeyFile {
    /// Parses the JSON key file; errors name the problem, never the content.
    pub fn parse(json: &str) -> Result<Self, String> {
        let key: KeyFile = serde_json::from_str(json).map_err(|e| {
            format!(
                "the service account key is not a Google JSON key file (line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
        if key.kind.as_deref().is_some_and(|k| k != "service_account") {
            return Err("the JSON key's type must be service_account".into());
        }
        Ok(key)
    }

    /// `token_uri`, or Google's.
    pub fn token_uri(&self) -> &str {
        self.token_uri.as_deref().unwrap_or(DEFAULT_TOKEN_URI)
    }
}

/// Whether the assertion may go to `uri`: `https`, or plain `http` to a loopback host (a local
/// test double). A signed assertion is worth a token to whoever receives it.
pub fn check_token_uri(uri: &Uri) -> Result<(), String> {
    let host = uri.host().unwrap_or_default();
    let loopback = matches!(host, "localhost" | "127.0.0.1" | "[::1]" | "::1");
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if loopback => Ok(()),
        _ => Err("the service account's token_uri must be an https URL".into()),
    }
}

/// An access token as the adaptor sends it.
#[derive(Clone)]
pub struct Token {
    /// `Bearer <token>`, marked sensitive.
    pub header: HeaderValue,
    /// Which fetch produced it, to drop exactly this one after a 401.
    pub generation: u64,
    refresh_at: Instant,
    expires_at: Instant,
}

/// Why no token could be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The token endpoint refused the assertion (4xx): the credential is bad or disabled.
    #[error("the token endpoint refused the service account ({0})")]
    Refused(String),
    /// The endpoint could not be reached, failed (5xx) or answered nonsense.
    #[error("no access token: {0}")]
    Unavailable(String),
}

/// JWT claims of the assertion.
#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    scope: &'static str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct Granted {
    access_token: String,
    #[serde(default = "an_hour")]
    expires_in: u64,
}

fn an_hour() -> u64 {
    3600
}

#[derive(Deserialize)]
struct Refused {
    #[serde(default)]
    error: String,
}

/// One service account's tokens: the current one and how to get the next.
pub struct TokenSource {
    email: String,
    header: Header,
    key: EncodingKey,
    token_uri: String,
    endpoint: client::Upstream,
    /// Path and query of `token_uri`.
    path: String,
    current: Mutex<Option<Token>>,
    /// Held while fetching, so that concurrent requests share one fetch.
    fetching: tokio::sync::Mutex<()>,
    generations: AtomicU64,
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("email", &self.email)
            .field("token_uri", &self.token_uri)
            .finish_non_exhaustive()
    }
}

/// The token source of the key file `json` (parsed as `key`): the one a live adaptor already
/// uses for the same file, else a new one.
pub fn shared(client: &HttpClient, json: &str, key: &KeyFile) -> Result<Arc<TokenSource>, String> {
    static SOURCES: OnceLock<Mutex<HashMap<[u8; 32], Weak<TokenSource>>>> = OnceLock::new();
    let id: [u8; 32] = Sha256::digest(json.as_bytes()).into();
    let mut sources = SOURCES
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if let Some(source) = sources.get(&id).and_then(Weak::upgrade) {
        return Ok(source);
    }
    let source = Arc::new(TokenSource::new(client, key)?);
    sources.retain(|_, s| s.strong_count() > 0);
    sources.insert(id, Arc::downgrade(&source));
    Ok(source)
}

/// The RSA key of a PEM in PKCS#8 (`BEGIN PRIVATE KEY`, as Google issues) or PKCS#1 form, as
/// jsonwebtoken's RS256 key.
fn encoding_key(pem: &str) -> Result<EncodingKey, String> {
    let key = RsaPrivateKey::from_pkcs8_pem(pem)
        .or_else(|_| RsaPrivateKey::from_pkcs1_pem(pem))
        .map_err(|_| "the service account's private_key is not an RSA key in PEM form")?;
    let der = key
        .to_pkcs1_der()
        .map_err(|_| "the service account's private_key cannot be encoded")?;
    Ok(EncodingKey::from_rsa_der(der.as_bytes()))
}

impl TokenSource {
    pub fn new(client: &HttpClient, key: &KeyFile) -> Result<Self, String> {
        let token_uri = key.token_uri().to_owned();
        let uri: Uri = token_uri
            .parse()
            .map_err(|_| "the service account's token_uri is not a URL".to_owned())?;
        check_token_uri(&uri)?;
        let endpoint = client
            .upstream(&uri)
            .map_err(|e| format!("the service account's token_uri: {e}"))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let mut header = Header::new(Algorithm::RS256);
        header.kid = key.private_key_id.clone();
        Ok(Self {
            email: key.client_email.clone(),
            header,
            key: encoding_key(&key.private_key)?,
            token_uri,
            endpoint,
            path,
            current: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            generations: AtomicU64::new(0),
        })
    }

    fn current(&self) -> Option<Token> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// A token to send now: the current one until [`REFRESH_BEFORE`] its expiry, else a new
    /// one (one fetch for all the requests that need it at the same time).
    pub async fn token(&self) -> Result<Token, TokenError> {
        let before = self.current();
        if let Some(t) = before.as_ref().filter(|t| Instant::now() < t.refresh_at) {
            return Ok(t.clone());
        }
        let _fetching = self.fetching.lock().await;
        // Fetched by another request while this one waited: use it while it is valid.
        let seen = before.map_or(0, |t| t.generation);
        if let Some(t) = self.current().filter(|t| {
            let now = Instant::now();
            now < t.refresh_at || (t.generation != seen && now < t.expires_at)
        }) {
            return Ok(t);
        }
        let token = tokio::time::timeout(FETCH_TIMEOUT, self.fetch())
            .await
            .map_err(|_| TokenError::Unavailable("the token endpoint timed out".into()))??;
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Some(token.clone());
        Ok(token)
    }

    /// Forgets `token` (the API refused it), unless it has been replaced already.
    pub fn forget(&self, token: &Token) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current
            .as_ref()
            .is_some_and(|t| t.generation == token.generation)
        {
            *current = None;
        }
    }

    /// The signed assertion, valid from now for [`ASSERTION_SECONDS`].
    fn assertion(&self) -> Result<String, TokenError> {
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let claims = Claims {
            iss: &self.email,
            scope: SCOPE,
            aud: &self.token_uri,
            iat,
            exp: iat + ASSERTION_SECONDS,
        };
        jsonwebtoken::encode(&self.header, &claims, &self.key)
            .map_err(|_| TokenError::Refused("the assertion could not be signed".into()))
    }

    /// Posts a new assertion to the token endpoint and reads the token it grants.
    async fn fetch(&self) -> Result<Token, TokenError> {
        let body = format!("{GRANT}{}", self.assertion()?);
        let headers: [(HeaderName, &HeaderValue); 2] = [(CONTENT_TYPE, &FORM), (ACCEPT, &JSON)];
        let asked = Instant::now();
        let response = self
            .endpoint
            .post(&self.path, &headers, body.as_bytes())
            .await
            .map_err(|e| TokenError::Unavailable(format!("the token endpoint: {e}")))?;
        let status = response.status;
        let bytes = http_body_util::Limited::new(response.body, MAX_TOKEN_BODY_BYTES)
            .collect()
            .await
            .map_err(|_| TokenError::Unavailable("the token endpoint's answer failed".into()))?
            .to_bytes();
        if status.is_client_error() {
            return Err(TokenError::Refused(refusal(status, &bytes)));
        }
        let granted: Granted = serde_json::from_slice(&bytes)
            .ok()
            .filter(|_| status.is_success())
            .ok_or_else(|| {
                TokenError::Unavailable(format!("the token endpoint answered {status}"))
            })?;
        let header = sensitive(&format!("Bearer {}", granted.access_token), "access token")
            .map_err(TokenError::Unavailable)?;
        let lifetime = Duration::from_secs(granted.expires_in.min(24 * 3600));
        Ok(Token {
            header,
            generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
            refresh_at: asked + lifetime.saturating_sub(REFRESH_BEFORE),
            expires_at: asked + lifetime,
        })
    }
}

/// The status and OAuth2 `error` code of a refusal (a short code, never the description,
/// which may quote the request).
fn refusal(status: StatusCode, body: &[u8]) -> String {
    let code = serde_json::from_slice::<Refused>(body)
        .map(|r| r.error)
        .unwrap_or_default();
    let code_ok = !code.is_empty()
        && code.len() <= 40
        && code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if code_ok {
        format!("HTTP {}, {code}", status.as_u16())
    } else {
        format!("HTTP {}", status.as_u16())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http_token_uris_are_used() {
        for ok in [
            "https://oauth2.googleapis.com/token",
            "http://127.0.0.1:9999/token",
            "http://localhost/token",
        ] {
            assert!(check_token_uri(&ok.parse().unwrap()).is_ok(), "{ok}");
        }
        for bad in ["http://evil.example/token", "ftp://oauth2.googleapis.com/x"] {
            assert!(check_token_uri(&bad.parse().unwrap()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_bad_key_file_is_reported_without_its_content() {
        let err = KeyFile::parse("{\"private_key\": \"SECRET-PEM\"")
            .err()
            .unwrap();
        assert!(!err.contains("SECRET"), "{err}");
        let key = KeyFile::parse(
            r#"{"type":"service_account","private_key":"SECRET-PEM","client_email":"a@b"}"#,
        )
        .unwrap();
        assert_eq!(key.token_uri(), DEFAULT_TOKEN_URI);
        let err = encoding_key(&key.private_key).err().unwrap();
        assert!(!err.contains("SECRET"), "{err}");
    }

    #[test]
    fn refusals_keep_only_a_short_oauth_code() {
        let body = br#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#;
        assert_eq!(
            refusal(StatusCode::BAD_REQUEST, body),
            "HTTP 400, invalid_grant"
        );
        assert_eq!(
            refusal(StatusCode::UNAUTHORIZED, br#"{"error":"<script>"}"#),
            "HTTP 401"
        );
    }
}
