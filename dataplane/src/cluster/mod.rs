//! Cluster mode: the data plane's config comes from the control plane (`docs/cluster.md`).
//!
//! - [`install`] — the one path every snapshot from the cluster takes: hash check, parse, the
//!   revision gate ([`crate::state`]), validation, atomic swap, cache write. One offer at a
//!   time.
//! - [`nats`] — follows the snapshot head on JetStream and fetches bodies from the object
//!   store. The normal path, and (its first delivery is the current head) the bootstrap.
//! - [`grpc`] — `GetSnapshot` at start, raced against NATS; `WatchSnapshot` while NATS is
//!   unreachable.
//! - [`cache`] — the last good snapshot on disk, served at start before anything answers.
//! - [`heartbeat`] — this replica's id and served revision, for the control plane's fleet view.
//! - [`test_call`] — answers the control plane's deployment test calls (NATS request/reply)
//!   through the deployment's adaptor, recording nothing.
//!
//! [`start`] loads the cache, then spawns the follower (NATS, falling back to gRPC and back),
//! the gRPC bootstrap and the heartbeat. Until some snapshot is installed `/readyz` answers
//! 503. Why NATS first and gRPC as fallback: NATS fans one publication out to every replica
//! within milliseconds and keeps the last value for late joiners, without the control plane
//! holding a stream per data plane; gRPC needs only the control plane to be up.

pub mod cache;
pub mod grpc;
pub mod heartbeat;
pub mod install;
pub mod nats;
pub mod test_call;

use std::sync::Arc;
use std::time::Duration;

use switchboard_shared::cluster::NatsNames;
use tokio::task::JoinHandle;

use crate::config::{ClusterConfig, redacted_url, valid_dataplane_id};
use crate::state::AppState;

pub use install::{Event, Installer, Outcome, Source};

/// How long the follower waits between attempts to open a consumer on a connected NATS
/// (the control plane may not have created the stream yet).
const NATS_RETRY: Duration = Duration::from_secs(1);
/// How often the follower looks at the NATS connection while it is down.
const CONNECTION_POLL: Duration = Duration::from_millis(50);
/// Pause before re-creating a consumer that failed while NATS stayed connected.
const CONSUMER_RETRY: Duration = Duration::from_millis(200);

/// The running cluster tasks. Dropping it stops them.
#[derive(Debug)]
pub struct Cluster {
    pub dataplane_id: String,
    installer: Arc<Installer>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Cluster {
    pub fn installer(&self) -> &Arc<Installer> {
        &self.installer
    }
}

/// Serves the cached snapshot if there is one, then starts following the control plane.
/// Returns once the cache is loaded; fails only on a malformed URL.
pub async fn start(state: Arc<AppState>, config: &ClusterConfig) -> anyhow::Result<Cluster> {
    let dataplane_id = config
        .dataplane_id
        .clone()
        .unwrap_or_else(|| default_dataplane_id(&hostname()));
    let names = NatsNames::new(&config.namespace);
    let verifier = config.snapshot_verifier()?;
    if verifier.is_none() {
        tracing::warn!(
            "cluster.allow_unsigned_snapshots without snapshot_public_keys: any snapshot is \
             installed, whoever sent it (development only)"
        );
    }
    let ingest_keys = config.ingest_keys()?;
    let installer = Arc::new(
        Installer::new(Arc::clone(&state), config.snapshot_cache.clone()).with_verifier(verifier),
    );
    if let Some(outcome) = installer.load_cache().await {
        match outcome {
            Outcome::Installed => tracing::info!(
                revision = state.revision(),
                "serving the cached snapshot until the control plane answers"
            ),
            Outcome::Stale { .. } | Outcome::Rejected(_) | Outcome::DeltaApplied => {}
        }
    }
    let nats = match &config.nats_url {
        Some(url) => Some(
            nats::NatsSource::connect(url, &config.nats_auth()?, names.clone(), &dataplane_id)
                .await?,
        ),
        None => None,
    };
    let grpc = match &config.controlplane_grpc {
        Some(url) => {
            let token = match &config.controlplane_grpc_token {
                Some(secret) => Some(
                    secret
                        .resolve()
                        .map_err(|e| anyhow::anyhow!("cluster.controlplane_grpc_token: {e}"))?,
                ),
                None => None,
            };
            let tls = grpc::client_tls(config)?;
            Some(grpc::GrpcSource::new(
                url,
                token.as_deref(),
                tls,
                &dataplane_id,
            )?)
        }
        None => None,
    };
    tracing::info!(
        dataplane_id,
        namespace = config.namespace,
        nats = config.nats_url.as_deref().map_or("-".into(), redacted_url),
        grpc = config
            .controlplane_grpc
            .as_deref()
            .map_or("-".into(), redacted_url),
        "cluster mode: following the control plane"
    );

    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(follow(
        nats.clone(),
        grpc.clone(),
        Arc::clone(&installer),
    )));
    if let Some(grpc) = grpc {
        let installer = Arc::clone(&installer);
        tasks.push(tokio::spawn(
            async move { grpc.bootstrap(&installer).await },
        ));
    }
    if let Some(nats) = nats {
        let on_nats = OnNats {
            dataplane_id: dataplane_id.clone(),
            names,
            ingest_keys,
            heartbeat_interval: config.heartbeat_interval(),
        };
        tasks.extend(on_nats.spawn(&nats, state, &installer));
    }
    Ok(Cluster {
        dataplane_id,
        installer,
        tasks,
    })
}

