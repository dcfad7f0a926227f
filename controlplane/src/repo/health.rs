//! What the request log says about deployments' health: each deployment's attempts in a
//! recent window (every attempt of every request counts, failed ones before a fallback too)
//! and its latest failed attempts. The live figures (breaker, in flight, latency) come from
//! the data planes' shared state in Redis, not from here.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;
use utoipa::ToSchema;

/// One deployment's attempts since a moment.
#[derive(Debug, Clone)]
pub struct AttemptStats {
    pub deployment_id: String,
    pub attempts: i64,
    pub failed: i64,
    pub latency_ms: Option<f64>,
}

/// One failed attempt.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct FailedAttempt {
    /// When its request started.
    pub started_at: DateTime<Utc>,
    /// The gateway's request id (`GET /admin/v1/requests/{id}`).
    pub request_id: String,
    /// The status the attempt ended with (0: no answer).
    pub status: i32,
    /// The gateway's error kind (`upstream_failed`, `upstream_timeout`, ...).
    pub error_kind: Option<String>,
}

/// Attempts per deployment (only `deployment_id` when given) since `since`. An attempt failed
/// when it carries an error kind or ended with a 5xx.
pub async fn attempt_stats(
    db: impl PgExecutor<'_>,
    deployment_id: Option<&str>,
    since: DateTime<Utc>,
) -> sqlx::Result<Vec<AttemptStats>> {
    sqlx::query_as!(
        AttemptStats,
        r#"SELECT a->>'deployment_id' AS "deployment_id!",
            count(*) AS "attempts!",
            count(*) FILTER (WHERE a ? 'error_kind' OR (a->>'status')::int >= 500) AS "failed!",
            avg((a->>'latency_ms')::float8) AS latency_ms
        FROM request_log r CROSS JOIN LATERAL jsonb_array_elements(r.attempts) a
        WHERE r.started_at >= $2 AND ($1::text IS NULL OR a->>'deployment_id' = $1)
        GROUP BY 1"#,
        deployment_id,
        since
    )
    .fetch_all(db)
    .await
}

/// The latest `limit` failed attempts on `deployment_id` since `since`, newest first.
pub async fn failed_attempts(
    db: impl PgExecutor<'_>,
    deployment_id: &str,
    since: DateTime<Utc>,
    limit: i64,
) -> sqlx::Result<Vec<FailedAttempt>> {
    sqlx::query_as!(
        FailedAttempt,
        r#"SELECT r.started_at, r.request_id, (a->>'status')::int AS "status!",
            a->>'error_kind' AS error_kind
        FROM request_log r CROSS JOIN LATERAL jsonb_array_elements(r.attempts) a
        WHERE r.started_at >= $2 AND a->>'deployment_id' = $1
        AND (a ? 'error_kind' OR (a->>'status')::int >= 500)
        ORDER BY r.started_at DESC LIMIT $3"#,
        deployment_id,
        since,
        limit
    )
    .fetch_all(db)
    .await
}
