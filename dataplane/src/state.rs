//! The process's shared state, handed to every handler.
//!
//! The current [`Catalog`] sits in an `ArcSwapOption`: a request loads it once (an atomic load
//! and a reference count, no lock) and keeps that `Arc` for its whole life, so a reload never
//! changes a request's view of the config halfway through. `None` means no snapshot has been
//! loaded yet, and the process answers `/readyz` with 503.
//!
//! Every install — the config file at start and on reload, the cluster's cache, NATS and gRPC
//! — passes the one revision gate here ([`AppState::install_under`]), under the rule of its
//! source ([`Rule`]): the cluster takes only a higher revision, a file anything not older.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwapOption;
use http::HeaderValue;
use metrics_exporter_prometheus::PrometheusHandle;
use switchboard_shared::sealed::MasterKeys;
use switchboard_shared::snapshot::Snapshot;
use switchboard_shared::validate::{Problem, Problems};

use crate::accounting::Books;
use crate::catalog::{BuildContext, Catalog};
use crate::metrics;
use crate::providers::client::HttpClient;

/// Shared by all requests.
pub struct AppState {
    catalog: ArcSwapOption<Catalog>,
    pepper: Vec<u8>,
    /// The pepper, keyed once for the per-request key hash, and the hashes it remembers.
    key_digests: crate::auth::KeyDigests,
    pub client: HttpClient,
    /// Shared with every request's ledger by pointer: cloning the whole of it (336 bytes,
    /// six reference counts) per request and moving it with the ledger cost more.
    pub books: Arc<Books>,
    pub max_body_bytes: usize,
    pub metrics: PrometheusHandle,
    /// Open `{ sealed: ... }` credentials in snapshots from the control plane.
    master_keys: Option<MasterKeys>,
    /// Stored Responses API responses (in process unless set with a Redis one).
    pub responses: Arc<crate::responses::ResponseStore>,
    /// The response cache's answers (in process unless set with a Redis one).
    pub cache: Arc<crate::cache::CacheStore>,
    shutting_down: AtomicBool,
}

impl fmt::Debug for AppState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppState")
            .field("revision", &self.catalog().map(|c| c.revision))
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

/// The result of offering a snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installed {
    /// Now serving this revision.
    Swapped { revision: u64 },
    /// Same content as the one being served: nothing to do.
    Unchanged,
}

/// Why a snapshot was not installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// The revision gate closed: not newer than the revision being served.
    NotNewer { serving: u64 },
    /// Invalid, or a secret did not resolve: every problem.
    Invalid(Problems),
}

/// Why a config delta was not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeltaRefused {
    /// Its revision is not newer than the one served.
    NotNewer { serving: u64 },
    /// It applies on top of another revision than the one served (a gap, or nothing served).
    NotItsBase { serving: u64 },
    /// Its keys do not fit the catalog: every problem.
    Invalid(Problems),
}

/// Which revisions may replace the one served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// Cluster sources: only a higher revision. Nothing served counts as revision 0, which
    /// in the cluster means "no config" (`docs/cluster.md`): a repeat, a race between control
    /// planes or an empty control plane's revision 0 is ignored.
    Higher,
    /// A config file: anything while nothing is served; then not older, and the same revision
    /// only with other content (an operator may edit the file without bumping the number).
    NotOlder,
}

/// What the revision gate says about an offered revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Newer (under the rule): compile and swap it in.
    Open,
    /// The revision and content being served already: nothing to do.
    Unchanged,
    /// Not newer than the revision being served: refused.
    NotNewer { serving: u64 },
}

