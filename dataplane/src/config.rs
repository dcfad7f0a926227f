//! The data plane's configuration file, read in two stages.
//!
//! Stage one parses the file (YAML or JSON) with every struct denying unknown fields, after
//! layering environment overrides onto it: `SWITCHBOARD__SERVER__MAX_BODY_BYTES=1048576` sets
//! `server.max_body_bytes`, any depth, values read as YAML scalars. Stage two, [`Config::validate`],
//! checks the values and the embedded snapshot and reports every problem with its path.
//!
//! In standalone mode the file also carries the snapshot (`snapshot:`), which is what a
//! reload (`SIGHUP` or a change to the file) swaps in. In cluster mode it has a `cluster:`
//! section instead, saying where the control plane publishes snapshots ([`ClusterConfig`],
//! see `crate::cluster`); exactly one of the two is present. The `server` section is read at
//! start only; a reload that changes it logs that a restart is needed.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use switchboard_shared::cluster::{DEFAULT_NAMESPACE, NatsAuth, valid_namespace};
use switchboard_shared::cluster_trust::{IngestKeys, SnapshotVerifier};
use switchboard_shared::secret::SecretRef;
use switchboard_shared::snapshot::Snapshot;
use switchboard_shared::validate::{Problem, Problems};

/// The whole file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    /// Shared cluster state. Absent: limits and deployment stats are this process's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<crate::shared_redis::RedisConfig>,
    /// Where budget alerts are POSTed (signed). Absent: alerts are log lines only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhooks: Option<crate::webhooks::WebhookConfig>,
    /// The snapshot to serve (standalone mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Snapshot>,
    /// Where to get snapshots from (cluster mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
    /// OpenTelemetry trace export; every key is overridden by its standard `OTEL_*` variable
    /// (`docs/observability.md`). Absent, with no `OTEL_EXPORTER_OTLP_ENDPOINT`: no traces.
    #[serde(default)]
    pub telemetry: switchboard_shared::telemetry::TelemetryConfig,
}

/// Cluster mode: snapshots come from the control plane over NATS JetStream, with gRPC as the
/// bootstrap and fallback path (`docs/cluster.md`). At least one of the two URLs is needed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The control plane's gRPC `ConfigService`, e.g. `http://controlplane:8082`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controlplane_grpc: Option<String>,
    /// NATS server(s), e.g. `nats://127.0.0.1:4222`; several comma-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_url: Option<String>,
    /// Prefix of every NATS name; must match the control plane's.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// This data plane's id in heartbeats; default `<hostname>-<random>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataplane_id: Option<String>,
    #[serde(default = "default_heartbeat_interval_ms")]
    pub heartbeat_interval_ms: u64,
    /// File keeping the last installed snapshot, served at start until something newer comes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_cache: Option<std::path::PathBuf>,
    /// Usage records held in memory while NATS is unreachable, before spilling (or dropping).
    #[serde(default = "default_usage_queue_capacity")]
    pub usage_queue_capacity: usize,
    /// File that takes the usage records that don't fit in memory during a NATS outage; they
    /// are published from it once NATS is back (also after a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage_spill_path: Option<std::path::PathBuf>,
    /// Largest size of the spill file in bytes; past it its oldest records are dropped
    /// (counted as `switchboard_usage_records_total{result="evicted"}`).
    #[serde(default = "default_usage_spill_max_bytes")]
    pub usage_spill_max_bytes: u64,
    /// The control plane's snapshot public key(s), base64, comma-separated: a snapshot (from
    /// NATS, gRPC or the cache file) is installed only if signed by one of them. Several while
    /// a signing key is rotated (`docs/security.md`). Required unless
    /// `allow_unsigned_snapshots`.
    #[serde(default)]
    pub snapshot_public_keys: String,
    /// Development only: install unsigned snapshots and send usage and heartbeats untagged
    /// when no key is configured. Logged as a warning.
    #[serde(default)]
    pub allow_unsigned_snapshots: bool,
    /// Bearer token presented to the control plane's gRPC ConfigService (one of its
    /// `cluster.grpc_tokens`). Required with `controlplane_grpc` unless
    /// `allow_unsigned_snapshots`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controlplane_grpc_token: Option<SecretRef>,
    /// The key usage events and heartbeats are tagged with (one of the control plane's
    /// `cluster.ingest_keys`). Required with `nats_url` unless `allow_unsigned_snapshots`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest_key: Option<SecretRef>,
    /// NATS login beyond the URL's `user:password@`/`token@`: a `.creds` file or an nkey seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_creds_file: Option<std::path::PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_nkey_seed: Option<SecretRef>,
    /// NATS TLS: the CA the server's certificate must chain to (makes TLS required, as a
    /// `tls://` URL does), and an optional client certificate and key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_ca_file: Option<std::path::PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_client_cert: Option<std::path::PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nats_client_key: Option<std::path::PathBuf>,
    /// gRPC TLS (an `https://` `controlplane_grpc`): the CA (PEM file) the control plane's
    /// certificate must chain to. Required with https; an `http://` URL is plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controlplane_grpc_ca_file: Option<std::path::PathBuf>,
    /// gRPC mTLS: this data plane's client certificate chain and private key (PEM files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controlplane_grpc_client_cert: Option<std::path::PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controlplane_grpc_client_key: Option<std::path::PathBuf>,
}

