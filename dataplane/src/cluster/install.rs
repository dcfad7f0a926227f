//! The one place where snapshots from the cluster are checked and swapped in.
//!
//! Three sources offer snapshots — the on-disk cache, NATS and gRPC — and may race or repeat
//! one another. They all go through [`Installer::offer`], which takes them one at a time
//! (so an older snapshot can never overwrite a newer one between check and swap), verifies
//! the announced content hash, parses, checks that the body is the announced revision, then
//! installs through [`AppState::install_under`] with [`Rule::Higher`]: the revision gate there
//! (the only one) lets through only a revision *higher* than the one served
//! (`docs/cluster.md`); validation and compilation follow. Then it writes the cache and wakes
//! the heartbeat. Sources that learn a revision before its body ([`Installer::skip_stale`])
//! ask the same gate first, to skip the fetch.
//! Anything that fails is logged and skipped; the old snapshot keeps serving.
//!
//! Before any of that, the origin: with a [`SnapshotVerifier`] (the control plane's public
//! keys, `cluster.snapshot_public_keys`) an offer is refused unless its [`Announced`] claims —
//! namespace, revision, content hash, issue time — carry a valid signature, whichever source
//! it came from (the cache keeps the signed head beside the body). A cluster snapshot must also
//! hold its secrets sealed: an `{env: NAME}` or `{value}` in it is refused, since it would read
//! this process's environment. Every refusal is counted in `switchboard_snapshot_refused_total`
//! by reason (a replay of a lower revision too) and logged once per revision.
//!
//! The CPU-heavy part (hashing, parsing and compiling a snapshot of 100,000 keys) runs on a
//! blocking thread so that the request path is never stalled behind it.
//!
//! Config deltas ([`Installer::offer_delta`]) take the same turn: split and hash-checked,
//! their signature verified ([`SnapshotVerifier::verify_delta`], same keys, same refusal
//! metric), then applied by [`AppState::install_delta`] only when they apply on top of the
//! revision served; one that does not is a [`DeltaOutcome::Gap`] for the source to resolve.
//! An applied delta is appended to the cache's delta journal (`cache::append_delta`), which a
//! full snapshot's cache write empties and a start replays after the cached snapshot.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use switchboard_shared::cluster::MAX_SNAPSHOT_BYTES;
use switchboard_shared::cluster_trust::{SnapshotClaims, SnapshotVerifier};
use switchboard_shared::secret::SecretRef;
use switchboard_shared::snapshot::Snapshot;
use tokio::sync::{Mutex, broadcast, watch};

use crate::cluster::cache;
use crate::metrics;
use crate::state::{AppState, DeltaRefused, Gate, Installed, Refused, Rule};
use switchboard_shared::config_delta;

/// Where a snapshot came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Cache,
    Nats,
    Grpc,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Cache => "cache",
            Source::Nats => "nats",
            Source::Grpc => "grpc",
        }
    }
}

/// What the sender says the body is, and the control plane's signature over it (kept in the
/// cache file beside the body).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announced {
    pub revision: u64,
    /// Hex SHA-256 of the body.
    pub content_hash: String,
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub issued_at_micros: i64,
    /// Base64 Ed25519 signature over the other fields; empty when unsigned.
    #[serde(default)]
    pub signature: String,
}

impl Announced {
    pub fn claims(&self) -> SnapshotClaims<'_> {
        SnapshotClaims {
            namespace: &self.namespace,
            revision: self.revision,
            content_hash: &self.content_hash,
            issued_at_micros: self.issued_at_micros,
        }
    }
}

/// A snapshot body offered for installation.
#[derive(Debug, Clone)]
pub struct Offer {
    pub source: Source,
    pub announced: Option<Announced>,
    /// The snapshot's canonical JSON.
    pub body: Bytes,
}

/// What became of an offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Now serving it.
    Installed,
    /// A config delta, applied on top of the catalog served (no full install).
    DeltaApplied,
    /// Not newer than what is served (a repeat, or a race between control planes): ignored.
    Stale { serving: u64 },
    /// Broken, tampered with or invalid; the reason says which. The old snapshot still serves.
    Rejected(String),
}

