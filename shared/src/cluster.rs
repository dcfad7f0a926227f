//! The wire contract between the control plane and the data planes, beside the gRPC one in
//! `proto/`: NATS subjects, JetStream names and the small JSON messages that travel on them.
//!
//! How a snapshot travels (see `docs/cluster.md` for the whole picture):
//! 1. The control plane commits a change, which bumps the config revision in Postgres.
//! 2. It builds the snapshot for that revision and puts its canonical JSON into the JetStream
//!    object store bucket `snapshot_bucket` under [`snapshot_object`]`(revision)` — the
//!    object store chunks it, so no NATS message limit applies.
//! 3. It publishes a [`SnapshotHead`] on `head_subject`, in the stream `config_stream`,
//!    which keeps one message per subject: the last value. The publish expects the subject's
//!    last sequence to be the one it read, and skips when the head already names a revision at
//!    least as high, so racing control-plane replicas never move the head backwards.
//! 4. A data plane follows `head_subject` with an ordered consumer delivering the last value
//!    first; for each head newer than what it serves it fetches the object, checks the content
//!    hash and swaps the snapshot in.
//!
//! All names come from [`NatsNames`], derived from a configured namespace.
//!
//! Usage events travel on `usage_subject` into the `usage_stream` work queue, one JSON
//! `UsageRecord` per message with `Nats-Msg-Id` set to the request id, so JetStream drops a
//! re-sent duplicate within its window and spend ingestion drops any later one by request id.
//!
//! Data planes announce themselves with a [`Heartbeat`] on its heartbeat subject (core NATS,
//! not persisted) every few seconds and at once after applying a revision, which is what lets
//! an admin write wait until the fleet has applied it.
//!
//! A deployment's test call (`POST /admin/v1/deployments/{id}/test`) is core NATS
//! request/reply on `test_subject`: the control plane sends a [`TestCallRequest`], the data
//! planes listen in the queue group [`TEST_QUEUE_GROUP`] so exactly one of them makes the call
//! with the credential it already holds, and it answers a [`TestCallReply`] tagged like a
//! heartbeat (kind [`TEST_REPLY_KIND`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Response header naming the config revision that served a request.
pub const REVISION_HEADER: &str = "x-switchboard-config-revision";
/// Largest snapshot either side accepts over gRPC.
pub const MAX_SNAPSHOT_BYTES: usize = 512 * 1024 * 1024;
/// How many deltas the delta stream keeps at most (the oldest go first).
pub const DELTAS_KEPT: i64 = 10_000;
/// How long the delta stream keeps a delta at most.
pub const DELTA_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(3600);
/// How many snapshot bodies the control plane keeps in the object store.
pub const SNAPSHOTS_KEPT: u64 = 5;
/// The namespace used when none is configured.
pub const DEFAULT_NAMESPACE: &str = "switchboard";

/// Every NATS name one deployment of Switchboard uses, derived from a namespace so that
/// several deployments (or parallel tests) can share one NATS server without seeing each
/// other. Both planes must be configured with the same namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsNames {
    /// JetStream stream holding config heads, one message per subject (the last value).
    pub config_stream: String,
    /// Subjects of `config_stream`: `<ns>.config.>`.
    pub config_subjects: String,
    /// Subject of the current [`SnapshotHead`]: `<ns>.config.head`.
    pub head_subject: String,
    /// JetStream object store bucket holding snapshot bodies.
    pub snapshot_bucket: String,
    /// JetStream stream of config deltas (`<NS>_CONFIG_DELTAS`, bounded by age and count;
    /// `crate::config_delta`).
    pub delta_stream: String,
    /// Subject config deltas are published on: `<ns>.config-delta` (outside `<ns>.config.>`,
    /// whose stream keeps one message per subject).
    pub delta_subject: String,
    /// Prefix of heartbeat subjects (`<ns>.fleet.heartbeat`); the data plane's id follows.
    pub heartbeat_prefix: String,
    /// JetStream stream of usage events (work queue; the control plane owns and consumes it).
    pub usage_stream: String,
    /// Subject data planes publish `UsageRecord` JSON on: `<ns>.usage.events`.
    pub usage_subject: String,
    /// Subject of test-call requests (core NATS request/reply): `<ns>.fleet.test`.
    pub test_subject: String,
    /// How many NATS servers keep a copy of each JetStream stream and object store the
    /// control plane creates (1 on a single server; 3 on a production cluster, so that the
    /// loss of one server loses no usage record and no snapshot). Not part of the names: set
    /// with [`NatsNames::with_replicas`].
    pub replicas: usize,
}