fn default_usage_queue_capacity() -> usize {
    100_000
}

/// `usage_publisher::DEFAULT_SPILL_MAX_BYTES` (that module sits above this one).
fn default_usage_spill_max_bytes() -> u64 {
    256 * 1024 * 1024
}

impl ClusterConfig {
    /// A cluster section with only the two URLs set and everything else at its default.
    pub fn with_urls(controlplane_grpc: Option<String>, nats_url: Option<String>) -> Self {
        Self {
            controlplane_grpc,
            nats_url,
            namespace: default_namespace(),
            dataplane_id: None,
            heartbeat_interval_ms: default_heartbeat_interval_ms(),
            snapshot_cache: None,
            usage_queue_capacity: default_usage_queue_capacity(),
            usage_spill_path: None,
            usage_spill_max_bytes: default_usage_spill_max_bytes(),
            snapshot_public_keys: String::new(),
            allow_unsigned_snapshots: false,
            controlplane_grpc_token: None,
            ingest_key: None,
            nats_creds_file: None,
            nats_nkey_seed: None,
            nats_ca_file: None,
            nats_client_cert: None,
            nats_client_key: None,
            controlplane_grpc_ca_file: None,
            controlplane_grpc_client_cert: None,
            controlplane_grpc_client_key: None,
        }
    }

