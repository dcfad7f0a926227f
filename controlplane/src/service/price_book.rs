//! The price book, the prices' read model: effective prices (an override, else the current
//! version's entry), which the snapshot build gives deployments without a price of their own;
//! one model's two layers; the kept versions; the models that deployments use but nothing
//! prices. "Effective" means one thing everywhere: what [`effective_prices_in`] answers.
//!
//! It is apart from [`super::prices`] (the sync and the override commands), which writes
//! through [`super::write`]: the write path builds snapshots, and snapshots read this, so the
//! read side depends on neither.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use switchboard_shared::price::PriceEntry;
use utoipa::ToSchema;

use crate::repo;
use crate::repo::prices::OverrideRow;
pub use crate::repo::prices::PriceVersion;
use crate::service::{Error, Result};

/// The effective price of each of `models` that has one (override, else current version).
pub async fn effective_prices(
    pool: &PgPool,
    models: &[String],
) -> sqlx::Result<BTreeMap<String, PriceEntry>> {
    let mut conn = pool.acquire().await?;
    effective_prices_in(&mut conn, models).await
}

/// [`effective_prices`] through a caller's connection or transaction (the snapshot build
/// reads prices in its own consistent transaction).
pub async fn effective_prices_in(
    conn: &mut PgConnection,
    models: &[String],
) -> sqlx::Result<BTreeMap<String, PriceEntry>> {
    Ok(repo::prices::effective(conn, models)
        .await?
        .into_iter()
        .filter_map(|(model, value)| {
            serde_json::from_value::<PriceEntry>(value)
                .ok()
                .map(|entry| (model, entry))
        })
        .collect())
}

/// The models among `models` that neither the current version nor an override prices.
pub async fn missing_models(pool: &PgPool, models: &[String]) -> sqlx::Result<BTreeSet<String>> {
    let mut conn = pool.acquire().await?;
    missing_models_in(&mut conn, models).await
}

/// [`missing_models`] through a caller's connection or transaction. "Priced" is exactly what
/// the snapshot build gets from [`effective_prices_in`].
pub async fn missing_models_in(
    conn: &mut PgConnection,
    models: &[String],
) -> sqlx::Result<BTreeSet<String>> {
    let priced = effective_prices_in(conn, models).await?;
    Ok(models
        .iter()
        .filter(|m| !priced.contains_key(*m))
        .cloned()
        .collect())
}

/// A model that deployments use but nothing prices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct MissingModel {
    /// The `upstream_model` of the deployments.
    pub model: String,
    /// Ids of the deployments without a `price` of their own that use it.
    pub deployments: Vec<String>,
}

/// Where an effective price comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PriceSource {
    /// An admin override.
    Override,
    /// The current version of the price file.
    File,
}

impl PriceSource {
    pub fn as_str(self) -> &'static str {
        match self {
            PriceSource::Override => "override",
            PriceSource::File => "file",
        }
    }
}

/// One model's effective price.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EffectivePrice {
    pub model: String,
    /// LiteLLM's field names, USD per token.
    #[schema(value_type = Object)]
    pub entry: PriceEntry,
    pub source: PriceSource,
    /// The current price version when it lists this model (under an override too).
    pub version_id: Option<i64>,
}

/// Which effective prices to list.
#[derive(Debug, Clone, Default)]
pub struct PriceFilter {
    /// A case-insensitive substring of the model name.
    pub search: Option<String>,
    pub source: Option<PriceSource>,
    /// Rows to return (a handler asks one more than its page to know whether more follow).
    pub limit: i64,
    pub offset: i64,
}

/// An admin override as stored.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct OverrideView {
    /// LiteLLM's field names, USD per token. Replaces the file's entry as a whole.
    #[schema(value_type = Object)]
    pub entry: PriceEntry,
    /// The admin who set it (`system` from the command line).
    pub updated_by: String,
    pub updated_at: DateTime<Utc>,
}

/// The price file's entry of a model.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FileEntry {
    pub version_id: i64,
    #[schema(value_type = Object)]
    pub entry: PriceEntry,
}

/// One model's effective price with both layers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelPrice {
    pub model: String,
    /// What the model costs: the override's entry if any, else the file's.
    #[schema(value_type = Object)]
    pub effective: PriceEntry,
    pub source: PriceSource,
    /// The current version's entry, if it lists the model.
    pub file: Option<FileEntry>,
    /// The admin override, if any.
    #[serde(rename = "override")]
    pub overridden: Option<OverrideView>,
}

impl From<OverrideRow> for OverrideView {
    fn from(r: OverrideRow) -> Self {
        Self {
            entry: r.entry.0,
            updated_by: r.updated_by,
            updated_at: r.updated_at,
        }
    }
}

/// The `upstream_model`s of deployments without a `price` of their own that neither the
/// current version nor an override prices (so their snapshot entry has no price), by name.
pub async fn missing_for_deployments(pool: &PgPool) -> Result<Vec<MissingModel>> {
    let mut tx = repo::read_only(pool).await?;
    let used = repo::deployments::unpriced_models(&mut *tx).await?;
    let models: Vec<String> = used.iter().map(|(m, _)| m.clone()).collect();
    let missing = missing_models_in(&mut tx, &models).await?;
    tx.commit().await?;
    Ok(used
        .into_iter()
        .filter(|(model, _)| missing.contains(model))
        .map(|(model, deployments)| MissingModel { model, deployments })
        .collect())
}

/// Effective prices of every model the current version or an override prices, by name.
pub async fn list_effective(pool: &PgPool, filter: &PriceFilter) -> Result<Vec<EffectivePrice>> {
    let rows = repo::prices::list_effective(
        pool,
        filter.search.as_deref(),
        filter.source.map(PriceSource::as_str),
        filter.limit,
        filter.offset,
    )
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| EffectivePrice {
            model: r.model,
            entry: r.entry.0,
            source: if r.overridden {
                PriceSource::Override
            } else {
                PriceSource::File
            },
            version_id: r.version_id,
        })
        .collect())
}

/// `model`'s price: both layers and which one wins. Not found when neither prices it.
pub async fn model_price(pool: &PgPool, model: &str) -> Result<ModelPrice> {
    let mut tx = repo::read_only(pool).await?;
    let price = model_price_in(&mut tx, model).await?;
    tx.commit().await?;
    price.ok_or_else(|| Error::not_found("price", model))
}

/// [`model_price`] through a caller's transaction (a write answers with what it wrote).
pub async fn model_price_in(
    conn: &mut PgConnection,
    model: &str,
) -> sqlx::Result<Option<ModelPrice>> {
    let file = repo::prices::file_entry(&mut *conn, model).await?;
    let overridden = repo::prices::get_override(conn, model, false)
        .await?
        .map(OverrideView::from);
    let file = file.map(|(version_id, entry)| FileEntry { version_id, entry });
    let (effective, source) = match (&overridden, &file) {
        (Some(o), _) => (o.entry.clone(), PriceSource::Override),
        (None, Some(f)) => (f.entry.clone(), PriceSource::File),
        (None, None) => return Ok(None),
    };
    Ok(Some(ModelPrice {
        model: model.to_owned(),
        effective,
        source,
        file,
        overridden,
    }))
}

/// The kept versions, current first.
pub async fn versions(pool: &PgPool) -> Result<Vec<PriceVersion>> {
    Ok(repo::prices::versions(pool).await?)
}
