//! Running the data plane: start, reload, drain.
//!
//! - Start: load and validate the config, build the shared state, install the snapshot (or,
//!   in cluster mode, start following the control plane: [`crate::cluster`]), bind.
//! - Reload (standalone mode): on `SIGHUP`, or when the file's modification time or size
//!   changes, the file is read and validated again and its snapshot swapped in atomically. An
//!   invalid file changes nothing: the old snapshot keeps serving and the problems are logged.
//! - Drain: on `SIGTERM` or Ctrl-C, `/readyz` turns 503, the listener stops accepting, and
//!   in-flight requests — streams included — may finish for up to `shutdown_grace_seconds`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;

use switchboard_shared::sealed::MasterKeys;

use crate::accounting::{Books, LogSink, TeeSink, UsageSink};
use crate::cluster;
use crate::config::{Config, ServerConfig, process_env};
use crate::limits::{Limiter, LocalLimiter, RedisLimiter};
use crate::metrics;
use crate::providers::client::{self, ClientSettings};
use crate::routes::router;
use crate::shared_redis::{RedisConfig, SharedRedis};
use crate::state::{AppState, Installed};
use crate::usage_publisher::{NatsUsageSink, PublisherSettings};

/// What `main` passes in.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub config_path: PathBuf,
    /// Overrides `server.listen`.
    pub listen: Option<SocketAddr>,
    /// `--controlplane`: sets `cluster.controlplane_grpc` (cluster mode).
    pub controlplane: Option<String>,
    /// `--nats`: sets `cluster.nats_url` (cluster mode).
    pub nats: Option<String>,
    /// The value of [`MASTER_KEYS_ENV`] (`main` reads it from the environment), which opens
    /// sealed credentials in snapshots from the control plane.
    pub master_keys: Option<String>,
}

/// The environment variable holding the master keys that open sealed upstream credentials:
/// `id:base64key[,id:base64key...]`.
pub const MASTER_KEYS_ENV: &str = "SWITCHBOARD_MASTER_KEYS";

/// Parses the value of [`MASTER_KEYS_ENV`]; unset or blank means no keys. The error names
/// what is wrong, never the value.
pub fn master_keys_from(value: Option<&str>) -> anyhow::Result<Option<MasterKeys>> {
    match value.map(str::trim).filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(spec) => MasterKeys::parse(spec)
            .map(Some)
            .map_err(|e| anyhow::anyhow!("{MASTER_KEYS_ENV}: {e}")),
    }
}

/// Builds the shared state for a server config, with `sink` receiving usage records. With a
/// `redis` section, rate limits are shared through Redis (this needs a Tokio runtime, for the
/// limiter's background tasks); without one they are this process's own.
pub fn build_state(
    server: &ServerConfig,
    redis: Option<&RedisConfig>,
    sink: Arc<dyn UsageSink>,
) -> anyhow::Result<Arc<AppState>> {
    build_state_with_keys(server, redis, None, sink, None)
}