    /// The snapshot verifier, or `None` when unsigned snapshots are allowed and no key is
    /// configured.
    pub fn snapshot_verifier(&self) -> anyhow::Result<Option<SnapshotVerifier>> {
        if self.snapshot_public_keys.trim().is_empty() && self.allow_unsigned_snapshots {
            return Ok(None);
        }
        SnapshotVerifier::parse(&self.namespace, &self.snapshot_public_keys)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("cluster.snapshot_public_keys: {e}"))
    }

    /// The ingest key, resolved; `None` without one.
    pub fn ingest_keys(&self) -> anyhow::Result<Option<IngestKeys>> {
        let Some(secret) = &self.ingest_key else {
            return Ok(None);
        };
        let value = secret
            .resolve()
            .map_err(|e| anyhow::anyhow!("cluster.ingest_key: {e}"))?;
        IngestKeys::parse(&value)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("cluster.ingest_key: {e}"))
    }

    /// The NATS login and TLS settings beyond the URL, with the nkey seed resolved.
    pub fn nats_auth(&self) -> anyhow::Result<NatsAuth> {
        let nkey_seed = match &self.nats_nkey_seed {
            Some(secret) => Some(
                secret
                    .resolve()
                    .map_err(|e| anyhow::anyhow!("cluster.nats_nkey_seed: {e}"))?,
            ),
            None => None,
        };
        Ok(NatsAuth {
            creds_file: self.nats_creds_file.clone(),
            nkey_seed,
            ca_file: self.nats_ca_file.clone(),
            client_cert: self.nats_client_cert.clone(),
            client_key: self.nats_client_key.clone(),
        })
    }

    /// Problems of the keys and credentials (see each field).
    fn validate_trust(&self, push: &mut impl FnMut(&str, &str)) {
        // The accessors' errors name their path already.
        let mut push = |path: &str, message: &str| {
            push(path, message.trim_start_matches(&format!("{path}: ")));
        };
        let required = "is required (or, for development only, allow_unsigned_snapshots: true)";
        if !self.allow_unsigned_snapshots {
            if self.snapshot_public_keys.trim().is_empty() {
                push("cluster.snapshot_public_keys", required);
            }
            if self.controlplane_grpc.is_some() && self.controlplane_grpc_token.is_none() {
                push("cluster.controlplane_grpc_token", required);
            }
            if self.nats_url.is_some() && self.ingest_key.is_none() {
                push("cluster.ingest_key", required);
            }
        }
        if !self.snapshot_public_keys.trim().is_empty()
            && let Err(e) = self.snapshot_verifier()
        {
            push("cluster.snapshot_public_keys", &e.to_string());
        }
        if let Err(e) = self.ingest_keys() {
            push("cluster.ingest_key", &e.to_string());
        }
        if let Some(token) = &self.controlplane_grpc_token
            && let Err(e) = token.resolve()
        {
            push("cluster.controlplane_grpc_token", &e.to_string());
        }
        match self.nats_auth() {
            Ok(auth) => {
                let url = self.nats_url.as_deref().unwrap_or_default();
                for (path, message) in auth.problems(url, "cluster.nats") {
                    push(&path, &message);
                }
            }
            Err(e) => push("cluster.nats_nkey_seed", &e.to_string()),
        }
    }

    /// The gRPC URL's scheme against the TLS files: https needs the CA, http takes none.
    fn validate_grpc_url(&self, url: &str, push: &mut impl FnMut(&str, &str)) {
        let client_files = [
            &self.controlplane_grpc_client_cert,
            &self.controlplane_grpc_client_key,
        ];
        let tls_files =
            self.controlplane_grpc_ca_file.is_some() || client_files.iter().any(|f| f.is_some());
        match url.parse::<http::Uri>() {
            Ok(uri) if uri.host().is_none() => push(
                "cluster.controlplane_grpc",
                "must be a URL with a host, e.g. https://controlplane:8082",
            ),
            Ok(uri) if uri.scheme_str() == Some("https") => {
                if self.controlplane_grpc_ca_file.is_none() {
                    push(
                        "cluster.controlplane_grpc_ca_file",
                        "is required with an https:// controlplane_grpc (the CA of the control \
                         plane's certificate)",
                    );
                }
                if client_files.iter().filter(|f| f.is_some()).count() == 1 {
                    push(
                        "cluster.controlplane_grpc_client_cert",
                        "and controlplane_grpc_client_key go together (mTLS)",
                    );
                }
            }
            Ok(uri) if uri.scheme_str() == Some("http") && tls_files => push(
                "cluster.controlplane_grpc",
                "is http:// (plaintext) but TLS files are set: use https://",
            ),
            Ok(uri) if uri.scheme_str() == Some("http") => {}
            _ => push(
                "cluster.controlplane_grpc",
                "must be an https:// URL (or http://, plaintext) with a host, e.g. \
                 https://controlplane:8082",
            ),
        }
    }

    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms)
    }

    fn validate(&self, push: &mut impl FnMut(&str, &str)) {
        if self.controlplane_grpc.is_none() && self.nats_url.is_none() {
            push(
                "cluster",
                "needs controlplane_grpc, nats_url or both (flags --controlplane, --nats)",
            );
        }
        if let Some(url) = &self.controlplane_grpc {
            self.validate_grpc_url(url, push);
        }
        if let Some(url) = &self.nats_url {
            let bad = url
                .split(',')
                .map(str::trim)
                .any(|one| one.is_empty() || one.parse::<async_nats::ServerAddr>().is_err());
            if bad {
                push(
                    "cluster.nats_url",
                    "must be a NATS URL (nats://host:port), or several separated by commas",
                );
            }
        }
        if !valid_namespace(&self.namespace) {
            push(
                "cluster.namespace",
                "must be 1-32 ASCII letters, digits, '-' or '_', starting with a letter",
            );
        }
        if let Some(id) = &self.dataplane_id
            && !valid_dataplane_id(id)
        {
            push(
                "cluster.dataplane_id",
                "must be 1-64 ASCII letters, digits, '-' or '_' (it is a NATS subject token)",
            );
        }
        if self.heartbeat_interval_ms == 0 {
            push("cluster.heartbeat_interval_ms", "must be positive");
        }
        if let Some(path) = &self.snapshot_cache
            && path.file_name().is_none()
        {
            push("cluster.snapshot_cache", "must name a file");
        }
        self.validate_trust(push);
    }
}

