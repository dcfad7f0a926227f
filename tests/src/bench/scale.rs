//! The propagation mode: how long one virtual key's creation or revocation takes to reach a
//! data plane when the snapshot holds `--keys` keys, through the real path — the
//! `controlplane` binary on Postgres, NATS JetStream, a cluster-mode `dataplane` — and what
//! that data plane's memory and start-up are at that size.
//!
//! The keys are inserted in bulk with SQL (through `psql`, as the admin API would take hours);
//! a database of the run's own is created and dropped. Each change is timed from the admin
//! API's answer until the data plane answers the key the new way (200 after a creation, 401
//! after a revocation), polling it over one keep-alive connection; the admin call's own
//! duration (commit, snapshot build, publication) is reported beside it.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use serde::Serialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use super::http::{Connection, connect, json_call, wait_ready};
use super::procs::{Proc, command, free_port, which};
use super::targets::{BENCH_MODEL, Env};
use crate::cluster_keys::{GRPC_TOKEN, INGEST_KEY, SIGNING_SEED, signing_public};

/// The run's master key (opens the provider credential the control plane seals).
const MASTER_KEYS: &str = "bench:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const PEPPER: &str = "bench-propagation-pepper";
const ADMIN: &str = "bench@example.com";
const PASSWORD: &str = "bench password, not a secret";
/// Longest one change may take to show before it counts as lost.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
const READY: Duration = Duration::from_secs(120);

/// What the propagation mode measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Propagation {
    pub failed: Option<String>,
    pub keys: usize,
    /// Seconds to insert the keys with SQL (not a product figure; for context).
    pub seed_s: f64,
    /// Seconds from the data plane's start until it was ready: fetching, checking and
    /// installing the snapshot with all the keys.
    pub dataplane_ready_s: f64,
    /// The data plane's resident memory when ready, idle, with all the keys.
    pub dataplane_idle_rss_mb: f64,
    /// The same, [`super::targets::SETTLE`] later, still idle.
    pub dataplane_settled_rss_mb: f64,
    /// Its resident memory after the changes.
    pub dataplane_end_rss_mb: f64,
    pub controlplane_rss_mb: f64,
    /// Size of the data plane's snapshot cache file (the body and its signed head).
    pub snapshot_bytes: u64,
    /// Changes timed (creations and revocations).
    pub changes: usize,
    /// Changes that never showed within the timeout.
    pub lost: usize,
    /// Admin API call (commit + snapshot build + publication), milliseconds.
    pub admin_call_ms: Quantiles,
    /// From the admin API's answer until the data plane answers the new way, milliseconds.
    pub propagation_ms: Quantiles,
    /// From sending the admin call until the data plane answers the new way, milliseconds.
    pub end_to_end_ms: Quantiles,
}

/// p50, p99 and max of some durations.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Quantiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl Quantiles {
    /// Nearest-rank quantiles of `ms`.
    pub fn of(mut ms: Vec<f64>) -> Self {
        if ms.is_empty() {
            return Self::default();
        }
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((q * ms.len() as f64).ceil() as usize).clamp(1, ms.len()) - 1];
        Self {
            p50: at(0.5),
            p99: at(0.99),
            max: ms[ms.len() - 1],
        }
    }
}

/// Runs the propagation mode; a failure is reported in the result, not raised.
pub async fn run(
    env: &Env,
    keys: usize,
    changes: usize,
    database_url: &str,
    nats_url: &str,
) -> Propagation {
    let mut result = Propagation {
        keys,
        ..Propagation::default()
    };
    let namespace = format!("bench{}", std::process::id());
    if let Err(error) = measure(
        env,
        database_url,
        nats_url,
        &namespace,
        changes,
        &mut result,
    )
    .await
    {
        result.failed = Some(format!("{error:#}"));
    }
    if let Err(error) = delete_nats_state(nats_url, &namespace).await {
        tracing::warn!("could not delete the run's JetStream state: {error:#}");
    }
    result
}

/// Deletes the run's streams and snapshot bucket from the shared NATS: at 100,000 keys they
/// hold up to `SNAPSHOTS_KEPT` snapshots of about 29 MB each.
async fn delete_nats_state(nats_url: &str, namespace: &str) -> anyhow::Result<()> {
    let names = switchboard_shared::cluster::NatsNames::new(namespace);
    let client = async_nats::connect(nats_url).await?;
    let jetstream = async_nats::jetstream::new(client);
    // Each may be missing when the run failed early; that is fine.
    let _ = jetstream.delete_object_store(&names.snapshot_bucket).await;
    let _ = jetstream.delete_stream(&names.config_stream).await;
    let _ = jetstream.delete_stream(&names.usage_stream).await;
    Ok(())
}

