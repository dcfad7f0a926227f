//! The one way an admin change reaches Postgres and the fleet.
//!
//! [`Write::begin`] opens a transaction and bumps the config revision first, which takes the
//! revision row's lock and so serialises writers: from then on this transaction sees every
//! earlier write and no later one. The service changes rows and records the audit entry
//! ([`Change`]); then [`Write::commit`] builds the snapshot inside the same transaction and
//! validates it (a write that would leave the configuration inconsistent is refused with 422
//! and rolled back), commits, and only then hands the snapshot to the publisher. A failed
//! request therefore changes nothing, and nothing is published before it is committed.
//! [`Write::finish`] is the usual tail: the audit row of one object's change, then the commit.
//!
//! A write whose audit rows are all about virtual keys is **key-only**: it changes nothing in
//! the snapshot but those keys. Its commit validates just them ([`snapshot::keys_in`]: the
//! keys against their tenants and the models they name), commits, and publishes a signed
//! config delta (`docs/cluster.md`, "Deltas") instead of building the whole snapshot — at
//! 100,000 keys, milliseconds instead of most of a second. When the delta cannot follow on
//! from what was last published, a full snapshot is built and published after the commit.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use switchboard_shared::config_delta::ConfigDelta;
use switchboard_shared::snapshot::Snapshot;

use super::auth::Actor;
use super::error::{Error, FieldError, Result};
use super::snapshot;
use crate::publish::{Built, Publisher};
use crate::repo;

/// How long the answer to a write waits for its publication at most.
const PUBLISH_WAIT: Duration = Duration::from_secs(1);

/// Which object a write is about, so that snapshot problems at that object are reported at
/// the request's own field paths.
#[derive(Debug, Clone)]
pub struct Scope {
    /// Snapshot section: `tenants`, `virtual_keys`, `providers`, `deployments`, `models`.
    pub section: &'static str,
    pub id: String,
}

impl Scope {
    pub fn new(section: &'static str, id: impl Into<String>) -> Self {
        Self {
            section,
            id: id.into(),
        }
    }
}

/// One change to one object, as its audit row records it.
#[derive(Debug)]
pub struct Change<'a> {
    /// `create`, `update`, `delete`, `revoke`, `set_budget`, ...
    pub action: &'a str,
    /// `tenant`, `virtual_key`, `provider`, ...
    pub object_type: &'a str,
    pub object_id: &'a str,
    /// The tenant the object belongs to (tenant admins read its audit rows).
    pub tenant_id: Option<&'a str>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

impl<'a> Change<'a> {
    /// The change from `before` to `after` (absent: created, or deleted). They are stored as
    /// JSON, so they must hold no secret: pass API views, which never do.
    pub fn of<T: Serialize>(
        action: &'a str,
        object_type: &'a str,
        object_id: &'a str,
        tenant_id: Option<&'a str>,
        before: Option<&T>,
        after: Option<&T>,
    ) -> Self {
        let json = |view: &T| serde_json::to_value(view).ok();
        Self {
            action,
            object_type,
            object_id,
            tenant_id,
            before: before.and_then(json),
            after: after.and_then(json),
        }
    }
}

/// An open write transaction with its revision.
pub struct Write {
    tx: Transaction<'static, Postgres>,
    pool: PgPool,
    pub revision: u64,
    actor_id: Option<uuid::Uuid>,
    actor: String,
    /// Ids of the virtual keys audited so far; `None` once anything else was.
    keys_only: Option<Vec<String>>,
}

/// A committed write.
#[derive(Debug, Clone, Copy)]
pub struct Committed {
    pub revision: u64,
}

impl Write {
    pub async fn begin(pool: &PgPool, actor: &Actor) -> Result<Self> {
        let mut tx = pool.begin().await?;
        let revision = repo::revision::bump(&mut *tx).await?;
        Ok(Self {
            tx,
            pool: pool.clone(),
            revision,
            actor_id: actor.id,
            actor: actor.email.clone(),
            keys_only: Some(Vec::new()),
        })
    }

