//! The fleet as this replica hears it: the last heartbeat of each data plane, with when it
//! arrived. A data plane unheard for 3 heartbeat intervals is gone; one unheard for 30 is
//! forgotten, by [`Fleet::listen`]'s timer (every 3 intervals), so the map stays bounded
//! however many data plane ids come and go, whether or not anyone reads it. Admin writes with
//! `?wait_ms=N` wait here until every live data plane serves their revision.
//!
//! A heartbeat counts only with a valid ingest tag ([`authenticate`]): the sender's id and an
//! HMAC under the cluster's ingest key (or that data plane's own key) in its headers, so that
//! someone who can publish on NATS cannot make `wait_ms` lie. Untagged, wrongly tagged and
//! unknown senders' messages are logged and counted ([`unauthenticated_count`]); heartbeats
//! are then dropped, usage events kept as dead letters (`ingest`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use serde::Serialize;
use switchboard_shared::cluster::{Heartbeat, NatsNames};
use switchboard_shared::cluster_trust::{
    DATAPLANE_HEADER, IngestKeys, SIGNATURE_HEADER, TagRefusal,
};
use tokio::sync::watch;
use utoipa::ToSchema;

/// One live data plane, as `GET /admin/v1/fleet` lists it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DataPlane {
    pub id: String,
    pub hostname: String,
    pub version: String,
    /// The revision it serves.
    pub revision: u64,
    /// The control plane's revision minus the data plane's (0 when up to date).
    pub lag: u64,
    pub ready: bool,
    pub last_seen: DateTime<Utc>,
}

/// The last heartbeat of one data plane, with when it arrived (monotonic and wall clock).
struct Seen {
    heartbeat: Heartbeat,
    at: Instant,
    wall: DateTime<Utc>,
}

pub struct Fleet {
    interval: Duration,
    // Not on any request path: touched by heartbeats and admin reads only.
    seen: Mutex<HashMap<String, Seen>>,
    changed: watch::Sender<()>,
    /// `None` (development only): untagged heartbeats count.
    keys: Option<IngestKeys>,
}

static UNAUTHENTICATED_HEARTBEATS: AtomicU64 = AtomicU64::new(0);
static UNAUTHENTICATED_USAGE: AtomicU64 = AtomicU64::new(0);

/// How many messages of `kind` (`heartbeat` or `usage`) this process has dropped for a missing
/// or wrong ingest tag.
pub fn unauthenticated_count(kind: &str) -> u64 {
    match kind {
        "heartbeat" => UNAUTHENTICATED_HEARTBEATS.load(Ordering::Relaxed),
        _ => UNAUTHENTICATED_USAGE.load(Ordering::Relaxed),
    }
}

/// Checks that a message of `kind` carries a valid ingest tag under `keys` (always passes
/// without keys): from a known data plane, under its keys. A refusal is counted and logged
/// (never the payload or the tag); the `Err` says why, for the caller to drop the message
/// (heartbeats) or keep it as a dead letter (usage events).
pub fn authenticate(
    keys: Option<&IngestKeys>,
    kind: &'static str,
    headers: Option<&async_nats::HeaderMap>,
    payload: &[u8],
) -> Result<(), String> {
    let Some(keys) = keys else {
        return Ok(());
    };
    let header = |name: &str| {
        headers
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default()
    };
    let sender = header(DATAPLANE_HEADER);
    let Err(refusal) = keys.check(kind, &sender, payload, &header(SIGNATURE_HEADER)) else {
        return Ok(());
    };
    let count = match kind {
        "heartbeat" => &UNAUTHENTICATED_HEARTBEATS,
        _ => &UNAUTHENTICATED_USAGE,
    };
    let total = count.fetch_add(1, Ordering::Relaxed) + 1;
    crate::metrics::count(
        crate::metrics::UNAUTHENTICATED_MESSAGES_TOTAL,
        Some(("kind", kind)),
    );
    // The id is the sender's claim: cut, and shown debug-quoted.
    let sender: String = sender.chars().take(64).collect();
    let why = match refusal {
        TagRefusal::NoSender => "no data-plane id".to_owned(),
        TagRefusal::UnknownSender => format!("unknown data plane {sender:?}"),
        TagRefusal::BadTag => format!("ingest tag missing or not valid for data plane {sender:?}"),
    };
    tracing::warn!(
        kind,
        reason = refusal.reason(),
        total,
        "refused a message: {why} (forged, or a data plane with the wrong cluster.ingest_key)"
    );
    Err(why)
}

impl Fleet {
    pub fn new(heartbeat_interval: Duration) -> Self {
        Self {
            interval: heartbeat_interval,
            seen: Mutex::new(HashMap::new()),
            changed: watch::channel(()).0,
            keys: None,
        }
    }

    /// Counts only heartbeats tagged under `keys` (see the module docs).
    pub fn with_ingest_keys(mut self, keys: Option<IngestKeys>) -> Self {
        self.keys = keys;
        self
    }

