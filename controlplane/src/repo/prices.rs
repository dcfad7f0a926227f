//! `price_versions`, `price_entries` and `price_overrides`: LiteLLM's price file as synced, one
//! version per distinct content, and admin overrides on top.
//!
//! "The current version" is the one synced last (latest `checked_at`, then highest id); each
//! statement that needs it says so with the same scalar subquery.

use chrono::{DateTime, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};
use switchboard_shared::price::PriceEntry;

/// An effective price as listed.
#[derive(Debug)]
pub struct EffectiveRow {
    pub model: String,
    pub entry: Json<PriceEntry>,
    pub overridden: bool,
    pub version_id: Option<i64>,
}

/// An admin override as stored.
#[derive(Debug)]
pub struct OverrideRow {
    pub entry: Json<PriceEntry>,
    pub updated_by: String,
    pub updated_at: DateTime<Utc>,
}

// Answered as read: it carries its serde and OpenAPI derives (its doc is its schema's).
/// A synced version of the price file.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
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

/// Marks the version with this content as found again (now, at `source`); its id, if any.
pub async fn touch_version(
    db: impl PgExecutor<'_>,
    sha256: &str,
    source: &str,
) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar!(
        "UPDATE price_versions SET checked_at = now(), source = $2 WHERE sha256 = $1 RETURNING id",
        sha256,
        source
    )
    .fetch_optional(db)
    .await
}

/// Stores a new version with its entries (`models[i]` priced by `entries[i]`), then keeps only
/// the `keep` most recently synced versions. Returns the new version's id.
pub async fn insert_version(
    conn: &mut PgConnection,
    source: &str,
    sha256: &str,
    models: &[&str],
    entries: &[serde_json::Value],
    keep: i64,
) -> sqlx::Result<i64> {
    let count = i32::try_from(models.len()).unwrap_or(i32::MAX);
    let version_id = sqlx::query_scalar!(
        "INSERT INTO price_versions (source, sha256, entries) VALUES ($1, $2, $3) RETURNING id",
        source,
        sha256,
        count
    )
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query!(
        "INSERT INTO price_entries (version_id, model, entry) \
         SELECT $1, * FROM UNNEST($2::text[], $3::jsonb[])",
        version_id,
        models as _,
        entries
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query!(
        "DELETE FROM price_versions WHERE id NOT IN \
         (SELECT id FROM price_versions ORDER BY checked_at DESC, id DESC LIMIT $1)",
        keep
    )
    .execute(&mut *conn)
    .await?;
    Ok(version_id)
}

/// The id of the current version, if any was synced.
pub async fn current_version(db: impl PgExecutor<'_>) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar!(
        "SELECT (SELECT id FROM price_versions ORDER BY checked_at DESC, id DESC LIMIT 1)"
    )
    .fetch_one(db)
    .await
}

/// The effective entry (override, else current version) of each of `models` that has one,
/// as stored JSON.
pub async fn effective(
    db: impl PgExecutor<'_>,
    models: &[String],
) -> sqlx::Result<Vec<(String, serde_json::Value)>> {
    let rows = sqlx::query!(
        r#"SELECT w.model AS "model!", coalesce(o.entry, e.entry) AS "entry!"
        FROM unnest($1::text[]) AS w (model)
        LEFT JOIN price_overrides o ON o.model = w.model
        LEFT JOIN price_entries e ON e.model = w.model AND e.version_id =
            (SELECT id FROM price_versions ORDER BY checked_at DESC, id DESC LIMIT 1)
        WHERE o.entry IS NOT NULL OR e.entry IS NOT NULL"#,
        models
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.model, r.entry)).collect())
}

/// Effective prices of every model the current version or an override prices, by name,
/// filtered by a case-insensitive substring and by source (`override` or `file`).
pub async fn list_effective(
    db: impl PgExecutor<'_>,
    search: Option<&str>,
    source: Option<&str>,
    limit: i64,
    offset: i64,
) -> sqlx::Result<Vec<EffectiveRow>> {
    sqlx::query_as!(
        EffectiveRow,
        r#"WITH file AS (SELECT model, entry, version_id FROM price_entries WHERE version_id =
            (SELECT id FROM price_versions ORDER BY checked_at DESC, id DESC LIMIT 1)),
        effective AS (
            SELECT coalesce(o.model, f.model) AS model, coalesce(o.entry, f.entry) AS entry,
                   o.model IS NOT NULL AS overridden, f.version_id
            FROM file f FULL JOIN price_overrides o ON o.model = f.model)
        SELECT model AS "model!", entry AS "entry!: Json<PriceEntry>",
            overridden AS "overridden!", version_id AS "version_id?" FROM effective
        WHERE ($1::text IS NULL OR strpos(lower(model), lower($1)) > 0)
          AND ($2::text IS NULL OR overridden = ($2 = 'override'))
        ORDER BY model LIMIT $3 OFFSET $4"#,
        search,
        source,
        limit,
        offset
    )
    .fetch_all(db)
    .await
}

/// The current version's entry of `model`, with the version's id.
pub async fn file_entry(
    db: impl PgExecutor<'_>,
    model: &str,
) -> sqlx::Result<Option<(i64, PriceEntry)>> {
    let row = sqlx::query!(
        r#"SELECT version_id, entry AS "entry: Json<PriceEntry>" FROM price_entries
        WHERE model = $1 AND version_id =
            (SELECT id FROM price_versions ORDER BY checked_at DESC, id DESC LIMIT 1)"#,
        model
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| (r.version_id, r.entry.0)))
}

/// The override of `model` (`lock`: `FOR UPDATE`, inside a write).
pub async fn get_override(
    conn: &mut PgConnection,
    model: &str,
    lock: bool,
) -> sqlx::Result<Option<OverrideRow>> {
    macro_rules! q {
        ($tail:literal) => {
            sqlx::query_as!(
                OverrideRow,
                r#"SELECT entry AS "entry: Json<PriceEntry>", updated_by, updated_at
                FROM price_overrides WHERE model = $1"#
                    + $tail,
                model
            )
        };
    }
    if lock {
        q!(" FOR UPDATE").fetch_optional(conn).await
    } else {
        q!("").fetch_optional(conn).await
    }
}

/// Sets or replaces the override of `model`; who set it and when.
pub async fn put_override(
    db: impl PgExecutor<'_>,
    model: &str,
    entry: &PriceEntry,
    updated_by: &str,
) -> sqlx::Result<(String, DateTime<Utc>)> {
    let row = sqlx::query!(
        "INSERT INTO price_overrides (model, entry, updated_by) VALUES ($1, $2, $3) \
         ON CONFLICT (model) DO UPDATE SET entry = EXCLUDED.entry, \
         updated_by = EXCLUDED.updated_by, updated_at = now() \
         RETURNING updated_by, updated_at",
        model,
        Json(entry) as _,
        updated_by
    )
    .fetch_one(db)
    .await?;
    Ok((row.updated_by, row.updated_at))
}

delete_fn!("DELETE FROM price_overrides WHERE model = $1");

/// The kept versions, current first.
pub async fn versions(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<PriceVersion>> {
    sqlx::query_as!(
        PriceVersion,
        r#"SELECT id, source, sha256, entries, fetched_at, checked_at,
        coalesce(id = (SELECT id FROM price_versions ORDER BY checked_at DESC, id DESC LIMIT 1),
            false) AS "current!"
        FROM price_versions ORDER BY checked_at DESC, id DESC"#
    )
    .fetch_all(db)
    .await
}
