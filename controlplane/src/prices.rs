//! Model prices: LiteLLM's `model_prices_and_context_window.json`, synced into Postgres as
//! versions, with admin overrides on top.
//!
//! A sync reads the file (from a URL or a path), parses every entry with
//! `shared::price::parse_price_file` — an entry with a supported field of the wrong type fails
//! the whole sync, naming the model and field, and nothing is stored — and stores it as a new
//! version only when its content changed (by SHA-256); a file equal to a stored version only
//! refreshes that version's `checked_at`. The current version is the one synced last (latest
//! `checked_at`), so a source that rolls back to an earlier file rolls prices back too. The
//! [`VERSIONS_KEPT`] most recently synced versions are kept.
//!
//! The effective price of a model is its override if one exists, else its entry in the current
//! version. Snapshots carry each deployment's effective price (for its `upstream_model`,
//! unless the deployment sets its own), so the data planes price requests without ever seeing
//! this table; a new version or an override change bumps the config revision for that reason.
//!
//! Overrides are admin changes like any other: [`set_override_in`] and [`delete_override_in`]
//! run inside a [`Write`] (revision bump, audit row, snapshot validation, publish), and they are
//! the only code that writes `price_overrides`; [`set_override`] and [`delete_override`] wrap
//! them for callers without a request (the CLI, tests). The read side — the listing, one
//! model's two layers, the versions and the report of models that deployments use but nothing
//! prices — is here too, so that "current version" and "effective" mean one thing
//! (`current_version!`).
//!
//! Scheduled syncs run on every control-plane replica's timer but only one replica does the
//! work: each run takes a Postgres advisory lock ([`SYNC_LOCK`], [`crate::db::with_try_lock`])
//! and skips when another replica holds it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use sqlx::types::Json;
use switchboard_shared::price::{PriceEntry, parse_price_file};
use utoipa::ToSchema;

use crate::auth::{Caller, Role};
use crate::by_id;
use crate::db::ById;
use crate::error::ApiError;
use crate::write::{Change, Committed, Write};

/// Price versions kept in Postgres.
pub const VERSIONS_KEPT: i64 = 5;
/// The advisory lock key of the scheduled price sync ("SBPRICES" in ASCII).
pub const SYNC_LOCK: i64 = 0x5342_5052_4943_4553;
/// Largest price file accepted (the real one is about 1.5 MB).
pub const MAX_FILE_BYTES: usize = 64 * 1024 * 1024;
/// The audit log's `object_type` of overrides.
const OVERRIDE_OBJECT_TYPE: &str = "price_override";
/// Longest model name an override may have (LiteLLM's longest is about 100 characters).
pub const MAX_MODEL_CHARS: usize = 256;

/// SQL for the current version's id (the one synced last), as a scalar subquery.
macro_rules! current_version {
    () => {
        "(SELECT id FROM price_versions ORDER BY checked_at DESC, id DESC LIMIT 1)"
    };
}

/// Why a sync failed. Never holds the file's content.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("cannot read {source_name}: {message}")]
    Fetch {
        source_name: String,
        message: String,
    },
    #[error("{source_name} is not a valid price file: {message}")]
    Invalid {
        source_name: String,
        message: String,
    },
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
}

/// What a sync did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SyncOutcome {
    pub version_id: i64,
    /// False when the file was unchanged since the version it matched.
    pub new_version: bool,
    pub entries: usize,
}

/// Syncs from a file on disk.
pub async fn sync_from_file(
    pool: &PgPool,
    path: &std::path::Path,
) -> Result<SyncOutcome, SyncError> {
    let source_name = path.display().to_string();
    let bytes = tokio::fs::read(path).await.map_err(|e| SyncError::Fetch {
        source_name: source_name.clone(),
        message: e.to_string(),
    })?;
    store(pool, &source_name, &bytes).await
}

