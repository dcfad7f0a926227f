//! Starting what the load is sent to: the mock, the gateway, nginx and LiteLLM, each with a
//! generated configuration that points it at the same mock scenario.
//!
//! Every proxy sees the mock through the scenario URL `/s/chunks=N/v1`, so all targets get
//! identical upstream behaviour. A proxy that cannot start is a failed row with the tail of
//! its log, not an aborted run: the gateway may be mid-development.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::cli::Target;
use super::http::wait_ready;
use super::procs::{Pinning, Proc, command, free_port, which};

/// Our copy of the peers' nginx configuration, with `@DIR@ @LISTEN@ @UPSTREAM@` to fill.
const NGINX_TEMPLATE: &str = include_str!("../../../deploy/bench/nginx.conf.template");
/// LiteLLM's configuration, with `@API_BASE@` to fill.
const LITELLM_TEMPLATE: &str = include_str!("../../../deploy/bench/litellm-config.yaml");

/// The virtual key the load generator presents to the gateway (and LiteLLM's master key).
pub const BENCH_KEY: &str = "sk-bench-1234";
/// The gateway's key pepper in the generated configuration.
const BENCH_PEPPER: &str = "bench-pepper";
/// The public model name every request asks for.
pub const BENCH_MODEL: &str = "gpt-bench";

const MOCK_READY: Duration = Duration::from_secs(10);
const GATEWAY_READY: Duration = Duration::from_secs(20);
const NGINX_READY: Duration = Duration::from_secs(10);
const REDIS_READY: Duration = Duration::from_secs(10);
const LITELLM_READY: Duration = Duration::from_secs(120);

/// What the benchmark shares between targets.
#[derive(Debug, Clone)]
pub struct Env {
    pub bin_dir: PathBuf,
    pub dir: PathBuf,
    pub pinning: Pinning,
    pub mock_addr: SocketAddr,
    /// The mock scenario segment, e.g. `chunks=20`.
    pub scenario: String,
    /// The benchmark's own redis-server, when a Redis-mode target runs.
    pub redis_url: Option<String>,
    /// The OTLP receiver's base URL, when a traced target runs.
    pub otlp_endpoint: Option<String>,
    /// Virtual keys in the large gateway's snapshot (`--keys`).
    pub keys: usize,
    /// nginx's `worker_connections` when more than the template's 4096 are needed.
    pub nginx_connections: Option<usize>,
}

impl Env {
    /// The mock's base URL for this run's scenario.
    pub fn upstream_base(&self) -> String {
        format!("http://{}/s/{}/v1", self.mock_addr, self.scenario)
    }
}

/// A target ready for load: where to send it, and the proxy process if there is one.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    /// Path of the chat completions endpoint on `addr`.
    pub path: String,
    pub proc: Option<Proc>,
    /// From the proxy's start until it first answered ready (for a gateway: reading and
    /// installing its snapshot).
    pub ready_after: Option<Duration>,
    /// The proxy's resident memory (process tree) when it first answered ready, idle.
    pub idle_rss_bytes: Option<u64>,
    /// The same, [`SETTLE`] later, still idle: what an allocator gives back after a delay
    /// (mimalloc purges freed pages 1 s after they were freed) is given back by then.
    pub settled_rss_bytes: Option<u64>,
}

/// How long after ready [`Running::settled_rss_bytes`] is read.
pub const SETTLE: Duration = Duration::from_secs(3);

/// Starts `mock-upstream --no-record` on the load core; returns it and its address.
pub async fn start_mock(
    bin_dir: &Path,
    dir: &Path,
    pinning: &Pinning,
) -> anyhow::Result<(Proc, SocketAddr)> {
    let binary = bin_dir.join("mock-upstream");
    anyhow::ensure!(
        binary.is_file(),
        "{binary:?} not found: build it with cargo build --release -p switchboard-tests"
    );
    let mut cmd = command(&binary, pinning.load_core);
    cmd.args(["--listen", "127.0.0.1:0", "--no-record", "--threads", "1"]);
    let mut proc = Proc::spawn("mock-upstream", cmd, dir.join("mock.log"), true)?;
    let url = proc
        .wait_for_line("listening on http://", MOCK_READY)
        .await?;
    let addr = url
        .parse()
        .with_context(|| format!("mock-upstream printed a bad address {url:?}"))?;
    Ok((proc, addr))
}

