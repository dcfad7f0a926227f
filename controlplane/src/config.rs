//! The control plane's configuration, read in two stages like the data plane's.
//!
//! Stage one layers `SWITCHBOARD__SECTION__KEY=value` environment overrides (any depth, values
//! read as YAML scalars) onto the YAML file (or onto nothing, when no file is given) and parses
//! with every struct denying unknown fields. Stage two, [`Config::settings`], checks the values,
//! resolves the secrets and the master keys (`SWITCHBOARD_MASTER_KEYS`) and reports every
//! problem at once with its path.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::grpc::GrpcTls;
use serde::{Deserialize, Serialize};
use switchboard_shared::cluster::{DEFAULT_NAMESPACE, NatsAuth, valid_namespace};
use switchboard_shared::cluster_trust::{IngestKeys, SnapshotSigner, SnapshotVerifier};
use switchboard_shared::redis_conn::RedisTarget;
use switchboard_shared::sealed::MasterKeys;
use switchboard_shared::secret::SecretRef;
use switchboard_shared::validate::{Problem, Problems};

/// Environment variable holding the master keys that seal provider credentials.
pub const MASTER_KEYS_ENV: &str = "SWITCHBOARD_MASTER_KEYS";

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    pub database: DatabaseConfig,
    #[serde(default)]
    pub nats: NatsConfig,
    #[serde(default)]
    pub cluster: ClusterConfig,
    pub keys: KeysConfig,
    pub auth: AuthConfig,
    #[serde(default)]
    pub spend: SpendConfig,
    #[serde(default)]
    pub prices: PricesConfig,
    /// Rules for provider base URLs (scheme, host allow-list).
    #[serde(default)]
    pub providers: ProvidersConfig,
    /// The Redis the data planes count budgets in; absent: no budget reconciliation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisConfig>,
    /// OpenTelemetry trace export; every key is overridden by its standard `OTEL_*` variable
    /// (`docs/observability.md`). Absent, with no `OTEL_EXPORTER_OTLP_ENDPOINT`: no traces.
    #[serde(default)]
    pub telemetry: switchboard_shared::telemetry::TelemetryConfig,
    /// The admin console at `/ui` (docs/ui.md).
    #[serde(default)]
    pub ui: UiConfig,
}

/// The admin console (`crate::ui`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UiConfig {
    /// The URL browsers reach the admin listener at, e.g. `https://admin.example.com`: the
    /// OIDC redirect URI is `{public_url}/ui/sso/callback`, and session cookies are `Secure`
    /// when it is `https://`. Absent: `http://{server.listen}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
    /// OpenID Connect single sign-on; absent: password sign-in only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<OidcConfig>,
}

/// An OpenID Connect provider (authorization code + PKCE), found by discovery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer URL; `{issuer}/.well-known/openid-configuration` is fetched.
    pub issuer: String,
    pub client_id: String,
    /// A secret reference (`{ env: NAME }` or `{ value: ... }`).
    pub client_secret: SecretRef,
    /// Scopes asked for.
    #[serde(default = "default_oidc_scopes")]
    pub scopes: String,
    /// The ID-token claim naming the role.
    #[serde(default = "default_role_claim")]
    pub role_claim: String,
    /// Claim value -> role (`platform_admin`, `tenant_admin`, `viewer`). Empty: the claim
    /// must hold a role name itself. A value not listed is refused.
    #[serde(default)]
    pub roles: std::collections::BTreeMap<String, String>,
    /// The ID-token claim naming a tenant admin's tenant.
    #[serde(default = "default_tenant_claim")]
    pub tenant_claim: String,
    /// A button label on the sign-in page.
    #[serde(default = "default_oidc_label")]
    pub label: String,
}

fn default_oidc_scopes() -> String {
    "openid email profile".into()
}
fn default_role_claim() -> String {
    "switchboard_role".into()
}
fn default_tenant_claim() -> String {
    "switchboard_tenant".into()
}
fn default_oidc_label() -> String {
    "Sign in with SSO".into()
}

/// The data planes' Redis, whose budget counters the control plane reconciles with Postgres
/// (see `crate::budgets::counters`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]` (or `rediss://`): a secret reference, since it may
    /// hold a password. A Redis Cluster or Sentinel URL as the data planes' `redis.url`.
    pub url: SecretRef,
    /// Must equal the data planes' `redis.key_prefix`, or the counters reconciled are not the
    /// ones they charge.
    #[serde(default = "default_redis_key_prefix")]
    pub key_prefix: String,
    /// Seconds between reconciliation passes (one replica at a time, by advisory lock).
    #[serde(default = "default_reconcile_interval_seconds")]
    pub reconcile_interval_seconds: u64,
}

/// What a provider's `base_url` may be, checked on create and update: `https`, except for the
/// hosts in `http_hosts`; and, when `allowed_hosts` is not empty, a host it matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvidersConfig {
    /// Host patterns a base URL may name: `api.openai.com` (exactly) or `*.openai.azure.com`
    /// (any subdomain). Empty: any host.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Hosts a base URL may reach over plain `http` (same patterns). Default: loopback only.
    #[serde(default = "default_http_hosts")]
    pub http_hosts: Vec<String>,
}

impl Default for ProvidersConfig {
    fn default() -> Self {
        Self {
            allowed_hosts: Vec::new(),
            http_hosts: default_http_hosts(),
        }
    }
}

fn default_http_hosts() -> Vec<String> {
    ["localhost", "127.0.0.1", "::1"].map(String::from).to_vec()
}

/// Spend ingestion and storage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpendConfig {
    /// Whether this replica consumes usage events (every replica may; they share one
    /// consumer).
    #[serde(default = "yes")]
    pub ingest: bool,
    /// Days of raw spend rows kept (daily partitions dropped after); rollups stay. 0: forever.
    #[serde(default = "default_raw_retention_days")]
    pub raw_retention_days: u64,
    /// Days of request-log rows kept (daily partitions dropped after). 0: forever.
    #[serde(default = "default_request_log_retention_days")]
    pub request_log_retention_days: u64,
    /// Days of captured request content kept (opted-in tenants only). 0: forever.
    #[serde(default = "default_content_retention_days")]
    pub content_retention_days: u64,
}