async fn measure(
    env: &Env,
    database_url: &str,
    nats_url: &str,
    namespace: &str,
    changes: usize,
    result: &mut Propagation,
) -> anyhow::Result<()> {
    let psql = which("psql").context("psql not found (apt-get install postgresql-client)")?;
    let db = Database::create(&psql, database_url)?;
    let cp_env = controlplane_env(&db.url, nats_url, namespace)?;
    let (cp, admin) = start_controlplane(env, &cp_env, &db, result).await?;
    admin
        .call(
            Method::POST,
            "/admin/v1/providers",
            json!({"id": "mock", "kind": "openai",
        "base_url": env.upstream_base(), "api_key": "sk-upstream-bench"}),
        )
        .await?;
    admin
        .call(
            Method::POST,
            "/admin/v1/deployments",
            json!({"id": "mock-gpt",
        "model": BENCH_MODEL, "provider": "mock", "upstream_model": "gpt-bench-upstream"}),
        )
        .await?;

    let cache = env.dir.join("propagation-snapshot.json");
    let (dp, addr) = start_dataplane(env, &cp_env, nats_url, namespace, &cache, result).await?;
    let timed = time_changes(&admin, addr, changes).await;
    // The cache file is written after the install; by now it holds the last revision.
    result.snapshot_bytes = cache_body_bytes(&cache);
    result.dataplane_end_rss_mb = mib(dp.tree_rss_bytes());
    result.controlplane_rss_mb = mib(cp.tree_rss_bytes());
    let timed = timed?;
    result.changes = timed.len();
    result.lost = timed.iter().filter(|t| t.shown.is_none()).count();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    result.admin_call_ms = Quantiles::of(timed.iter().map(|t| ms(t.call)).collect());
    result.propagation_ms = Quantiles::of(timed.iter().filter_map(|t| t.shown).map(ms).collect());
    result.end_to_end_ms = Quantiles::of(
        timed
            .iter()
            .filter_map(|t| t.shown.map(|shown| ms(shown + t.call)))
            .collect(),
    );
    dp.stop(Duration::from_secs(3)).await;
    cp.stop(Duration::from_secs(3)).await;
    Ok(())
}

