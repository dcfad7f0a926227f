//! Following the snapshot head on NATS JetStream.
//!
//! An ordered consumer on the head subject with `DeliverPolicy::LastPerSubject` delivers the
//! current [`SnapshotHead`] at once — which is what makes it the bootstrap as well — and every
//! later one within milliseconds of its publication. For each head newer than the revision
//! served, the body is fetched from the object store and offered to the [`Installer`], which
//! checks its hash against the head's.
//!
//! Config deltas come on a second ordered consumer, on the delta stream (every delta it
//! still holds, then each new one). A delta that follows on from the revision served is
//! applied at once; one that does not is kept (a replica's publish may overtake another's)
//! until the revisions before it arrive as deltas or as a head. When the gap has not closed
//! after [`GAP_WAIT`], the head consumer is opened afresh, which delivers the current head:
//! if it is newer it is installed, and the kept deltas past it are applied; if not, the wait
//! goes on (the control plane publishes a full snapshot for any revision that went out
//! neither way) and the head is asked for again every [`GAP_RETRY`].
//!
//! The client reconnects by itself. While it is disconnected [`Following::run`] returns, so
//! that the caller can follow gRPC instead, and [`NatsSource::open`] starts a fresh consumer
//! when NATS is back — it delivers the then-current head first, so nothing is missed.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::{Ordered, OrderedConfig};
use async_nats::jetstream::object_store::ObjectStore;
use async_nats::{Client, jetstream};
use bytes::Bytes;
use futures_util::StreamExt;
use switchboard_shared::cluster::{MAX_SNAPSHOT_BYTES, NatsNames, SnapshotHead};
use tokio::io::AsyncReadExt;

use crate::cluster::install::{Announced, DeltaOutcome, Installer, Offer, Source};
use crate::metrics;

/// How often a follower checks that its connection is still up.
const CONNECTION_CHECK: Duration = Duration::from_millis(200);
/// How long a delta that does not follow on waits for the revisions before it, before the
/// head is fetched again.
pub const GAP_WAIT: Duration = Duration::from_millis(200);
/// How often the head is fetched again while a gap stays open.
pub const GAP_RETRY: Duration = Duration::from_secs(1);
/// Most deltas kept while waiting for a gap to close (the delta stream's own bound).
const MAX_PENDING: usize = switchboard_shared::cluster::DELTAS_KEPT as usize;
/// Longest pause between reconnection attempts.
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Why following NATS stopped or could not start.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    #[error("not connected to NATS")]
    Disconnected,
    #[error("stream {stream}: {message}")]
    Stream { stream: String, message: String },
    #[error("consumer on {subject}: {message}")]
    Consumer { subject: String, message: String },
    #[error("the consumer ended")]
    Ended,
}

/// A NATS connection and the names to follow on it.
#[derive(Debug, Clone)]
pub struct NatsSource {
    client: Client,
    names: NatsNames,
}

impl NatsSource {
    /// Connects in the background: this returns at once, even when NATS is down, and the
    /// client keeps trying (at least once a second).
    pub async fn connect(
        url: &str,
        auth: &switchboard_shared::cluster::NatsAuth,
        names: NatsNames,
        dataplane_id: &str,
    ) -> anyhow::Result<Self> {
        let client = switchboard_shared::cluster::nats_options(url, auth)
            .await
            .map_err(|e| anyhow::anyhow!("cluster.nats_creds_file: {e}"))?
            .name(format!("switchboard-dataplane {dataplane_id}"))
            .connection_timeout(Duration::from_secs(2))
            .retry_on_initial_connect()
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis(100 * attempts as u64).min(MAX_RECONNECT_DELAY)
            })
            .connect(url)
            .await
            .map_err(|e| anyhow::anyhow!("cluster.nats_url: {e}"))?;
        Ok(Self { client, names })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn names(&self) -> &NatsNames {
        &self.names
    }

    pub fn is_connected(&self) -> bool {
        self.client.connection_state() == State::Connected
    }

    /// Starts following the head subject. Needs a connection and the control plane's stream.
    pub async fn open(&self) -> Result<Following, NatsError> {
        if !self.is_connected() {
            return Err(NatsError::Disconnected);
        }
        let js = jetstream::new(self.client.clone());
        let stream_error = |message: String| NatsError::Stream {
            stream: self.names.config_stream.clone(),
            message,
        };
        let stream = js
            .get_stream(&self.names.config_stream)
            .await
            .map_err(|e| stream_error(e.to_string()))?;
        let messages = self.heads(&stream).await?;
        // A control plane of a release before deltas has no delta stream: heads only then.
        let deltas = match self.deltas(&js).await {
            Ok(deltas) => Some(deltas),
            Err(e) => {
                tracing::debug!(error = %e, "no config deltas to follow; heads only");
                None
            }
        };
        Ok(Following {
            js,
            stream,
            messages,
            deltas,
            pending: BTreeMap::new(),
            gap_deadline: None,
            bucket_name: self.names.snapshot_bucket.clone(),
            bucket: None,
        })
    }

    /// An ordered consumer on the head subject, delivering the current head first.
    async fn heads(&self, stream: &jetstream::stream::Stream) -> Result<Ordered, NatsError> {
        ordered(
            stream,
            &self.names.head_subject,
            DeliverPolicy::LastPerSubject,
        )
        .await
    }

    /// An ordered consumer on the delta subject, delivering every delta the stream holds.
    async fn deltas(&self, js: &jetstream::Context) -> Result<Ordered, NatsError> {
        let stream =
            js.get_stream(&self.names.delta_stream)
                .await
                .map_err(|e| NatsError::Consumer {
                    subject: self.names.delta_subject.clone(),
                    message: e.to_string(),
                })?;
        ordered(&stream, &self.names.delta_subject, DeliverPolicy::All).await
    }
}