impl Default for SpendConfig {
    fn default() -> Self {
        Self {
            ingest: true,
            raw_retention_days: default_raw_retention_days(),
            request_log_retention_days: default_request_log_retention_days(),
            content_retention_days: default_content_retention_days(),
        }
    }
}

/// Price sync from LiteLLM's price file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PricesConfig {
    /// URL of `model_prices_and_context_window.json`; absent: no scheduled sync (use
    /// `controlplane prices sync --file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Seconds between syncs (one replica syncs, by advisory lock).
    #[serde(default = "default_prices_interval_seconds")]
    pub interval_seconds: u64,
    /// Hosts a sync may read from (`url` and the URL of a sync on demand); empty: any. A
    /// redirect is followed only to the host it came from, whatever this says.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
}

impl Default for PricesConfig {
    fn default() -> Self {
        Self {
            url: None,
            interval_seconds: default_prices_interval_seconds(),
            allowed_hosts: Vec::new(),
        }
    }
}

fn default_redis_key_prefix() -> String {
    "switchboard".into()
}
fn default_reconcile_interval_seconds() -> u64 {
    30
}
fn yes() -> bool {
    true
}
fn default_raw_retention_days() -> u64 {
    90
}
fn default_request_log_retention_days() -> u64 {
    30
}
fn default_content_retention_days() -> u64 {
    7
}
/// Why `url` may not be synced from, if it may not: not http(s), or (with `allowed_hosts`
/// set) a host outside them.
pub fn check_price_source(url: &str, allowed_hosts: &[String]) -> Option<String> {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return Some("is not a valid URL".into());
    };
    if !matches!(parsed.scheme(), "http" | "https") {
        return Some("must be an http:// or https:// URL".into());
    }
    let host = parsed.host_str().unwrap_or_default();
    if !allowed_hosts.is_empty() && !allowed_hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        return Some(format!("host {host} is not in prices.allowed_hosts"));
    }
    None
}

fn default_prices_interval_seconds() -> u64 {
    3600
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Admin REST API.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// gRPC ConfigService.
    #[serde(default = "default_grpc_listen")]
    pub grpc_listen: SocketAddr,
    /// Largest admin request body; larger ones get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            grpc_listen: default_grpc_listen(),
            max_body_bytes: default_max_body_bytes(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://...`; may hold a password, so it is never logged.
    pub url: String,
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    /// `nats://` or `tls://` URL(s); may carry `user:password@` or `token@`.
    #[serde(default = "default_nats_url")]
    pub url: String,
    /// `.creds` file (user JWT + nkey seed) to log in with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creds_file: Option<std::path::PathBuf>,
    /// nkey seed (`SU...`) to log in with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nkey_seed: Option<SecretRef>,
    /// PEM CA file for the server's TLS certificate; makes TLS required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate and key, for a server that verifies clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<std::path::PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_key: Option<std::path::PathBuf>,
    /// Copies of each JetStream stream (config, usage) and of the snapshot object store that
    /// this plane creates: 1 for a single NATS server, 3 for a production cluster (survives
    /// the loss of one server). Applies when they are created; 1–5.
    #[serde(default = "default_nats_replicas")]
    pub replicas: usize,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: default_nats_url(),
            creds_file: None,
            nkey_seed: None,
            ca_file: None,
            client_cert: None,
            client_key: None,
            replicas: default_nats_replicas(),
        }
    }
}

fn default_nats_replicas() -> usize {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Prefix of every NATS name (see `shared::cluster::NatsNames`).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The data planes' heartbeat interval; one unseen for 3 intervals is gone.
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// How often the published head is checked against Postgres and republished if behind.
    #[serde(default = "default_reconcile_interval_ms")]
    pub reconcile_interval_ms: u64,
    /// Key-only changes travel as deltas; a full snapshot is published once this many
    /// revisions have gone out as deltas since the last one (checked every reconcile pass).
    #[serde(default = "default_full_snapshot_every_deltas")]
    pub full_snapshot_every_deltas: u64,
    /// ... or once the head is this many seconds old and deltas went out since.
    #[serde(default = "default_full_snapshot_every_seconds")]
    pub full_snapshot_every_seconds: u64,
    /// Base64 Ed25519 seed (32 bytes) every published snapshot is signed with
    /// (`docs/security.md`). Required unless `allow_unsigned_snapshots`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_signing_key: Option<SecretRef>,
    /// Further public keys (comma-separated base64) whose heads this replica accepts from
    /// other replicas, during a signing-key rotation.
    #[serde(default)]
    pub snapshot_public_keys: String,
    /// Development only: publish unsigned snapshots, take usage and heartbeats untagged and
    /// serve gRPC without a token when no key or token is configured. Logged as a warning.
    #[serde(default)]
    pub allow_unsigned_snapshots: bool,
    /// Bearer tokens (comma-separated, in one secret) data planes present to the gRPC
    /// ConfigService. Required unless `allow_unsigned_snapshots`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_tokens: Option<SecretRef>,
    /// Most concurrent `WatchSnapshot` streams; more get RESOURCE_EXHAUSTED.
    #[serde(default = "default_grpc_max_watchers")]
    pub grpc_max_watchers: usize,
    /// HMAC keys (comma-separated, in one secret) data planes tag usage events and heartbeats
    /// with; untagged or wrongly tagged ones are dropped and counted. Required unless
    /// `allow_unsigned_snapshots`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest_keys: Option<SecretRef>,
    /// Ingest keys per data plane, `DATAPLANE_ID:KEY` comma-separated in one secret (an id
    /// twice while its key rotates). A listed data plane is authenticated under its own keys
    /// only; with no `ingest_keys`, an id not listed is unknown. Refused usage events are kept
    /// as dead letters, refused heartbeats dropped; both counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane_ingest_keys: Option<SecretRef>,
    /// The gRPC ConfigService's TLS certificate chain and private key (PEM files). Required
    /// unless `grpc_plaintext` (or `allow_unsigned_snapshots`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_tls_cert_file: Option<std::path::PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_tls_key_file: Option<std::path::PathBuf>,
    /// mTLS: the CA (PEM file) data planes' client certificates must chain to; a data plane
    /// without one is refused in the handshake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_tls_client_ca_file: Option<std::path::PathBuf>,
    /// Serve gRPC without TLS, on purpose: only where no one outside the cluster can reach it
    /// or listen to it.
    #[serde(default)]
    pub grpc_plaintext: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            namespace: default_namespace(),
            heartbeat_interval_ms: default_heartbeat_interval_ms(),
            reconcile_interval_ms: default_reconcile_interval_ms(),
            full_snapshot_every_deltas: default_full_snapshot_every_deltas(),
            full_snapshot_every_seconds: default_full_snapshot_every_seconds(),
            snapshot_signing_key: None,
            snapshot_public_keys: String::new(),
            allow_unsigned_snapshots: false,
            grpc_tokens: None,
            grpc_max_watchers: default_grpc_max_watchers(),
            ingest_keys: None,
            dataplane_ingest_keys: None,
            grpc_tls_cert_file: None,
            grpc_tls_key_file: None,
            grpc_tls_client_ca_file: None,
            grpc_plaintext: false,
        }
    }
}

