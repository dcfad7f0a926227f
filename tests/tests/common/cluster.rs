//! The control plane in the test process, for the tests that run a whole cluster: started on
//! a test's own database and NATS namespace, with an admin logged in, and stopped cleanly or
//! killed (every task aborted wherever it was, as a crash would leave it).

use std::time::Duration;

use controlplane::config::{ClusterTrust, PricesConfig, RedisSettings, Settings, SpendConfig};
use http::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use switchboard_shared::sealed::MasterKeys;

use super::{PEPPER, Reply, request, send};

pub const MASTER_KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
/// The test cluster's snapshot signing seed, its public key, gRPC token and ingest key.
use switchboard_tests::cluster_keys::{GRPC_TOKEN, INGEST_KEY, SIGNING_SEED, signing_public};
pub const ADMIN: &str = "root@example.com";
pub const PASSWORD: &str = "correct horse battery staple";

/// Configures a data plane's cluster section with the test cluster's keys, as a deployment
/// does: the signing public key, the gRPC token and the ingest key.
pub fn trust(cluster: &mut dataplane::config::ClusterConfig) {
    use switchboard_shared::secret::SecretRef;
    cluster.snapshot_public_keys = signing_public();
    cluster.controlplane_grpc_token = Some(SecretRef::Value(GRPC_TOKEN.into()));
    cluster.ingest_key = Some(SecretRef::Value(INGEST_KEY.into()));
}

/// An in-process data plane following `cluster` as a cluster-mode `dataplane serve` does, with
/// the test cluster's keys: the gateway and its follower (dropping the follower stops it).
pub async fn follower(
    cluster: dataplane::config::ClusterConfig,
) -> (super::Gateway, dataplane::cluster::Cluster) {
    follower_with(cluster, "").await
}

/// [`follower`], with more top-level YAML sections (`extra`, e.g. a `redis:` section).
pub async fn follower_with(
    cluster: dataplane::config::ClusterConfig,
    extra: &str,
) -> (super::Gateway, dataplane::cluster::Cluster) {
    follower_keyed(cluster, extra, MASTER_KEYS).await
}

/// [`follower_with`], holding `master_keys` (`id:base64[,...]`) instead of the test cluster's.
pub async fn follower_keyed(
    mut cluster: dataplane::config::ClusterConfig,
    extra: &str,
    master_keys: &str,
) -> (super::Gateway, dataplane::cluster::Cluster) {
    trust(&mut cluster);
    let section: String = serde_yaml_ng::to_string(&cluster)
        .unwrap()
        .lines()
        .map(|l| format!("  {l}\n"))
        .collect();
    let text =
        format!("server:\n  key_pepper: {{ value: \"{PEPPER}\" }}\ncluster:\n{section}{extra}");
    let keys = MasterKeys::parse(master_keys).unwrap();
    let gateway = super::Gateway::start_with_keys(&text, Some(keys)).await;
    let handle = dataplane::cluster::start(gateway.state.clone(), &cluster)
        .await
        .unwrap();
    (gateway, handle)
}

/// The same keys as lines of a YAML `cluster:` section (two-space indent).
pub fn trust_yaml() -> String {
    format!(
        "  snapshot_public_keys: \"{}\"\n  controlplane_grpc_token: {{ value: \"{GRPC_TOKEN}\" }}\n  ingest_key: {{ value: \"{INGEST_KEY}\" }}\n",
        signing_public()
    )
}

/// The usage-event tag of a data plane called `id` under the test ingest key.
pub fn usage_tag(id: &str) -> Option<(String, switchboard_shared::cluster_trust::IngestKeys)> {
    Some((
        id.to_owned(),
        switchboard_shared::cluster_trust::IngestKeys::parse(INGEST_KEY).unwrap(),
    ))
}

/// A NATS namespace of the test's own.
pub fn unique_namespace() -> String {
    format!("e2e{}", uuid::Uuid::now_v7().simple())
        .chars()
        .take(32)
        .collect()
}

/// A running control plane on `pool`, with an admin; stops when dropped.
pub struct ControlPlane {
    pub rest: String,
    pub grpc: String,
    pub token: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    running: Option<controlplane::Running>,
}

impl ControlPlane {
    /// On the shared NATS.
    pub async fn start(pool: PgPool, namespace: &str) -> Self {
        Self::start_on(pool, namespace, &switchboard_tests::services::nats_url()).await
    }

    /// On the NATS at `nats_url`.
    pub async fn start_on(pool: PgPool, namespace: &str, nats_url: &str) -> Self {
        Self::start_with(pool, namespace, nats_url, None).await
    }

    /// On the NATS at `nats_url`, reconciling the budget counters in `redis` if given.
    pub async fn start_with(
        pool: PgPool,
        namespace: &str,
        nats_url: &str,
        redis: Option<RedisSettings>,
    ) -> Self {
        Self::start_tuned(pool, namespace, nats_url, redis, |_| {}).await
    }