/// [`build_state`] with alert webhooks and master keys to open sealed credentials.
pub fn build_state_with_keys(
    server: &ServerConfig,
    redis: Option<&RedisConfig>,
    webhooks: Option<&crate::webhooks::WebhookConfig>,
    sink: Arc<dyn UsageSink>,
    master_keys: Option<MasterKeys>,
) -> anyhow::Result<Arc<AppState>> {
    crate::install_crypto_provider();
    let metrics = metrics::install();
    let pepper = server
        .key_pepper
        .resolve()
        .context("server.key_pepper")?
        .into_bytes();
    let extra_roots = match &server.upstream_ca_file {
        Some(path) => client::load_pem_certificates(path)
            .map_err(|e| anyhow::anyhow!("server.upstream_ca_file: {e}"))?,
        None => Vec::new(),
    };
    let http = client::build(
        ClientSettings {
            connect_timeout: server.connect_timeout(),
            pool_idle_timeout: Duration::from_secs(server.upstream_pool_idle_timeout_seconds),
            pool_max_idle_per_host: server.upstream_pool_max_idle_per_host,
            caps: server.upstream_caps(),
        },
        extra_roots,
    )
    .map_err(|e| anyhow::anyhow!("server.upstream_ca_file: {e}"))?;
    // One connection to the shared Redis for limits and budgets.
    let shared = redis.map(SharedRedis::connect).transpose()?;
    let limiter = match &shared {
        Some(shared) => Limiter::Redis(RedisLimiter::new(shared.clone())),
        None => Limiter::Local(LocalLimiter::new()),
    };
    let (slots, caps) = match &shared {
        Some(shared) => (
            crate::concurrency::Slots::redis(shared.clone()),
            crate::caps::CapStore::Redis(shared.clone()),
        ),
        None => (
            crate::concurrency::Slots::local(),
            crate::caps::CapStore::Local,
        ),
    };
    let responses = crate::responses::ResponseStore::new(shared.clone());
    let cache = crate::cache::CacheStore::new(shared.clone());
    let books = Books {
        limiter: Arc::new(limiter),
        slots,
        caps,
        budgets: crate::budget::Budgets::new(shared),
        webhooks: match webhooks {
            Some(config) => crate::webhooks::Webhooks::start(config, &http)?,
            None => crate::webhooks::Webhooks::disabled(),
        },
        sink,
        clock: crate::clock::Clock::default(),
        capture_max_bytes: server.capture_max_bytes,
    };
    Ok(Arc::new(
        AppState::new(pepper, http, books, server.max_body_bytes, metrics)
            .with_master_keys(master_keys)
            .with_response_store(responses)
            .with_cache_store(cache),
    ))
}

/// Starts sharing deployment state (load, latency, breakers) through Redis when the config
/// has a `redis:` section; returns the background task. Without one, routing uses this
/// process's own view.
pub fn start_shared_state(
    state: &Arc<AppState>,
    redis: Option<&crate::shared_redis::RedisConfig>,
) -> anyhow::Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(config) = redis else {
        return Ok(None);
    };
    let shared = crate::shared_redis::SharedRedis::connect(config)?;
    let state = Arc::clone(state);
    Ok(Some(crate::fleet::sync::spawn(
        move || state.catalog(),
        shared,
    )))
}

impl crate::fleet::sync::Synced for crate::catalog::Catalog {
    fn deployments(&self) -> Vec<(&str, &Arc<crate::fleet::DeploymentState>)> {
        crate::catalog::Catalog::deployments(self)
            .map(|d| (d.id.as_str(), &d.state))
            .collect()
    }

    fn prefix_models(&self) -> Vec<crate::fleet::sync::PrefixModel<'_>> {
        self.models()
            .filter_map(|m| {
                Some(crate::fleet::sync::PrefixModel {
                    name: &m.name,
                    index: m.prefix.as_ref()?,
                    deployments: m.deployments.iter().map(|d| d.id.as_str()).collect(),
                })
            })
            .collect()
    }
}

/// Loads the config and serves until `SIGTERM` or Ctrl-C, then drains.
pub async fn serve(options: Options) -> anyhow::Result<()> {
    serve_until(options, shutdown_signal(), |_| {}).await
}