/// What became of a config delta.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaOutcome {
    /// Applied: now serving its revision.
    Applied { revision: u64 },
    /// Its revision is not newer than the one served: ignored.
    Stale,
    /// It applies on top of `base`, which is not the revision served: the source keeps it
    /// until the revisions in between arrive, or fetches the full head.
    Gap { base: u64 },
    /// Broken, forged or invalid; the old catalog still serves.
    Rejected(String),
}

/// One offer's fate, for logs, tests and whoever else wants to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub source: Source,
    /// The announced revision, else the body's; 0 when neither is known.
    pub revision: u64,
    pub outcome: Outcome,
}

/// Serializes installation for one [`AppState`].
pub struct Installer {
    state: Arc<AppState>,
    cache: Option<PathBuf>,
    turn: Mutex<()>,
    events: broadcast::Sender<Event>,
    served: watch::Sender<u64>,
    live: AtomicBool,
    /// Whether deltas were journalled since the cache file's snapshot was written.
    journalled: AtomicBool,
    /// `None` (development only, `allow_unsigned_snapshots`): origins are not checked.
    verifier: Option<SnapshotVerifier>,
    /// Revisions whose refusal was logged at error level (the last few).
    logged: std::sync::Mutex<VecDeque<u64>>,
}

impl std::fmt::Debug for Installer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Installer")
            .field("revision", &self.state.revision())
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

impl Installer {
    /// An installer for `state`, writing each installed snapshot to `cache` when given.
    pub fn new(state: Arc<AppState>, cache: Option<PathBuf>) -> Self {
        let (served, _) = watch::channel(state.revision());
        Self {
            state,
            cache,
            turn: Mutex::new(()),
            events: broadcast::channel(64).0,
            served,
            live: AtomicBool::new(false),
            journalled: AtomicBool::new(false),
            verifier: None,
            logged: std::sync::Mutex::new(VecDeque::new()),
        }
    }

    /// Installs only snapshots signed under `verifier`'s keys (see the module docs).
    pub fn with_verifier(mut self, verifier: Option<SnapshotVerifier>) -> Self {
        self.verifier = verifier;
        self
    }

    /// True (and the refusal recorded) when `announced` is not signed by a trusted key for
    /// this namespace. Sources call it before fetching a body; [`Installer::offer`] again.
    pub fn refuse_untrusted(&self, source: Source, announced: Option<&Announced>) -> bool {
        let Some(verifier) = &self.verifier else {
            return false;
        };
        let checked = match announced {
            None => Err(switchboard_shared::cluster_trust::TrustError::Unsigned),
            Some(a) => verifier.verify(&a.claims(), &a.signature),
        };
        let Err(e) = checked else {
            return false;
        };
        self.refuse(
            source,
            announced.map_or(0, |a| a.revision),
            e.reason(),
            e.to_string(),
        );
        true
    }

    /// Records a refusal with its metric `reason`.
    fn refuse(&self, source: Source, revision: u64, reason: &'static str, detail: String) {
        metrics::count_snapshot_refused(reason);
        self.record(Event {
            source,
            revision,
            outcome: Outcome::Rejected(detail),
        });
    }

    pub fn state(&self) -> &Arc<AppState> {
        &self.state
    }

    /// Every later offer's [`Event`].
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Changes to the revision served, for the heartbeat.
    pub fn served(&self) -> watch::Receiver<u64> {
        self.served.subscribe()
    }

    /// Whether a snapshot from NATS or gRPC (not only the cache) has been installed.
    pub fn has_live_snapshot(&self) -> bool {
        self.live.load(Ordering::Relaxed)
    }

    /// For a source that knows a revision before fetching its body: true (and the skip is
    /// recorded) when that revision is not newer than the one served, so there is no need.
    pub fn skip_stale(&self, source: Source, revision: u64) -> bool {
        let Gate::NotNewer { serving } = self.state.gate(Rule::Higher, revision, String::new)
        else {
            return false;
        };
        if revision < serving {
            // A replay of an older snapshot: harmless, but someone (or something) sent it.
            metrics::count_snapshot_refused("replayed");
        }
        self.record(Event {
            source,
            revision,
            outcome: Outcome::Stale { serving },
        });
        true
    }

    /// Records that a source could not even produce a body for `revision` (a head that does
    /// not parse, an object that is gone).
    pub fn reject(&self, source: Source, revision: u64, reason: String) {
        self.refuse(source, revision, "unreadable", reason);
    }

