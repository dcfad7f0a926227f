//! Usage records to the control plane over NATS JetStream, without ever blocking a request.
//!
//! [`NatsUsageSink::emit`] (called when a request's ledger closes, on the request path or in a
//! stream's `Drop`) only pushes the record onto a bounded lock-free queue and wakes a
//! background task. That task publishes in batches to the usage stream, each message carrying
//! `Nats-Msg-Id = request_id`, and waits for JetStream's acknowledgements: a record leaves
//! this process only once the stream has stored it (at-least-once; duplicates are dropped by
//! JetStream's window and by ingestion's unique request id).
//!
//! While NATS or the stream is unreachable the task keeps what failed and retries with
//! backoff. Records that do not fit in memory — the queue is full, or the backlog outgrows
//! the queue's capacity — go to the spill file when one is configured (JSON lines, appended
//! by the task, never by a request; capped in size, see [`spill`]) and are replayed once
//! publishing works again; without a spill file they are counted in
//! `switchboard_usage_records_total{result="dropped"}` and logged. At shutdown
//! [`NatsUsageSink::close`] flushes what it can within a deadline and spills the rest.

mod spill;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use crossbeam_queue::ArrayQueue;
use switchboard_shared::usage::UsageRecord;
use tokio::sync::{Notify, oneshot};

use crate::accounting::UsageSink;
use crate::metrics;

/// How many records one publish round sends before awaiting their acknowledgements.
const BATCH: usize = 256;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The longest one publish round may take before it counts as failed.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Default [`PublisherSettings::spill_max_bytes`] (`cluster.usage_spill_max_bytes`): about
/// half a million records.
pub const DEFAULT_SPILL_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// Settings of the usage publisher.
#[derive(Debug, Clone)]
pub struct PublisherSettings {
    /// Subject of the usage stream (`NatsNames::usage_subject`).
    pub subject: String,
    /// Records held in memory before spilling (or dropping).
    pub capacity: usize,
    /// Where records that don't fit in memory go until NATS takes them.
    pub spill_path: Option<PathBuf>,
    /// Largest size of the spill file; past it the oldest records in it are dropped (counted).
    pub spill_max_bytes: u64,
    /// This data plane's id and ingest key: each event carries the id and its HMAC in NATS
    /// headers, so the control plane can tell it from a forged one (`shared::cluster_trust`).
    /// `None`: untagged (development only).
    pub tag: Option<(String, switchboard_shared::cluster_trust::IngestKeys)>,
}

impl Default for PublisherSettings {
    fn default() -> Self {
        Self {
            subject: String::new(),
            capacity: 100_000,
            spill_path: None,
            spill_max_bytes: DEFAULT_SPILL_MAX_BYTES,
            tag: None,
        }
    }
}

/// A [`UsageSink`] that publishes to JetStream from a background task.
#[derive(Debug)]
pub struct NatsUsageSink {
    queue: Arc<ArrayQueue<Box<UsageRecord>>>,
    wake: Arc<Notify>,
    overflow: Arc<ArrayQueue<Box<UsageRecord>>>,
    stop: std::sync::Mutex<Option<oneshot::Sender<Duration>>>,
    done: tokio::sync::Mutex<Option<oneshot::Receiver<()>>>,
}

