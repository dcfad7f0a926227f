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
//! Scheduled syncs run on every control-plane replica's timer but only one replica does the
//! work: each run takes a Postgres advisory lock ([`SYNC_LOCK`]) with `pg_try_advisory_lock`
//! and skips when another replica holds it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use sha2::{Digest, Sha256};
use sqlx::PgPool;
use switchboard_shared::price::{PriceEntry, parse_price_file};

/// Price versions kept in Postgres.
pub const VERSIONS_KEPT: i64 = 5;
/// The advisory lock key of the scheduled price sync ("SBPRICES" in ASCII).
pub const SYNC_LOCK: i64 = 0x5342_5052_4943_4553;
/// Largest price file accepted (the real one is about 1.5 MB).
pub const MAX_FILE_BYTES: usize = 64 * 1024 * 1024;

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
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// Syncs from an HTTP(S) URL.
pub async fn sync_from_url(
    pool: &PgPool,
    client: &reqwest::Client,
    url: &str,
) -> Result<SyncOutcome, SyncError> {
    let fetch_error = |message: String| SyncError::Fetch {
        source_name: url.to_owned(),
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
    store(pool, url, &bytes).await
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
    let rows: Vec<(String, serde_json::Value)> = sqlx::query_as(
        "WITH wanted AS (SELECT unnest($1::text[]) AS model), \
              newest AS (SELECT id FROM price_versions ORDER BY checked_at DESC, id DESC LIMIT 1) \
         SELECT w.model, coalesce(o.entry, e.entry) \
         FROM wanted w \
         LEFT JOIN price_overrides o ON o.model = w.model \
         LEFT JOIN price_entries e ON e.model = w.model AND e.version_id = (SELECT id FROM newest) \
         WHERE o.entry IS NOT NULL OR e.entry IS NOT NULL",
    )
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
    let priced = effective_prices(pool, models).await?;
    Ok(models
        .iter()
        .filter(|m| !priced.contains_key(*m))
        .cloned()
        .collect())
}

/// Bumps the config revision: deployments without a price of their own carry the effective
/// price in snapshots, so a price change is a config change (the control plane's reconcile
/// loop publishes the new snapshot).
async fn bump_revision(conn: &mut sqlx::PgConnection) -> sqlx::Result<()> {
    sqlx::query("UPDATE config_revision SET revision = revision + 1")
        .execute(conn)
        .await?;
    Ok(())
}

/// Sets (or replaces) an admin override for `model`.
pub async fn set_override(
    pool: &PgPool,
    model: &str,
    entry: &PriceEntry,
    updated_by: &str,
) -> sqlx::Result<()> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO price_overrides (model, entry, updated_by) VALUES ($1, $2, $3) \
         ON CONFLICT (model) DO UPDATE SET entry = EXCLUDED.entry, \
         updated_by = EXCLUDED.updated_by, updated_at = now()",
    )
    .bind(model)
    .bind(serde_json::to_value(entry).unwrap_or_default())
    .bind(updated_by)
    .execute(&mut *tx)
    .await?;
    bump_revision(&mut tx).await?;
    tx.commit().await
}

/// Removes an override; true when there was one.
pub async fn delete_override(pool: &PgPool, model: &str) -> sqlx::Result<bool> {
    let mut tx = pool.begin().await?;
    let done = sqlx::query("DELETE FROM price_overrides WHERE model = $1")
        .bind(model)
        .execute(&mut *tx)
        .await?;
    if done.rows_affected() > 0 {
        bump_revision(&mut tx).await?;
    }
    tx.commit().await?;
    Ok(done.rows_affected() > 0)
}

/// One scheduled sync, done only if this replica gets the advisory lock. `Ok(None)`: another
/// replica is syncing.
pub async fn sync_once_locked(
    pool: &PgPool,
    client: &reqwest::Client,
    url: &str,
) -> Result<Option<SyncOutcome>, SyncError> {
    // The lock belongs to a session: hold one connection for lock, sync and unlock.
    let mut conn = pool.acquire().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(SYNC_LOCK)
        .fetch_one(&mut *conn)
        .await?;
    if !locked {
        return Ok(None);
    }
    let result = sync_from_url(pool, client, url).await;
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(SYNC_LOCK)
        .execute(&mut *conn)
        .await;
    result.map(Some)
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
