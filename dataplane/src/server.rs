//! Running the data plane: start, reload, drain.
//!
//! - Start: load and validate the config, build the shared state, install the snapshot, bind.
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

use crate::accounting::{Books, LogSink, UsageSink};
use crate::config::{Config, ServerConfig, process_env};
use crate::limits::{Limiter, LocalLimiter, RedisLimiter};
use crate::metrics;
use crate::providers::client::{self, ClientSettings};
use crate::routes::router;
use crate::shared_redis::{RedisConfig, SharedRedis};
use crate::state::{AppState, Installed};

/// What `main` passes in.
#[derive(Debug, Clone)]
pub struct Options {
    pub config_path: PathBuf,
    /// Overrides `server.listen`.
    pub listen: Option<SocketAddr>,
}

/// Builds the shared state for a server config, with `sink` receiving usage records. With a
/// `redis` section, rate limits are shared through Redis (this needs a Tokio runtime, for the
/// limiter's background tasks); without one they are this process's own.
pub fn build_state(
    server: &ServerConfig,
    redis: Option<&RedisConfig>,
    sink: Arc<dyn UsageSink>,
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
        },
        extra_roots,
    )
    .map_err(|e| anyhow::anyhow!("server.upstream_ca_file: {e}"))?;
    let limiter = match redis {
        Some(config) => Limiter::Redis(RedisLimiter::new(SharedRedis::connect(config)?)),
        None => Limiter::Local(LocalLimiter::new()),
    };
    let books = Books {
        limiter: Arc::new(limiter),
        sink,
    };
    Ok(Arc::new(AppState::new(
        pepper,
        http,
        books,
        server.max_body_bytes,
        metrics,
    )))
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
    let config = Config::load(&options.config_path, &process_env())?;
    config
        .validate()
        .map_err(|problems| anyhow::anyhow!("{}: {problems}", options.config_path.display()))?;
    let state = build_state(&config.server, config.redis.as_ref(), Arc::new(LogSink))?;
    state
        .install(&config.snapshot)
        .map_err(|problems| anyhow::anyhow!("{}: {problems}", options.config_path.display()))?;
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

    tokio::spawn(watch_config(
        Arc::clone(&state),
        options.config_path.clone(),
        config.server.clone(),
        Duration::from_millis(config.server.watch_interval_ms),
        reloads,
    ));

    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let listener = listener.tap_io(|tcp| {
        // Small SSE writes must not wait for Nagle.
        let _ = tcp.set_nodelay(true);
    });
    let server =
        axum::serve(listener, router(Arc::clone(&state))).with_graceful_shutdown(async move {
            let mut rx = drain_rx;
            let _ = rx.wait_for(|draining| *draining).await;
        });
    let grace = config.server.shutdown_grace();
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
    tracing::info!("stopped");
    Ok(())
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
            state.install(&config.snapshot).map_err(|p| p.to_string())
        });
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