impl NatsUsageSink {
    /// Starts the publishing task on the current runtime.
    pub fn start(jetstream: jetstream::Context, settings: PublisherSettings) -> Arc<Self> {
        let capacity = settings.capacity.max(1);
        // Boxed records: the queue writes every slot when it is made, so a slot is 16 bytes
        // resident from the start, where an inline record (several hundred bytes) made the
        // default 100,000 slots tens of megabytes before the first request.
        let queue = Arc::new(ArrayQueue::new(capacity));
        // Room for records that arrive while the main queue is full: the task moves them to
        // the spill file. Small, since it only bridges until the task's next turn.
        let overflow = Arc::new(ArrayQueue::new(capacity.min(4096)));
        let wake = Arc::new(Notify::new());
        let (stop_tx, stop_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let task = Publisher {
            jetstream,
            queue: Arc::clone(&queue),
            overflow: Arc::clone(&overflow),
            wake: Arc::clone(&wake),
            backlog: VecDeque::new(),
            capacity,
            spill: settings
                .spill_path
                .clone()
                .map(|path| spill::Spill::new(path, settings.spill_max_bytes)),
            settings,
        };
        tokio::spawn(async move {
            task.run(stop_rx).await;
            let _ = done_tx.send(());
        });
        Arc::new(Self {
            queue,
            wake,
            overflow,
            stop: std::sync::Mutex::new(Some(stop_tx)),
            done: tokio::sync::Mutex::new(Some(done_rx)),
        })
    }

    /// Publishes what is pending for up to `deadline`, spills the rest (when a spill file is
    /// configured), and stops the task. Later records are dropped and counted.
    pub async fn close(&self, deadline: Duration) {
        let stop = self.stop.lock().ok().and_then(|mut s| s.take());
        if let Some(stop) = stop {
            let _ = stop.send(deadline);
            self.wake.notify_one();
        }
        let done = self.done.lock().await.take();
        if let Some(done) = done {
            let _ = done.await;
        }
    }

    /// Records waiting in memory (not counting the task's retry backlog).
    pub fn queued(&self) -> usize {
        self.queue.len() + self.overflow.len()
    }
}

impl UsageSink for NatsUsageSink {
    fn emit(&self, record: UsageRecord) {
        if let Err(record) = self.queue.push(Box::new(record))
            && let Err(record) = self.overflow.push(record)
        {
            metrics::count_usage_dropped();
            tracing::error!(
                request_id = %record.request_id,
                "usage queue full: record dropped (configure usage.spill_path to keep it)"
            );
        }
        self.wake.notify_one();
    }
}

/// A record in the backlog, and where it came from: `replay` is its offset in the spill file
/// being replayed (it is still there, so it is never spilled again:
/// `switchboard_usage_records_total{result="spilled"}` counts each record once).
struct Held {
    record: UsageRecord,
    replay: Option<u64>,
}

impl Held {
    fn fresh(record: UsageRecord) -> Self {
        Self {
            record,
            replay: None,
        }
    }
}

/// The background task's state.
struct Publisher {
    jetstream: jetstream::Context,
    queue: Arc<ArrayQueue<Box<UsageRecord>>>,
    overflow: Arc<ArrayQueue<Box<UsageRecord>>>,
    wake: Arc<Notify>,
    /// Records taken from the queue but not yet acknowledged by the stream.
    backlog: VecDeque<Held>,
    capacity: usize,
    spill: Option<spill::Spill>,
    settings: PublisherSettings,
}

impl Publisher {
    async fn run(mut self, mut stop: oneshot::Receiver<Duration>) {
        let mut backoff = MIN_BACKOFF;
        let mut next_attempt = tokio::time::Instant::now();
        let mut healthy = true;
        loop {
            // Draining never waits on NATS, so the queue keeps room while publishing fails.
            self.drain_queues().await;
            let connected = self.jetstream.client().connection_state()
                == async_nats::connection::State::Connected;
            if connected && healthy && self.backlog.len() <= self.capacity / 2 {
                self.replay_spill().await;
            }
            if connected && !self.backlog.is_empty() && tokio::time::Instant::now() >= next_attempt
            {
                if self.publish_batch().await {
                    backoff = MIN_BACKOFF;
                    if !healthy {
                        tracing::info!("usage publishing works again");
                        healthy = true;
                    }
                    continue;
                }
                if healthy {
                    tracing::warn!(
                        backlog = self.backlog.len(),
                        "usage publishing failed; retrying with backoff"
                    );
                    healthy = false;
                }
                next_attempt = tokio::time::Instant::now() + backoff;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            if !connected && healthy && !self.backlog.is_empty() {
                tracing::warn!(
                    backlog = self.backlog.len(),
                    "NATS unreachable: holding usage records"
                );
                healthy = false;
            }
            if !healthy {
                self.pause_replay();
                self.spill_excess().await;
            }
            let wait = if self.backlog.is_empty() {
                Duration::from_secs(1)
            } else {
                MIN_BACKOFF
            };
            tokio::select! {
                deadline = &mut stop => {
                    self.finish(deadline.unwrap_or_default()).await;
                    return;
                }
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Moves queued records into the backlog, up to the capacity; the rest go to the spill
    /// file (or are dropped).
    async fn drain_queues(&mut self) {
        let mut excess = Vec::new();
        for queue in [&self.overflow, &self.queue] {
            while let Some(r) = queue.pop() {
                if self.backlog.len() < self.capacity {
                    self.backlog.push_back(Held::fresh(*r));
                } else {
                    excess.push(Held::fresh(*r));
                }
            }
        }
        if !excess.is_empty() {
            self.spill(excess).await;
        }
    }

    /// Sends up to [`BATCH`] records and awaits their acks, for at most [`ATTEMPT_TIMEOUT`].
    /// True when all were stored.
    async fn publish_batch(&mut self) -> bool {
        tokio::time::timeout(ATTEMPT_TIMEOUT, self.publish_batch_unbounded())
            .await
            .unwrap_or(false)
    }

    async fn publish_batch_unbounded(&mut self) -> bool {
        let n = self.backlog.len().min(BATCH);
        let mut acks = Vec::with_capacity(n);
        for Held { record, .. } in self.backlog.iter().take(n) {
            let Ok(payload) = serde_json::to_vec(record) else {
                acks.push(None);
                continue;
            };
            let mut publish = PublishMessage::build().message_id(record.request_id.as_str());
            if let Some((id, keys)) = &self.settings.tag {
                use switchboard_shared::cluster_trust::{DATAPLANE_HEADER, SIGNATURE_HEADER};
                let tag = keys.tag("usage", id, &payload);
                publish = publish
                    .header(DATAPLANE_HEADER, id.as_str())
                    .header(SIGNATURE_HEADER, tag.as_str());
            }
            let publish = publish.payload(payload.into());
            match self
                .jetstream
                .send_publish(self.settings.subject.clone(), publish)
                .await
            {
                Ok(ack) => acks.push(Some(ack)),
                Err(_) => break,
            }
        }
        // Records are stored in order of their acks; drop the acknowledged ones and keep the
        // rest (an unacknowledged record may still have been stored: the id makes a resend
        // harmless).
        let mut stored = vec![false; n];
        let results = futures_util::future::join_all(acks.into_iter().enumerate().map(
            |(i, ack)| async move {
                match ack {
                    // A record that cannot be serialised can never be sent: count it as done.
                    None => (i, true),
                    Some(ack) => (i, ack.await.is_ok()),
                }
            },
        ))
        .await;
        for (i, ok) in results {
            stored[i] = ok;
        }
        let all = stored.len() == n && stored.iter().all(|s| *s);
        let mut kept = VecDeque::with_capacity(self.backlog.len());
        for (i, r) in self.backlog.drain(..).enumerate() {
            if i >= n || !stored.get(i).copied().unwrap_or(false) {
                kept.push_back(r);
            } else {
                metrics::count_usage_published();
            }
        }
        self.backlog = kept;
        all && n > 0
    }

    /// While publishing fails, keeps at most half the capacity in memory and spills the rest,
    /// so that new records still find room in the queue.
    async fn spill_excess(&mut self) {
        if self.settings.spill_path.is_none() || self.backlog.len() <= self.capacity / 2 {
            return;
        }
        let excess: Vec<_> = self.backlog.drain(self.capacity / 2..).collect();
        self.spill(excess).await;
    }

    /// Appends fresh records to the spill file (none come from it: see [`Held`]), or drops
    /// them without one. Counts what was spilled, dropped and evicted.
    async fn spill(&self, records: Vec<Held>) {
        let Some(spill) = &self.spill else {
            for Held { record: r, .. } in &records {
                metrics::count_usage_dropped();
                tracing::error!(request_id = %r.request_id, "usage backlog full: record dropped");
            }
            return;
        };
        let fresh: Vec<&UsageRecord> = records.iter().map(|h| &h.record).collect();
        match spill.append(&fresh).await {
            Ok(done) => {
                metrics::count_usage_spilled(done.written as usize);
                if done.evicted > 0 {
                    metrics::count_usage_evicted(done.evicted);
                    tracing::error!(
                        evicted = done.evicted,
                        "usage spill file full (cluster.usage_spill_max_bytes): oldest records dropped"
                    );
                }
            }
            Err(e) => {
                for r in fresh {
                    metrics::count_usage_dropped();
                    tracing::error!(request_id = %r.request_id, error = %e, "usage spill failed: record dropped");
                }
            }
        }
    }

    /// Feeds the next slice of the spill file into the backlog, as far as the backlog has
    /// room; removes the file once all of it has been acknowledged.
    async fn replay_spill(&mut self) {
        let pending = self.backlog.iter().any(|h| h.replay.is_some());
        let room = self.capacity.saturating_sub(self.backlog.len());
        let Some(spill) = &mut self.spill else {
            return;
        };
        spill.finish_replay(pending).await;
        match spill.next_slice(room).await {
            Ok(slice) => {
                if slice.is_empty() {
                    // The end of the file may have been found only now.
                    spill.finish_replay(pending).await;
                } else {
                    tracing::debug!(records = slice.len(), "replaying spilled usage records");
                }
                self.backlog
                    .extend(slice.into_iter().map(|(record, at)| Held {
                        record,
                        replay: Some(at),
                    }));
            }
            Err(e) => tracing::error!(error = %e, "cannot read the usage spill file"),
        }
    }

    /// Publishing failed: the records read from the spill file leave the backlog (they are
    /// still in the file) and the replay will resume at the first of them.
    fn pause_replay(&mut self) {
        let Some(spill) = &mut self.spill else {
            return;
        };
        if let Some(first) = self.backlog.iter().filter_map(|h| h.replay).min() {
            spill.rewind(first);
            self.backlog.retain(|h| h.replay.is_none());
        }
    }

    /// At shutdown: publish until the deadline, then spill what is left.
    async fn finish(mut self, deadline: Duration) {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            self.drain_queues().await;
            if self.backlog.is_empty() || tokio::time::Instant::now() >= until {
                break;
            }
            let sent = tokio::time::timeout_at(until, self.publish_batch_unbounded()).await;
            if !matches!(sent, Ok(true)) && tokio::time::Instant::now() < until {
                tokio::time::sleep(MIN_BACKOFF).await;
            }
        }
        self.pause_replay();
        let left: Vec<_> = self.backlog.drain(..).collect();
        if !left.is_empty() {
            tracing::warn!(records = left.len(), "usage not published before shutdown");
            self.spill(left).await;
        }
    }
}