/// [`serve`] with the shutdown trigger given, and `on_listening` told the bound address (for
/// tests and embedding programs).
pub async fn serve_until(
    options: Options,
    shutdown: impl Future<Output = ()> + Send,
    on_listening: impl FnOnce(SocketAddr),
) -> anyhow::Result<()> {
    let mut config = Config::load(&options.config_path, &process_env())?;
    config.override_cluster(options.controlplane.clone(), options.nats.clone());
    config
        .validate()
        .map_err(|problems| anyhow::anyhow!("{}: {problems}", options.config_path.display()))?;
    // One id for the heartbeats and the usage events' tags.
    if let Some(cluster) = &mut config.cluster {
        cluster
            .dataplane_id
            .get_or_insert_with(cluster::default_dataplane_id_here);
    }
    let master_keys = master_keys_from(options.master_keys.as_deref())?;
    // Cluster mode with NATS: usage records also go to the control plane's usage stream.
    let publisher = match &config.cluster {
        Some(cluster) if cluster.nats_url.is_some() => Some(start_usage_publisher(cluster).await?),
        _ => None,
    };
    let sink: Arc<dyn UsageSink> = match &publisher {
        Some(p) => Arc::new(TeeSink(
            Arc::new(LogSink),
            Arc::clone(p) as Arc<dyn UsageSink>,
        )),
        None => Arc::new(LogSink),
    };
    let state = build_state_with_keys(
        &config.server,
        config.redis.as_ref(),
        config.webhooks.as_ref(),
        sink,
        master_keys,
    )?;
    // Standalone: the snapshot is compiled into the catalog and then dropped, not kept for the
    // life of the process (at 100,000 keys it is tens of megabytes).
    let standalone = config.snapshot.is_some();
    // Cluster mode: the tasks that follow the control plane, kept alive until return.
    let _cluster = first_snapshot(&state, &mut config, &options.config_path).await?;
    let _shared_state = start_shared_state(&state, config.redis.as_ref())?;
    let listen = options.listen.unwrap_or(config.server.listen);
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let local = listener.local_addr()?;
    // Take over SIGHUP before anyone can learn where we listen: its default action would end
    // the process.
    let reloads = Reloads::install();
    on_listening(local);
    let catalog = state.catalog();
    tracing::info!(
        %local,
        revision = catalog.as_ref().map_or(0, |c| c.revision),
        keys = catalog.as_ref().map_or(0, |c| c.key_count()),
        models = catalog.as_ref().map_or(0, |c| c.model_names().len()),
        "switchboard data plane listening"
    );

    if standalone {
        tokio::spawn(watch_config(
            Arc::clone(&state),
            options.config_path.clone(),
            config.server.clone(),
            Duration::from_millis(config.server.watch_interval_ms),
            reloads,
        ));
    } else {
        tokio::spawn(ignore_reloads(reloads));
    }

    serve_and_drain(listener, &state, config.server.shutdown_grace(), shutdown).await?;
    if let Some(publisher) = publisher {
        // What NATS does not take in time goes to the spill file (when configured).
        publisher.close(Duration::from_secs(5)).await;
    }
    tracing::info!("stopped");
    Ok(())
}

/// Standalone: installs the file's snapshot (an invalid one fails the start). Cluster: starts
/// following the control plane and returns its tasks, which stop when dropped.
/// The standalone snapshot is taken out of `config` and dropped once installed.
async fn first_snapshot(
    state: &Arc<AppState>,
    config: &mut Config,
    config_path: &Path,
) -> anyhow::Result<Option<cluster::Cluster>> {
    match (config.snapshot.take(), &config.cluster) {
        (Some(snapshot), _) => {
            let installed = state.install(&snapshot);
            drop(snapshot);
            crate::memory::release();
            installed
                .map_err(|problems| anyhow::anyhow!("{}: {problems}", config_path.display()))?;
            Ok(None)
        }
        (None, Some(cluster_config)) => Ok(Some(
            cluster::start(Arc::clone(state), cluster_config).await?,
        )),
        (None, None) => anyhow::bail!("no snapshot and no cluster section"),
    }
}

/// Serves on `listener` until `shutdown`, then answers not-ready and gives in-flight requests
/// up to `grace` to finish.
async fn serve_and_drain(
    listener: TcpListener,
    state: &Arc<AppState>,
    grace: Duration,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let listener = listener.tap_io(|tcp| {
        // Small SSE writes must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
    });
    let server =
        axum::serve(listener, router(Arc::clone(state))).with_graceful_shutdown(async move {
            let mut rx = drain_rx;
            let _ = rx.wait_for(|draining| *draining).await;
        });
    let deadline = async {
        shutdown.await;
        tracing::info!(
            grace_seconds = grace.as_secs(),
            "shutting down: draining in-flight requests"
        );
        state.begin_shutdown();
        let _ = drain_tx.send(true);
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = server => result.context("server failed")?,
        () = deadline => tracing::warn!("shutdown grace period over; closing remaining connections"),
    }
    // What this replica leased and did not use goes back for the others.
    state.books.limiter.give_back_leases().await;
    Ok(())
}