impl ClusterConfig {
    /// The gRPC TLS files, read; `None` for plaintext, which must be asked for (or be
    /// development mode). Problems are `(path, message)`.
    fn grpc_tls(&self) -> (Option<GrpcTls>, Vec<(String, String)>) {
        let mut problems = Vec::new();
        let mut push = |path: &str, message: &str| problems.push((path.into(), message.into()));
        let tls = match (&self.grpc_tls_cert_file, &self.grpc_tls_key_file) {
            (Some(cert), Some(key)) => {
                match GrpcTls::read(cert, key, self.grpc_tls_client_ca_file.as_deref()) {
                    Ok(tls) => Some(tls),
                    Err((path, message)) => {
                        push(path, &message);
                        None
                    }
                }
            }
            (Some(_), None) => {
                push(
                    "cluster.grpc_tls_key_file",
                    "is required with grpc_tls_cert_file",
                );
                None
            }
            (None, Some(_)) => {
                push(
                    "cluster.grpc_tls_cert_file",
                    "is required with grpc_tls_key_file",
                );
                None
            }
            (None, None) => None,
        };
        let files = self.grpc_tls_cert_file.is_some() || self.grpc_tls_key_file.is_some();
        if self.grpc_plaintext && files {
            push(
                "cluster.grpc_plaintext",
                "contradicts grpc_tls_cert_file: choose one",
            );
        }
        if !files && !self.grpc_plaintext && !self.allow_unsigned_snapshots {
            push(
                "cluster.grpc_tls_cert_file",
                "is required (with grpc_tls_key_file), or cluster.grpc_plaintext: true where \
                 only the cluster can reach the gRPC port",
            );
        }
        if !files && self.grpc_tls_client_ca_file.is_some() {
            push(
                "cluster.grpc_tls_client_ca_file",
                "needs grpc_tls_cert_file and grpc_tls_key_file",
            );
        }
        (tls, problems)
    }
}

fn default_grpc_max_watchers() -> usize {
    1024
}

/// Who the control plane trusts on the cluster channels and how it proves itself
/// (`shared::cluster_trust`, `docs/security.md`). `Debug` never shows a key or token.
#[derive(Clone, Default)]
pub struct ClusterTrust {
    /// Signs every published snapshot; `None` only with `allow_unsigned_snapshots`.
    pub signer: Option<SnapshotSigner>,
    /// Which heads (this replica's or others') are adopted; `None`: unsigned ones too.
    pub verifier: Option<SnapshotVerifier>,
    /// Accepted gRPC bearer tokens; empty refuses every call unless `allow_unauthenticated`.
    pub grpc_tokens: Vec<Vec<u8>>,
    pub allow_unauthenticated_grpc: bool,
    pub grpc_max_watchers: usize,
    /// Usage and heartbeat tag keys; `None`: untagged ones are taken (development only).
    pub ingest_keys: Option<IngestKeys>,
    /// NATS login and TLS beyond the URL.
    pub nats: NatsAuth,
    /// The gRPC ConfigService's TLS; `None`: plaintext (asked for, or development).
    pub grpc_tls: Option<GrpcTls>,
}

impl std::fmt::Debug for ClusterTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterTrust")
            .field("signer", &self.signer)
            .field("grpc_tokens", &self.grpc_tokens.len())
            .field("grpc_max_watchers", &self.grpc_max_watchers)
            .field("ingest_keys", &self.ingest_keys)
            .field("nats", &self.nats)
            .field("grpc_tls", &self.grpc_tls)
            .finish_non_exhaustive()
    }
}

impl ClusterTrust {
    /// `allow_unsigned_snapshots` without keys: nothing signed or checked (development only).
    pub fn development() -> Self {
        Self {
            allow_unauthenticated_grpc: true,
            grpc_max_watchers: default_grpc_max_watchers(),
            ..Self::default()
        }
    }

    /// Signed snapshots under `seed`, one gRPC `token`, one ingest `key` (tests and tools).
    pub fn with_keys(namespace: &str, seed: &str, token: &str, ingest_key: &str) -> Self {
        let signer = SnapshotSigner::from_base64(seed).ok();
        Self {
            verifier: signer
                .as_ref()
                .and_then(|s| SnapshotVerifier::for_signer(namespace, s, "").ok()),
            signer,
            grpc_tokens: vec![token.as_bytes().to_vec()],
            allow_unauthenticated_grpc: false,
            grpc_max_watchers: default_grpc_max_watchers(),
            ingest_keys: IngestKeys::parse(ingest_key).ok(),
            nats: NatsAuth::default(),
            grpc_tls: None,
        }
    }
}