/// `url` (or a comma-separated list of URLs) with any user info replaced by `***`, for logs:
/// `nats://user:password@host:4222` → `nats://***@host:4222`.
pub fn redacted_url(url: &str) -> String {
    url.split(',')
        .map(|one| {
            let one = one.trim();
            let rest_at = one.find("://").map_or(0, |i| i + 3);
            let (scheme, rest) = one.split_at(rest_at);
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}***{}", &rest[at..]),
                None => one.to_owned(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A data plane id is one NATS subject token, short and plain.
pub fn valid_dataplane_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn default_namespace() -> String {
    DEFAULT_NAMESPACE.to_owned()
}
fn default_heartbeat_interval_ms() -> u64 {
    2_000
}

/// Process settings. Units are in the names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The pepper under which virtual keys are hashed. Required: there is no safe default.
    pub key_pepper: SecretRef,
    /// Largest request body accepted; larger ones get 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    #[serde(default = "default_connect_timeout_ms")]
    pub upstream_connect_timeout_ms: u64,
    #[serde(default = "default_pool_idle_timeout_seconds")]
    pub upstream_pool_idle_timeout_seconds: u64,
    #[serde(default = "default_pool_max_idle_per_host")]
    pub upstream_pool_max_idle_per_host: usize,
    /// PEM file of CA certificates to trust for upstream TLS besides the bundled web PKI
    /// roots (a private CA in front of self-hosted models).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_ca_file: Option<std::path::PathBuf>,
    /// Largest complete upstream body (a non-streamed answer, an error): upstreams are
    /// untrusted; a larger one fails the attempt with a 502.
    #[serde(default = "default_max_upstream_body_bytes")]
    pub max_upstream_body_bytes: usize,
    /// Largest single event (hence line) of an upstream event stream.
    #[serde(default = "default_max_upstream_event_bytes")]
    pub max_upstream_event_bytes: usize,
    /// How long a shutdown waits for in-flight requests (streams included) to finish.
    #[serde(default = "default_shutdown_grace_seconds")]
    pub shutdown_grace_seconds: u64,
    /// How often the config file is checked for changes; 0 turns watching off (`SIGHUP`
    /// still reloads).
    #[serde(default = "default_watch_interval_ms")]
    pub watch_interval_ms: u64,
    #[serde(default)]
    pub log_format: LogFormat,
    /// The most bytes of a prompt, and of its answer, kept in the request log for a tenant
    /// that opted in to content capture (`capture_content`); longer ones are cut.
    #[serde(default = "default_capture_max_bytes")]
    pub capture_max_bytes: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4000))
}
fn default_max_body_bytes() -> usize {
    4 * 1024 * 1024
}
fn default_connect_timeout_ms() -> u64 {
    5_000
}
fn default_pool_idle_timeout_seconds() -> u64 {
    90
}
fn default_pool_max_idle_per_host() -> usize {
    1024
}
fn default_max_upstream_body_bytes() -> usize {
    crate::providers::UpstreamCaps::default().body_bytes
}
fn default_max_upstream_event_bytes() -> usize {
    crate::providers::UpstreamCaps::default().event_bytes
}
fn default_capture_max_bytes() -> usize {
    16 * 1024
}
fn default_shutdown_grace_seconds() -> u64 {
    30
}
fn default_watch_interval_ms() -> u64 {
    2_000
}

impl ServerConfig {
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream_connect_timeout_ms)
    }

    /// The size caps on what upstreams send.
    pub fn upstream_caps(&self) -> crate::providers::UpstreamCaps {
        crate::providers::UpstreamCaps {
            body_bytes: self.max_upstream_body_bytes,
            event_bytes: self.max_upstream_event_bytes,
        }
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
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
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    #[error("{path}: {problems}")]
    Invalid { path: String, problems: Problems },
}