    pub fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }

    /// Who is writing (the actor's email, or `system`), for `updated_by` columns.
    pub fn actor(&self) -> &str {
        &self.actor
    }

    /// Appends the audit row of `change`.
    pub async fn audit(&mut self, change: Change<'_>) -> Result<()> {
        match &mut self.keys_only {
            Some(ids) if change.object_type == "virtual_key" => {
                ids.push(change.object_id.to_owned());
            }
            _ => self.keys_only = None,
        }
        let entry = repo::audit::NewEntry {
            actor_id: self.actor_id,
            actor: &self.actor,
            action: change.action,
            object_type: change.object_type,
            object_id: change.object_id,
            tenant_id: change.tenant_id,
            revision: i64::try_from(self.revision).unwrap_or(i64::MAX),
            before: change.before,
            after: change.after,
        };
        repo::audit::insert(&mut *self.tx, entry).await?;
        Ok(())
    }

    /// The tail of a write of one object: its audit row, then [`Write::commit`].
    pub async fn finish(
        mut self,
        publisher: Option<&Arc<Publisher>>,
        change: Change<'_>,
        scope: Option<Scope>,
    ) -> Result<Committed> {
        self.audit(change).await?;
        self.commit(publisher, scope).await
    }

    /// Validates the resulting configuration, commits, then publishes.
    /// `publisher` is `None` for writes outside a server (the CLI): a running server's
    /// reconcile loop then publishes the new revision.
    pub async fn commit(
        mut self,
        publisher: Option<&Arc<Publisher>>,
        scope: Option<Scope>,
    ) -> Result<Committed> {
        if let Some(ids) = self.keys_only.take().filter(|ids| !ids.is_empty()) {
            return self.commit_keys(publisher, scope, ids).await;
        }
        let snapshot = snapshot::build_in(&mut self.tx).await?;
        valid(&snapshot, scope.as_ref())?;
        self.tx.commit().await?;
        let revision = self.revision;
        if let Some(publisher) = publisher {
            let built = Arc::new(Built::from_snapshot(&snapshot));
            // Publishing normally takes milliseconds and is awaited, so the answer to a write
            // follows its publication. When NATS is slow or down the answer does not wait
            // longer than this: the publish goes on in the background (and the reconcile loop
            // retries it), since the change itself is committed.
            let publisher = Arc::clone(publisher);
            let publishing = tokio::spawn(async move { publisher.offer_and_publish(built).await });
            let _ = tokio::time::timeout(PUBLISH_WAIT, publishing).await;
        }
        Ok(Committed { revision })
    }

    /// [`Write::commit`] of a key-only write: validates the keys `ids`, commits, publishes
    /// their delta (or, when it cannot follow on, the full snapshot).
    async fn commit_keys(
        mut self,
        publisher: Option<&Arc<Publisher>>,
        scope: Option<Scope>,
        mut ids: Vec<String>,
    ) -> Result<Committed> {
        ids.sort_unstable();
        ids.dedup();
        let (partial, removed) = snapshot::keys_in(&mut self.tx, &ids).await?;
        valid(&partial, scope.as_ref())?;
        self.tx.commit().await?;
        let revision = self.revision;
        if let Some(publisher) = publisher {
            let delta = ConfigDelta {
                virtual_keys: partial.virtual_keys,
                removed_virtual_keys: removed,
            };
            let publisher = Arc::clone(publisher);
            let pool = self.pool;
            let publishing = tokio::spawn(async move {
                publish_delta_or_full(&pool, &publisher, revision, &delta).await;
            });
            // As in `commit`: the answer waits for the publication, but not for long.
            let _ = tokio::time::timeout(PUBLISH_WAIT, publishing).await;
        }
        Ok(Committed { revision })
    }
}

/// Publishes `delta` as `revision`; when it cannot follow on from what was published (or
/// fails), builds and publishes the full snapshot instead. Errors are logged: the reconcile
/// loop publishes whatever is still missing.
async fn publish_delta_or_full(
    pool: &PgPool,
    publisher: &Publisher,
    revision: u64,
    delta: &ConfigDelta,
) {
    match tokio::time::timeout(
        crate::publish::PUBLISH_TIMEOUT,
        publisher.publish_delta(revision, delta),
    )
    .await
    {
        Ok(Ok(true)) => return,
        Ok(Ok(false)) => {
            tracing::debug!(revision, "the delta does not follow on; publishing in full");
        }
        Ok(Err(e)) => {
            tracing::warn!(revision, error = %e, "delta publish failed; publishing in full");
        }
        Err(_) => tracing::warn!(revision, "delta publish timed out; publishing in full"),
    }
    match snapshot::build_consistent(pool).await {
        Ok(snapshot) => {
            publisher
                .offer_and_publish(Arc::new(Built::from_snapshot(&snapshot)))
                .await;
        }
        Err(e) => tracing::warn!(error = %e, "cannot build the snapshot; will retry"),
    }
}

/// `Ok` when `snapshot` (whole, or the part a key-only write touched) validates; else the
/// problems, scoped to what the write addressed.
fn valid(snapshot: &Snapshot, scope: Option<&Scope>) -> Result<()> {
    snapshot
        .validate()
        .map_err(|problems| Error::Invalid(scoped_problems(snapshot, scope, problems.0)))
}

/// Rewrites `virtual_keys[3].limits.rpm` to `limits.rpm` when key 3 is the object written;
/// other problems keep their snapshot path under `snapshot.`.
fn scoped_problems(
    snapshot: &Snapshot,
    scope: Option<&Scope>,
    problems: Vec<switchboard_shared::validate::Problem>,
) -> Vec<FieldError> {
    let prefix = scope.and_then(|s| {
        let index = match s.section {
            "tenants" => snapshot.tenants.iter().position(|t| t.id == s.id),
            "virtual_keys" => snapshot.virtual_keys.iter().position(|k| k.id == s.id),
            "providers" => snapshot.providers.iter().position(|p| p.id == s.id),
            "deployments" => snapshot.deployments.iter().position(|d| d.id == s.id),
            "models" => snapshot.models.iter().position(|m| m.model == s.id),
            _ => None,
        }?;
        Some(format!("{}[{index}]", s.section))
    });
    problems
        .into_iter()
        .map(|p| {
            let local = prefix.as_deref().and_then(|prefix| {
                let rest = p.path.strip_prefix(prefix)?;
                if rest.is_empty() {
                    Some(String::new())
                } else {
                    rest.strip_prefix('.').map(str::to_owned)
                }
            });
            match local {
                Some(path) => FieldError::new(path, p.message),
                None => FieldError::new(format!("snapshot.{}", p.path), p.message),
            }
        })
        .collect()
}
