//! Building a [`Snapshot`] from Postgres.
//!
//! [`build_consistent`] reads everything in one `REPEATABLE READ` transaction, revision
//! included, so the document is exactly the state at that revision (the reconcile loop and
//! start-up use it). [`build_in`] reads through a caller's transaction; the write path calls it
//! after bumping the revision, whose row lock makes the same guarantee (see [`crate::write`]).
//! Provider credentials stay sealed: the snapshot carries `SecretRef::Sealed`.

use sqlx::{PgConnection, PgPool};
use switchboard_shared::snapshot::{SCHEMA_VERSION, Snapshot};

use crate::rows::{DeploymentRow, KeyRow, PolicyRow, ProviderRow, TenantRow};
use crate::{deployment_columns, key_columns, policy_columns, provider_columns, tenant_columns};

/// The snapshot of the committed state, from one consistent read.
pub async fn build_consistent(pool: &PgPool) -> Result<Snapshot, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    let snapshot = build_in(&mut tx).await?;
    tx.commit().await?;
    Ok(snapshot)
}

/// The snapshot as `conn` sees the database.
pub async fn build_in(conn: &mut PgConnection) -> Result<Snapshot, sqlx::Error> {
    let (revision,): (i64,) = sqlx::query_as("SELECT revision FROM config_revision")
        .fetch_one(&mut *conn)
        .await?;
    let tenants: Vec<TenantRow> = sqlx::query_as(concat!(
        "SELECT ",
        tenant_columns!(),
        " FROM tenants ORDER BY id"
    ))
    .fetch_all(&mut *conn)
    .await?;
    let keys: Vec<KeyRow> = sqlx::query_as(concat!(
        "SELECT ",
        key_columns!(),
        " FROM virtual_keys ORDER BY id"
    ))
    .fetch_all(&mut *conn)
    .await?;
    let providers: Vec<ProviderRow> = sqlx::query_as(concat!(
        "SELECT ",
        provider_columns!(),
        " FROM providers ORDER BY id"
    ))
    .fetch_all(&mut *conn)
    .await?;
    let deployments: Vec<DeploymentRow> = sqlx::query_as(concat!(
        "SELECT ",
        deployment_columns!(),
        " FROM deployments ORDER BY id"
    ))
    .fetch_all(&mut *conn)
    .await?;
    let policies: Vec<PolicyRow> = sqlx::query_as(concat!(
        "SELECT ",
        policy_columns!(),
        " FROM model_policies ORDER BY model"
    ))
    .fetch_all(&mut *conn)
    .await?;
    // Deployments without a price of their own carry the effective one of their upstream model.
    let mut deployments: Vec<_> = deployments.iter().map(DeploymentRow::to_snapshot).collect();
    let unpriced: Vec<String> = deployments
        .iter()
        .filter(|d| d.price.is_none())
        .map(|d| d.upstream_model.clone())
        .collect();
    if !unpriced.is_empty() {
        let prices = crate::prices::effective_prices_in(conn, &unpriced).await?;
        for d in deployments.iter_mut().filter(|d| d.price.is_none()) {
            d.price = prices.get(&d.upstream_model).cloned();
        }
    }
    let price_version = crate::prices::current_version_in(conn).await?;
    Ok(Snapshot {
        schema_version: SCHEMA_VERSION,
        revision: u64::try_from(revision).unwrap_or(0),
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