/// The part of the file the process needs before the rest: how to log. Everything else is
/// skipped unread (a standalone snapshot can hold 100,000 keys, which [`Config::load`] then
/// reads once).
#[derive(Debug, Default, Deserialize)]
pub struct LoggingConfig {
    #[serde(default)]
    pub server: LoggingServer,
    #[serde(default)]
    pub telemetry: switchboard_shared::telemetry::TelemetryConfig,
}

/// [`ServerConfig::log_format`], alone.
#[derive(Debug, Default, Deserialize)]
pub struct LoggingServer {
    #[serde(default)]
    pub log_format: LogFormat,
}

impl LoggingConfig {
    /// Reads the file's logging settings, overrides from `env` included.
    pub fn load(path: &Path, env: &[(String, String)]) -> Option<LoggingConfig> {
        let text = std::fs::read_to_string(path).ok()?;
        switchboard_shared::layered_config::parse(&text, env).ok()
    }
}

impl Config {
    /// Reads, overrides from `env` and parses a file. Does not validate.
    pub fn load(path: &Path, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, env).map_err(|message| ConfigError::Parse {
            path: path.display().to_string(),
            message,
        })
    }

    /// Parses file text with environment overrides (`SWITCHBOARD__A__B=value`).
    pub fn parse(text: &str, env: &[(String, String)]) -> Result<Config, String> {
        switchboard_shared::layered_config::parse(text, env)
    }

    /// Applies the command line's `--controlplane` and `--nats`: each given one sets its URL in
    /// the `cluster` section, which is created when the file has none.
    pub fn override_cluster(
        &mut self,
        controlplane_grpc: Option<String>,
        nats_url: Option<String>,
    ) {
        if controlplane_grpc.is_none() && nats_url.is_none() {
            return;
        }
        let cluster = self
            .cluster
            .get_or_insert_with(|| ClusterConfig::with_urls(None, None));
        if controlplane_grpc.is_some() {
            cluster.controlplane_grpc = controlplane_grpc;
        }
        if nats_url.is_some() {
            cluster.nats_url = nats_url;
        }
    }

    /// Checks values and the snapshot; lists every problem.
    pub fn validate(&self) -> Result<(), Problems> {
        let mut problems = Vec::new();
        let mut push = |path: &str, message: &str| {
            problems.push(Problem {
                path: path.into(),
                message: message.into(),
            });
        };
        if self.server.max_body_bytes == 0 {
            push("server.max_body_bytes", "must be positive");
        }
        if self.server.max_upstream_body_bytes == 0 {
            push("server.max_upstream_body_bytes", "must be positive");
        }
        if self.server.max_upstream_event_bytes == 0 {
            push("server.max_upstream_event_bytes", "must be positive");
        }
        if self.server.upstream_connect_timeout_ms == 0 {
            push("server.upstream_connect_timeout_ms", "must be positive");
        }
        if let Err(e) = self.server.key_pepper.resolve() {
            push("server.key_pepper", &e.to_string());
        }
        match (&self.snapshot, &self.cluster) {
            (Some(_), Some(_)) => push(
                "cluster",
                "the file has both `snapshot` (standalone mode) and `cluster` (cluster mode); keep one",
            ),
            (None, None) => push(
                "snapshot",
                "missing: the file needs `snapshot` (standalone mode) or `cluster` (cluster mode, or the flags --controlplane / --nats)",
            ),
            _ => {}
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate(&mut push);
        }
        if let Some(Err(Problems(found))) = self.snapshot.as_ref().map(Snapshot::validate) {
            problems.extend(found.into_iter().map(|p| Problem {
                path: format!("snapshot.{}", p.path),
                message: p.message,
            }));
        }
        if let Some(redis) = &self.redis {
            problems.extend(redis.problems("redis"));
        }
        if let Some(hooks) = &self.webhooks {
            if !(hooks.url.starts_with("http://") || hooks.url.starts_with("https://")) {
                problems.push(Problem {
                    path: "webhooks.url".into(),
                    message: "must be an http:// or https:// URL".into(),
                });
            }
            if let Err(e) = hooks.secret.resolve() {
                problems.push(Problem {
                    path: "webhooks.secret".into(),
                    message: e.to_string(),
                });
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Problems(problems))
        }
    }
}

pub use switchboard_shared::layered_config::process_env;

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"
server:
  key_pepper: { value: "p" }