    /// Records `message` if it is an authenticated heartbeat from the data plane it names.
    fn on_message(&self, message: &async_nats::Message) {
        if authenticate(
            self.keys.as_ref(),
            "heartbeat",
            message.headers.as_ref(),
            &message.payload,
        )
        .is_err()
        {
            return;
        }
        match serde_json::from_slice::<Heartbeat>(&message.payload) {
            Ok(hb) => {
                let sender = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(DATAPLANE_HEADER))
                    .map(|v| v.as_str());
                if self.keys.is_some() && sender != Some(hb.dataplane_id.as_str()) {
                    tracing::warn!("dropped a heartbeat naming another data plane than its sender");
                    return;
                }
                self.record(hb);
            }
            Err(e) => tracing::debug!(error = %e, "ignoring a malformed heartbeat"),
        }
    }

    /// Records a heartbeat.
    pub fn record(&self, heartbeat: Heartbeat) {
        if let Ok(mut seen) = self.seen.lock() {
            seen.insert(
                heartbeat.dataplane_id.clone(),
                Seen {
                    heartbeat,
                    at: Instant::now(),
                    wall: Utc::now(),
                },
            );
        }
        self.changed.send_replace(());
    }

    /// Forgets the data planes unheard for 30 heartbeat intervals. Returns how many are
    /// still tracked.
    pub fn prune(&self) -> usize {
        let forget = self.interval * 30;
        let Ok(mut seen) = self.seen.lock() else {
            return 0;
        };
        seen.retain(|_, s| s.at.elapsed() <= forget);
        seen.len()
    }

    /// Live data planes, sorted by id, with their lag behind `current`.
    pub fn live(&self, current: u64) -> Vec<DataPlane> {
        let cutoff = self.interval * 3;
        self.prune();
        let Ok(seen) = self.seen.lock() else {
            return Vec::new();
        };
        let mut out: Vec<DataPlane> = seen
            .values()
            .filter(|s| s.at.elapsed() <= cutoff)
            .map(
                |Seen {
                     heartbeat: hb,
                     wall,
                     ..
                 }| DataPlane {
                    id: hb.dataplane_id.clone(),
                    hostname: hb.hostname.clone(),
                    version: hb.version.clone(),
                    revision: hb.revision,
                    lag: current.saturating_sub(hb.revision),
                    ready: hb.ready,
                    last_seen: *wall,
                },
            )
            .collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Waits up to `timeout` until every live data plane serves `revision` or newer. Returns
    /// the ids still behind (empty when all caught up).
    pub async fn wait_for(&self, revision: u64, timeout: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut changed = self.changed.subscribe();
        loop {
            let behind: Vec<String> = self
                .live(revision)
                .into_iter()
                .filter(|d| d.revision < revision)
                .map(|d| d.id)
                .collect();
            if behind.is_empty() {
                return behind;
            }
            // Re-check at least every 100 ms so that planes that went silent drop out.
            let wake = deadline.min(tokio::time::Instant::now() + Duration::from_millis(100));
            tokio::select! {
                _ = changed.changed() => {}
                () = tokio::time::sleep_until(wake) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return self
                    .live(revision)
                    .into_iter()
                    .filter(|d| d.revision < revision)
                    .map(|d| d.id)
                    .collect();
            }
        }
    }

    /// Subscribes to every heartbeat and records them until `shutdown`; prunes the map every
    /// 3 heartbeat intervals.
    pub async fn listen(
        &self,
        client: async_nats::Client,
        names: &NatsNames,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut prune = tokio::time::interval((self.interval * 3).max(Duration::from_millis(10)));
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            match client.subscribe(names.heartbeat_wildcard()).await {
                Ok(mut sub) => loop {
                    tokio::select! {
                        message = sub.next() => match message {
                            Some(m) => self.on_message(&m),
                            None => break,
                        },
                        _ = prune.tick() => {
                            self.prune();
                        }
                        _ = shutdown.changed() => return,
                    }
                },
                Err(e) => tracing::warn!(error = %e, "cannot subscribe to heartbeats; retrying"),
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(id: &str) -> Heartbeat {
        Heartbeat {
            dataplane_id: id.into(),
            hostname: "h".into(),
            version: "v".into(),
            revision: 1,
            content_hash: String::new(),
            ready: true,
            started_at: Utc::now(),
            sent_at: Utc::now(),
        }
    }

    #[tokio::test]
    async fn the_listener_forgets_silent_data_planes_without_being_read() {
        let fleet = std::sync::Arc::new(Fleet::new(Duration::from_millis(5)));
        fleet.record(heartbeat("gone-1"));
        fleet.record(heartbeat("gone-2"));
        assert_eq!(fleet.seen.lock().unwrap().len(), 2);
        let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        let client = async_nats::connect(url).await.unwrap();
        let names = NatsNames::new(&format!("fleetprune{}", std::process::id()));
        let (stop, stopped) = watch::channel(false);
        let listener = {
            let fleet = fleet.clone();
            tokio::spawn(async move { fleet.listen(client, &names, stopped).await })
        };
        // 30 intervals of silence are 150 ms; nothing calls `live` meanwhile.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !fleet.seen.lock().unwrap().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            fleet.seen.lock().unwrap().len(),
            0,
            "silent data planes are pruned"
        );
        stop.send_replace(true);
        listener.await.unwrap();
    }
}