/// An ordered consumer on `subject` of `stream`, from `deliver`.
async fn ordered(
    stream: &jetstream::stream::Stream,
    subject: &str,
    deliver: DeliverPolicy,
) -> Result<Ordered, NatsError> {
    let consumer_error = |e: &dyn std::fmt::Display| NatsError::Consumer {
        subject: subject.to_owned(),
        message: e.to_string(),
    };
    stream
        .create_consumer(OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy: deliver,
            ..Default::default()
        })
        .await
        .map_err(|e| consumer_error(&e))?
        .messages()
        .await
        .map_err(|e| consumer_error(&e))
}

/// Live ordered consumers on the head and delta subjects.
pub struct Following {
    js: jetstream::Context,
    stream: jetstream::stream::Stream,
    messages: Ordered,
    deltas: Option<Ordered>,
    /// Deltas that did not follow on from the revision served, by the revision they apply on.
    pending: BTreeMap<u64, Bytes>,
    /// When the head is fetched again if the gap is still open.
    gap_deadline: Option<tokio::time::Instant>,
    bucket_name: String,
    /// The snapshot bucket, opened at the first head that needs it.
    bucket: Option<ObjectStore>,
}

impl Following {
    /// Offers each new head's snapshot until the connection or the consumer fails.
    pub async fn run(mut self, source: &NatsSource, installer: &Installer) -> NatsError {
        let mut check = tokio::time::interval(CONNECTION_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let gap = self.gap_deadline;
            tokio::select! {
                next = self.messages.next() => match next {
                    Some(Ok(message)) => {
                        self.on_head(&message.payload, installer).await;
                        self.drain(installer).await;
                    }
                    Some(Err(e)) => {
                        return NatsError::Consumer {
                            subject: source.names.head_subject.clone(),
                            message: e.to_string(),
                        };
                    }
                    None => return NatsError::Ended,
                },
                next = next_delta(&mut self.deltas) => match next {
                    Some(Ok(message)) => self.on_delta(message.payload.clone(), installer).await,
                    Some(Err(e)) => {
                        return NatsError::Consumer {
                            subject: source.names.delta_subject.clone(),
                            message: e.to_string(),
                        };
                    }
                    None => return NatsError::Ended,
                },
                () = sleep_until(gap) => {
                    if let Err(e) = self.refetch_head(source).await {
                        return e;
                    }
                }
                _ = check.tick() => {
                    if !source.is_connected() {
                        return NatsError::Disconnected;
                    }
                }
            }
        }
    }

    /// Applies a delta, or keeps it while the revisions before it are missing.
    async fn on_delta(&mut self, payload: Bytes, installer: &Installer) {
        match installer.offer_delta(Source::Nats, payload.clone()).await {
            DeltaOutcome::Applied { .. } => self.drain(installer).await,
            DeltaOutcome::Gap { base } => {
                if self.pending.len() >= MAX_PENDING {
                    self.pending.pop_first();
                }
                self.pending.insert(base, payload);
                self.gap_deadline
                    .get_or_insert_with(|| tokio::time::Instant::now() + GAP_WAIT);
            }
            DeltaOutcome::Stale | DeltaOutcome::Rejected(_) => {}
        }
    }