snapshot:
  providers: [{ id: m, kind: mock }]
  deployments: [{ id: d, model: demo, provider: m, upstream_model: mock-1 }]
"#;

    #[test]
    fn defaults_apply() {
        let c = Config::parse(FILE, &[]).unwrap();
        assert_eq!(c.server.listen, default_listen());
        assert_eq!(c.server.max_body_bytes, 4 * 1024 * 1024);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn environment_overrides_any_depth_with_typed_values() {
        let env = vec![
            (
                "SWITCHBOARD__SERVER__MAX_BODY_BYTES".to_owned(),
                "1024".to_owned(),
            ),
            (
                "SWITCHBOARD__SERVER__LISTEN".to_owned(),
                "0.0.0.0:9999".to_owned(),
            ),
            (
                "SWITCHBOARD__SERVER__KEY_PEPPER__VALUE".to_owned(),
                "other".to_owned(),
            ),
            ("UNRELATED".to_owned(), "x".to_owned()),
        ];
        let c = Config::parse(FILE, &env).unwrap();
        assert_eq!(c.server.max_body_bytes, 1024);
        assert_eq!(c.server.listen.port(), 9999);
        assert_eq!(c.server.key_pepper, SecretRef::Value("other".into()));
    }

    #[test]
    fn unknown_fields_and_bad_overrides_are_named() {
        let err = Config::parse(&FILE.replace("key_pepper", "key_peper"), &[]).unwrap_err();
        assert!(err.contains("key_peper"), "{err}");
        let env = vec![(
            "SWITCHBOARD__SERVER__MAX_BODY_BYTE".to_owned(),
            "1".to_owned(),
        )];
        let err = Config::parse(FILE, &env).unwrap_err();
        assert!(err.contains("max_body_byte"), "{err}");
    }

    #[test]
    fn validation_lists_server_and_snapshot_problems_with_paths() {
        let text = FILE
            .replace(
                "{ value: \"p\" }",
                "{ env: SWITCHBOARD_TEST_SURELY_UNSET_PEPPER }",
            )
            .replace("provider: m", "provider: nope");
        let c = Config::parse(&text, &[]).unwrap();
        let problems = c.validate().unwrap_err().to_string();
        assert!(problems.contains("server.key_pepper: environment variable SWITCHBOARD_TEST_SURELY_UNSET_PEPPER is not set"), "{problems}");
        assert!(
            problems.contains("snapshot.deployments[0].provider"),
            "{problems}"
        );
    }

    const SERVER_ONLY: &str = "server:\n  key_pepper: { value: \"p\" }\n";
    /// The cluster's keys, as lines of a `cluster:` section.
    const KEYS: &str = "  snapshot_public_keys: \"A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=\"\n  controlplane_grpc_token: { value: \"grpc-token-0123456789\" }\n  ingest_key: { value: \"ingest-key-0123456789\" }\n";

    /// The keys as `SWITCHBOARD__CLUSTER__*` environment overrides.
    fn key_env() -> Vec<(String, String)> {
        [
            (
                "SWITCHBOARD__CLUSTER__SNAPSHOT_PUBLIC_KEYS",
                "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=",
            ),
            (
                "SWITCHBOARD__CLUSTER__CONTROLPLANE_GRPC_TOKEN__VALUE",
                "grpc-token-0123456789",
            ),
            (
                "SWITCHBOARD__CLUSTER__INGEST_KEY__VALUE",
                "ingest-key-0123456789",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    #[test]
    fn cluster_keys_are_required_unless_explicitly_allowed_for_development() {
        let text = format!(
            "{SERVER_ONLY}cluster:\n  nats_url: nats://n:4222\n  controlplane_grpc: http://cp:8082\n"
        );
        let problems = Config::parse(&text, &[])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        for path in [
            "cluster.snapshot_public_keys",
            "cluster.controlplane_grpc_token",
            "cluster.ingest_key",
        ] {
            assert!(problems.contains(path), "{path} missing in {problems}");
        }
        let dev = format!("{text}  allow_unsigned_snapshots: true\n");
        let c = Config::parse(&dev, &[]).unwrap();
        assert!(c.validate().is_ok(), "{:?}", c.validate());
        assert!(c.cluster.unwrap().snapshot_verifier().unwrap().is_none());
        let bad = format!(
            "{text}  snapshot_public_keys: \"AAAA\"\n  ingest_key: {{ value: short }}\n  nats_nkey_seed: {{ value: SUX }}\n  nats_creds_file: /etc/x.creds\n"
        );
        let problems = Config::parse(&bad, &[])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            problems.contains("cluster.snapshot_public_keys: must be 32 bytes"),
            "{problems}"
        );
        assert!(problems.contains("cluster.ingest_key"), "{problems}");
        assert!(
            problems.contains("cluster.nats: use one NATS login"),
            "{problems}"
        );
        assert!(!problems.contains("short"), "a secret leaked: {problems}");
    }

    #[test]
    fn a_cluster_section_replaces_the_snapshot_with_defaults() {
        let text = format!("{SERVER_ONLY}cluster:\n  nats_url: nats://127.0.0.1:4222\n{KEYS}");
        let c = Config::parse(&text, &[]).unwrap();
        assert!(c.validate().is_ok(), "{:?}", c.validate());
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.namespace, DEFAULT_NAMESPACE);
        assert_eq!(cluster.heartbeat_interval_ms, 2000);
        assert_eq!(cluster.controlplane_grpc, None);
        assert_eq!(cluster.dataplane_id, None);
        assert!(c.snapshot.is_none());
    }

    #[test]
    fn the_environment_can_supply_the_cluster_section() {
        let mut env = key_env();
        env.extend([
            (
                "SWITCHBOARD__CLUSTER__NATS_URL".to_owned(),
                "nats://n:4222".to_owned(),
            ),
            (
                "SWITCHBOARD__CLUSTER__HEARTBEAT_INTERVAL_MS".to_owned(),
                "500".to_owned(),
            ),
        ]);
        let c = Config::parse(SERVER_ONLY, &env).unwrap();
        assert!(c.validate().is_ok(), "{:?}", c.validate());
        let cluster = c.cluster.unwrap();
        assert_eq!(cluster.nats_url.as_deref(), Some("nats://n:4222"));
        assert_eq!(cluster.heartbeat_interval_ms, 500);
    }

    #[test]
    fn flags_make_a_server_only_file_a_cluster_config() {
        let c = Config::parse(SERVER_ONLY, &[]).unwrap();
        let problems = c.validate().unwrap_err().to_string();
        assert!(problems.contains("snapshot: missing"), "{problems}");
        let mut c = Config::parse(SERVER_ONLY, &key_env()).unwrap();
        c.override_cluster(Some("http://cp:50051".into()), None);
        c.override_cluster(None, Some("nats://n:4222".into()));
        assert!(c.validate().is_ok(), "{:?}", c.validate());
        let cluster = c.cluster.unwrap();
        assert_eq!(
            cluster.controlplane_grpc.as_deref(),
            Some("http://cp:50051")
        );
        assert_eq!(cluster.nats_url.as_deref(), Some("nats://n:4222"));
    }

    #[test]
    fn cluster_problems_are_all_listed() {
        let text = format!(
            "{}cluster:\n  controlplane_grpc: \"ftp://x\"\n  nats_url: \"\"\n  namespace: \"a.b\"\n  dataplane_id: \"dp.1\"\n  heartbeat_interval_ms: 0\n",
            FILE
        );
        let problems = Config::parse(&text, &[])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        for path in [
            "cluster: the file has both",
            "cluster.controlplane_grpc",
            "cluster.nats_url",
            "cluster.namespace",
            "cluster.dataplane_id",
            "cluster.heartbeat_interval_ms",
        ] {
            assert!(problems.contains(path), "{path} in {problems}");
        }
        let empty = format!("{SERVER_ONLY}cluster: {{}}\n");
        let problems = Config::parse(&empty, &[])
            .unwrap()
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            problems.contains("needs controlplane_grpc, nats_url or both"),
            "{problems}"
        );
    }

    #[test]
    fn urls_lose_their_credentials_in_logs() {
        assert_eq!(
            redacted_url("nats://user:secret@n1:4222, tls://tok@n2"),
            "nats://***@n1:4222,tls://***@n2"
        );
        assert_eq!(redacted_url("http://cp:50051/x@y"), "http://cp:50051/x@y");
        assert_eq!(redacted_url("pw@host:4222"), "***@host:4222");
    }
}