    /// Checks and installs `offer` if it is newer than what is served; one offer at a time.
    pub async fn offer(&self, offer: Offer) -> Outcome {
        let _turn = self.turn.lock().await;
        let source = offer.source;
        let announced_revision = offer.announced.as_ref().map_or(0, |a| a.revision);
        if self.refuse_untrusted(source, offer.announced.as_ref()) {
            return Outcome::Rejected("untrusted origin".into());
        }
        if announced_revision != 0 && self.skip_stale(source, announced_revision) {
            return Outcome::Stale {
                serving: self.state.revision(),
            };
        }
        let state = Arc::clone(&self.state);
        let cache = self.cache.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let done = check_and_install(&state, &offer);
            if done.1 == Outcome::Installed
                && source != Source::Cache
                && let Some(path) = cache
            {
                write_cache(&path, offer.announced.as_ref(), &offer.body, done.0);
            }
            drop(offer);
            crate::memory::release();
            done
        })
        .await;
        let (revision, outcome, reason) = match checked {
            Ok(done) => done,
            Err(e) => (
                announced_revision,
                Outcome::Rejected(format!("installation failed: {e}")),
                "failed",
            ),
        };
        if matches!(outcome, Outcome::Rejected(_)) {
            metrics::count_snapshot_refused(reason);
        }
        if outcome == Outcome::Installed {
            self.serving(source, revision);
        }
        self.record(Event {
            source,
            revision,
            outcome: outcome.clone(),
        });
        outcome
    }

    /// Checks a config delta message (head line and body, as published) and applies it when
    /// it follows on from the revision served; one at a time with snapshot offers.
    pub async fn offer_delta(&self, source: Source, message: Bytes) -> DeltaOutcome {
        let (head, _) = match config_delta::split(&message) {
            Ok(split) => split,
            Err(e) => {
                self.refuse(source, 0, e.reason(), e.to_string());
                return DeltaOutcome::Rejected(e.to_string());
            }
        };
        if let Some(verifier) = &self.verifier
            && let Err(e) = verifier.verify_delta(&head.claims(), &head.signature)
        {
            self.refuse(source, head.revision, e.reason(), format!("delta: {e}"));
            return DeltaOutcome::Rejected(e.to_string());
        }
        let _turn = self.turn.lock().await;
        let serving = self.state.revision();
        if head.revision <= serving {
            return DeltaOutcome::Stale;
        }
        if head.base_revision != serving {
            return DeltaOutcome::Gap {
                base: head.base_revision,
            };
        }
        let state = Arc::clone(&self.state);
        let journal = self.cache.clone().filter(|_| source != Source::Cache);
        let applied = tokio::task::spawn_blocking(move || {
            let (head, body) = config_delta::split(&message).map_err(|e| e.to_string())?;
            let delta = config_delta::parse_body(body).map_err(|e| e.to_string())?;
            let revision = state
                .install_delta(&delta, head.base_revision, head.revision, head.content_hash)
                .map_err(|e| match e {
                    DeltaRefused::Invalid(problems) => problems.to_string(),
                    other => format!("{other:?}"),
                })?;
            let journalled = match journal {
                Some(path) => match cache::append_delta(&path, &message) {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(revision, error = %e, "cannot append to the delta journal");
                        false
                    }
                },
                None => false,
            };
            // The delta's copy of the key maps leaves the previous maps to free.
            crate::memory::release();
            Ok::<_, String>((revision, journalled))
        })
        .await
        .unwrap_or_else(|e| Err(format!("installation failed: {e}")));
        match applied {
            Ok((revision, journalled)) => {
                if journalled {
                    self.journalled.store(true, Ordering::Relaxed);
                }
                metrics::count_delta_applied();
                self.serving(source, revision);
                self.record(Event {
                    source,
                    revision,
                    outcome: Outcome::DeltaApplied,
                });
                DeltaOutcome::Applied { revision }
            }
            Err(reason) => {
                self.refuse(source, head.revision, "invalid", format!("delta: {reason}"));
                DeltaOutcome::Rejected(reason)
            }
        }
    }

    /// Whether a full snapshot of `revision` is worth fetching though it is the revision
    /// served: it was reached by deltas, so the cache file holds an older snapshot and a
    /// journal that would otherwise only grow.
    pub fn wants_cache_refresh(&self, revision: u64) -> bool {
        self.cache.is_some()
            && self.journalled.load(Ordering::Relaxed)
            && self.state.revision() == revision
    }

    /// Writes the full snapshot of the revision served (signed head checked by the caller,
    /// body against its hash here) to the cache file, which empties the delta journal.
    pub async fn refresh_cache(&self, announced: Announced, body: Bytes) {
        let _turn = self.turn.lock().await;
        let Some(path) = self.cache.clone() else {
            return;
        };
        if self.state.revision() != announced.revision {
            return;
        }
        let written = tokio::task::spawn_blocking(move || {
            let actual = hex::encode(Sha256::digest(&body));
            if !actual.eq_ignore_ascii_case(&announced.content_hash) {
                return false;
            }
            write_cache(&path, Some(&announced), &body, announced.revision);
            true
        })
        .await
        .unwrap_or(false);
        if written {
            self.journalled.store(false, Ordering::Relaxed);
        }
    }

    /// `revision` from `source` is now served: waiters learn it, and anything but the cache
    /// file makes the data plane live.
    fn serving(&self, source: Source, revision: u64) {
        if source != Source::Cache {
            self.live.store(true, Ordering::Relaxed);
        }
        self.served.send_replace(revision);
    }

    fn record(&self, event: Event) {
        let source = event.source.as_str();
        let revision = event.revision;
        match &event.outcome {
            Outcome::Installed => {
                metrics::count_reload("swapped");
                tracing::info!(revision, source, "snapshot installed");
            }
            Outcome::DeltaApplied => {
                tracing::info!(revision, source, "config delta applied");
            }
            Outcome::Stale { serving } => {
                tracing::debug!(
                    revision,
                    serving,
                    source,
                    "snapshot not newer than the one served; ignored"
                );
            }
            Outcome::Rejected(reason) if !self.first_refusal_of(revision) => {
                metrics::count_reload("rejected");
                tracing::debug!(
                    revision,
                    source,
                    reason = %reason,
                    "snapshot rejected again"
                );
            }
            Outcome::Rejected(reason) => {
                metrics::count_reload("rejected");
                tracing::error!(
                    revision,
                    serving = self.state.revision(),
                    source,
                    reason = %reason,
                    "snapshot rejected; still serving the previous one"
                );
            }
        }
        // No subscriber is fine.
        let _ = self.events.send(event);
    }

    /// Whether no refusal of `revision` has been logged yet (and notes it as logged).
    fn first_refusal_of(&self, revision: u64) -> bool {
        let Ok(mut logged) = self.logged.lock() else {
            return true;
        };
        if logged.contains(&revision) {
            return false;
        }
        if logged.len() >= 32 {
            logged.pop_front();
        }
        logged.push_back(revision);
        true
    }

    /// Offers the cache file's snapshot, if there is a cache and it holds one.
    pub async fn load_cache(&self) -> Option<Outcome> {
        let path = self.cache.clone()?;
        let read = tokio::task::spawn_blocking(move || {
            cache::load(&path).map_err(|e| format!("{}: {e}", path.display()))
        })
        .await;
        match read {
            Ok(Ok(Some((announced, body)))) => {
                let outcome = self
                    .offer(Offer {
                        source: Source::Cache,
                        announced,
                        body: Bytes::from(body),
                    })
                    .await;
                self.replay_journal().await;
                Some(outcome)
            }
            Ok(Ok(None)) => None,
            Ok(Err(reason)) => {
                self.reject(Source::Cache, 0, reason.clone());
                Some(Outcome::Rejected(reason))
            }
            Err(e) => {
                let reason = e.to_string();
                self.reject(Source::Cache, 0, reason.clone());
                Some(Outcome::Rejected(reason))
            }
        }
    }
}