/// Connects the usage publisher to NATS (in the background: a data plane starts while NATS
/// is down, and records wait in its queue).
async fn start_usage_publisher(
    cluster: &crate::config::ClusterConfig,
) -> anyhow::Result<Arc<NatsUsageSink>> {
    let url = cluster.nats_url.as_deref().unwrap_or_default();
    let client = switchboard_shared::cluster::nats_options(url, &cluster.nats_auth()?)
        .await
        .map_err(|e| anyhow::anyhow!("cluster.nats_creds_file: {e}"))?
        .retry_on_initial_connect()
        .connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("cluster.nats_url: {e}"))?;
    let names = switchboard_shared::cluster::NatsNames::new(&cluster.namespace);
    Ok(NatsUsageSink::start(
        async_nats::jetstream::new(client),
        PublisherSettings {
            subject: names.usage_subject,
            capacity: cluster.usage_queue_capacity,
            spill_path: cluster.usage_spill_path.clone(),
            spill_max_bytes: cluster.usage_spill_max_bytes,
            tag: cluster
                .ingest_keys()?
                .map(|keys| (cluster.dataplane_id.clone().unwrap_or_default(), keys)),
        },
    ))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

/// Re-reads the config file and swaps its snapshot in. The old snapshot stays on any error.
pub fn reload(state: &AppState, path: &Path, running: &ServerConfig) -> Result<Installed, String> {
    let result = Config::load(path, &process_env())
        .map_err(|e| e.to_string())
        .and_then(|config| {
            config.validate().map_err(|p| p.to_string())?;
            if &config.server != running {
                tracing::warn!("the server section changed; it takes effect at the next restart");
            }
            let snapshot = config.snapshot.as_ref().ok_or_else(|| {
                "the file has no `snapshot` section now; switching to cluster mode needs a restart"
                    .to_owned()
            })?;
            state.install(snapshot).map_err(|p| p.to_string())
        });
    // The file's parse and the previous catalog's build are freed by now.
    crate::memory::release();
    let label = match &result {
        Ok(Installed::Swapped { .. }) => "swapped",
        Ok(Installed::Unchanged) => "unchanged",
        Err(_) => "rejected",
    };
    metrics::count_reload(label);
    match &result {
        Ok(Installed::Swapped { revision }) => tracing::info!(revision, "config reloaded"),
        Ok(Installed::Unchanged) => tracing::debug!("config unchanged"),
        Err(problems) => {
            tracing::error!(%problems, "config reload rejected; still serving the previous snapshot")
        }
    }
    result
}

/// The `SIGHUP` stream (none off Unix, or if it cannot be installed).
struct Reloads {
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Reloads {
    fn install() -> Self {
        Self {
            #[cfg(unix)]
            hangup: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok(),
        }
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        if let Some(hangup) = self.hangup.as_mut() {
            hangup.recv().await;
            return;
        }
        std::future::pending::<()>().await;
    }
}

/// In cluster mode the control plane sends the config: `SIGHUP` is logged, not fatal.
async fn ignore_reloads(mut reloads: Reloads) {
    loop {
        reloads.next().await;
        tracing::info!("SIGHUP ignored: in cluster mode the config comes from the control plane");
    }
}

/// Reloads on `SIGHUP` and when the file changes (polled every `interval`; 0 = never).
async fn watch_config(
    state: Arc<AppState>,
    path: PathBuf,
    running: ServerConfig,
    interval: Duration,
    mut reloads: Reloads,
) {
    let mut seen = file_stamp(&path);
    loop {
        let poll = async {
            if interval.is_zero() {
                std::future::pending::<()>().await;
            } else {
                tokio::time::sleep(interval).await;
            }
        };
        let forced = tokio::select! {
            () = poll => false,
            () = reloads.next() => true,
        };
        let stamp = file_stamp(&path);
        if forced || stamp != seen {
            seen = stamp;
            let _ = reload(&state, &path, &running);
        }
    }
}

fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_keys_parse_or_fail_without_echoing_the_value() {
        assert!(master_keys_from(None).unwrap().is_none());
        assert!(master_keys_from(Some("  ")).unwrap().is_none());
        let keys = master_keys_from(Some("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="))
            .unwrap()
            .unwrap();
        assert_eq!(keys.sealing_key_id(), "k1");
        let bad = "k1:c2VjcmV0LWtleS1tYXRlcmlhbA==";
        let err = master_keys_from(Some(bad)).unwrap_err().to_string();
        assert!(err.starts_with(MASTER_KEYS_ENV), "{err}");
        assert!(!err.contains("c2VjcmV0"), "{err}");
    }
}