/// The ingest keys from the shared list and the per-data-plane one; `None` with neither.
fn ingest_keys(
    shared: Option<&str>,
    per_dataplane: Option<&str>,
) -> Result<Option<IngestKeys>, (&'static str, String)> {
    let per = |e| ("cluster.dataplane_ingest_keys", e);
    match (shared, per_dataplane) {
        (Some(shared), per_dataplane) => {
            let keys = IngestKeys::parse(shared).map_err(|e| ("cluster.ingest_keys", e))?;
            match per_dataplane {
                Some(list) => keys.with_dataplanes(list).map(Some).map_err(per),
                None => Ok(Some(keys)),
            }
        }
        (None, Some(list)) => IngestKeys::dataplanes_only(list).map(Some).map_err(per),
        (None, None) => Ok(None),
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// The virtual-key pepper; the data planes' `server.key_pepper` must be the same.
    pub pepper: SecretRef,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// HMAC secret of the admin JWTs (HS256).
    pub jwt_secret: SecretRef,
    #[serde(default = "default_token_ttl_seconds")]
    pub token_ttl_seconds: u64,
    /// The JWTs' `iss`: tokens with another issuer are refused.
    #[serde(default = "default_jwt_issuer")]
    pub issuer: String,
    /// The JWTs' `aud`: tokens for another audience are refused.
    #[serde(default = "default_jwt_audience")]
    pub audience: String,
    /// Login attempts allowed per account (email, any case) per minute, per replica.
    #[serde(default = "default_login_per_account_per_minute")]
    pub login_per_account_per_minute: u32,
    /// Login attempts allowed per client IP per minute, per replica.
    #[serde(default = "default_login_per_ip_per_minute")]
    pub login_per_ip_per_minute: u32,
    /// Password checks (argon2id, 19 MiB each) run at once; a login beyond it gets 429.
    #[serde(default = "default_max_concurrent_password_checks")]
    pub max_concurrent_password_checks: u32,
}

fn default_jwt_issuer() -> String {
    "switchboard-controlplane".into()
}
fn default_jwt_audience() -> String {
    "switchboard-admin".into()
}
fn default_login_per_account_per_minute() -> u32 {
    10
}
fn default_login_per_ip_per_minute() -> u32 {
    60
}
fn default_max_concurrent_password_checks() -> u32 {
    4
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8081))
}
fn default_grpc_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8082))
}
fn default_max_body_bytes() -> usize {
    1024 * 1024
}
fn default_max_connections() -> u32 {
    10
}
fn default_nats_url() -> String {
    "nats://127.0.0.1:4222".into()
}
fn default_namespace() -> String {
    DEFAULT_NAMESPACE.into()
}
fn default_heartbeat_interval_ms() -> u64 {
    2_000
}
fn default_reconcile_interval_ms() -> u64 {
    3_000
}
fn default_full_snapshot_every_deltas() -> u64 {
    100
}
fn default_full_snapshot_every_seconds() -> u64 {
    60
}
fn default_token_ttl_seconds() -> u64 {
    900
}

/// Everything the running control plane needs, checked and with secrets resolved.
/// `Debug` is deliberately not derived: it holds the pepper and the JWT secret.
#[derive(Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub grpc_listen: SocketAddr,
    pub max_body_bytes: usize,
    pub nats_url: String,
    /// `nats.replicas`.
    pub nats_replicas: usize,
    pub namespace: String,
    pub heartbeat_interval: Duration,
    pub reconcile_interval: Duration,
    /// When deltas are followed by a full snapshot.
    pub full_snapshots: crate::publish::FullSnapshots,
    pub pepper: Vec<u8>,
    pub jwt_secret: Vec<u8>,
    pub token_ttl: Duration,
    /// JWT issuer and audience, login rate limits and the password-check cap.
    pub admin_auth: AdminAuthSettings,
    /// Rules for provider base URLs.
    pub providers: ProvidersConfig,
    pub master_keys: MasterKeys,
    pub spend: SpendConfig,
    pub prices: PricesConfig,
    /// Budget counter reconciliation; `None` when there is no `redis` section.
    pub redis: Option<RedisSettings>,
    /// Snapshot signing, gRPC tokens, ingest keys, NATS login.
    pub trust: ClusterTrust,
    /// The admin console.
    pub ui: UiSettings,
}

/// The `ui` section, checked, with the OIDC client secret resolved.
#[derive(Clone, Default)]
pub struct UiSettings {
    /// Without a trailing `/`; `None`: `http://{listen}`.
    pub public_url: Option<String>,
    pub oidc: Option<OidcSettings>,
}

/// An OIDC provider, checked. `Debug` is not derived: it holds the client secret.
#[derive(Clone)]
pub struct OidcSettings {
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    pub scopes: String,
    pub role_claim: String,
    /// Claim value -> role name, checked to be one of the three.
    pub roles: std::collections::BTreeMap<String, String>,
    pub tenant_claim: String,
    pub label: String,
}

/// How admin sessions are issued and checked, and how logins are limited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminAuthSettings {
    pub issuer: String,
    pub audience: String,
    pub login_per_account_per_minute: u32,
    pub login_per_ip_per_minute: u32,
    pub max_concurrent_password_checks: u32,
}

impl Default for AdminAuthSettings {
    fn default() -> Self {
        Self {
            issuer: default_jwt_issuer(),
            audience: default_jwt_audience(),
            login_per_account_per_minute: default_login_per_account_per_minute(),
            login_per_ip_per_minute: default_login_per_ip_per_minute(),
            max_concurrent_password_checks: default_max_concurrent_password_checks(),
        }
    }
}

/// The `redis` section, checked, with the URL resolved. Its `Debug` never shows the URL (it
/// may hold a password).
#[derive(Clone)]
pub struct RedisSettings {
    pub url: String,
    pub key_prefix: String,
    pub reconcile_interval: Duration,
}

/// Where Redis is, for `switchboard_shared::redis_conn`; calls may take up to `timeout`.
pub fn redis_target(url: &str, timeout: Duration) -> RedisTarget<'_> {
    RedisTarget {
        url,
        connect_timeout: Duration::from_secs(2),
        response_timeout: timeout,
    }
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &"<redacted>")
            .field("key_prefix", &self.key_prefix)
            .field("reconcile_interval", &self.reconcile_interval)
            .finish()
    }
}

