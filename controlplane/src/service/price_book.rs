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

// Entries are parsed by `shared::price` (strictly where an admin writes one); these types only
// document them in the OpenAPI document.
/// A price entry in LiteLLM's field names, USD per token. Long-context rates have variable
/// names — `input_cost_per_token_above_200k_tokens` and its siblings for output, cache reads
/// and cache writes (`..._above_<N>_tokens` for thresholds that are not whole thousands) —
/// and are the only other fields an entry may carry.
#[derive(ToSchema)]
#[schema(as = PriceEntry)]
#[allow(dead_code)]
pub struct PriceEntryDoc {
    #[schema(minimum = 0.0, example = 2.5e-6)]
    input_cost_per_token: Option<f64>,
    #[schema(minimum = 0.0, example = 1e-5)]
    output_cost_per_token: Option<f64>,
    /// A prompt token read from the provider's prompt cache.
    #[schema(minimum = 0.0)]
    cache_read_input_token_cost: Option<f64>,
    /// A prompt token written to the provider's prompt cache.
    #[schema(minimum = 0.0)]
    cache_creation_input_token_cost: Option<f64>,
    /// A prompt token written to a 1-hour cache (kept, billed as a plain cache write).
    #[schema(minimum = 0.0)]
    cache_creation_input_token_cost_above_1hr: Option<f64>,
    /// Rates by prompt length, in the order given.
    tiered_pricing: Option<Vec<RangeTierDoc>>,
    max_input_tokens: Option<u64>,
    max_output_tokens: Option<u64>,
    max_tokens: Option<u64>,
    litellm_provider: Option<String>,
    /// `chat`, `embedding`, `completion`, ...
    mode: Option<String>,
    supports_vision: Option<bool>,
    supports_function_calling: Option<bool>,
    supports_tool_choice: Option<bool>,
    supports_prompt_caching: Option<bool>,
    supports_response_schema: Option<bool>,
    supports_reasoning: Option<bool>,
    supports_system_messages: Option<bool>,
    supports_parallel_function_calling: Option<bool>,
}

/// Rates for prompts whose length in tokens falls in `range`.
#[derive(ToSchema)]
#[schema(as = RangeTier)]
#[allow(dead_code)]
pub struct RangeTierDoc {
    /// `[low, high]` in prompt tokens.
    #[schema(min_items = 2, max_items = 2)]
    range: Vec<u64>,
    #[schema(minimum = 0.0)]
    input_cost_per_token: Option<f64>,
    #[schema(minimum = 0.0)]
    output_cost_per_token: Option<f64>,
    #[schema(minimum = 0.0)]
    cache_read_input_token_cost: Option<f64>,
    #[schema(minimum = 0.0)]
    cache_creation_input_token_cost: Option<f64>,
}

/// One model's effective price.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct EffectivePrice {
    pub model: String,
    /// LiteLLM's field names, USD per token.
    #[schema(value_type = PriceEntryDoc)]
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
    #[schema(value_type = PriceEntryDoc)]
    pub entry: PriceEntry,
    /// The admin who set it (`system` from the command line).
    pub updated_by: String,
    pub updated_at: DateTime<Utc>,
}

/// The price file's entry of a model.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct FileEntry {
    pub version_id: i64,
    #[schema(value_type = PriceEntryDoc)]
    pub entry: PriceEntry,
}

/// One model's effective price with both layers.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ModelPrice {
    pub model: String,
    /// What the model costs: the override's entry if any, else the file's.
    #[schema(value_type = PriceEntryDoc)]
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

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use switchboard_shared::price::{RangeTier, TierRates};
    use utoipa::PartialSchema;

    use super::*;

    /// The property names of a documentation type's schema, sorted.
    pub(crate) fn documented(schema: impl Serialize) -> Vec<String> {
        let schema = serde_json::to_value(schema).unwrap();
        let mut names: Vec<String> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// The field names of a value as the API writes it, sorted.
    pub(crate) fn written(value: impl Serialize) -> Vec<String> {
        let value = serde_json::to_value(value).unwrap();
        let mut names: Vec<String> = value.as_object().unwrap().keys().cloned().collect();
        names.sort();
        names
    }

    #[test]
    fn the_documented_price_entry_has_every_fixed_field_of_the_real_one() {
        let rate = Some(1e-6);
        let rates = TierRates {
            input_cost_per_token: rate,
            output_cost_per_token: rate,
            cache_read_input_token_cost: rate,
            cache_creation_input_token_cost: rate,
        };
        let entry = PriceEntry {
            input_cost_per_token: rate,
            output_cost_per_token: rate,
            cache_read_input_token_cost: rate,
            cache_creation_input_token_cost: rate,
            cache_creation_input_token_cost_above_1hr: rate,
            context_tiers: Vec::new(),
            tiered_pricing: vec![RangeTier {
                range: [0, 1000],
                rates,
            }],
            max_input_tokens: Some(1),
            max_output_tokens: Some(1),
            max_tokens: Some(1),
            litellm_provider: Some("openai".into()),
            mode: Some("chat".into()),
            supports_vision: Some(true),
            supports_function_calling: Some(true),
            supports_tool_choice: Some(true),
            supports_prompt_caching: Some(true),
            supports_response_schema: Some(true),
            supports_reasoning: Some(true),
            supports_system_messages: Some(true),
            supports_parallel_function_calling: Some(true),
            // Image and audio rates are written only when set (docs/media.md).
            media: Default::default(),
        };
        assert_eq!(written(&entry), documented(PriceEntryDoc::schema()));
        assert_eq!(
            written(&entry.tiered_pricing[0]),
            documented(RangeTierDoc::schema())
        );
    }
}
