//! Keeping the published snapshot up with Postgres: [`reconcile`] builds a snapshot when
//! Postgres is ahead of what this replica holds and publishes it when the head is behind;
//! [`reconcile_loop`] runs it at start-up and on a timer. This is what makes a publish that
//! failed or timed out after a commit (NATS down, several replicas) eventually happen.
//!
//! Key-only writes publish deltas, which leave the head behind Postgres on purpose: the full
//! snapshot is built only when [`Publisher::full_due`] says so (a revision that went out
//! neither way, or enough deltas, or an old enough head). So this replica's gRPC view (the
//! latest full snapshot) may trail Postgres by up to that many deltas or that long.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::watch;

use super::snapshot;
use crate::publish::{Built, PUBLISH_TIMEOUT, Publisher};
use crate::repo;

/// One reconcile step: build when Postgres is ahead of what this replica holds, publish when
/// the head is behind it. Returns the revision held afterwards.
pub async fn reconcile(pool: &PgPool, publisher: &Publisher) -> anyhow::Result<u64> {
    let committed = repo::revision::current(pool).await?;
    let none_yet = publisher.subscribe().borrow().is_none();
    if none_yet
        || (committed > publisher.latest_revision() && publisher.full_due(committed).await?)
    {
        let snapshot = snapshot::build_consistent(pool).await?;
        if let Err(problems) = snapshot.validate() {
            anyhow::bail!("the stored configuration is invalid: {problems}");
        }
        publisher.offer(Arc::new(Built::from_snapshot(&snapshot)));
    }
    let latest = publisher.subscribe().borrow().clone();
    if let Some(latest) = latest {
        // A head that does not verify counts as none: it is published over.
        let head = publisher
            .head()
            .await?
            .and_then(|(_, h)| h)
            .map_or(0, |h| h.revision);
        if head < latest.revision {
            tokio::time::timeout(PUBLISH_TIMEOUT, publisher.publish(&latest))
                .await
                .map_err(|_| anyhow::anyhow!("publishing timed out"))??;
        }
    }
    Ok(publisher.latest_revision())
}

/// Runs [`reconcile`] at once and then every `interval` until `shutdown`.
pub async fn reconcile_loop(
    pool: PgPool,
    publisher: Arc<Publisher>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        if let Err(e) = reconcile(&pool, &publisher).await {
            tracing::warn!(error = %e, "snapshot reconcile failed; will retry");
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}
