//! `ingest_dead_letters`: usage events that can never be ingested, with their reason.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

/// One stored dead letter.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// The record's request id, when the payload was a usage record.
    pub request_id: Option<String>,
    pub reason: String,
    /// The message as received (cut at 16 KiB).
    pub payload: String,
}

pub async fn insert(
    db: impl PgExecutor<'_>,
    request_id: Option<&str>,
    reason: &str,
    payload: &str,
) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO ingest_dead_letters (request_id, reason, payload) VALUES ($1, $2, $3)",
        request_id,
        reason,
        payload
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Newest first.
pub async fn list(
    db: impl PgExecutor<'_>,
    limit: i64,
    offset: i64,
) -> sqlx::Result<Vec<DeadLetter>> {
    sqlx::query_as!(
        DeadLetter,
        "SELECT id, at, request_id, reason, payload FROM ingest_dead_letters \
         ORDER BY id DESC LIMIT $1 OFFSET $2",
        limit,
        offset
    )
    .fetch_all(db)
    .await
}