/// Syncs from an HTTP(S) URL. The version's `source` (and any error) names the URL without
/// its user, password, query or fragment, where credentials of a private mirror would be.
pub async fn sync_from_url(
    pool: &PgPool,
    client: &reqwest::Client,
    url: &str,
) -> Result<SyncOutcome, SyncError> {
    let source_name = redact_url(url);
    let fetch_error = |message: String| SyncError::Fetch {
        source_name: source_name.clone(),
        message,
    };
    let response = client
        .get(url)
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .map_err(|e| fetch_error(e.without_url().to_string()))?;
    if !response.status().is_success() {
        return Err(fetch_error(format!("HTTP {}", response.status())));
    }
    if response
        .content_length()
        .is_some_and(|n| n > MAX_FILE_BYTES as u64)
    {
        return Err(fetch_error(format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    let bytes = response
        .bytes()
        .await
        .map_err(|e| fetch_error(e.without_url().to_string()))?;
    store(pool, &source_name, &bytes).await
}

/// `url` without user, password, query and fragment.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut url) => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.set_query(None);
            url.set_fragment(None);
            url.to_string()
        }
        Err(_) => "(an invalid URL)".to_owned(),
    }
}

/// Parses, validates and stores a price file's bytes.
pub async fn store(
    pool: &PgPool,
    source_name: &str,
    bytes: &[u8],
) -> Result<SyncOutcome, SyncError> {
    let invalid = |message: String| SyncError::Invalid {
        source_name: source_name.to_owned(),
        message,
    };
    if bytes.len() > MAX_FILE_BYTES {
        return Err(invalid(format!("larger than {MAX_FILE_BYTES} bytes")));
    }
    let text = std::str::from_utf8(bytes).map_err(|_| invalid("not UTF-8".into()))?;
    let entries = parse_price_file(text).map_err(invalid)?;
    if entries.is_empty() {
        return Err(invalid("no model entries".into()));
    }
    let sha256 = hex::encode(Sha256::digest(bytes));

    let mut tx = pool.begin().await?;
    let existing: Option<i64> = sqlx::query_scalar(
        "UPDATE price_versions SET checked_at = now(), source = $2 WHERE sha256 = $1 RETURNING id",
    )
    .bind(&sha256)
    .bind(source_name)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(version_id) = existing {
        tx.commit().await?;
        return Ok(SyncOutcome {
            version_id,
            new_version: false,
            entries: entries.len(),
        });
    }
    let count = i32::try_from(entries.len()).unwrap_or(i32::MAX);
    let version_id: i64 = sqlx::query_scalar(
        "INSERT INTO price_versions (source, sha256, entries) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(source_name)
    .bind(&sha256)
    .bind(count)
    .fetch_one(&mut *tx)
    .await?;
    let mut models = Vec::with_capacity(entries.len());
    let mut values = Vec::with_capacity(entries.len());
    for (model, entry) in &entries {
        models.push(model.as_str());
        values.push(serde_json::to_value(entry).unwrap_or_default());
    }
    sqlx::query(
        "INSERT INTO price_entries (version_id, model, entry) \
         SELECT $1, * FROM UNNEST($2::text[], $3::jsonb[])",
    )
    .bind(version_id)
    .bind(&models)
    .bind(&values)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "DELETE FROM price_versions WHERE id NOT IN \
         (SELECT id FROM price_versions ORDER BY checked_at DESC, id DESC LIMIT $1)",
    )
    .bind(VERSIONS_KEPT)
    .execute(&mut *tx)
    .await?;
    bump_revision(&mut tx).await?;
    tx.commit().await?;
    Ok(SyncOutcome {
        version_id,
        new_version: true,
        entries: entries.len(),
    })
}

