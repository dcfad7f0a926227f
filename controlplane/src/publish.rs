//! Publishing snapshots over NATS JetStream, exactly as `docs/cluster.md` says, and the
//! `watch` of the latest built snapshot that the gRPC ConfigService serves. A transport only:
//! it never reads Postgres; what to publish and when is the service layer's
//! (`service::write` after a commit, `service::reconcile` on a timer).
//!
//! - [`Publisher::offer_and_publish`]: after a commit, make a snapshot the latest (if newer)
//!   and publish it: object put, head publish expecting the last subject sequence (skipped when
//!   the head already names a revision at least as high), prune. A failure is logged; the
//!   reconcile loop (`service::reconcile`) republishes whenever the head is behind Postgres,
//!   which also covers NATS outages and several replicas.
//! - [`Publisher::follow_head`]: follows the head subject so that snapshots published by other
//!   replicas reach this replica's gRPC watchers too.
//! - [`Publisher::publish_delta`]: after a key-only commit, a signed config delta on the delta
//!   subject (`shared::config_delta`), when the revision it applies on top of is the last one
//!   published (as a head or a delta); otherwise the caller publishes a full snapshot.
//!
//! Every snapshot this replica offers is signed ([`Publisher::with_signing`], Ed25519 over
//! namespace, revision, content hash and issue time; `shared::cluster_trust`). A head on NATS
//! counts only if it verifies: one that does not (anyone who can publish on the subject could
//! write it, with revision `u64::MAX`) is never adopted, never followed, and never stops a
//! publish — the next publish simply replaces it, so Postgres stays the truth.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::consumer::DeliverPolicy;
use async_nats::jetstream::consumer::pull::OrderedConfig;
use async_nats::jetstream::context::PublishErrorKind;
use async_nats::jetstream::object_store::ObjectStore;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, StorageType, Stream};
use async_nats::jetstream::{self, object_store};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures_util::StreamExt;
use sha2::{Digest, Sha256};
use switchboard_shared::cluster::{
    DELTA_MAX_AGE, DELTAS_KEPT, NatsNames, SNAPSHOTS_KEPT, SnapshotHead, snapshot_object,
};
use switchboard_shared::cluster_trust::{SnapshotClaims, SnapshotSigner, SnapshotVerifier};
use switchboard_shared::config_delta::{self, ConfigDelta, DeltaHead};
use switchboard_shared::snapshot::Snapshot;
use tokio::io::AsyncReadExt;
use tokio::sync::{Mutex, OnceCell, watch};

/// Longest a publish may take before the caller gives up (the reconcile loop retries).
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the pruning of old bodies may take.
const PRUNE_TIMEOUT: Duration = Duration::from_secs(2);

/// A built snapshot in its wire form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub revision: u64,
    /// Hex SHA-256 of `json`, equal to `Snapshot::content_hash()`.
    pub content_hash: String,
    pub json: Bytes,
    /// The namespace it is signed for (empty until signed).
    pub namespace: String,
    /// When it was signed (or built, while unsigned).
    pub issued_at: DateTime<Utc>,
    /// Base64 Ed25519 signature over the claims; empty when unsigned.
    pub signature: String,
}

impl Built {
    /// Unsigned; [`Publisher::offer`] signs it.
    pub fn from_snapshot(snapshot: &Snapshot) -> Self {
        let json = snapshot.to_canonical_json();
        Self {
            revision: snapshot.revision,
            content_hash: hex::encode(Sha256::digest(&json)),
            json: Bytes::from(json),
            namespace: String::new(),
            issued_at: Utc::now(),
            signature: String::new(),
        }
    }

    /// What its signature covers.
    pub fn claims(&self) -> SnapshotClaims<'_> {
        SnapshotClaims {
            namespace: &self.namespace,
            revision: self.revision,
            content_hash: &self.content_hash,
            issued_at_micros: self.issued_at.timestamp_micros(),
        }
    }
}

/// When the reconcile loop follows deltas with a full snapshot (`cluster.full_snapshot_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FullSnapshots {
    /// After this many revisions past the head.
    pub every_deltas: u64,
    /// Once the head is this old and revisions went out past it.
    pub every: Duration,
}

impl Default for FullSnapshots {
    fn default() -> Self {
        Self {
            every_deltas: 100,
            every: Duration::from_secs(60),
        }
    }
}

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// The head now names this revision.
    Head,
    /// The head already named this revision or a newer one.
    Superseded,
}

pub struct Publisher {
    names: NatsNames,
    js: jetstream::Context,
    stream: OnceCell<Stream>,
    deltas: OnceCell<Stream>,
    store: OnceCell<ObjectStore>,
    latest: watch::Sender<Option<Arc<Built>>>,
    /// One publish at a time per replica; replicas race safely through the expected sequence.
    publishing: Mutex<()>,
    namespace: String,
    signer: Option<SnapshotSigner>,
    /// Which heads count; `None` (development only): any.
    verifier: Option<SnapshotVerifier>,
    full_snapshots: FullSnapshots,
}