/// The `ui.oidc` section with its secret resolved (role names checked by `check_ui`).
fn oidc_settings(o: &OidcConfig, client_secret: String) -> OidcSettings {
    OidcSettings {
        issuer: o.issuer.trim_end_matches('/').to_owned(),
        client_id: o.client_id.clone(),
        client_secret,
        scopes: o.scopes.clone(),
        role_claim: o.role_claim.clone(),
        roles: o.roles.clone(),
        tenant_claim: o.tenant_claim.clone(),
        label: o.label.clone(),
    }
}

impl Config {
    /// The `ui` section's URLs and role names.
    fn check_ui(&self, push: &mut impl FnMut(&str, String)) {
        let http = |u: &str| u.starts_with("http://") || u.starts_with("https://");
        if let Some(url) = &self.ui.public_url
            && !http(url)
        {
            push("ui.public_url", "must be an http:// or https:// URL".into());
        }
        let Some(o) = &self.ui.oidc else { return };
        if !http(&o.issuer) {
            push(
                "ui.oidc.issuer",
                "must be an http:// or https:// URL".into(),
            );
        }
        if o.client_id.is_empty() {
            push("ui.oidc.client_id", "must not be empty".into());
        }
        if !o.scopes.split_whitespace().any(|s| s == "openid") {
            push("ui.oidc.scopes", "must include openid".into());
        }
        for (claim, role) in &o.roles {
            if !matches!(role.as_str(), "platform_admin" | "tenant_admin" | "viewer") {
                push(
                    &format!("ui.oidc.roles.{claim}"),
                    "must be platform_admin, tenant_admin or viewer".into(),
                );
            }
        }
    }
}

/// Why a config could not be loaded. `Display` lists everything wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config: {0}")]
    Parse(String),
    #[error("config: {0}")]
    Invalid(Problems),
}

