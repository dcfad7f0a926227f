//! `spend_events` (raw usage rows in daily partitions) and `spend_daily` (UTC-day rollups):
//! the idempotent insert of a usage batch, the partitions' upkeep and the spend report.

use chrono::{Days, NaiveDate};
use sqlx::{PgExecutor, PgPool};
use switchboard_shared::usage::{Outcome, UsageRecord};

// Answered as read: it carries its serde and OpenAPI derives (its doc is its schema's).
/// One group's totals.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct SpendRow {
    /// The tenant, key, model or deployment id ('' for requests that reached no deployment).
    pub group: String,
    pub requests: i64,
    pub errors: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cached_read_tokens: i64,
    pub cache_creation_tokens: i64,
    pub cost_usd: f64,
    /// Requests answered from the gateway's response cache (cost 0).
    pub cached_responses: i64,
    /// What those answers cost when they were generated: the spend the cache saved (USD).
    pub saved_usd: f64,
}

/// Totals per `group_by` (`tenant_id`, `key_id`, `model` or `deployment_id`) over the days
/// `from..=to`, dearest first, from the rollups; `confined_to` and `tenant_id` filter by
/// tenant. The grouping column is picked by a `CASE` on `$1`, so the statement is static.
pub async fn report(
    db: impl PgExecutor<'_>,
    group_by: &str,
    from: NaiveDate,
    to: NaiveDate,
    confined_to: Option<&str>,
    tenant_id: Option<&str>,
) -> sqlx::Result<Vec<SpendRow>> {
    sqlx::query_as!(
        SpendRow,
        r#"SELECT CASE $1::text WHEN 'tenant_id' THEN tenant_id WHEN 'key_id' THEN key_id
            WHEN 'model' THEN model ELSE deployment_id END AS "group!",
        sum(requests)::bigint AS "requests!", sum(errors)::bigint AS "errors!",
        sum(prompt_tokens)::bigint AS "prompt_tokens!",
        sum(completion_tokens)::bigint AS "completion_tokens!",
        sum(cached_read_tokens)::bigint AS "cached_read_tokens!",
        sum(cache_creation_tokens)::bigint AS "cache_creation_tokens!",
        sum(cost_usd) AS "cost_usd!",
        sum(cached_responses)::bigint AS "cached_responses!", sum(saved_usd) AS "saved_usd!"
        FROM spend_daily WHERE day BETWEEN $2 AND $3
        AND ($4::text IS NULL OR tenant_id = $4) AND ($5::text IS NULL OR tenant_id = $5)
        GROUP BY 1 ORDER BY 8 DESC, 1"#,
        group_by,
        from,
        to,
        confined_to,
        tenant_id
    )
    .fetch_all(db)
    .await
}

