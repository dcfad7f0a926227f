//! The process's shared state, handed to every handler.
//!
//! The current [`Catalog`] sits in an `ArcSwapOption`: a request loads it once (an atomic load
//! and a reference count, no lock) and keeps that `Arc` for its whole life, so a reload never
//! changes a request's view of the config halfway through. `None` means no snapshot has been
//! loaded yet, and the process answers `/readyz` with 503.

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
    pub client: HttpClient,
    pub books: Books,
    pub max_body_bytes: usize,
    pub metrics: PrometheusHandle,
    /// Open `{ sealed: ... }` credentials in snapshots from the control plane.
    master_keys: Option<MasterKeys>,
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
            pepper,
            client,
            books,
            max_body_bytes,
            metrics,
            master_keys: None,
            shutting_down: AtomicBool::new(false),
        }
    }

    /// Sets the master keys that open sealed credentials (before the state is shared).
    pub fn with_master_keys(mut self, master_keys: Option<MasterKeys>) -> Self {
        self.master_keys = master_keys;
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

    pub fn pepper(&self) -> &[u8] {
        &self.pepper
    }

    /// Compiles and swaps in `snapshot`, unless it is older than the one being served or
    /// invalid — then the old one stays and the problems are returned.
    pub fn install(&self, snapshot: &Snapshot) -> Result<Installed, Problems> {
        let previous = self.catalog();
        if let Some(current) = &previous {
            if snapshot.revision < current.revision {
                return Err(Problems(vec![Problem {
                    path: "revision".into(),
                    message: format!(
                        "{} is older than the revision being served ({})",
                        snapshot.revision, current.revision
                    ),
                }]));
            }
            if snapshot.revision == current.revision
                && snapshot.content_hash() == current.content_hash
            {
                return Ok(Installed::Unchanged);
            }
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
        )?;
        let revision = catalog.revision;
        self.catalog.store(Some(Arc::new(catalog)));
        // In-process budget counters of ended periods are not needed any more.
        self.books.budgets.prune(self.books.clock.now());
        metrics::set_revision(revision);
        Ok(Installed::Swapped { revision })
    }

    pub fn is_ready(&self) -> bool {
        !self.shutting_down.load(Ordering::Relaxed) && self.catalog.load().is_some()
    }

    /// Marks the process as draining: `/readyz` fails so load balancers stop sending.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }
}