/// The revision gate, the one place that decides whether a snapshot of `revision` may replace
/// the `served` catalog. `content_hash` is asked for only when a file's revision ties.
fn gate(
    served: Option<&Catalog>,
    rule: Rule,
    revision: u64,
    content_hash: impl FnOnce() -> String,
) -> Gate {
    let serving = served.map_or(0, |c| c.revision);
    match (rule, served) {
        (Rule::Higher, _) if revision > serving => Gate::Open,
        (Rule::Higher, _) => Gate::NotNewer { serving },
        (Rule::NotOlder, None) => Gate::Open,
        (Rule::NotOlder, Some(_)) if revision < serving => Gate::NotNewer { serving },
        (Rule::NotOlder, Some(current))
            if revision == serving && content_hash() == current.content_hash =>
        {
            Gate::Unchanged
        }
        (Rule::NotOlder, Some(_)) => Gate::Open,
    }
}

impl AppState {
    pub fn new(
        pepper: Vec<u8>,
        client: HttpClient,
        books: Books,
        max_body_bytes: usize,
        metrics: PrometheusHandle,
    ) -> Self {
        Self {
            catalog: ArcSwapOption::empty(),
            key_digests: crate::auth::KeyDigests::new(&pepper),
            pepper,
            client,
            books: Arc::new(books),
            max_body_bytes,
            metrics,
            master_keys: None,
            responses: Arc::default(),
            cache: Arc::default(),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Sets the master keys that open sealed credentials (before the state is shared).
    pub fn with_master_keys(mut self, master_keys: Option<MasterKeys>) -> Self {
        self.master_keys = master_keys;
        self
    }

    /// Sets where stored responses are kept (before the state is shared).
    pub fn with_response_store(mut self, store: crate::responses::ResponseStore) -> Self {
        self.responses = Arc::new(store);
        self
    }

    /// Sets where the response cache keeps answers (before the state is shared).
    pub fn with_cache_store(mut self, store: crate::cache::CacheStore) -> Self {
        self.cache = Arc::new(store);
        self
    }

    /// The revision being served, 0 while none is.
    pub fn revision(&self) -> u64 {
        self.catalog.load().as_ref().map_or(0, |c| c.revision)
    }

    /// The `x-switchboard-config-revision` value for a response: precomputed in the catalog,
    /// so this costs an atomic load and a reference count, no allocation.
    pub fn revision_header(&self) -> HeaderValue {
        const NONE: HeaderValue = HeaderValue::from_static("0");
        self.catalog
            .load()
            .as_ref()
            .map_or(NONE, |c| c.revision_header.clone())
    }

    /// The catalog being served, if any.
    pub fn catalog(&self) -> Option<Arc<Catalog>> {
        self.catalog.load_full()
    }

    /// Hashes a presented virtual key the way snapshots store it.
    pub fn key_digests(&self) -> &crate::auth::KeyDigests {
        &self.key_digests
    }

    /// Compiles and swaps in `snapshot`, unless it is older than the one being served or
    /// invalid — then the old one stays and the problems are returned. The rule of a config
    /// file ([`Rule::NotOlder`]); the cluster installs through [`AppState::install_under`].
    pub fn install(&self, snapshot: &Snapshot) -> Result<Installed, Problems> {
        self.install_under(snapshot, Rule::NotOlder)
            .map_err(|refused| match refused {
                Refused::NotNewer { serving } => Problems(vec![Problem {
                    path: "revision".into(),
                    message: format!(
                        "{} is older than the revision being served ({serving})",
                        snapshot.revision
                    ),
                }]),
                Refused::Invalid(problems) => problems,
            })
    }

    /// Passes `snapshot` through the revision gate under `rule`, then compiles and swaps it
    /// in. Every install, whatever its source, comes through here.
    pub fn install_under(&self, snapshot: &Snapshot, rule: Rule) -> Result<Installed, Refused> {
        let previous = self.catalog();
        match gate(previous.as_deref(), rule, snapshot.revision, || {
            snapshot.content_hash()
        }) {
            Gate::Open => {}
            Gate::Unchanged => return Ok(Installed::Unchanged),
            Gate::NotNewer { serving } => return Err(Refused::NotNewer { serving }),
        }
        let env = |name: &str| std::env::var(name).ok();
        let catalog = Catalog::build(
            snapshot,
            &BuildContext {
                pepper: &self.pepper,
                client: &self.client,
                env: &env,
                master_keys: self.master_keys.as_ref(),
                previous: previous.as_deref(),
            },
        )
        .map_err(Refused::Invalid)?;
        let revision = catalog.revision;
        // The previous catalog goes when its last request ends.
        self.catalog.store(Some(Arc::new(catalog)));
        // In-process budget counters of ended periods are not needed any more.
        self.books.budgets.prune(self.books.clock.now());
        metrics::set_revision(revision);
        Ok(Installed::Swapped { revision })
    }

    /// Applies a config delta that makes `revision` on top of `base`, without a rebuild
    /// ([`Catalog::apply_delta`]), when `base` is the revision served.
    pub fn install_delta(
        &self,
        delta: &switchboard_shared::config_delta::ConfigDelta,
        base: u64,
        revision: u64,
        content_hash: String,
    ) -> Result<u64, DeltaRefused> {
        let Some(previous) = self.catalog() else {
            return Err(DeltaRefused::NotItsBase { serving: 0 });
        };
        let serving = previous.revision;
        if revision <= serving {
            return Err(DeltaRefused::NotNewer { serving });
        }
        if base != serving {
            return Err(DeltaRefused::NotItsBase { serving });
        }
        let catalog = previous
            .apply_delta(delta, revision, content_hash)
            .map_err(DeltaRefused::Invalid)?;
        self.catalog.store(Some(Arc::new(catalog)));
        metrics::set_revision(revision);
        Ok(revision)
    }

    /// The revision gate's answer for `revision` against the catalog served now, for a source
    /// that knows a revision before it has the body (so it can skip fetching it).
    pub fn gate(&self, rule: Rule, revision: u64, content_hash: impl FnOnce() -> String) -> Gate {
        gate(self.catalog().as_deref(), rule, revision, content_hash)
    }

    pub fn is_ready(&self) -> bool {
        !self.shutting_down.load(Ordering::Relaxed) && self.catalog.load().is_some()
    }

    /// Marks the process as draining: `/readyz` fails so load balancers stop sending.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
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

    fn snapshot(revision: u64, model: &str) -> Snapshot {
        Snapshot::from_yaml(&format!(
            "revision: {revision}\nproviders: [{{ id: m, kind: mock }}]\ndeployments: [{{ id: d, model: {model}, provider: m, upstream_model: u }}]\n"
        ))
        .unwrap()
    }

    /// A file may repeat its revision with other content, never go back; the cluster only
    /// moves forward.
    #[test]
    fn the_gate_applies_each_sources_rule() {
        let state = state();
        // Nothing served counts as revision 0 for the cluster.
        let refused = state.install_under(&snapshot(0, "a"), Rule::Higher);
        assert_eq!(refused, Err(Refused::NotNewer { serving: 0 }));
        let swapped = Ok(Installed::Swapped { revision: 3 });
        assert_eq!(state.install(&snapshot(3, "a")), swapped);
        assert_eq!(state.install(&snapshot(3, "a")), Ok(Installed::Unchanged));
        assert_eq!(state.install(&snapshot(3, "b")), swapped);
        let older = state.install(&snapshot(2, "a")).unwrap_err().to_string();
        assert!(
            older.contains("revision: 2 is older than the revision being served (3)"),
            "{older}"
        );
        let tie = state.install_under(&snapshot(3, "c"), Rule::Higher);
        assert_eq!(tie, Err(Refused::NotNewer { serving: 3 }));
        assert_eq!(state.gate(Rule::Higher, 4, String::new), Gate::Open);
        assert_eq!(
            state.catalog().map(|c| c.model_names().to_vec()),
            Some(vec!["b".to_owned()])
        );
    }
}