impl Config {
    /// Reads the file (if any), layers `env` overrides and parses. Does not validate.
    pub fn load(path: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.display().to_string(),
                source,
            })?,
            None => String::new(),
        };
        Self::parse(&text, env).map_err(ConfigError::Parse)
    }

    /// Parses file text with environment overrides (`SWITCHBOARD__A__B=value`).
    pub fn parse(text: &str, env: &[(String, String)]) -> Result<Config, String> {
        switchboard_shared::layered_config::parse(text, env)
    }

    /// Checks values, resolves secrets (through `env`) and master keys; lists every problem.
    pub fn settings(&self, env: &[(String, String)]) -> Result<Settings, Problems> {
        let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let mut problems = Vec::new();
        let mut push = |path: &str, message: String| {
            problems.push(Problem {
                path: path.into(),
                message,
            });
        };
        self.check_values(&mut push);
        let mut secret = |path: &str, r: &SecretRef, min_len: usize| -> Vec<u8> {
            match r.resolve_with(lookup, None) {
                Ok(v) if v.len() >= min_len => v.into_bytes(),
                Ok(_) => {
                    push(path, format!("must be at least {min_len} bytes long"));
                    Vec::new()
                }
                Err(e) => {
                    push(path, e.to_string());
                    Vec::new()
                }
            }
        };
        let pepper = secret("keys.pepper", &self.keys.pepper, 1);
        let jwt_secret = secret("auth.jwt_secret", &self.auth.jwt_secret, 32);
        let redis_url = self
            .redis
            .as_ref()
            .map(|r| String::from_utf8(secret("redis.url", &r.url, 1)).unwrap_or_default());
        let oidc = self.ui.oidc.as_ref().map(|o| {
            let client_secret = secret("ui.oidc.client_secret", &o.client_secret, 1);
            oidc_settings(o, String::from_utf8(client_secret).unwrap_or_default())
        });
        let (trust, trust_problems) = self.trust(&mut secret);
        let redis = match (&self.redis, redis_url) {
            (Some(r), Some(url)) => {
                if !url.is_empty()
                    && let Some(problem) = redis_target(&url, Duration::from_secs(5)).problem()
                {
                    // The problem names what is wrong, never the URL (it may hold a password).
                    push("redis.url", problem);
                }
                Some(RedisSettings {
                    url,
                    key_prefix: r.key_prefix.clone(),
                    reconcile_interval: Duration::from_secs(r.reconcile_interval_seconds),
                })
            }
            _ => None,
        };
        for (path, message) in trust_problems {
            push(&path, message);
        }
        let master_keys = master_keys(lookup(MASTER_KEYS_ENV), &mut push);
        match master_keys {
            Some(master_keys) if problems.is_empty() => Ok(Settings {
                listen: self.server.listen,
                grpc_listen: self.server.grpc_listen,
                max_body_bytes: self.server.max_body_bytes,
                nats_url: self.nats.url.clone(),
                nats_replicas: self.nats.replicas,
                namespace: self.cluster.namespace.clone(),
                heartbeat_interval: Duration::from_millis(self.cluster.heartbeat_interval_ms),
                reconcile_interval: Duration::from_millis(self.cluster.reconcile_interval_ms),
                full_snapshots: crate::publish::FullSnapshots {
                    every_deltas: self.cluster.full_snapshot_every_deltas.max(1),
                    every: Duration::from_secs(self.cluster.full_snapshot_every_seconds),
                },
                pepper,
                jwt_secret,
                token_ttl: Duration::from_secs(self.auth.token_ttl_seconds),
                admin_auth: AdminAuthSettings {
                    issuer: self.auth.issuer.clone(),
                    audience: self.auth.audience.clone(),
                    login_per_account_per_minute: self.auth.login_per_account_per_minute,
                    login_per_ip_per_minute: self.auth.login_per_ip_per_minute,
                    max_concurrent_password_checks: self.auth.max_concurrent_password_checks,
                },
                providers: self.providers.clone(),
                master_keys,
                spend: self.spend.clone(),
                prices: self.prices.clone(),
                redis,
                ui: UiSettings {
                    public_url: self
                        .ui
                        .public_url
                        .as_ref()
                        .map(|u| u.trim_end_matches('/').to_owned()),
                    oidc,
                },
                trust,
            }),
            _ => Err(Problems(problems)),
        }
    }

    /// The cluster's keys and tokens, resolved through `secret` (which reports its own
    /// problems); what is missing is reported unless `allow_unsigned_snapshots`.
    fn trust(
        &self,
        secret: &mut impl FnMut(&str, &SecretRef, usize) -> Vec<u8>,
    ) -> (ClusterTrust, Vec<(String, String)>) {
        let mut problems = Vec::new();
        let mut push = |path: &str, message: String| problems.push((path.to_owned(), message));
        let c = &self.cluster;
        let mut text = |path: &str, r: &Option<SecretRef>| {
            r.as_ref()
                .map(|r| String::from_utf8_lossy(&secret(path, r, 1)).into_owned())
                .filter(|v| !v.is_empty())
        };
        let seed = text("cluster.snapshot_signing_key", &c.snapshot_signing_key);
        let tokens = text("cluster.grpc_tokens", &c.grpc_tokens);
        let ingest = text("cluster.ingest_keys", &c.ingest_keys);
        let per_dataplane = text("cluster.dataplane_ingest_keys", &c.dataplane_ingest_keys);
        let nkey_seed = text("nats.nkey_seed", &self.nats.nkey_seed);
        let mut trust = ClusterTrust {
            grpc_max_watchers: c.grpc_max_watchers,
            allow_unauthenticated_grpc: c.allow_unsigned_snapshots,
            ..ClusterTrust::default()
        };
        let required =
            "is required (or, for development only, cluster.allow_unsigned_snapshots: true)";
        match seed.as_deref().map(SnapshotSigner::from_base64) {
            Some(Ok(signer)) => {
                match SnapshotVerifier::for_signer(&c.namespace, &signer, &c.snapshot_public_keys) {
                    Ok(v) => trust.verifier = Some(v),
                    Err(e) => push("cluster.snapshot_public_keys", e.to_string()),
                }
                trust.signer = Some(signer);
            }
            Some(Err(e)) => push("cluster.snapshot_signing_key", e.to_string()),
            None if !c.allow_unsigned_snapshots => {
                push("cluster.snapshot_signing_key", required.into());
            }
            None => {}
        }
        match &tokens {
            Some(list) => {
                trust.grpc_tokens = list
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(|t| t.as_bytes().to_vec())
                    .collect();
                if trust.grpc_tokens.iter().any(|t| t.len() < 16) {
                    push(
                        "cluster.grpc_tokens",
                        "each token must be at least 16 bytes long".into(),
                    );
                }
            }
            None if !c.allow_unsigned_snapshots => push("cluster.grpc_tokens", required.into()),
            None => {}
        }
        let keys = ingest_keys(ingest.as_deref(), per_dataplane.as_deref());
        match keys {
            Ok(keys) => trust.ingest_keys = keys,
            Err((path, e)) => push(path, e),
        }
        if ingest.is_none() && per_dataplane.is_none() && !c.allow_unsigned_snapshots {
            push("cluster.ingest_keys", required.into());
        }
        if c.grpc_max_watchers == 0 {
            push("cluster.grpc_max_watchers", "must be positive".into());
        }
        trust.nats = NatsAuth {
            creds_file: self.nats.creds_file.clone(),
            nkey_seed,
            ca_file: self.nats.ca_file.clone(),
            client_cert: self.nats.client_cert.clone(),
            client_key: self.nats.client_key.clone(),
        };
        for (path, message) in trust.nats.problems(&self.nats.url, "nats") {
            push(&path, message);
        }
        let (grpc_tls, tls_problems) = c.grpc_tls();
        trust.grpc_tls = grpc_tls;
        problems.extend(tls_problems);
        (trust, problems)
    }

    /// The problems of plain values (positive sizes and intervals, URL schemes, prefixes).
    fn check_values(&self, push: &mut impl FnMut(&str, String)) {
        if self.server.max_body_bytes == 0 {
            push("server.max_body_bytes", "must be positive".into());
        }
        if !(1..=5).contains(&self.nats.replicas) {
            push("nats.replicas", "must be between 1 and 5".into());
        }
        if self.database.url.trim().is_empty() {
            push("database.url", "must not be empty".into());
        }
        if self.database.max_connections == 0 {
            push("database.max_connections", "must be positive".into());
        }
        if !valid_namespace(&self.cluster.namespace) {
            push(
                "cluster.namespace",
                "1-32 ASCII letters, digits, '-' or '_', starting with a letter".into(),
            );
        }
        if self.cluster.heartbeat_interval_ms == 0 {
            push("cluster.heartbeat_interval_ms", "must be positive".into());
        }
        if self.cluster.reconcile_interval_ms == 0 {
            push("cluster.reconcile_interval_ms", "must be positive".into());
        }
        if let Some(url) = &self.prices.url
            && let Some(problem) = check_price_source(url, &self.prices.allowed_hosts)
        {
            push("prices.url", problem);
        }
        if self.prices.interval_seconds < 60 {
            push("prices.interval_seconds", "must be at least 60".into());
        }
        self.check_ui(push);
        if self.auth.token_ttl_seconds == 0 {
            push("auth.token_ttl_seconds", "must be positive".into());
        }
        self.check_auth(push);
        if let Some(r) = &self.redis {
            // The data planes' rule for the same prefix.
            let prefix_ok = !r.key_prefix.is_empty()
                && r.key_prefix.len() <= 64
                && r.key_prefix
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
            if !prefix_ok {
                push(
                    "redis.key_prefix",
                    "1-64 characters of letters, digits, '-', '_', '.', ':'".into(),
                );
            }
            if !(1..=3600).contains(&r.reconcile_interval_seconds) {
                push(
                    "redis.reconcile_interval_seconds",
                    "must be between 1 and 3600".into(),
                );
            }
        }
    }
}

