//! Running the control plane: the admin REST listener, the gRPC ConfigService, the NATS
//! publisher with its reconcile loop and head follower, the fleet listener, spend ingestion
//! and upkeep, price sync and (with a `redis` section) budget counter reconciliation — all
//! stopped by one shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use switchboard_shared::cluster::NatsNames;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Settings;
use crate::fleet::Fleet;
use crate::grpc::{ConfigGrpc, TokenCheck};
use crate::publish::Publisher;
use crate::routes::router;
use crate::service::budgets::counters::Counters;
use crate::service::login_guard::LoginGuard;
use crate::service::reconcile::{reconcile, reconcile_loop};
use crate::state::AppState;

/// Resolves once `stop` turns true.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Keeps spend partitions made a week ahead and drops raw ones past retention, hourly.
/// The request log's and captured content's partitions too, by their own retentions.
async fn spend_upkeep(
    pool: PgPool,
    spend: crate::config::SpendConfig,
    mut stop: watch::Receiver<bool>,
) {
    let retention_days = spend.raw_retention_days;
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = tick.tick() => {}
        }
        let today = crate::ingest::utc_today(chrono::Utc::now());
        if let Err(e) = crate::ingest::ensure_partitions(&pool, today, 7).await {
            tracing::warn!(error = %e, "spend partitions not made");
        }
        if retention_days > 0 {
            match crate::ingest::drop_expired_partitions(&pool, today, retention_days).await {
                Ok(dropped) if !dropped.is_empty() => {
                    tracing::info!(?dropped, "raw spend partitions past retention dropped");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "spend retention not applied"),
            }
        }
        crate::ingest::request_log_upkeep(&pool, today, &spend).await;
    }
}

/// A started control plane.
pub struct Running {
    pub rest_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub state: AppState,
    tasks: JoinSet<()>,
}