/// The size of the snapshot body in the data plane's cache file (the file wraps the body
/// with its signed head), 0 if it cannot be read.
fn cache_body_bytes(cache: &Path) -> u64 {
    std::fs::metadata(cache).map_or(0, |m| m.len())
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Migrates the run's database, seeds the keys, starts `controlplane serve` on the load core
/// and logs in.
async fn start_controlplane(
    env: &Env,
    cp_env: &ControlPlaneEnv,
    db: &Database,
    result: &mut Propagation,
) -> anyhow::Result<(Proc, Admin)> {
    let cp_bin = env.bin_dir.join("controlplane");
    ensure!(
        cp_bin.is_file(),
        "{cp_bin:?} not found: cargo build --release -p switchboard-controlplane"
    );
    let mut migrate = std::process::Command::new(&cp_bin);
    migrate.arg("migrate").envs(cp_env.vars.iter().cloned());
    let out = migrate.output().context("controlplane migrate")?;
    ensure!(
        out.status.success(),
        "controlplane migrate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seeded = Instant::now();
    db.seed(result.keys)?;
    result.seed_s = seeded.elapsed().as_secs_f64();

    let mut cmd = command(&cp_bin, env.pinning.load_core);
    cmd.arg("serve")
        .envs(cp_env.vars.iter().cloned())
        .env("RUST_LOG", "warn");
    let mut cp = Proc::spawn("controlplane", cmd, env.dir.join("controlplane.log"), false)?;
    let alive = |p: &mut Proc| p.exited().map_or(Ok(()), |s| Err(format!("exited ({s})")));
    if let Err(e) = wait_ready(cp_env.rest, "/healthz", READY, || alive(&mut cp)).await {
        bail!("control plane not ready: {e}\n{}", cp.log_tail(10));
    }
    let token = login(cp_env.rest).await?;
    Ok((
        cp,
        Admin {
            addr: cp_env.rest,
            token,
        },
    ))
}

/// The control plane's configuration, all from `SWITCHBOARD__*` variables as in
/// `deploy/local-cluster`, and its REST address.
struct ControlPlaneEnv {
    vars: Vec<(String, String)>,
    rest: SocketAddr,
    grpc: SocketAddr,
}

fn controlplane_env(
    db_url: &str,
    nats_url: &str,
    namespace: &str,
) -> anyhow::Result<ControlPlaneEnv> {
    let rest = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let vars = [
        ("SWITCHBOARD__SERVER__LISTEN", rest.to_string()),
        ("SWITCHBOARD__SERVER__GRPC_LISTEN", grpc.to_string()),
        ("SWITCHBOARD__DATABASE__URL", db_url.to_owned()),
        ("SWITCHBOARD__NATS__URL", nats_url.to_owned()),
        ("SWITCHBOARD__CLUSTER__NAMESPACE", namespace.to_owned()),
        ("SWITCHBOARD__KEYS__PEPPER__VALUE", PEPPER.to_owned()),
        (
            "SWITCHBOARD__AUTH__JWT_SECRET__VALUE",
            "bench-jwt-secret-long-enough-0123456789abcdef".to_owned(),
        ),
        (
            "SWITCHBOARD__CLUSTER__SNAPSHOT_SIGNING_KEY__VALUE",
            SIGNING_SEED.to_owned(),
        ),
        (
            "SWITCHBOARD__CLUSTER__GRPC_TOKENS__VALUE",
            GRPC_TOKEN.to_owned(),
        ),
        ("SWITCHBOARD__CLUSTER__GRPC_PLAINTEXT", "true".to_owned()),
        (
            "SWITCHBOARD__CLUSTER__INGEST_KEYS__VALUE",
            INGEST_KEY.to_owned(),
        ),
        ("SWITCHBOARD_MASTER_KEYS", MASTER_KEYS.to_owned()),
        ("SWITCHBOARD_BOOTSTRAP_ADMIN_EMAIL", ADMIN.to_owned()),
        ("SWITCHBOARD_BOOTSTRAP_ADMIN_PASSWORD", PASSWORD.to_owned()),
    ];
    Ok(ControlPlaneEnv {
        vars: vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        rest,
        grpc,
    })
}

/// A database of the run's own on the Postgres server of `server_url`, dropped on drop.
struct Database {
    psql: std::path::PathBuf,
    server_url: String,
    name: String,
    url: String,
}

impl Database {
    fn create(psql: &Path, server_url: &str) -> anyhow::Result<Self> {
        let name = format!("switchboard_bench_{}", std::process::id());
        let base = server_url
            .rsplit_once('/')
            .map_or(server_url, |(base, _)| base);
        let db = Self {
            psql: psql.to_path_buf(),
            server_url: server_url.to_owned(),
            url: format!("{base}/{name}"),
            name,
        };
        db.sql(
            &db.server_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db.name),
        )?;
        db.sql(&db.server_url, &format!("CREATE DATABASE {}", db.name))?;
        Ok(db)
    }

    fn sql(&self, url: &str, statement: &str) -> anyhow::Result<()> {
        let out = std::process::Command::new(&self.psql)
            .args([url, "-v", "ON_ERROR_STOP=1", "-qc", statement])
            .output()
            .context("running psql")?;
        ensure!(
            out.status.success(),
            "psql: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// 100 tenants and `keys` keys over them, as `controlplane/tests/snapshot_scale.rs` does.
    fn seed(&self, keys: usize) -> anyhow::Result<()> {
        self.sql(
            &self.url,
            &format!(
                "INSERT INTO tenants (id) SELECT 't' || g FROM generate_series(1, 100) g; \
                 INSERT INTO virtual_keys (id, tenant_id, name, key_hash, display_prefix, rpm, metadata) \
                 SELECT 'k' || g, 't' || (g % 100 + 1), 'key ' || g, \
                        encode(sha256(('secret' || g)::bytea), 'hex'), 'sk-sb-abcd', 600, \
                        '{{\"team\": \"ml\"}}'::jsonb \
                 FROM generate_series(1, {keys}) g"
            ),
        )
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let _ = self.sql(
            &self.server_url,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// The admin API with a logged-in admin.
struct Admin {
    addr: SocketAddr,
    token: String,
}

impl Admin {
    async fn call(&self, method: Method, path: &str, body: Value) -> anyhow::Result<Value> {
        let (status, reply) =
            json_call(self.addr, method, path, Some(&self.token), Some(&body)).await?;
        ensure!(status.is_success(), "{path}: {status} {reply}");
        Ok(reply)
    }
}

async fn login(addr: SocketAddr) -> anyhow::Result<String> {
    let body = json!({"email": ADMIN, "password": PASSWORD});
    let (status, reply) = json_call(
        addr,
        Method::POST,
        "/admin/v1/auth/login",
        None,
        Some(&body),
    )
    .await?;
    ensure!(status == StatusCode::OK, "login: {status} {reply}");
    reply["access_token"]
        .as_str()
        .map(str::to_owned)
        .context("login: no access_token")
}

/// Starts a cluster-mode data plane on the proxy core and waits until it serves the
/// snapshot; records its start-up time and idle memory.
async fn start_dataplane(
    env: &Env,
    cp: &ControlPlaneEnv,
    nats_url: &str,
    namespace: &str,
    cache: &Path,
    result: &mut Propagation,
) -> anyhow::Result<(Proc, SocketAddr)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let config = format!(
        "server:\n  key_pepper: {{ value: \"{PEPPER}\" }}\ncluster:\n  controlplane_grpc: http://{}\n  nats_url: {nats_url}\n  namespace: {namespace}\n  dataplane_id: bench-dp\n  snapshot_cache: {}\n  snapshot_public_keys: \"{}\"\n  controlplane_grpc_token: {{ value: \"{GRPC_TOKEN}\" }}\n  ingest_key: {{ value: \"{INGEST_KEY}\" }}\n",
        cp.grpc,
        cache.display(),
        signing_public(),
    );
    let path = env.dir.join("propagation-dataplane.yaml");
    std::fs::write(&path, config)?;
    let mut cmd = command(&env.bin_dir.join("dataplane"), env.pinning.proxy_core);
    cmd.arg("--config")
        .arg(&path)
        .arg("--listen")
        .arg(addr.to_string())
        .env("RUST_LOG", "warn")
        .env("OTEL_SDK_DISABLED", "true")
        .env("SWITCHBOARD_MASTER_KEYS", MASTER_KEYS);
    let dp = Proc::spawn(
        "dataplane",
        cmd,
        env.dir.join("propagation-dataplane.log"),
        false,
    )?;
    let running = super::targets::until_ready(dp, addr, "/readyz", READY, String::new())
        .await
        .map_err(|e| anyhow::anyhow!("cluster-mode data plane: {e}"))?;
    result.dataplane_ready_s = running.ready_after.unwrap_or_default().as_secs_f64();
    result.dataplane_idle_rss_mb = mib(running.idle_rss_bytes.unwrap_or_default());
    result.dataplane_settled_rss_mb = mib(running.settled_rss_bytes.unwrap_or_default());
    let proc = running.proc.context("no data plane process")?;
    Ok((proc, addr))
}

/// One timed change.
struct Timed {
    /// The admin call's duration.
    call: Duration,
    /// From its answer until the data plane answered the new way; `None` if it never did.
    shown: Option<Duration>,
}

/// Creates and revokes `keys` keys one after the other, timing each change.
async fn time_changes(admin: &Admin, dp: SocketAddr, keys: usize) -> anyhow::Result<Vec<Timed>> {
    let mut poller = Poller {
        addr: dp,
        connection: None,
    };
    let mut timed = Vec::with_capacity(keys * 2);
    for _ in 0..keys {
        let sent = Instant::now();
        let created = admin
            .call(Method::POST, "/admin/v1/keys", json!({"tenant_id": "t1"}))
            .await?;
        let call = sent.elapsed();
        let id = created["id"].as_str().context("no key id")?.to_owned();
        let secret = created["key"].as_str().context("no key secret")?.to_owned();
        let shown = poller.until(&secret, StatusCode::OK).await;
        timed.push(Timed { call, shown });

        let sent = Instant::now();
        admin
            .call(
                Method::POST,
                &format!("/admin/v1/keys/{id}/revoke"),
                json!({}),
            )
            .await?;
        let call = sent.elapsed();
        let shown = poller.until(&secret, StatusCode::UNAUTHORIZED).await;
        timed.push(Timed { call, shown });
    }
    Ok(timed)
}

/// Asks the data plane over one keep-alive connection, reconnecting after a failure.
struct Poller {
    addr: SocketAddr,
    connection: Option<Connection>,
}

impl Poller {
    /// Polls until a chat with `secret` answers `want`; how long it took, `None` on timeout.
    async fn until(&mut self, secret: &str, want: StatusCode) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < CHANGE_TIMEOUT {
            if self.status(secret).await == Some(want) {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        None
    }

    async fn status(&mut self, secret: &str) -> Option<StatusCode> {
        if self.connection.is_none() {
            self.connection = connect(self.addr).await.ok();
        }
        let sender = self.connection.as_mut()?;
        let body =
            format!(r#"{{"model":"{BENCH_MODEL}","messages":[{{"role":"user","content":"hi"}}]}}"#);
        let request = Request::post("/v1/chat/completions")
            .header(http::header::HOST, self.addr.to_string())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::AUTHORIZATION, format!("Bearer {secret}"))
            .body(Full::new(Bytes::from(body)))
            .ok()?;
        let answer = async {
            sender.ready().await.ok()?;
            let response = sender.send_request(request).await.ok()?;
            let status = response.status();
            response.into_body().collect().await.ok()?;
            Some(status)
        };
        let status = answer.await;
        if status.is_none() {
            self.connection = None;
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_nearest_rank() {
        let q = Quantiles::of((1..=100).map(f64::from).collect());
        assert_eq!(
            q,
            Quantiles {
                p50: 50.0,
                p99: 99.0,
                max: 100.0
            }
        );
        let q = Quantiles::of(vec![3.0, 1.0]);
        assert_eq!((q.p50, q.p99, q.max), (1.0, 3.0, 3.0));
        assert_eq!(Quantiles::of(Vec::new()), Quantiles::default());
    }
}