/// The id of the current price-file version, if any was synced.
pub async fn current_version_in(conn: &mut sqlx::PgConnection) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(concat!("SELECT ", current_version!()))
        .fetch_one(conn)
        .await
}

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
    conn: &mut sqlx::PgConnection,
    models: &[String],
) -> sqlx::Result<BTreeMap<String, PriceEntry>> {
    let rows: Vec<(String, serde_json::Value)> = sqlx::query_as(concat!(
        "SELECT w.model, coalesce(o.entry, e.entry) \
         FROM unnest($1::text[]) AS w (model) \
         LEFT JOIN price_overrides o ON o.model = w.model \
         LEFT JOIN price_entries e ON e.model = w.model AND e.version_id = ",
        current_version!(),
        " WHERE o.entry IS NOT NULL OR e.entry IS NOT NULL"
    ))
    .bind(models)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
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
    conn: &mut sqlx::PgConnection,
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

/// The `upstream_model`s of deployments without a `price` of their own that neither the
/// current version nor an override prices (so their snapshot entry has no price), by name.
pub async fn missing_for_deployments(pool: &PgPool) -> sqlx::Result<Vec<MissingModel>> {
    let mut tx = read_only(pool).await?;
    let used: Vec<(String, Vec<String>)> = sqlx::query_as(
        "SELECT upstream_model, array_agg(id ORDER BY id) FROM deployments \
         WHERE price IS NULL GROUP BY upstream_model ORDER BY upstream_model",
    )
    .fetch_all(&mut *tx)
    .await?;
    let models: Vec<String> = used.iter().map(|(m, _)| m.clone()).collect();
    let missing = missing_models_in(&mut tx, &models).await?;
    tx.commit().await?;
    Ok(used
        .into_iter()
        .filter(|(model, _)| missing.contains(model))
        .map(|(model, deployments)| MissingModel { model, deployments })
        .collect())
}

/// A `REPEATABLE READ, READ ONLY` transaction: several reads that see one state.
async fn read_only(pool: &PgPool) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
    let mut tx = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
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
    fn as_str(self) -> &'static str {
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

/// Effective prices of every model the current version or an override prices, by name.
pub async fn list_effective(
    pool: &PgPool,
    filter: &PriceFilter,
) -> sqlx::Result<Vec<EffectivePrice>> {
    type Row = (String, Json<PriceEntry>, bool, Option<i64>);
    let rows: Vec<Row> = sqlx::query_as(concat!(
        "WITH file AS (SELECT model, entry, version_id FROM price_entries WHERE version_id = ",
        current_version!(),
        "), effective AS (\
           SELECT coalesce(o.model, f.model) AS model, coalesce(o.entry, f.entry) AS entry, \
                  o.model IS NOT NULL AS overridden, f.version_id \
           FROM file f FULL JOIN price_overrides o ON o.model = f.model) \
         SELECT model, entry, overridden, version_id FROM effective \
         WHERE ($1::text IS NULL OR strpos(lower(model), lower($1)) > 0) \
           AND ($2::text IS NULL OR overridden = ($2 = 'override')) \
         ORDER BY model LIMIT $3 OFFSET $4"
    ))
    .bind(filter.search.as_deref())
    .bind(filter.source.map(PriceSource::as_str))
    .bind(filter.limit)
    .bind(filter.offset)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(model, entry, overridden, version_id)| EffectivePrice {
            model,
            entry: entry.0,
            source: if overridden {
                PriceSource::Override
            } else {
                PriceSource::File
            },
            version_id,
        })
        .collect())
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

async fn load_override(
    conn: &mut sqlx::PgConnection,
    model: &str,
    lock: bool,
) -> sqlx::Result<Option<OverrideView>> {
    const BY_MODEL: ById =
        by_id!("SELECT entry, updated_by, updated_at FROM price_overrides WHERE model = $1");
    let row: Option<(Json<PriceEntry>, String, DateTime<Utc>)> =
        BY_MODEL.fetch(conn, model, lock).await?;
    Ok(row.map(|(entry, updated_by, updated_at)| OverrideView {
        entry: entry.0,
        updated_by,
        updated_at,
    }))
}