impl NatsNames {
    /// Names for `namespace`, which must match [`valid_namespace`].
    pub fn new(namespace: &str) -> Self {
        let upper = namespace.to_ascii_uppercase().replace('-', "_");
        Self {
            config_stream: format!("{upper}_CONFIG"),
            config_subjects: format!("{namespace}.config.>"),
            head_subject: format!("{namespace}.config.head"),
            snapshot_bucket: format!("{}_snapshots", namespace.replace('-', "_")),
            delta_stream: format!("{upper}_CONFIG_DELTAS"),
            delta_subject: format!("{namespace}.config-delta"),
            heartbeat_prefix: format!("{namespace}.fleet.heartbeat"),
            usage_stream: format!("{upper}_USAGE"),
            usage_subject: format!("{namespace}.usage.events"),
            test_subject: format!("{namespace}.fleet.test"),
            replicas: 1,
        }
    }

    /// The same names, with streams and object stores created with `replicas` copies.
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.replicas = replicas.max(1);
        self
    }

    /// The subject a data plane's heartbeat is published on.
    pub fn heartbeat_subject(&self, dataplane_id: &str) -> String {
        format!("{}.{dataplane_id}", self.heartbeat_prefix)
    }

    /// The subject pattern that matches every heartbeat.
    pub fn heartbeat_wildcard(&self) -> String {
        format!("{}.*", self.heartbeat_prefix)
    }
}

impl Default for NatsNames {
    fn default() -> Self {
        Self::new(DEFAULT_NAMESPACE)
    }
}

/// A namespace is 1–32 characters of ASCII letters, digits, `-` and `_`, starting with a
/// letter, so it is safe in subjects, stream names and bucket names alike.
pub fn valid_namespace(namespace: &str) -> bool {
    let mut chars = namespace.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && namespace.len() <= 32
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// How a plane logs in to NATS, read from the credentials written in its URL:
/// `nats://user:password@host:4222` (user and password) or `nats://token@host:4222` (a token),
/// percent-decoded. async-nats dials such a URL but does not send what it carries, so both
/// planes read it here and hand it to their client's options (`deploy/nats/nats-server.conf`
/// gives each plane its own user).
#[derive(Clone, PartialEq, Eq)]
pub enum NatsLogin {
    UserPassword { user: String, password: String },
    Token(String),
}

impl std::fmt::Debug for NatsLogin {
    /// Never the secret: a login may end up in a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NatsLogin::UserPassword { user, .. } => write!(f, "UserPassword({user}, <redacted>)"),
            NatsLogin::Token(_) => f.write_str("Token(<redacted>)"),
        }
    }
}

/// The login in the first of `urls` (comma-separated, as the NATS clients take them) that has
/// one; `None` when none does.
pub fn nats_login(urls: &str) -> Option<NatsLogin> {
    urls.split(',').find_map(|url| {
        let rest = url.trim().split_once("://").map_or(url.trim(), |(_, r)| r);
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let (userinfo, _) = authority.rsplit_once('@')?;
        Some(match userinfo.split_once(':') {
            Some((user, password)) => NatsLogin::UserPassword {
                user: percent_decode(user),
                password: percent_decode(password),
            },
            None => NatsLogin::Token(percent_decode(userinfo)),
        })
    })
}

/// How a plane logs in to NATS and checks its server, beyond what the URL carries: an nkey
/// seed or a `.creds` file (user JWT + nkey seed, as `nsc` writes them) instead of a
/// user:password or token in the URL, and TLS with a CA file and an optional client
/// certificate. A `tls://` URL or a `ca_file` makes TLS required. `Debug` never shows the seed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct NatsAuth {
    /// `.creds` file (decorated user JWT and nkey seed).
    pub creds_file: Option<std::path::PathBuf>,
    /// nkey seed (`SU...`), resolved from its secret reference.
    pub nkey_seed: Option<String>,
    /// PEM CA bundle the server's certificate must chain to (otherwise the system roots).
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate and key, for servers that verify clients.
    pub client_cert: Option<std::path::PathBuf>,
    pub client_key: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for NatsAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsAuth")
            .field("creds_file", &self.creds_file)
            .field("nkey_seed", &self.nkey_seed.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .finish()
    }
}

