//! Building a [`Snapshot`] from Postgres.
//!
//! [`build_consistent`] reads everything in one `REPEATABLE READ` transaction, revision
//! included, so the document is exactly the state at that revision (the reconcile loop and
//! start-up use it). [`build_in`] reads through a caller's transaction; the write path calls it
//! after bumping the revision, whose row lock makes the same guarantee (see [`super::write`]).
//! Provider credentials stay sealed: the snapshot carries `SecretRef::Sealed`.
//! [`keys_in`] reads only what a key-only write needs to be validated (the keys, their
//! tenants, and the small sections their references point at), for the delta path.

use sqlx::{PgConnection, PgPool};
use std::collections::BTreeMap;

use switchboard_shared::price::{PriceEntry, attach_image_variants, image_variant_names};
use switchboard_shared::snapshot::{ModelPolicy, SCHEMA_VERSION, Snapshot};

use super::price_book as prices;
use crate::repo;
use crate::repo::rows::{DeploymentRow, KeyRow, PolicyRow, ProviderRow, TenantRow};

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
        let variants = image_variants_in(conn, &prices).await?;
        for d in deployments.iter_mut().filter(|d| d.price.is_none()) {
            d.price = prices.get(&d.upstream_model).cloned().map(|mut price| {
                attach_image_variants(&mut price, &d.upstream_model, &variants);
                price
            });
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
        models: model_policies(policies),
    })
}

/// The price file's per-size and per-quality entries (`high/1024-x-1024/gpt-image-1`) of the
/// image-generation models among `prices`, which price their images by size and quality. One
/// query, and none when no deployment serves an image model.
async fn image_variants_in(
    conn: &mut PgConnection,
    prices: &BTreeMap<String, PriceEntry>,
) -> Result<BTreeMap<String, PriceEntry>, sqlx::Error> {
    let names: Vec<String> = prices
        .iter()
        .filter(|(_, p)| p.mode.as_deref() == Some("image_generation"))
        .flat_map(|(model, _)| image_variant_names(model))
        .collect();
    if names.is_empty() {
        return Ok(BTreeMap::new());
    }
    prices::effective_prices_in(conn, &names).await
}

/// The part of the snapshot that validates the keys `ids` as `conn` sees the database: those
/// keys, their tenants, and every provider, deployment and model policy (few, and what a
/// key's `allowed_models` refer to), without prices. Also the ids among `ids` that no longer
/// exist (deleted). Thousands of times cheaper than [`build_in`] at 100,000 keys.
pub async fn keys_in(
    conn: &mut PgConnection,
    ids: &[String],
) -> Result<(Snapshot, Vec<String>), sqlx::Error> {
    let revision = repo::revision::current(&mut *conn).await?;
    let mut keys = Vec::new();
    let mut removed = Vec::new();
    for id in ids {
        match repo::keys::get(&mut *conn, id, false).await? {
            Some(row) => keys.push(row.to_snapshot()),
            None => removed.push(id.clone()),
        }
    }
    let mut tenant_ids: Vec<String> = keys.iter().map(|k| k.tenant_id.clone()).collect();
    tenant_ids.sort_unstable();
    tenant_ids.dedup();
    let mut tenants = Vec::new();
    for id in &tenant_ids {
        if let Some(row) = repo::tenants::get(&mut *conn, id, false).await? {
            tenants.push(row);
        }
    }
    let providers = repo::providers::all(&mut *conn).await?;
    let deployments = repo::deployments::all(&mut *conn).await?;
    let policies = repo::models::all(&mut *conn).await?;
    let snapshot = Snapshot {
        schema_version: SCHEMA_VERSION,
        revision,
        price_version: None,
        tenants: tenants.iter().map(TenantRow::to_snapshot).collect(),
        virtual_keys: keys,
        providers: providers
            .iter()
            .filter_map(ProviderRow::to_snapshot)
            .collect(),
        deployments: deployments.iter().map(DeploymentRow::to_snapshot).collect(),
        models: model_policies(policies),
    };
    Ok((snapshot, removed))
}

/// Model policies as the snapshot carries them: each named by its row's model.
fn model_policies(rows: Vec<PolicyRow>) -> Vec<ModelPolicy> {
    rows.into_iter()
        .map(|row| {
            let mut policy = row.policy.0;
            policy.model = row.model;
            policy
        })
        .collect()
}