/// `model`'s price: both layers and which one wins. `None` when neither prices it.
pub async fn model_price(pool: &PgPool, model: &str) -> sqlx::Result<Option<ModelPrice>> {
    let mut tx = read_only(pool).await?;
    let price = model_price_in(&mut tx, model).await?;
    tx.commit().await?;
    Ok(price)
}

/// [`model_price`] through a caller's transaction (a write answers with what it wrote).
pub async fn model_price_in(
    conn: &mut sqlx::PgConnection,
    model: &str,
) -> sqlx::Result<Option<ModelPrice>> {
    let file: Option<(i64, Json<PriceEntry>)> = sqlx::query_as(concat!(
        "SELECT version_id, entry FROM price_entries WHERE model = $1 AND version_id = ",
        current_version!()
    ))
    .bind(model)
    .fetch_optional(&mut *conn)
    .await?;
    let overridden = load_override(conn, model, false).await?;
    let file = file.map(|(version_id, entry)| FileEntry {
        version_id,
        entry: entry.0,
    });
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

/// A synced version of the price file.
#[derive(Debug, Clone, Serialize, ToSchema, sqlx::FromRow)]
pub struct PriceVersion {
    pub id: i64,
    /// The file path or URL (without credentials) it came from.
    pub source: String,
    /// Hex SHA-256 of the file as fetched.
    pub sha256: String,
    /// Model entries it holds.
    pub entries: i32,
    /// When this content was first synced.
    pub fetched_at: DateTime<Utc>,
    /// The last sync that found this content.
    pub checked_at: DateTime<Utc>,
    /// Whether it prices models now (the one synced last).
    pub current: bool,
}

/// The kept versions, current first.
pub async fn versions(pool: &PgPool) -> sqlx::Result<Vec<PriceVersion>> {
    sqlx::query_as(concat!(
        "SELECT id, source, sha256, entries, fetched_at, checked_at, \
         coalesce(id = ",
        current_version!(),
        ", false) AS current FROM price_versions ORDER BY checked_at DESC, id DESC"
    ))
    .fetch_all(pool)
    .await
}

/// Bumps the config revision: deployments without a price of their own carry the effective
/// price in snapshots, so a price change is a config change (the control plane's reconcile
/// loop publishes the new snapshot). Overrides bump it through [`Write`] instead.
async fn bump_revision(conn: &mut sqlx::PgConnection) -> sqlx::Result<()> {
    sqlx::query("UPDATE config_revision SET revision = revision + 1")
        .execute(conn)
        .await?;
    Ok(())
}

/// A model name an override may be set for: 1–256 characters, no control characters, no
/// surrounding spaces. Anything else LiteLLM uses (`/`, `:`, `@`, `.`) is fine.
pub fn check_model_name(model: &str) -> Result<(), ApiError> {
    let ok = !model.is_empty()
        && model.chars().count() <= MAX_MODEL_CHARS
        && model.trim() == model
        && !model.chars().any(char::is_control);
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            "model",
            format!(
                "must be 1-{MAX_MODEL_CHARS} characters without control characters or \
                 surrounding spaces"
            ),
        ))
    }
}