impl NatsAuth {
    /// The problems of this combination (`prefix` names the config section), for config
    /// validation: one login method at most, cert and key together.
    pub fn problems(&self, urls: &str, prefix: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let methods = [
            nats_login(urls).is_some(),
            self.creds_file.is_some(),
            self.nkey_seed.is_some(),
        ];
        if methods.iter().filter(|m| **m).count() > 1 {
            out.push((
                prefix.to_owned(),
                "use one NATS login: user:password or token in the URL, nkey_seed, or creds_file"
                    .to_owned(),
            ));
        }
        if self.client_cert.is_some() != self.client_key.is_some() {
            out.push((
                format!("{prefix}.client_cert"),
                "client_cert and client_key go together".to_owned(),
            ));
        }
        out
    }

    /// Whether TLS is required: a `tls://` URL or a CA file.
    pub fn requires_tls(&self, urls: &str) -> bool {
        self.ca_file.is_some() || urls.split(',').any(|u| u.trim().starts_with("tls://"))
    }
}

/// NATS client options for `urls`, logged in with the credentials they carry
/// ([`nats_login`]) or those of `auth`, with TLS as `auth` says. Both planes build every NATS
/// connection from these. Fails only when the `.creds` file cannot be read.
#[cfg(feature = "nats")]
pub async fn nats_options(
    urls: &str,
    auth: &NatsAuth,
) -> std::io::Result<async_nats::ConnectOptions> {
    let mut options = match nats_login(urls) {
        Some(NatsLogin::UserPassword { user, password }) => {
            async_nats::ConnectOptions::with_user_and_password(user, password)
        }
        Some(NatsLogin::Token(token)) => async_nats::ConnectOptions::with_token(token),
        None => async_nats::ConnectOptions::new(),
    };
    if let Some(path) = &auth.creds_file {
        options = options.credentials_file(path).await?;
    }
    if let Some(seed) = &auth.nkey_seed {
        options = options.nkey(seed.clone());
    }
    if let Some(ca) = &auth.ca_file {
        options = options.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&auth.client_cert, &auth.client_key) {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if auth.requires_tls(urls) {
        options = options.require_tls(true);
    }
    Ok(options)
}

/// `%XX` escapes decoded (an invalid escape is kept as written). Also read by `telemetry`
/// (OTLP header values), `redis_conn` (a URL's `ca_file`) and the tests' mock token endpoint
/// (form values).
pub fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The object name of a revision's snapshot body.
pub fn snapshot_object(revision: u64) -> String {
    format!("snapshot-{revision:020}")
}

/// Announces the newest snapshot. Small: the body lives in the object store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotHead {
    pub revision: u64,
    /// Hex SHA-256 of the body, equal to `Snapshot::content_hash()`.
    pub content_hash: String,
    /// Object name in the snapshot bucket.
    pub object: String,
    /// Body size in bytes.
    pub size: u64,
    pub published_at: DateTime<Utc>,
    /// The namespace it was published for (signed, so a head cannot be replayed into another
    /// deployment sharing the NATS server).
    #[serde(default)]
    pub namespace: String,
    /// Base64 Ed25519 signature over [`SnapshotHead::claims`]; empty when unsigned.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub signature: String,
}

impl SnapshotHead {
    /// What the signature covers: namespace, revision, content hash and `published_at`.
    pub fn claims(&self) -> crate::cluster_trust::SnapshotClaims<'_> {
        crate::cluster_trust::SnapshotClaims {
            namespace: &self.namespace,
            revision: self.revision,
            content_hash: &self.content_hash,
            issued_at_micros: self.published_at.timestamp_micros(),
        }
    }
}