impl Config {
    /// The problems of the `auth` section's plain values.
    fn check_auth(&self, push: &mut impl FnMut(&str, String)) {
        let a = &self.auth;
        for (path, value) in [("auth.issuer", &a.issuer), ("auth.audience", &a.audience)] {
            if value.trim().is_empty() {
                push(path, "must not be empty".into());
            }
        }
        for (path, value) in [
            (
                "auth.login_per_account_per_minute",
                a.login_per_account_per_minute,
            ),
            ("auth.login_per_ip_per_minute", a.login_per_ip_per_minute),
            (
                "auth.max_concurrent_password_checks",
                a.max_concurrent_password_checks,
            ),
        ] {
            if value == 0 {
                push(path, "must be positive".into());
            }
        }
        if a.max_concurrent_password_checks > 256 {
            push(
                "auth.max_concurrent_password_checks",
                "must be at most 256 (each check holds 19 MiB)".into(),
            );
        }
    }
}

/// The master keys from `SWITCHBOARD_MASTER_KEYS` (`spec`), or the problem with them.
fn master_keys(spec: Option<String>, push: &mut impl FnMut(&str, String)) -> Option<MasterKeys> {
    match spec {
        None => {
            push(
                MASTER_KEYS_ENV,
                "is not set: provider credentials cannot be sealed without master keys".into(),
            );
            None
        }
        Some(spec) => match MasterKeys::parse(&spec) {
            Ok(keys) => Some(keys),
            Err(e) => {
                push(MASTER_KEYS_ENV, e.to_string());
                None
            }
        },
    }
}

pub use switchboard_shared::layered_config::process_env;

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
database: { url: "postgres://postgres@127.0.0.1/x" }
keys: { pepper: { value: "pepper" } }
auth: { jwt_secret: { env: TEST_JWT } }
cluster:
  snapshot_signing_key: { value: "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=" }
  grpc_tokens: { value: "grpc-token-0123456789" }
  ingest_keys: { value: "ingest-key-0123456789" }
  grpc_plaintext: true