impl Installer {
    /// Applies the deltas journalled after the cached snapshot, in order, each checked as it
    /// was from NATS; stops at the first that does not apply.
    async fn replay_journal(&self) {
        let Some(path) = self.cache.clone() else {
            return;
        };
        let read = tokio::task::spawn_blocking(move || cache::load_deltas(&path)).await;
        let Ok(Ok(messages)) = read else {
            return;
        };
        for message in messages {
            match self.offer_delta(Source::Cache, Bytes::from(message)).await {
                DeltaOutcome::Applied { .. } | DeltaOutcome::Stale => {}
                DeltaOutcome::Gap { .. } | DeltaOutcome::Rejected(_) => break,
            }
        }
    }
}

/// Hash check, parse, announced-revision check, sealed secrets only, then the gate,
/// validation and swap. Returns the revision it is about, and the refusal reason (a metric
/// label) for a rejection.
fn check_and_install(state: &AppState, offer: &Offer) -> (u64, Outcome, &'static str) {
    let announced_revision = offer.announced.as_ref().map_or(0, |a| a.revision);
    let reject = |label: &'static str, reason: String| {
        (announced_revision, Outcome::Rejected(reason), label)
    };
    if offer.body.len() > MAX_SNAPSHOT_BYTES {
        return reject(
            "too_large",
            format!(
                "snapshot is {} bytes, more than the {MAX_SNAPSHOT_BYTES} accepted",
                offer.body.len()
            ),
        );
    }
    if let Some(announced) = &offer.announced {
        let actual = hex::encode(Sha256::digest(&offer.body));
        if !actual.eq_ignore_ascii_case(&announced.content_hash) {
            return reject(
                "hash_mismatch",
                format!(
                    "content hash mismatch: the body hashes to {actual}, {} was announced",
                    announced.content_hash
                ),
            );
        }
    }
    let snapshot = match Snapshot::from_json(&offer.body) {
        Ok(s) => s,
        Err(e) => return reject("not_a_snapshot", format!("not a snapshot: {e}")),
    };
    let revision = snapshot.revision;
    if offer.announced.is_some() && revision != announced_revision {
        return reject(
            "revision_mismatch",
            format!("the body is revision {revision}, {announced_revision} was announced"),
        );
    }
    if let Some(path) = unsealed_secret(&snapshot) {
        return (
            revision,
            Outcome::Rejected(format!(
                "{path} is not sealed: a cluster snapshot may carry only sealed credentials, \
                 never {{env}} or {{value}} (they would read this data plane's environment)"
            )),
            "unsealed_secret",
        );
    }
    match state.install_under(&snapshot, Rule::Higher) {
        Ok(Installed::Swapped { .. }) => (revision, Outcome::Installed, ""),
        // Not under `Rule::Higher`, which refuses a tie; the same revision is being served.
        Ok(Installed::Unchanged) => (revision, Outcome::Stale { serving: revision }, ""),
        Err(Refused::NotNewer { serving }) => (revision, Outcome::Stale { serving }, ""),
        Err(Refused::Invalid(problems)) => {
            (revision, Outcome::Rejected(problems.to_string()), "invalid")
        }
    }
}