impl Publisher {
    pub fn new(client: async_nats::Client, names: NatsNames) -> Self {
        Self {
            names,
            js: jetstream::new(client),
            stream: OnceCell::new(),
            deltas: OnceCell::new(),
            store: OnceCell::new(),
            latest: watch::channel(None).0,
            publishing: Mutex::new(()),
            namespace: String::new(),
            signer: None,
            verifier: None,
            full_snapshots: FullSnapshots::default(),
        }
    }

    /// Follows deltas with a full snapshot as `policy` says.
    pub fn with_full_snapshots(mut self, policy: FullSnapshots) -> Self {
        self.full_snapshots = policy;
        self
    }

    /// Whether Postgres at revision `committed` should be published as a full snapshot now:
    /// some revision up to it went out neither as a head nor as a delta (a CLI write, a price
    /// update, a failed publish: looked at twice, 250 ms apart, so a delta being published
    /// right now is not mistaken for one), or the deltas since the head reached the count or
    /// age of [`FullSnapshots`].
    pub async fn full_due(&self, committed: u64) -> anyhow::Result<bool> {
        let head = self.head().await?.and_then(|(_, h)| h);
        let head_revision = head.as_ref().map_or(0, |h| h.revision);
        if head_revision >= committed {
            return Ok(false);
        }
        let Some(head) = head else {
            return Ok(true);
        };
        if committed - head_revision >= self.full_snapshots.every_deltas {
            return Ok(true);
        }
        let age = (Utc::now() - head.published_at)
            .to_std()
            .unwrap_or_default();
        if age >= self.full_snapshots.every {
            return Ok(true);
        }
        if self.published_tip().await? < committed {
            tokio::time::sleep(Duration::from_millis(250)).await;
            return Ok(self.published_tip().await? < committed);
        }
        Ok(false)
    }

    /// Signs what it publishes with `signer` for `namespace`, and adopts or respects only the
    /// heads `verifier` accepts. Without both (development only), heads go out unsigned and
    /// any head counts.
    pub fn with_signing(
        mut self,
        namespace: &str,
        signer: Option<SnapshotSigner>,
        verifier: Option<SnapshotVerifier>,
    ) -> Self {
        self.namespace = namespace.to_owned();
        self.signer = signer;
        self.verifier = verifier;
        self
    }

    /// `built` signed for this publisher's namespace, now (a copy sharing the body).
    pub fn sign(&self, built: Arc<Built>) -> Arc<Built> {
        let Some(signer) = &self.signer else {
            return built;
        };
        if !built.signature.is_empty() && built.namespace == self.namespace {
            return built;
        }
        let mut signed = Built {
            namespace: self.namespace.clone(),
            issued_at: Utc::now(),
            ..(*built).clone()
        };
        signed.signature = signer.sign(&signed.claims());
        Arc::new(signed)
    }