/// Sets (or replaces) the override of `model` inside an admin write, with its audit row:
/// the one way an override is written. Returns the override it replaced, and the new one.
///
/// An override replaces the file's entry as a whole, so it must carry at least one of
/// `input_cost_per_token` and `output_cost_per_token` (422 otherwise): an entry of limits
/// alone would make the model free.
pub async fn set_override_in(
    w: &mut Write,
    model: &str,
    entry: &PriceEntry,
) -> Result<(Option<OverrideView>, OverrideView), ApiError> {
    check_model_name(model)?;
    if entry.input_cost_per_token.is_none() && entry.output_cost_per_token.is_none() {
        return Err(ApiError::invalid(
            "",
            "an override replaces the whole entry: set input_cost_per_token or \
             output_cost_per_token (0 for free)",
        ));
    }
    let before = load_override(w.conn(), model, true).await?;
    let actor = w.actor().to_owned();
    let (updated_by, updated_at): (String, DateTime<Utc>) = sqlx::query_as(
        "INSERT INTO price_overrides (model, entry, updated_by) VALUES ($1, $2, $3) \
         ON CONFLICT (model) DO UPDATE SET entry = EXCLUDED.entry, \
         updated_by = EXCLUDED.updated_by, updated_at = now() \
         RETURNING updated_by, updated_at",
    )
    .bind(model)
    .bind(Json(entry))
    .bind(&actor)
    .fetch_one(w.conn())
    .await?;
    let after = OverrideView {
        entry: entry.clone(),
        updated_by,
        updated_at,
    };
    let action = if before.is_some() { "update" } else { "create" };
    w.audit(Change::of(
        action,
        OVERRIDE_OBJECT_TYPE,
        model,
        None,
        before.as_ref(),
        Some(&after),
    ))
    .await?;
    Ok((before, after))
}

/// Removes the override of `model` inside an admin write, with its audit row; 404 when there
/// is none. Returns the removed override.
pub async fn delete_override_in(w: &mut Write, model: &str) -> Result<OverrideView, ApiError> {
    let before = load_override(w.conn(), model, true)
        .await?
        .ok_or_else(|| ApiError::not_found("price override", model))?;
    sqlx::query("DELETE FROM price_overrides WHERE model = $1")
        .bind(model)
        .execute(w.conn())
        .await?;
    w.audit(Change::of(
        "delete",
        OVERRIDE_OBJECT_TYPE,
        model,
        None,
        Some(&before),
        None,
    ))
    .await?;
    Ok(before)
}

/// The caller a write outside a request is made as: a platform admin named `updated_by`.
fn offline_caller(updated_by: &str) -> Caller {
    Caller {
        id: None,
        email: updated_by.to_owned(),
        role: Role::PlatformAdmin,
        tenant_id: None,
    }
}

/// [`set_override_in`] as a write of its own, without a request (the CLI, tests): a running
/// server's reconcile loop publishes the new revision.
pub async fn set_override(
    pool: &PgPool,
    model: &str,
    entry: &PriceEntry,
    updated_by: &str,
) -> Result<Committed, ApiError> {
    let mut w = Write::begin(pool, &offline_caller(updated_by)).await?;
    set_override_in(&mut w, model, entry).await?;
    w.commit(None, None).await
}

/// [`delete_override_in`] as a write of its own; false (and nothing written) when there was
/// no override.
pub async fn delete_override(pool: &PgPool, model: &str) -> Result<bool, ApiError> {
    let mut w = Write::begin(pool, &Caller::system()).await?;
    match delete_override_in(&mut w, model).await {
        Ok(_) => {
            w.commit(None, None).await?;
            Ok(true)
        }
        // Dropping the write rolls its revision bump back.
        Err(ApiError::NotFound(_)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// One scheduled sync, done only if this replica gets the advisory lock. `Ok(None)`: another
/// replica is syncing.
pub async fn sync_once_locked(
    pool: &PgPool,
    client: &reqwest::Client,
    url: &str,
) -> Result<Option<SyncOutcome>, SyncError> {
    crate::db::with_try_lock(pool, SYNC_LOCK, sync_from_url(pool, client, url)).await
}

/// Syncs from `url` every `every` until `shutdown`, one replica at a time. Failures are
/// logged; the last good version keeps pricing.
pub async fn run_scheduled(
    pool: PgPool,
    client: reqwest::Client,
    url: String,
    every: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        match sync_once_locked(&pool, &client, &url).await {
            Ok(Some(o)) => tracing::info!(
                version = o.version_id,
                new = o.new_version,
                entries = o.entries,
                "price sync done"
            ),
            Ok(None) => tracing::debug!("price sync skipped: another replica holds the lock"),
            Err(e) => tracing::warn!(error = %e, "price sync failed; keeping the current prices"),
        }
    }
}