/// The path of the first secret in `snapshot` that is not sealed, if any.
pub fn unsealed_secret(snapshot: &Snapshot) -> Option<String> {
    let not_sealed = |s: &Option<SecretRef>| {
        s.as_ref()
            .is_some_and(|s| !matches!(s, SecretRef::Sealed(_)))
    };
    for p in &snapshot.providers {
        let fields = [
            ("api_key", &p.api_key),
            ("aws_access_key_id", &p.aws_access_key_id),
            ("aws_secret_access_key", &p.aws_secret_access_key),
            ("aws_session_token", &p.aws_session_token),
        ];
        if let Some((name, _)) = fields.iter().find(|(_, s)| not_sealed(s)) {
            return Some(format!("providers[{}].{name}", p.id));
        }
        if let Some(i) = p
            .api_keys
            .iter()
            .position(|k| !matches!(k.key, SecretRef::Sealed(_)))
        {
            return Some(format!("providers[{}].api_keys[{i}]", p.id));
        }
    }
    None
}

/// Writes an installed snapshot's signed head and body to the cache file. A failure is
/// logged, not fatal: the cache only helps the next start.
fn write_cache(path: &Path, announced: Option<&Announced>, body: &[u8], revision: u64) {
    match cache::store(path, announced, body) {
        Ok(()) => tracing::debug!(revision, path = %path.display(), "snapshot cache written"),
        Err(e) => tracing::warn!(
            revision,
            path = %path.display(),
            error = %e,
            "cannot write the snapshot cache"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::LogSink;
    use crate::config::ServerConfig;

    fn state() -> Arc<AppState> {
        let server: ServerConfig = serde_yaml_ng::from_str("key_pepper: { value: \"p\" }").unwrap();
        crate::server::build_state(&server, None, Arc::new(LogSink)).unwrap()
    }

    fn body(revision: u64, keys: usize) -> (Announced, Bytes) {
        let mut text = format!(
            "revision: {revision}\ntenants: [{{ id: t1 }}]\nproviders: [{{ id: m, kind: mock }}]\ndeployments: [{{ id: d, model: demo, provider: m, upstream_model: mock-1 }}]\nvirtual_keys:\n"
        );
        for i in 0..keys {
            let hash = switchboard_shared::keys::hash_key_hex(b"p", &format!("sk-{i}"));
            text.push_str(&format!(
                "  - {{ id: k{i}, tenant_id: t1, key_hash: \"{hash}\" }}\n"
            ));
        }
        let snapshot = Snapshot::from_yaml(&text).unwrap();
        (
            Announced {
                revision,
                content_hash: snapshot.content_hash(),
                ..Announced::default()
            },
            Bytes::from(snapshot.to_canonical_json()),
        )
    }

    #[tokio::test]
    async fn installs_newer_revisions_only_and_checks_the_announcement() {
        let installer = Installer::new(state(), None);
        let (announced, body_2) = body(2, 1);
        let offer = |announced: Option<Announced>, body: &Bytes| Offer {
            source: Source::Nats,
            announced,
            body: body.clone(),
        };
        assert_eq!(
            installer
                .offer(offer(Some(announced.clone()), &body_2))
                .await,
            Outcome::Installed
        );
        assert_eq!(installer.state().revision(), 2);
        // The same revision again (from the other path): nothing happens.
        assert_eq!(
            installer
                .offer(offer(Some(announced.clone()), &body_2))
                .await,
            Outcome::Stale { serving: 2 }
        );
        // A body that is not the revision announced.
        let (announced_3, body_3) = body(3, 1);
        let lying = Announced {
            revision: 4,
            content_hash: announced_3.content_hash.clone(),
            ..Announced::default()
        };
        match installer.offer(offer(Some(lying), &body_3)).await {
            Outcome::Rejected(reason) => assert!(reason.contains("revision 3"), "{reason}"),
            other => panic!("{other:?}"),
        }
        // Not JSON at all, with a matching hash.
        let junk = Bytes::from_static(b"not json");
        let junk_hash = Announced {
            revision: 5,
            content_hash: hex::encode(Sha256::digest(&junk)),
            ..Announced::default()
        };
        match installer.offer(offer(Some(junk_hash), &junk)).await {
            Outcome::Rejected(reason) => assert!(reason.starts_with("not a snapshot"), "{reason}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(installer.state().revision(), 2);
        assert_eq!(
            installer.offer(offer(Some(announced_3), &body_3)).await,
            Outcome::Installed
        );
    }

    /// `cargo test --release -p switchboard-dataplane --lib -- --ignored --nocapture installs_100k`
    #[tokio::test]
    #[ignore = "a measurement, not a check"]
    async fn installs_100k_keys() {
        let installer = Installer::new(state(), None);
        let (announced, body) = body(1, 100_000);
        let started = std::time::Instant::now();
        let outcome = installer
            .offer(Offer {
                source: Source::Nats,
                announced: Some(announced),
                body: body.clone(),
            })
            .await;
        let took = started.elapsed();
        assert_eq!(outcome, Outcome::Installed);
        eprintln!(
            "100,000 keys: {} bytes of JSON, hash check + parse + validate + compile + swap in {took:?}",
            body.len()
        );
        // Where the time goes.
        let t = std::time::Instant::now();
        let _ = hex::encode(Sha256::digest(&body));
        let hash = t.elapsed();
        let t = std::time::Instant::now();
        let snapshot = Snapshot::from_json(&body).unwrap();
        let parse = t.elapsed();
        let t = std::time::Instant::now();
        snapshot.validate().unwrap();
        let validate = t.elapsed();
        let t = std::time::Instant::now();
        let _ = snapshot.content_hash();
        let rehash = t.elapsed();
        eprintln!(
            "of which: sha256 {hash:?}, parse {parse:?}, validate {validate:?}, canonical re-hash in the catalog {rehash:?}"
        );
    }
}