    /// Whether a head found on NATS counts (see the module docs).
    fn trusted(&self, head: &SnapshotHead) -> bool {
        match &self.verifier {
            None => true,
            Some(verifier) => match verifier.verify(&head.claims(), &head.signature) {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(
                        revision = head.revision,
                        reason = e.reason(),
                        "ignoring a snapshot head this control plane did not sign"
                    );
                    false
                }
            },
        }
    }

    pub fn names(&self) -> &NatsNames {
        &self.names
    }

    /// The latest snapshot this replica knows (built here or seen on the head).
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Built>>> {
        self.latest.subscribe()
    }

    pub fn latest_revision(&self) -> u64 {
        self.latest.borrow().as_ref().map_or(0, |b| b.revision)
    }

    /// Makes `built` (signed) the latest if it is newer; returns whether it was.
    pub fn offer(&self, built: Arc<Built>) -> bool {
        let built = self.sign(built);
        self.latest.send_if_modified(|slot| {
            if slot
                .as_ref()
                .is_none_or(|cur| built.revision > cur.revision)
            {
                *slot = Some(built);
                true
            } else {
                false
            }
        })
    }

    /// Offers, then publishes; errors are logged (the reconcile loop retries).
    pub async fn offer_and_publish(&self, built: Arc<Built>) {
        let built = self.sign(built);
        self.offer(built.clone());
        match tokio::time::timeout(PUBLISH_TIMEOUT, self.publish(&built)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(revision = built.revision, error = %e, "snapshot publish failed; will retry");
            }
            Err(_) => {
                tracing::warn!(
                    revision = built.revision,
                    "snapshot publish timed out; will retry"
                );
            }
        }
    }

    async fn stream(&self) -> anyhow::Result<&Stream> {
        self.stream
            .get_or_try_init(|| async {
                let config = jetstream::stream::Config {
                    name: self.names.config_stream.clone(),
                    subjects: vec![self.names.config_subjects.clone()],
                    max_messages_per_subject: 1,
                    storage: StorageType::File,
                    num_replicas: self.names.replicas,
                    ..Default::default()
                };
                let stream = self.js.get_or_create_stream(config).await?;
                // Data planes open both streams together: create the deltas' with the heads'.
                self.delta_stream().await?;
                Ok::<_, anyhow::Error>(stream)
            })
            .await
    }

    /// The delta stream: every delta, the oldest dropped past [`DELTAS_KEPT`] or
    /// [`DELTA_MAX_AGE`] (a data plane that far behind installs the full head instead).
    async fn delta_stream(&self) -> anyhow::Result<&Stream> {
        self.deltas
            .get_or_try_init(|| async {
                let config = jetstream::stream::Config {
                    name: self.names.delta_stream.clone(),
                    subjects: vec![self.names.delta_subject.clone()],
                    max_messages: DELTAS_KEPT,
                    max_age: DELTA_MAX_AGE,
                    storage: StorageType::File,
                    num_replicas: self.names.replicas,
                    ..Default::default()
                };
                Ok::<_, anyhow::Error>(self.js.get_or_create_stream(config).await?)
            })
            .await
    }

    /// The revision of the last delta on the delta subject that verifies, if any.
    pub async fn last_delta_revision(&self) -> anyhow::Result<Option<u64>> {
        let stream = self.delta_stream().await?;
        match stream
            .get_last_raw_message_by_subject(&self.names.delta_subject)
            .await
        {
            Ok(message) => Ok(config_delta::split(&message.payload)
                .ok()
                .filter(|(head, _)| self.trusted_delta(head))
                .map(|(head, _)| head.revision)),
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn trusted_delta(&self, head: &DeltaHead) -> bool {
        self.verifier
            .as_ref()
            .is_none_or(|v| v.verify_delta(&head.claims(), &head.signature).is_ok())
    }

    /// The highest revision published so far, as a head or as a delta (0: none).
    pub async fn published_tip(&self) -> anyhow::Result<u64> {
        let head = self
            .head()
            .await?
            .and_then(|(_, h)| h)
            .map_or(0, |h| h.revision);
        let delta = self.last_delta_revision().await?.unwrap_or(0);
        Ok(head.max(delta))
    }

    /// Publishes `delta` as revision `revision` on top of `revision - 1`, signed, if that base
    /// is the last revision published; returns false without publishing otherwise (a revision
    /// in between was never published: the caller publishes a full snapshot instead), and true
    /// without publishing when something at or past `revision` already went out.
    pub async fn publish_delta(&self, revision: u64, delta: &ConfigDelta) -> anyhow::Result<bool> {
        let _one_at_a_time = self.publishing.lock().await;
        let base = revision.saturating_sub(1);
        let tip = self.published_tip().await?;
        if tip >= revision {
            // A full snapshot at or past it went out meanwhile (the reconcile loop's).
            return Ok(true);
        }
        if tip != base {
            return Ok(false);
        }
        let body = serde_json::to_vec(delta)?;
        let mut head = DeltaHead {
            namespace: self.namespace.clone(),
            base_revision: base,
            revision,
            content_hash: config_delta::body_hash(&body),
            published_at: Utc::now(),
            signature: String::new(),
        };
        if let Some(signer) = &self.signer {
            head.signature = signer.sign_delta(&head.claims());
        }
        let message = config_delta::encode(&head, &body);
        self.js
            .publish(self.names.delta_subject.clone(), Bytes::from(message))
            .await?
            .await?;
        tracing::info!(
            revision,
            keys = delta.virtual_keys.len() + delta.removed_virtual_keys.len(),
            "config delta published"
        );
        Ok(true)
    }

    async fn store(&self) -> anyhow::Result<&ObjectStore> {
        self.store
            .get_or_try_init(|| async {
                let bucket = &self.names.snapshot_bucket;
                if let Ok(store) = self.js.get_object_store(bucket).await {
                    return Ok(store);
                }
                let config = object_store::Config {
                    bucket: bucket.clone(),
                    storage: StorageType::File,
                    num_replicas: self.names.replicas,
                    ..Default::default()
                };
                match self.js.create_object_store(config).await {
                    Ok(store) => Ok(store),
                    // Another replica may have created it meanwhile.
                    Err(e) => self.js.get_object_store(bucket).await.map_err(|_| e.into()),
                }
            })
            .await
    }

    /// The current head's stream sequence, if there is a head, with the head if it counts
    /// (it parses and its signature verifies); an untrusted head is only a sequence to
    /// publish over.
    pub async fn head(&self) -> anyhow::Result<Option<(u64, Option<SnapshotHead>)>> {
        let stream = self.stream().await?;
        match stream
            .get_last_raw_message_by_subject(&self.names.head_subject)
            .await
        {
            Ok(message) => {
                let head = serde_json::from_slice::<SnapshotHead>(&message.payload)
                    .ok()
                    .filter(|head| self.trusted(head));
                Ok(Some((message.sequence, head)))
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Publishes per `docs/cluster.md`: object, head (never backwards), prune.
    pub async fn publish(&self, built: &Built) -> anyhow::Result<Published> {
        let _one_at_a_time = self.publishing.lock().await;
        let store = self.store().await?;
        let object = snapshot_object(built.revision);
        if let Some((_, Some(head))) = self.head().await?
            && head.revision >= built.revision
        {
            return Ok(Published::Superseded);
        }
        store.put(object.as_str(), &mut built.json.as_ref()).await?;
        let head = SnapshotHead {
            revision: built.revision,
            content_hash: built.content_hash.clone(),
            object,
            size: built.json.len() as u64,
            published_at: built.issued_at,
            namespace: built.namespace.clone(),
            signature: built.signature.clone(),
        };
        let payload = Bytes::from(serde_json::to_vec(&head)?);
        let mut outcome = Published::Superseded;
        for _ in 0..20 {
            let expected = match self.head().await? {
                Some((_, Some(current))) if current.revision >= built.revision => break,
                Some((sequence, _)) => sequence,
                None => 0,
            };
            let mut headers = HeaderMap::new();
            headers.insert(
                async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
                expected.to_string().as_str(),
            );
            let ack = self
                .js
                .publish_with_headers(self.names.head_subject.clone(), headers, payload.clone())
                .await?;
            match ack.await {
                Ok(_) => {
                    outcome = Published::Head;
                    break;
                }
                Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => continue,
                Err(e) => return Err(e.into()),
            }
        }
        if outcome == Published::Head {
            // Listing races with other replicas' deletes and can stall: bounded, and a later
            // publish prunes again.
            match tokio::time::timeout(PRUNE_TIMEOUT, self.prune(store)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "pruning old snapshots failed"),
                Err(_) => tracing::debug!("pruning old snapshots timed out"),
            }
            tracing::info!(
                revision = built.revision,
                bytes = built.json.len(),
                "snapshot published"
            );
        }
        Ok(outcome)
    }

    /// Deletes all but the newest [`SNAPSHOTS_KEPT`] snapshot objects.
    async fn prune(&self, store: &ObjectStore) -> anyhow::Result<()> {
        let mut names = Vec::new();
        let mut list = store.list().await?;
        while let Some(info) = list.next().await {
            let info = info?;
            if info.name.starts_with("snapshot-") && !info.deleted {
                names.push(info.name);
            }
        }
        names.sort();
        let keep = usize::try_from(SNAPSHOTS_KEPT).unwrap_or(usize::MAX);
        let old = names.len().saturating_sub(keep);
        for name in &names[..old] {
            store.delete(name).await?;
        }
        Ok(())
    }

    /// Fetches the body a head names and checks its hash.
    pub async fn fetch(&self, head: &SnapshotHead) -> anyhow::Result<Built> {
        let store = self.store().await?;
        let mut object = store.get(&head.object).await?;
        let mut json = Vec::new();
        object.read_to_end(&mut json).await?;
        let content_hash = hex::encode(Sha256::digest(&json));
        anyhow::ensure!(
            content_hash == head.content_hash,
            "snapshot {} does not match its head's content hash",
            head.object
        );
        Ok(Built {
            revision: head.revision,
            content_hash,
            json: Bytes::from(json),
            namespace: head.namespace.clone(),
            issued_at: head.published_at,
            signature: head.signature.clone(),
        })
    }

    /// Follows the head subject (other replicas' publishes) until `shutdown`.
    pub async fn follow_head(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                result = self.follow_once() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, "following the snapshot head; retrying");
                    }
                }
                _ = shutdown.changed() => return,
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    async fn follow_once(&self) -> anyhow::Result<()> {
        let stream = self.stream().await?;
        let consumer = stream
            .create_consumer(OrderedConfig {
                filter_subject: self.names.head_subject.clone(),
                deliver_policy: DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await?;
        let mut messages = consumer.messages().await?;
        while let Some(message) = messages.next().await {
            let message = message?;
            let Ok(head) = serde_json::from_slice::<SnapshotHead>(&message.payload) else {
                continue;
            };
            if head.revision > self.latest_revision() && self.trusted(&head) {
                match self.fetch(&head).await {
                    Ok(built) => {
                        self.offer(Arc::new(built));
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot fetch a published snapshot"),
                }
            }
        }
        Ok(())
    }
}