    /// [`ControlPlane::start_with`], with `tune` changing the settings first.
    pub async fn start_tuned(
        pool: PgPool,
        namespace: &str,
        nats_url: &str,
        redis: Option<RedisSettings>,
        tune: impl FnOnce(&mut Settings),
    ) -> Self {
        let settings = Settings {
            listen: "127.0.0.1:0".parse().unwrap(),
            grpc_listen: "127.0.0.1:0".parse().unwrap(),
            max_body_bytes: 1 << 20,
            nats_url: nats_url.to_owned(),
            nats_replicas: 1,
            namespace: namespace.to_owned(),
            heartbeat_interval: Duration::from_millis(500),
            reconcile_interval: Duration::from_millis(500),
            full_snapshots: Default::default(),
            pepper: PEPPER.as_bytes().to_vec(),
            jwt_secret: b"e2e-jwt-secret-that-is-long-enough-0123456".to_vec(),
            token_ttl: Duration::from_secs(900),
            admin_auth: controlplane::config::AdminAuthSettings::default(),
            providers: controlplane::config::ProvidersConfig::default(),
            master_keys: MasterKeys::parse(MASTER_KEYS).unwrap(),
            spend: SpendConfig::default(),
            prices: PricesConfig::default(),
            redis,
            trust: ClusterTrust::with_keys(namespace, SIGNING_SEED, GRPC_TOKEN, INGEST_KEY),
            ui: Default::default(),
        };
        let mut settings = settings;
        tune(&mut settings);
        let env = [
            (
                controlplane::BOOTSTRAP_EMAIL_ENV.to_owned(),
                ADMIN.to_owned(),
            ),
            (
                controlplane::BOOTSTRAP_PASSWORD_ENV.to_owned(),
                PASSWORD.to_owned(),
            ),
        ];
        controlplane::bootstrap_admin(&pool, &env).await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = controlplane::serve(settings, pool, async move {
            let _ = stopped.await;
        })
        .await
        .unwrap();
        let rest = format!("http://{}", running.rest_addr);
        let grpc = format!("http://{}", running.grpc_addr);
        let login = call(
            &rest,
            Method::POST,
            "/admin/v1/auth/login",
            None,
            json!({"email": ADMIN, "password": PASSWORD}),
        )
        .await;
        assert_eq!(login.status, StatusCode::OK, "{}", login.text());
        let token = login.json()["access_token"].as_str().unwrap().to_owned();
        Self {
            rest,
            grpc,
            token,
            stop: Some(stop),
            running: Some(running),
        }
    }

    /// An admin API call that must succeed.
    pub async fn write(&self, method: Method, path: &str, body: Value) -> Reply {
        let reply = call(&self.rest, method, path, Some(&self.token), body).await;
        assert!(
            reply.status.is_success(),
            "{path}: {} {}",
            reply.status,
            reply.text()
        );
        reply
    }

    /// Stops the control plane and waits until its tasks are gone.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(running) = self.running.take() {
            running.wait().await;
        }
    }

    /// Kills it: every task is aborted at whatever point it had reached (a spend batch
    /// fetched but not yet written, or written but not yet acknowledged), as a crash would.
    pub fn kill(&mut self) {
        self.stop = None;
        drop(self.running.take());
    }
}

/// One admin API call, with the bearer `token` if given.
pub async fn call(
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Value,
) -> Reply {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = auth.as_deref() {
        headers.push(("authorization", a));
    }
    let text = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    send(request(method, &format!("{base}{path}"), &headers, text)).await
}

/// A data plane run through the real server entry point (`dataplane::serve_until`, so with its
/// usage publisher) following a control plane; stops when dropped.
pub struct Served {
    pub base: String,
    /// Dropping it would shut the data plane down.
    _stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a [`Served`] data plane in `namespace` following `cp`; `extra` is appended to its
/// config (a `redis:` section, say).
pub async fn served(namespace: &str, cp: &ControlPlane, extra: &str) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        "server:\n  key_pepper: {{ value: \"{PEPPER}\" }}\n  shutdown_grace_seconds: 1\n\
         cluster:\n  namespace: {namespace}\n  nats_url: \"{nats}\"\n  controlplane_grpc: \"{grpc}\"\n  \
         heartbeat_interval_ms: 500\n  snapshot_cache: \"{cache}\"\n  usage_spill_path: \"{spill}\"\n{trust}{extra}",
        trust = trust_yaml(),
        nats = switchboard_tests::services::nats_url(),
        grpc = cp.grpc,
        cache = dir.path().join("snapshot.json").display(),
        spill = dir.path().join("usage.jsonl").display(),
    );
    let path = dir.path().join("dp.yaml");
    std::fs::write(&path, config).unwrap();
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(dataplane::serve_until(
        dataplane::Options {
            config_path: path,
            listen: Some("127.0.0.1:0".parse().unwrap()),
            master_keys: Some(MASTER_KEYS.to_owned()),
            ..Default::default()
        },
        async move {
            let _ = stop_rx.await;
        },
        move |addr| {
            let _ = addr_tx.send(addr);
        },
    ));
    let base = format!("http://{}", addr_rx.await.unwrap());
    Served {
        base,
        _stop: stop_tx,
        task,
        _dir: dir,
    }
}

/// The revision a committed admin write reports (`x-switchboard-config-revision`).
pub fn written_revision(reply: &super::Reply) -> u64 {
    reply
        .headers
        .get("x-switchboard-config-revision")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("a committed write reports its revision")
}

/// Waits until the data plane at `base` serves config revision `revision` or a later one
/// (every answer carries the served revision): a write that travels as a delta, or as a full
/// snapshot published after the answer, reaches a data plane a moment after the write.
pub async fn until_revision(base: &str, revision: u64) {
    let started = std::time::Instant::now();
    loop {
        let reply = super::send(super::request(
            http::Method::GET,
            &format!("{base}/v1/models"),
            &[],
            "",
        ))
        .await;
        let served = reply
            .headers
            .get("x-switchboard-config-revision")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if served >= revision {
            return;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "the data plane at {base} still serves revision {served}, not {revision}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
}