    /// Applies the kept deltas that now follow on, drops those the revision served already
    /// contains, and closes the gap when none is left.
    async fn drain(&mut self, installer: &Installer) {
        loop {
            let serving = installer.state().revision();
            self.pending = self.pending.split_off(&serving);
            let Some(next) = self.pending.remove(&serving) else {
                break;
            };
            if !matches!(
                installer.offer_delta(Source::Nats, next).await,
                DeltaOutcome::Applied { .. }
            ) {
                break;
            }
        }
        if self.pending.is_empty() {
            self.gap_deadline = None;
        }
    }

    /// The gap did not close by itself: asks for the current head again (a fresh consumer
    /// delivers it first) and looks again after [`GAP_RETRY`].
    async fn refetch_head(&mut self, source: &NatsSource) -> Result<(), NatsError> {
        metrics::count_delta_gap();
        tracing::info!(
            first_base = self.pending.keys().next().copied().unwrap_or_default(),
            kept = self.pending.len(),
            "config deltas do not follow on from the revision served; fetching the head"
        );
        self.messages = source.heads(&self.stream).await?;
        self.gap_deadline = Some(tokio::time::Instant::now() + GAP_RETRY);
        Ok(())
    }

    async fn on_head(&mut self, payload: &Bytes, installer: &Installer) {
        let head: SnapshotHead = match serde_json::from_slice(payload) {
            Ok(head) => head,
            Err(e) => {
                installer.reject(Source::Nats, 0, format!("head does not parse: {e}"));
                return;
            }
        };
        let announced = Announced {
            revision: head.revision,
            content_hash: head.content_hash.clone(),
            namespace: head.namespace.clone(),
            issued_at_micros: head.published_at.timestamp_micros(),
            signature: head.signature.clone(),
        };
        // The origin first: a forged head (say revision u64::MAX) is refused before its
        // revision is believed or its object fetched.
        if installer.refuse_untrusted(Source::Nats, Some(&announced)) {
            return;
        }
        // The full snapshot of the revision deltas brought: only for the cache file.
        if installer.wants_cache_refresh(head.revision) {
            if let Ok(body) = self.fetch(&head).await {
                installer.refresh_cache(announced, body).await;
            }
            return;
        }
        if installer.skip_stale(Source::Nats, head.revision) {
            return;
        }
        let body = match self.fetch(&head).await {
            Ok(body) => body,
            Err(reason) => {
                installer.reject(Source::Nats, head.revision, reason);
                return;
            }
        };
        installer
            .offer(Offer {
                source: Source::Nats,
                announced: Some(announced),
                body,
            })
            .await;
    }

    /// Reads the head's object, refusing anything larger than a snapshot may be.
    async fn fetch(&mut self, head: &SnapshotHead) -> Result<Bytes, String> {
        if head.size > MAX_SNAPSHOT_BYTES as u64 {
            return Err(format!(
                "announced size {} is over the {MAX_SNAPSHOT_BYTES}-byte limit",
                head.size
            ));
        }
        let bucket = match &self.bucket {
            Some(bucket) => bucket,
            None => {
                let opened = self
                    .js
                    .get_object_store(&self.bucket_name)
                    .await
                    .map_err(|e| format!("object store {}: {e}", self.bucket_name))?;
                self.bucket.insert(opened)
            }
        };
        let object = bucket
            .get(&head.object)
            .await
            .map_err(|e| format!("object {}: {e}", head.object))?;
        let mut body = Vec::with_capacity(usize::try_from(head.size).unwrap_or(0));
        object
            .take(MAX_SNAPSHOT_BYTES as u64 + 1)
            .read_to_end(&mut body)
            .await
            .map_err(|e| format!("object {}: {e}", head.object))?;
        Ok(Bytes::from(body))
    }
}

/// The next message of the delta consumer, or never without one.
async fn next_delta(
    deltas: &mut Option<Ordered>,
) -> Option<Result<jetstream::Message, async_nats::jetstream::consumer::pull::OrderedError>> {
    match deltas {
        Some(deltas) => deltas.next().await,
        None => std::future::pending().await,
    }
}

/// Waits until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