/// What a data plane reports about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// Stable for the life of the process; unique across the fleet.
    pub dataplane_id: String,
    /// The machine's name, for people reading the fleet view.
    pub hostname: String,
    /// The data plane's build version (its crate version).
    pub version: String,
    /// Revision of the snapshot it serves; 0 while it holds none.
    pub revision: u64,
    /// Hex SHA-256 of the served snapshot's canonical JSON; empty while it holds none.
    pub content_hash: String,
    /// Whether it answers ready (holds a snapshot and is not draining).
    pub ready: bool,
    /// When the process started.
    pub started_at: DateTime<Utc>,
    /// When this heartbeat left (the control plane times liveness by its own clock).
    pub sent_at: DateTime<Utc>,
}

/// The queue group data planes answer test calls in, so that one of them answers each.
pub const TEST_QUEUE_GROUP: &str = "switchboard-test-calls";
/// The ingest-key tag kind of a [`TestCallReply`] (`cluster_trust::IngestKeys::tag`).
pub const TEST_REPLY_KIND: &str = "test-reply";

/// The control plane asks a data plane to test one deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestCallRequest {
    pub deployment_id: String,
}

/// What a data plane found when it sent a deployment's test call through its adaptor: the
/// facts only; the control plane words the explanation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestCallReply {
    /// The data plane that made the call.
    pub dataplane_id: String,
    /// The deployment asked about.
    pub deployment_id: String,
    /// The revision of the snapshot it serves.
    pub revision: u64,
    /// Whether the deployment is in that snapshot (when not, nothing was sent).
    pub found: bool,
    /// The upstream's HTTP status, when it answered.
    pub status: Option<u16>,
    pub latency_ms: u64,
    /// The lasting error its answer names (`fleet_keys::PermanentError::from_answer`).
    pub error_kind: Option<String>,
    /// The upstream's message, key-like words masked (`fleet_keys::error_message`), on a
    /// refusal.
    pub upstream_message: Option<String>,
    /// Why no answer came (could not connect, timed out), in words.
    pub failure: Option<String>,
    /// Which of a multi-key provider's keys the result is about (the first that failed, or
    /// the last tried when all answered).
    pub key_index: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nats_login_is_read_from_the_url() {
        let login = |user: &str, password: &str| NatsLogin::UserPassword {
            user: user.into(),
            password: password.into(),
        };
        assert_eq!(
            nats_login("nats://dataplane-0:s3cr%40t%2F@nats:4222"),
            Some(login("dataplane-0", "s3cr@t/"))
        );
        assert_eq!(
            nats_login("nats://a:4222, tls://u:p@b:4222/x"),
            Some(login("u", "p"))
        );
        assert_eq!(
            nats_login("nats://tok@nats"),
            Some(NatsLogin::Token("tok".into()))
        );
        assert_eq!(nats_login("nats://127.0.0.1:4222"), None);
        assert_eq!(nats_login("nats://h:4222/path@x"), None);
        assert!(!format!("{:?}", login("u", "pw")).contains("pw"));
    }

    #[test]
    fn object_names_sort_by_revision() {
        assert!(snapshot_object(9) < snapshot_object(10));
    }

    #[test]
    fn names_derive_from_the_namespace() {
        let n = NatsNames::new("test-a1");
        assert_eq!(n.config_stream, "TEST_A1_CONFIG");
        assert_eq!(n.head_subject, "test-a1.config.head");
        assert_eq!(n.snapshot_bucket, "test_a1_snapshots");
        assert_eq!(n.delta_stream, "TEST_A1_CONFIG_DELTAS");
        assert_eq!(n.delta_subject, "test-a1.config-delta");
        assert_eq!(n.heartbeat_subject("dp-1"), "test-a1.fleet.heartbeat.dp-1");
        assert_eq!(n.heartbeat_wildcard(), "test-a1.fleet.heartbeat.*");
        assert_eq!(n.usage_stream, "TEST_A1_USAGE");
        assert_eq!(n.usage_subject, "test-a1.usage.events");
        assert_eq!(n.test_subject, "test-a1.fleet.test");
        assert!(valid_namespace("switchboard") && valid_namespace("t_1-x"));
        for bad in ["", "1abc", "a.b", "a*", "a>", &"a".repeat(33)] {
            assert!(!valid_namespace(bad), "{bad}");
        }
    }
}