"#;
    const MK: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_and_overrides_apply() {
        let e = env(&[
            ("TEST_JWT", &"j".repeat(32)),
            (MASTER_KEYS_ENV, MK),
            ("SWITCHBOARD__CLUSTER__NAMESPACE", "ns1"),
            ("SWITCHBOARD__SERVER__LISTEN", "127.0.0.1:9000"),
        ]);
        let c = Config::parse(FILE, &e).unwrap();
        let s = c.settings(&e).unwrap();
        assert_eq!(s.listen.port(), 9000);
        assert_eq!(s.grpc_listen, default_grpc_listen());
        assert_eq!(s.namespace, "ns1");
        assert_eq!(s.token_ttl, Duration::from_secs(900));
        assert_eq!(s.pepper, b"pepper");
    }

    #[test]
    fn the_whole_config_can_come_from_the_environment() {
        let e = env(&[
            ("SWITCHBOARD__DATABASE__URL", "postgres://x"),
            ("SWITCHBOARD__KEYS__PEPPER__VALUE", "p"),
            ("SWITCHBOARD__AUTH__JWT_SECRET__VALUE", &"s".repeat(40)),
            (MASTER_KEYS_ENV, MK),
            (
                "SWITCHBOARD__CLUSTER__SNAPSHOT_SIGNING_KEY__VALUE",
                "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
            ),
            (
                "SWITCHBOARD__CLUSTER__GRPC_TOKENS__VALUE",
                "t-0123456789abcdef",
            ),
            (
                "SWITCHBOARD__CLUSTER__INGEST_KEYS__VALUE",
                "k-0123456789abcdef",
            ),
            ("SWITCHBOARD__CLUSTER__GRPC_PLAINTEXT", "true"),
        ]);
        let c = Config::parse("", &e).unwrap();
        assert!(c.settings(&e).is_ok());
    }

    #[test]
    fn grpc_is_tls_unless_plaintext_is_asked_for_and_ingest_keys_may_be_per_data_plane() {
        let e = env(&[("TEST_JWT", &"j".repeat(32)), (MASTER_KEYS_ENV, MK)]);
        let problems = |file: &str| match Config::parse(file, &e).unwrap().settings(&e) {
            Ok(_) => Vec::new(),
            Err(p) => p.0.iter().map(|p| p.path.clone()).collect::<Vec<_>>(),
        };
        let without = FILE.replace("  grpc_plaintext: true\n", "");
        assert_eq!(problems(&without), ["cluster.grpc_tls_cert_file"]);
        let half = format!("{without}  grpc_tls_cert_file: /nonexistent/cert.pem\n");
        assert_eq!(problems(&half), ["cluster.grpc_tls_key_file"]);
        let both = format!("{half}  grpc_tls_key_file: /nonexistent/key.pem\n");
        assert_eq!(problems(&both), ["cluster.grpc_tls_cert_file"]);
        assert!(
            problems(&format!("{both}  grpc_plaintext: true\n"))
                .contains(&"cluster.grpc_plaintext".to_owned())
        );
        let per_dataplane = FILE.replace(
            "ingest_keys: { value: \"ingest-key-0123456789\" }",
            "dataplane_ingest_keys: { value: \"dp-1:dp-1-key-0123456789\" }",
        );
        assert!(problems(&per_dataplane).is_empty());
        let bad = per_dataplane.replace("dp-1:dp-1-key-0123456789", "dp-1-key-0123456789");
        assert_eq!(problems(&bad), ["cluster.dataplane_ingest_keys"]);
    }

    #[test]
    fn the_redis_section_is_optional_and_can_come_from_the_environment() {
        let base = env(&[("TEST_JWT", &"j".repeat(32)), (MASTER_KEYS_ENV, MK)]);
        let c = Config::parse(FILE, &base).unwrap();
        assert!(c.settings(&base).unwrap().redis.is_none());

        let mut e = base.clone();
        e.extend(env(&[
            ("SWITCHBOARD__REDIS__URL__ENV", "TEST_REDIS"),
            ("TEST_REDIS", "redis://:hunter2@127.0.0.1:6379/0"),
        ]));
        let s = Config::parse(FILE, &e).unwrap().settings(&e).unwrap();
        let redis = s.redis.unwrap();
        assert_eq!(redis.url, "redis://:hunter2@127.0.0.1:6379/0");
        assert_eq!(redis.key_prefix, "switchboard");
        assert_eq!(redis.reconcile_interval, Duration::from_secs(30));
        assert!(!format!("{redis:?}").contains("hunter2"));

        e.extend(env(&[
            ("SWITCHBOARD__REDIS__KEY_PREFIX", "sb-prod"),
            ("SWITCHBOARD__REDIS__RECONCILE_INTERVAL_SECONDS", "5"),
        ]));
        let redis = Config::parse(FILE, &e)
            .unwrap()
            .settings(&e)
            .unwrap()
            .redis
            .unwrap();
        assert_eq!(redis.key_prefix, "sb-prod");
        assert_eq!(redis.reconcile_interval, Duration::from_secs(5));
    }

    #[test]
    fn a_bad_redis_section_is_reported_without_its_password() {
        let e = env(&[
            ("TEST_JWT", &"j".repeat(32)),
            (MASTER_KEYS_ENV, MK),
            ("SWITCHBOARD__REDIS__URL__VALUE", "mysql://root:hunter2@db"),
            ("SWITCHBOARD__REDIS__KEY_PREFIX", "bad prefix"),
            ("SWITCHBOARD__REDIS__RECONCILE_INTERVAL_SECONDS", "0"),
        ]);
        let text = Config::parse(FILE, &e)
            .unwrap()
            .settings(&e)
            .err()
            .unwrap()
            .to_string();
        for path in [
            "redis.url",
            "redis.key_prefix",
            "redis.reconcile_interval_seconds",
        ] {
            assert!(
                text.contains(&format!("{path}:")),
                "{path} missing in {text}"
            );
        }
        assert!(!text.contains("hunter2"), "a secret leaked: {text}");
        let err = Config::parse(
            &format!("{FILE}redis: {{ url: {{ value: x }}, db: 1 }}\n"),
            &[],
        )
        .unwrap_err();
        assert!(err.contains("db"), "{err}");
    }

    #[test]
    fn cluster_keys_are_required_unless_explicitly_allowed_for_development() {
        let e = env(&[("TEST_JWT", &"j".repeat(32)), (MASTER_KEYS_ENV, MK)]);
        let bare = FILE.split("cluster:").next().unwrap();
        let text = Config::parse(bare, &e)
            .unwrap()
            .settings(&e)
            .err()
            .unwrap()
            .to_string();
        for path in [
            "cluster.snapshot_signing_key",
            "cluster.grpc_tokens",
            "cluster.ingest_keys",
        ] {
            assert!(text.contains(path), "{path} missing in {text}");
        }
        let dev = format!("{bare}cluster: {{ allow_unsigned_snapshots: true }}\n");
        let s = Config::parse(&dev, &e).unwrap().settings(&e).unwrap();
        assert!(s.trust.signer.is_none() && s.trust.allow_unauthenticated_grpc);
        let s = Config::parse(FILE, &e).unwrap().settings(&e).unwrap();
        assert!(s.trust.signer.is_some() && s.trust.verifier.is_some());
        assert_eq!(s.trust.grpc_max_watchers, 1024);
        let debug = format!("{:?}", s.trust);
        assert!(
            !debug.contains("grpc-token") && !debug.contains("ingest-key"),
            "{debug}"
        );
        let bad = FILE.replace("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=", "AAAA");
        let text = Config::parse(&bad, &e)
            .unwrap()
            .settings(&e)
            .err()
            .unwrap()
            .to_string();
        assert!(
            text.contains("cluster.snapshot_signing_key: must be 32 bytes"),
            "{text}"
        );
    }

    #[test]
    fn the_ui_section_reads_oidc_with_its_secret_and_reports_bad_values() {
        let ui = "ui:\n  public_url: https://admin.example.com/\n  oidc:\n    issuer: https://idp.example/\n    \
                  client_id: console\n    client_secret: { env: TEST_OIDC }\n    roles: { ops: platform_admin }\n";
        let e = env(&[
            ("TEST_JWT", &"j".repeat(32)),
            (MASTER_KEYS_ENV, MK),
            ("TEST_OIDC", "client-secret-1"),
        ]);
        let file = format!("{FILE}{ui}");
        let s = Config::parse(&file, &e).unwrap().settings(&e).unwrap();
        assert_eq!(
            s.ui.public_url.as_deref(),
            Some("https://admin.example.com")
        );
        let o = s.ui.oidc.unwrap();
        assert_eq!(o.issuer, "https://idp.example");
        assert_eq!(o.client_secret, "client-secret-1");
        assert_eq!(o.roles["ops"], "platform_admin");
        assert_eq!(o.role_claim, "switchboard_role");

        let bad = "ui:\n  public_url: ftp://x\n  oidc:\n    issuer: idp\n    client_id: ''\n    \
                   client_secret: { env: MISSING_OIDC }\n    scopes: email\n    roles: { ops: root }\n";
        let text = Config::parse(&format!("{FILE}{bad}"), &e)
            .unwrap()
            .settings(&e)
            .err()
            .unwrap()
            .to_string();
        for path in [
            "ui.public_url",
            "ui.oidc.issuer",
            "ui.oidc.client_id",
            "ui.oidc.client_secret",
            "ui.oidc.scopes",
            "ui.oidc.roles.ops",
        ] {
            assert!(text.contains(path), "{path} missing from: {text}");
        }
    }

    #[test]
    fn every_problem_is_listed_with_its_path() {
        let e = env(&[
            ("TEST_JWT", "short"),
            ("SWITCHBOARD__CLUSTER__NAMESPACE", "bad.ns"),
            ("SWITCHBOARD__AUTH__TOKEN_TTL_SECONDS", "0"),
        ]);
        let c = Config::parse(FILE, &e).unwrap();
        let text = c.settings(&e).err().unwrap().to_string();
        for path in [
            "cluster.namespace",
            "auth.token_ttl_seconds",
            "auth.jwt_secret",
            MASTER_KEYS_ENV,
        ] {
            assert!(
                text.contains(&format!("{path}:")),
                "{path} missing in {text}"
            );
        }
        assert!(!text.contains("short"), "a secret leaked: {text}");
        let err = Config::parse(&FILE.replace("pepper:", "peper:"), &[]).unwrap_err();
        assert!(err.contains("peper"), "{err}");
    }
}
