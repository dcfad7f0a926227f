//! Building a [`Snapshot`] from Postgres.
//!
//! [`build_consistent`] reads everything in one `REPEATABLE READ` transaction, revision
//! included, so the document is exactly the state at that revision (the reconcile loop and
//! start-up use it). [`build_in`] reads through a caller's transaction; the write path calls it
//! after bumping the revision, whose row lock makes the same guarantee (see [`super::write`]).
//! Provider credentials stay sealed: the snapshot carries `SecretRef::Sealed`.

use sqlx::{PgConnection, PgPool};
use switchboard_shared::snapshot::{SCHEMA_VERSION, Snapshot};

use super::price_book as prices;
use crate::repo;
use crate::repo::rows::{DeploymentRow, KeyRow, ProviderRow, TenantRow};

/// The snapshot of the committed state, from one consistent read.
pub async fn build_consistent(pool: &PgPool) -> Result<Snapshot, sqlx::Error> {
    let mut tx = repo::read_only(pool).await?;
    let snapshot = build_in(&mut tx).await?;
    tx.commit().await?;
    Ok(snapshot)
}

/// The snapshot as `conn` sees the database.
pub async fn build_in(conn: &mut PgConnection) -> Result<Snapshot, sqlx::Error> {
    let revision = repo::revision::current(&mut *conn).await?;
    let tenants = repo::tenants::all(&mut *conn).await?;
    let keys = repo::keys::all(&mut *conn).await?;
    let providers = repo::providers::all(&mut *conn).await?;
    let deployments = repo::deployments::all(&mut *conn).await?;
    let policies = repo::models::all(&mut *conn).await?;
    // Deployments without a price of their own carry the effective one of their upstream model.
    let mut deployments: Vec<_> = deployments.iter().map(DeploymentRow::to_snapshot).collect();
    let unpriced: Vec<String> = deployments
        .iter()
        .filter(|d| d.price.is_none())
        .map(|d| d.upstream_model.clone())
        .collect();
    if !unpriced.is_empty() {
        let prices = prices::effective_prices_in(conn, &unpriced).await?;
        for d in deployments.iter_mut().filter(|d| d.price.is_none()) {
            d.price = prices.get(&d.upstream_model).cloned();
        }
    }
    let price_version = repo::prices::current_version(&mut *conn).await?;
    Ok(Snapshot {
        schema_version: SCHEMA_VERSION,
        revision,
        price_version: price_version.and_then(|v| u64::try_from(v).ok()),
        tenants: tenants.iter().map(TenantRow::to_snapshot).collect(),
        virtual_keys: keys.iter().map(KeyRow::to_snapshot).collect(),
        providers: providers
            .iter()
            .filter_map(ProviderRow::to_snapshot)
            .collect(),
        deployments,
        models: policies
            .into_iter()
            .map(|p| {
                let mut policy = p.policy.0;
                policy.model = p.model;
                policy
            })
            .collect(),
    })
}
