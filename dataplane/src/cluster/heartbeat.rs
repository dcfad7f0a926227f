//! The data plane's [`Heartbeat`]: who it is and which revision it serves, on core NATS.
//!
//! Sent every `cluster.heartbeat_interval_ms` and at once after each installation, so the
//! control plane learns within milliseconds that a write has reached this replica (what an
//! admin write's `?wait_ms=` waits for). Skipped while NATS is disconnected: heartbeats are
//! about now, and a backlog flushed on reconnection would only report the past.
//!
//! Each carries this data plane's id and its HMAC under the ingest key in NATS headers
//! (`shared::cluster_trust`), so the control plane can tell it from a forged one.

use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use async_nats::connection::State;
use chrono::{DateTime, Utc};
use switchboard_shared::cluster::Heartbeat;
use switchboard_shared::cluster_trust::{DATAPLANE_HEADER, IngestKeys, SIGNATURE_HEADER};
use tokio::sync::watch;

use crate::state::AppState;

/// The parts of a heartbeat that do not change.
#[derive(Debug, Clone)]
pub struct Identity {
    pub dataplane_id: String,
    pub hostname: String,
    pub started_at: DateTime<Utc>,
}

impl Identity {
    /// The heartbeat describing `state` now.
    pub fn heartbeat(&self, state: &AppState) -> Heartbeat {
        let catalog = state.catalog();
        Heartbeat {
            dataplane_id: self.dataplane_id.clone(),
            hostname: self.hostname.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            revision: catalog.as_ref().map_or(0, |c| c.revision),
            content_hash: catalog
                .as_ref()
                .map(|c| c.content_hash.clone())
                .unwrap_or_default(),
            ready: state.is_ready(),
            started_at: self.started_at,
            sent_at: Utc::now(),
        }
    }
}

/// Publishes heartbeats on `subject` until the installer goes away.
pub async fn run(
    client: Client,
    subject: String,
    identity: Identity,
    keys: Option<IngestKeys>,
    state: Arc<AppState>,
    mut installed: watch::Receiver<u64>,
    interval: Duration,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = installed.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        if client.connection_state() != State::Connected {
            continue;
        }
        let beat = identity.heartbeat(&state);
        let payload = match serde_json::to_vec(&beat) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a heartbeat");
                continue;
            }
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(DATAPLANE_HEADER, identity.dataplane_id.as_str());
        if let Some(keys) = &keys {
            let tag = keys.tag("heartbeat", &identity.dataplane_id, &payload);
            headers.insert(SIGNATURE_HEADER, tag.as_str());
        }
        if let Err(e) = client
            .publish_with_headers(subject.clone(), headers, payload.into())
            .await
        {
            tracing::debug!(error = %e, "heartbeat not sent");
        }
    }
}