impl Running {
    /// Waits until every task has stopped (after the shutdown signal).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Binds both listeners (port 0 picks a free port), connects to NATS in the background
/// (a NATS outage delays publishing, never the admin API), builds the current snapshot, and
/// serves until `shutdown` completes. The database must be migrated.
pub async fn serve(
    settings: Settings,
    pool: PgPool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<Running> {
    // One TLS provider for every rustls user in the process (NATS, the price-file fetch).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rest = TcpListener::bind(settings.listen).await?;
    let grpc = TcpListener::bind(settings.grpc_listen).await?;
    let grpc_server = crate::grpc::server_builder(settings.trust.grpc_tls.as_ref())?;
    if settings.trust.grpc_tls.is_none() {
        tracing::warn!(
            "the gRPC ConfigService is plaintext (cluster.grpc_plaintext): keep it on a network \
             only the cluster reaches"
        );
    }
    let rest_addr = rest.local_addr()?;
    let grpc_addr = grpc.local_addr()?;

    let trust = &settings.trust;
    if trust.signer.is_none() || trust.ingest_keys.is_none() || trust.grpc_tokens.is_empty() {
        tracing::warn!(
            "cluster.allow_unsigned_snapshots: snapshots, usage, heartbeats or gRPC are not \
             authenticated; anyone on the cluster network can take the cluster over (development only)"
        );
    }
    let nats = switchboard_shared::cluster::nats_options(settings.nats_url.as_str(), &trust.nats)
        .await
        .map_err(|e| anyhow::anyhow!("nats.creds_file: {e}"))?
        .retry_on_initial_connect()
        .connect(settings.nats_url.as_str())
        .await?;
    let names = NatsNames::new(&settings.namespace).with_replicas(settings.nats_replicas);
    let publisher = Arc::new(
        Publisher::new(nats.clone(), names.clone())
            .with_signing(
                &settings.namespace,
                trust.signer.clone(),
                trust.verifier.clone(),
            )
            .with_full_snapshots(settings.full_snapshots),
    );
    let fleet = Arc::new(
        Fleet::new(settings.heartbeat_interval).with_ingest_keys(trust.ingest_keys.clone()),
    );
    let counters = settings.redis.as_ref().map(Counters::connect).transpose()?;
    let login_guard = Arc::new(LoginGuard::new(&settings.admin_auth));
    let test_calls = crate::service::test_call::Asker {
        client: nats.clone(),
        subject: names.test_subject.clone(),
        keys: trust.ingest_keys.clone(),
    };
    let state = AppState {
        login_guard,
        pool: pool.clone(),
        settings: Arc::new(settings),
        publisher: publisher.clone(),
        fleet: fleet.clone(),
        counters,
        test_calls: Some(test_calls),
    };

    // Build (and try to publish) the current snapshot before answering anything.
    match tokio::time::timeout(Duration::from_secs(5), reconcile(&pool, &publisher)).await {
        Ok(Ok(revision)) => tracing::info!(revision, "current snapshot built"),
        Ok(Err(e)) => tracing::warn!(error = %e, "initial snapshot publish failed; will retry"),
        Err(_) => tracing::warn!("initial snapshot publish timed out; will retry"),
    }

    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tasks.spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    spawn_jobs(&mut tasks, &state, &nats, &names, &stop)?;
    {
        let fleet = fleet.clone();
        let stop = stop.clone();
        tasks.spawn(async move { fleet.listen(nats, &names, stop).await });
    }
    spawn_listeners(&mut tasks, rest, (grpc, grpc_server), &state, &stop);
    tracing::info!(%rest_addr, %grpc_addr, "control plane serving");
    Ok(Running {
        rest_addr,
        grpc_addr,
        state,
        tasks,
    })
}

/// The periodic jobs: snapshot reconcile and head following, spend ingestion and upkeep,
/// budget counter reconciliation (with a `redis` section) and the scheduled price sync (with
/// a `prices.url`).
fn spawn_jobs(
    tasks: &mut JoinSet<()>,
    state: &AppState,
    nats: &async_nats::Client,
    names: &NatsNames,
    stop: &watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let settings = &state.settings;
    let pool = &state.pool;
    let spend = &settings.spend;
    tasks.spawn(reconcile_loop(
        pool.clone(),
        state.publisher.clone(),
        settings.reconcile_interval,
        stop.clone(),
    ));
    tasks.spawn(state.publisher.clone().follow_head(stop.clone()));
    if spend.ingest {
        tasks.spawn(crate::ingest::run(
            pool.clone(),
            async_nats::jetstream::new(nats.clone()),
            names.clone(),
            crate::ingest::IngestSettings {
                keys: settings.trust.ingest_keys.clone(),
                raw_retention_days: spend.raw_retention_days,
                ..Default::default()
            },
            stopped(stop.clone()),
        ));
    }
    tasks.spawn(spend_upkeep(pool.clone(), spend.clone(), stop.clone()));
    if let (Some(counters), Some(redis)) = (&state.counters, &settings.redis) {
        tasks.spawn(crate::service::budgets::counters::run(
            pool.clone(),
            counters.clone(),
            redis.reconcile_interval,
            spend.raw_retention_days,
            stopped(stop.clone()),
        ));
    }
    if let Some(url) = &settings.prices.url {
        let client = crate::service::prices::http_client()
            .map_err(|e| anyhow::anyhow!("prices.url client: {e}"))?;
        tasks.spawn(crate::service::prices::run_scheduled(
            pool.clone(),
            client,
            url.clone(),
            Duration::from_secs(settings.prices.interval_seconds),
            stopped(stop.clone()),
        ));
    }
    Ok(())
}

/// The admin REST API and the gRPC ConfigService (on `grpc_server`, TLS or not), each stopping
/// gracefully on `stop`.
fn spawn_listeners(
    tasks: &mut JoinSet<()>,
    rest: TcpListener,
    (grpc, mut grpc_server): (TcpListener, tonic::transport::Server),
    state: &AppState,
    stop: &watch::Receiver<bool>,
) {
    let app = router(state.clone());
    let mut rest_stop = stop.clone();
    tasks.spawn(async move {
        // The peer address feeds the login rate limit per client.
        let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
        let result = axum::serve(rest, app)
            .with_graceful_shutdown(async move {
                let _ = rest_stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "admin API server failed");
        }
    });
    let trust = &state.settings.trust;
    let service = ConfigGrpc::server(
        state.publisher.subscribe(),
        TokenCheck::new(trust.grpc_tokens.clone(), trust.allow_unauthenticated_grpc),
        trust.grpc_max_watchers,
    );
    let mut grpc_stop = stop.clone();
    tasks.spawn(async move {
        let result = grpc_server
            .add_service(service)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(grpc),
                async move {
                    let _ = grpc_stop.wait_for(|s| *s).await;
                },
            )
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "gRPC server failed");
        }
    });
}