/// What the tasks on a data plane's NATS connection need besides it.
struct OnNats {
    dataplane_id: String,
    names: NatsNames,
    ingest_keys: Option<switchboard_shared::cluster_trust::IngestKeys>,
    heartbeat_interval: Duration,
}

impl OnNats {
    /// Starts the test-call responder and the heartbeat.
    fn spawn(
        self,
        nats: &nats::NatsSource,
        state: Arc<AppState>,
        installer: &Installer,
    ) -> [JoinHandle<()>; 2] {
        let responder = test_call::Responder {
            client: nats.client().clone(),
            subject: self.names.test_subject.clone(),
            dataplane_id: self.dataplane_id.clone(),
            keys: self.ingest_keys.clone(),
            state: Arc::clone(&state),
        };
        let identity = heartbeat::Identity {
            dataplane_id: self.dataplane_id.clone(),
            hostname: hostname(),
            started_at: chrono::Utc::now(),
        };
        [
            tokio::spawn(responder.run()),
            tokio::spawn(heartbeat::run(
                nats.client().clone(),
                self.names.heartbeat_subject(&self.dataplane_id),
                identity,
                self.ingest_keys,
                state,
                installer.served(),
                self.heartbeat_interval,
            )),
        ]
    }
}

/// Follows NATS while it works and gRPC `WatchSnapshot` while it does not; never returns.
///
/// It starts on gRPC (the first NATS connection is made in the background) and moves to NATS
/// as soon as a consumer can be opened, usually within milliseconds.
async fn follow(
    nats: Option<nats::NatsSource>,
    grpc: Option<grpc::GrpcSource>,
    installer: Arc<Installer>,
) {
    let mut following: Option<nats::Following> = None;
    loop {
        if let (Some(nats), Some(f)) = (&nats, following.take()) {
            tracing::info!(
                subject = nats.names().head_subject,
                "following snapshot heads on NATS"
            );
            let stopped = f.run(nats, &installer).await;
            tracing::warn!(error = %stopped, "stopped following NATS");
            if nats.is_connected() {
                // A consumer hiccup while connected: straight back.
                tokio::time::sleep(CONSUMER_RETRY).await;
                match nats.open().await {
                    Ok(f) => {
                        following = Some(f);
                        continue;
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot follow NATS"),
                }
            }
        }
        let back_on_nats = async {
            let Some(nats) = &nats else {
                return std::future::pending().await;
            };
            let mut warned = false;
            loop {
                if nats.is_connected() {
                    match nats.open().await {
                        Ok(f) => return f,
                        Err(e) if !warned => {
                            warned = true;
                            tracing::warn!(
                                error = %e,
                                "NATS is connected but cannot be followed yet (has the control plane, \
                                 with the same namespace, published?); retrying"
                            );
                        }
                        Err(e) => tracing::debug!(error = %e, "NATS not usable yet"),
                    }
                    tokio::time::sleep(NATS_RETRY).await;
                    continue;
                }
                tokio::time::sleep(CONNECTION_POLL).await;
            }
        };
        match &grpc {
            Some(grpc) => {
                tracing::debug!("following the control plane over gRPC while NATS is unusable");
                tokio::select! {
                    () = grpc.watch(&installer) => {}
                    f = back_on_nats => following = Some(f),
                }
            }
            None => following = Some(back_on_nats.await),
        }
    }
}

/// `<hostname>-<6 random characters>`, shortened and cleaned to be one NATS subject token.
pub fn default_dataplane_id(hostname: &str) -> String {
    let mut base: String = hostname
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .take(48)
        .collect();
    if base.is_empty() {
        base.push_str("dataplane");
    }
    let suffix: String = std::iter::repeat_with(|| {
        let c = fastrand::alphanumeric();
        c.to_ascii_lowercase()
    })
    .take(6)
    .collect();
    let id = format!("{base}-{suffix}");
    debug_assert!(valid_dataplane_id(&id));
    id
}

/// [`default_dataplane_id`] of this machine.
pub fn default_dataplane_id_here() -> String {
    default_dataplane_id(&hostname())
}

/// This machine's name (Linux), else `$HOSTNAME`, else `unknown`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_ids_are_one_subject_token_and_differ() {
        for host in [
            "web-1",
            "web-1.example.com",
            "",
            "ünïcode host",
            &"x".repeat(200),
        ] {
            let id = default_dataplane_id(host);
            assert!(valid_dataplane_id(&id), "{id}");
        }
        assert!(default_dataplane_id("web-1.example.com").starts_with("web-1-example-com-"));
        assert_ne!(default_dataplane_id("h"), default_dataplane_id("h"));
    }
}