/// Inserts records idempotently and adds the new ones to the daily rollups, atomically.
/// Returns how many rows were new.
pub async fn insert_usage(db: impl PgExecutor<'_>, records: &[UsageRecord]) -> sqlx::Result<u64> {
    let n = records.len();
    let mut started_at = Vec::with_capacity(n);
    let mut request_id = Vec::with_capacity(n);
    let mut tenant_id = Vec::with_capacity(n);
    let mut key_id = Vec::with_capacity(n);
    let mut model = Vec::with_capacity(n);
    let mut deployment_id = Vec::with_capacity(n);
    let mut provider_id = Vec::with_capacity(n);
    let mut endpoint = Vec::with_capacity(n);
    let mut stream = Vec::with_capacity(n);
    let mut outcome = Vec::with_capacity(n);
    let mut status = Vec::with_capacity(n);
    let mut attempts = Vec::with_capacity(n);
    let mut prompt = Vec::with_capacity(n);
    let mut completion = Vec::with_capacity(n);
    let mut cached_read = Vec::with_capacity(n);
    let mut cache_creation = Vec::with_capacity(n);
    let mut reported = Vec::with_capacity(n);
    let mut cost = Vec::with_capacity(n);
    let mut price_revision = Vec::with_capacity(n);
    let mut price_version = Vec::with_capacity(n);
    let mut latency = Vec::with_capacity(n);
    let mut ttft = Vec::with_capacity(n);
    let mut cached_response = Vec::with_capacity(n);
    let mut saved = Vec::with_capacity(n);
    // A refusal never reached a deployment and costs nothing: it is in the request log only.
    for r in records.iter().filter(|r| r.outcome != Outcome::Refused) {
        started_at.push(r.started_at);
        request_id.push(r.request_id.as_str());
        tenant_id.push(r.tenant_id.as_str());
        key_id.push(r.key_id.as_str());
        model.push(r.model.as_str());
        deployment_id.push(r.deployment_id.as_deref());
        provider_id.push(r.provider_id.as_deref());
        endpoint.push(r.endpoint.as_str());
        stream.push(r.stream);
        outcome.push(r.outcome.as_str());
        status.push(i16::try_from(r.status).unwrap_or(i16::MAX));
        attempts.push(i16::try_from(r.attempts).unwrap_or(i16::MAX));
        prompt.push(clamp(r.usage.prompt_tokens));
        completion.push(clamp(r.usage.completion_tokens));
        cached_read.push(clamp(r.usage.cached_read_tokens));
        cache_creation.push(clamp(r.usage.cache_creation_tokens));
        reported.push(r.usage_reported);
        cost.push(r.cost_usd);
        price_revision.push(clamp(r.price_revision));
        price_version.push(r.price_version.map(clamp));
        latency.push(i32::try_from(r.latency_ms).unwrap_or(i32::MAX));
        ttft.push(r.ttft_ms.map(|t| i32::try_from(t).unwrap_or(i32::MAX)));
        cached_response.push(r.cached_response);
        saved.push(if r.saved_usd.is_finite() {
            r.saved_usd
        } else {
            0.0
        });
    }
    // The statement is in its own file: it is long, and one statement is clearer whole.
    let new_rows = sqlx::query_file_scalar!(
        "src/repo/sql/insert_usage.sql",
        &started_at as _,
        &request_id as _,
        &tenant_id as _,
        &key_id as _,
        &model as _,
        &deployment_id as _,
        &provider_id as _,
        &endpoint as _,
        &stream as _,
        &outcome as _,
        &status as _,
        &attempts as _,
        &prompt as _,
        &completion as _,
        &cached_read as _,
        &cache_creation as _,
        &reported as _,
        &cost as _,
        &price_revision as _,
        &latency as _,
        &ttft as _,
        &price_version as _,
        &cached_response as _,
        &saved as _,
    )
    .fetch_one(db)
    .await?;
    Ok(u64::try_from(new_rows).unwrap_or(0))
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Makes `spend_events`' daily partitions from yesterday to `days_ahead` days after `today`.
pub async fn ensure_partitions(
    pool: &PgPool,
    today: NaiveDate,
    days_ahead: u64,
) -> sqlx::Result<()> {
    ensure_partitions_of(pool, "spend_events", today, days_ahead).await
}

/// Drops `spend_events`' daily partitions wholly older than `keep_days` before `today`.
/// Rollups stay. Returns the partitions dropped.
pub async fn drop_expired_partitions(
    pool: &PgPool,
    today: NaiveDate,
    keep_days: u64,
) -> sqlx::Result<Vec<String>> {
    drop_expired_partitions_of(pool, "spend_events", today, keep_days).await
}

fn partition_name(table: &str, day: NaiveDate) -> String {
    format!("{table}_{}", day.format("%Y%m%d"))
}

/// Makes daily partitions of `table` (a day-partitioned table of ours, named by a constant)
/// from yesterday to `days_ahead` days after `today` (idempotent).
pub async fn ensure_partitions_of(
    pool: &PgPool,
    table: &'static str,
    today: NaiveDate,
    days_ahead: u64,
) -> sqlx::Result<()> {
    let first = today.checked_sub_days(Days::new(1)).unwrap_or(today);
    for offset in 0..=days_ahead + 1 {
        let Some(day) = first.checked_add_days(Days::new(offset)) else {
            break;
        };
        let Some(next) = day.succ_opt() else { break };
        let sql = format!(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF {table} \
             FOR VALUES FROM ('{day} 00:00:00+00') TO ('{next} 00:00:00+00')",
            partition_name(table, day)
        );
        // DDL with a table name in it cannot be a checked statement (nor take parameters):
        // built from a constant and dates only, so nothing from outside reaches it.
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(pool).await {
            // Rows for that day already sit in the default partition (a replay of old
            // events): they stay there, which is correct, only less tidy.
            tracing::warn!(error = %e, %day, table, "cannot create a daily partition");
        }
    }
    Ok(())
}

/// Drops daily partitions of `table` wholly older than `keep_days` before `today`.
/// Returns the partitions dropped.
pub async fn drop_expired_partitions_of(
    pool: &PgPool,
    table: &'static str,
    today: NaiveDate,
    keep_days: u64,
) -> sqlx::Result<Vec<String>> {
    let Some(cutoff) = today.checked_sub_days(Days::new(keep_days)) else {
        return Ok(Vec::new());
    };
    let names = sqlx::query_scalar!(
        r#"SELECT c.relname::text AS "name!" FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname = $1 AND c.relname ~ ('^' || $1 || '_[0-9]{8}$')"#,
        table
    )
    .fetch_all(pool)
    .await?;
    let prefix = format!("{table}_");
    let mut dropped = Vec::new();
    for name in names {
        let Some(day) = name
            .strip_prefix(&prefix)
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok())
        else {
            continue;
        };
        if day < cutoff {
            // DDL naming a table, like the partitions' creation; `name` matched
            // ^{table}_[0-9]{8}$ above.
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {name}")))
                .execute(pool)
                .await?;
            dropped.push(name);
        }
    }
    Ok(dropped)
}