/// Starts a throwaway `redis-server` (no persistence) on the load core, for the Redis-mode
/// gateway; returns it and its URL.
pub async fn start_redis(dir: &Path, pinning: &Pinning) -> anyhow::Result<(Proc, String)> {
    let binary = which("redis-server").context("redis-server not found")?;
    let port = free_port()?;
    let mut cmd = command(&binary, pinning.load_core);
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"]);
    let mut proc = Proc::spawn("redis-server", cmd, dir.join("redis.log"), false)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = tokio::time::Instant::now() + REDIS_READY;
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if let Some(status) = proc.exited() {
            anyhow::bail!("redis-server exited ({status}):\n{}", proc.log_tail(10));
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "redis-server did not listen within {REDIS_READY:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((proc, format!("redis://{addr}")))
}

/// Starts `target`; `Err` is the reason it cannot be measured, for the report.
pub async fn start(target: Target, env: &Env, litellm: Option<&Path>) -> Result<Running, String> {
    match target {
        Target::Direct => Ok(Running {
            addr: env.mock_addr,
            path: format!("/s/{}/v1/chat/completions", env.scenario),
            proc: None,
            ready_after: None,
            idle_rss_bytes: None,
            settled_rss_bytes: None,
        }),
        Target::Gateway => start_gateway(env, target, None).await,
        Target::Gateway100kKeys => start_gateway(env, target, None).await,
        Target::GatewayTraced1pct | Target::GatewayTraced100pct => match &env.otlp_endpoint {
            Some(_) => start_gateway(env, target, None).await,
            None => Err("no OTLP receiver was started".to_owned()),
        },
        Target::GatewayRedis => match &env.redis_url {
            Some(url) => start_gateway(env, target, Some(url)).await,
            None => Err("no redis-server was started".to_owned()),
        },
        Target::Nginx => start_nginx(env).await,
        Target::Litellm => match litellm {
            Some(binary) => start_litellm(env, binary).await,
            None => Err("no --litellm PATH given".to_owned()),
        },
    }
}

/// Waits for `GET ready_path` to answer 200; on failure, kills the proxy and reports why
/// with the tail of its log.
pub async fn until_ready(
    mut proc: Proc,
    addr: SocketAddr,
    ready_path: &str,
    timeout: Duration,
    path: String,
) -> Result<Running, String> {
    let spawned = Instant::now();
    let ready = wait_ready(addr, ready_path, timeout, || match proc.exited() {
        Some(status) => Err(format!("exited ({status}) before it was ready")),
        None => Ok(()),
    })
    .await;
    match ready {
        Ok(()) => {
            let ready_after = spawned.elapsed();
            let idle = proc.tree_rss_bytes();
            tokio::time::sleep(SETTLE).await;
            Ok(Running {
                addr,
                path,
                ready_after: Some(ready_after),
                idle_rss_bytes: Some(idle),
                settled_rss_bytes: Some(proc.tree_rss_bytes()),
                proc: Some(proc),
            })
        }
        Err(reason) => Err(format!("{reason}; log tail:\n{}", proc.log_tail(10))),
    }
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// The gateway's configuration: one tenant, one key, one priced deployment at the mock. Key and
/// tenant have limits and budgets far above what the load reaches, so that every request does
/// the limit and budget work — in process, or through Redis when `redis_url` is given (one
/// script call per request for both, plus the pipelined token and spend settlements).
/// `extra_keys` more keys (no limits, spread over 100 more tenants) make a large snapshot;
/// the load uses only the first.
pub fn gateway_config(upstream_base: &str, redis_url: Option<&str>, extra_keys: usize) -> String {
    let key_hash = switchboard_shared::keys::hash_key_hex(BENCH_PEPPER.as_bytes(), BENCH_KEY);
    let redis = redis_url.map_or(String::new(), |url| {
        format!("redis:\n  url: {{ value: \"{url}\" }}\n  key_prefix: bench\n")
    });
    format!(
        r#"server:
  key_pepper: {{ value: "{BENCH_PEPPER}" }}
{redis}snapshot:
  revision: 1
  tenants: [{{ id: bench, limits: {{ rpm: 1000000000, tpm: 4000000000 }}, budget: {{ max_usd: 1000000000, period: monthly }} }}{tenants}]
  virtual_keys:
    - {{ id: bench-key, tenant_id: bench, key_hash: "{key_hash}", limits: {{ rpm: 1000000000, tpm: 4000000000 }}, budget: {{ max_usd: 1000000000, period: monthly }} }}
{extra}  providers:
    - {{ id: mock, kind: openai, base_url: "{upstream_base}" }}
  deployments:
    - {{ id: mock-gpt, model: {BENCH_MODEL}, provider: mock, upstream_model: gpt-bench-upstream, price: {{ input_cost_per_token: 0.000001, output_cost_per_token: 0.000002 }} }}
"#,
        extra = extra_keys_yaml(extra_keys),
        tenants = extra_tenants(extra_keys),
    )
}

/// YAML lines for `count` more virtual keys of the snapshot (after the bench key), and a
/// `more_tenants` line with their 100 tenants. Their secrets are never used, but their hashes
/// are real HMACs, as a control plane would store them.
fn extra_keys_yaml(count: usize) -> String {
    if count == 0 {
        return String::new();
    }
    let hasher = switchboard_shared::keys::KeyHasher::new(BENCH_PEPPER.as_bytes());
    let mut out = String::with_capacity(count * 140);
    for i in 0..count {
        let hash = hex_lower(&hasher.hash(&format!("sk-bench-extra-{i}")));
        out.push_str(&format!(
            "    - {{ id: extra-{i}, tenant_id: extra-{}, key_hash: \"{hash}\" }}\n",
            i % 100
        ));
    }
    out
}

/// The tenants of [`extra_keys_yaml`]'s keys, as more entries of a flow list.
fn extra_tenants(count: usize) -> String {
    if count == 0 {
        return String::new();
    }
    (0..100.min(count))
        .map(|t| format!(", {{ id: extra-{t} }}"))
        .collect()
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The standard OpenTelemetry variables of a gateway `target`: tracing off, or exporting over
/// OTLP/HTTP to `endpoint` with the target's sampling ratio (the benchmark sends no
/// `traceparent`, so the ratio alone decides).
pub fn otel_env(target: Target, endpoint: Option<&str>) -> Vec<(&'static str, String)> {
    match (target.sampling(), endpoint) {
        (Some(ratio), Some(endpoint)) => vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.to_owned()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()),
            ("OTEL_TRACES_SAMPLER", "traceidratio".to_owned()),
            ("OTEL_TRACES_SAMPLER_ARG", ratio.to_string()),
        ],
        _ => vec![("OTEL_SDK_DISABLED", "true".to_owned())],
    }
}

async fn start_gateway(
    env: &Env,
    target: Target,
    redis_url: Option<&str>,
) -> Result<Running, String> {
    let binary = env.bin_dir.join("dataplane");
    if !binary.is_file() {
        return Err(format!(
            "{binary:?} not found: cargo build --release -p switchboard-dataplane"
        ));
    }
    let name = target.name();
    let config = env.dir.join(format!("{name}.yaml"));
    let extra_keys = match target {
        Target::Gateway100kKeys => env.keys.saturating_sub(1),
        _ => 0,
    };
    let text = gateway_config(&env.upstream_base(), redis_url, extra_keys);
    std::fs::write(&config, text).map_err(err)?;
    let port = free_port().map_err(err)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = command(&binary, env.pinning.proxy_core);
    cmd.arg("--config")
        .arg(&config)
        .arg("--listen")
        .arg(addr.to_string())
        .env("RUST_LOG", "warn")
        .envs(otel_env(target, env.otlp_endpoint.as_deref()));
    let proc =
        Proc::spawn("dataplane", cmd, env.dir.join(format!("{name}.log")), false).map_err(err)?;
    let path = "/v1/chat/completions".to_owned();
    until_ready(proc, addr, "/readyz", GATEWAY_READY, path).await
}

/// The nginx configuration for a listen address and an upstream `host:port`.
pub fn nginx_config(dir: &Path, listen: SocketAddr, upstream: SocketAddr) -> String {
    NGINX_TEMPLATE
        .replace("@DIR@", &dir.display().to_string())
        .replace("@LISTEN@", &listen.to_string())
        .replace("@UPSTREAM@", &upstream.to_string())
}

async fn start_nginx(env: &Env) -> Result<Running, String> {
    let Some(binary) = which("nginx") else {
        return Err("nginx not found: apt-get install nginx-light".to_owned());
    };
    let dir = env.dir.join("nginx");
    std::fs::create_dir_all(dir.join("tmp")).map_err(err)?;
    let port = free_port().map_err(err)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = dir.join("nginx.conf");
    let mut text = nginx_config(&dir, addr, env.mock_addr);
    if let Some(connections) = env.nginx_connections {
        // Many connections at once (the slow-streams section): room for them all, and an
        // accept queue as long as the gateway's rather than nginx's default 511.
        text = text
            .replace(
                "worker_connections 4096;",
                &format!("worker_connections {connections};"),
            )
            .replace(
                &format!("listen {addr};"),
                &format!("listen {addr} backlog=1024;"),
            );
    }
    std::fs::write(&config, text).map_err(err)?;
    let mut cmd = command(&binary, env.pinning.proxy_core);
    cmd.arg("-c")
        .arg(&config)
        .arg("-p")
        .arg(&dir)
        .arg("-e")
        .arg(dir.join("error.log"));
    let proc = Proc::spawn("nginx", cmd, env.dir.join("nginx.log"), false).map_err(err)?;
    // nginx passes paths through, so the scenario prefix goes in the request path.
    let ready_path = format!("/s/{}/v1/models", env.scenario);
    let path = format!("/s/{}/v1/chat/completions", env.scenario);
    until_ready(proc, addr, &ready_path, NGINX_READY, path).await
}

async fn start_litellm(env: &Env, binary: &Path) -> Result<Running, String> {
    let config = env.dir.join("litellm-config.yaml");
    let text = LITELLM_TEMPLATE.replace("@API_BASE@", &env.upstream_base());
    std::fs::write(&config, text).map_err(err)?;
    let port = free_port().map_err(err)?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut cmd = command(binary, env.pinning.proxy_core);
    cmd.arg("--config")
        .arg(&config)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--num_workers", "1"]);
    let proc = Proc::spawn("litellm", cmd, env.dir.join("litellm.log"), false).map_err(err)?;
    let path = "/v1/chat/completions".to_owned();
    until_ready(proc, addr, "/health/liveliness", LITELLM_READY, path).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_configs_fill_every_placeholder() {
        let gateway = gateway_config("http://127.0.0.1:9/s/chunks=20/v1", None, 0);
        let with_redis = gateway_config(
            "http://127.0.0.1:9/s/chunks=20/v1",
            Some("redis://127.0.0.1:7"),
            0,
        );
        let large = gateway_config("http://127.0.0.1:9/s/chunks=20/v1", None, 299);
        let large = dataplane::config::Config::parse(&large, &[]).unwrap();
        large.validate().unwrap();
        let snapshot = large.snapshot.unwrap();
        assert_eq!(snapshot.virtual_keys.len(), 300);
        assert_eq!(snapshot.tenants.len(), 101);
        assert_eq!(
            snapshot.virtual_keys[299].key_hash,
            switchboard_shared::keys::hash_key_hex(b"bench-pepper", "sk-bench-extra-298")
        );
        let config = dataplane::config::Config::parse(&with_redis, &[]).unwrap();
        config.validate().unwrap();
        assert!(config.redis.is_some());
        assert!(
            dataplane::config::Config::parse(&gateway, &[])
                .unwrap()
                .redis
                .is_none()
        );
        assert!(gateway.contains("base_url: \"http://127.0.0.1:9/s/chunks=20/v1\""));
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&gateway).unwrap();
        let hash = doc["snapshot"]["virtual_keys"][0]["key_hash"]
            .as_str()
            .unwrap();
        assert_eq!(
            hash,
            switchboard_shared::keys::hash_key_hex(b"bench-pepper", "sk-bench-1234")
        );
        // The snapshot part is a valid snapshot, whose requests do the budget work too.
        let snapshot = serde_yaml_ng::to_string(&doc["snapshot"]).unwrap();
        let snapshot = switchboard_shared::snapshot::Snapshot::from_yaml(&snapshot).unwrap();
        assert!(snapshot.virtual_keys[0].budget.is_some());
        assert!(snapshot.tenants[0].budget.is_some());
        assert!(snapshot.deployments[0].price.is_some());

        let nginx = nginx_config(
            Path::new("/tmp/x"),
            "127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        );
        assert!(!nginx.contains('@'), "{nginx}");
        assert!(nginx.contains("server 127.0.0.1:2;") && nginx.contains("listen 127.0.0.1:1;"));
        assert!(LITELLM_TEMPLATE.contains("@API_BASE@"));

        let traced = otel_env(Target::GatewayTraced1pct, Some("http://127.0.0.1:4318"));
        assert!(traced.contains(&("OTEL_TRACES_SAMPLER_ARG", "0.01".to_owned())));
        assert!(traced.contains(&(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://127.0.0.1:4318".to_owned()
        )));
        let off = otel_env(Target::Gateway, Some("http://127.0.0.1:4318"));
        assert_eq!(off, [("OTEL_SDK_DISABLED", "true".to_owned())]);
    }
}
