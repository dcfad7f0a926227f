//! `request_log` (one row per request, with its attempt timeline) and `request_content` (the
//! opted-in tenants' prompts and answers): the idempotent insert of a usage batch, the
//! filtered, cursor-paginated listing and the lookup of one request.
//!
//! Both tables are partitioned by day like `spend_events`; their upkeep is
//! [`super::spend::ensure_partitions_of`] and [`super::spend::drop_expired_partitions_of`].

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgExecutor;
use switchboard_shared::usage::UsageRecord;

/// One row of the request log, as the admin API answers it.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct RequestRow {
    /// The gateway's id of the request (`x-switchboard-request-id`).
    pub request_id: String,
    /// The client's own `x-request-id`, if it sent one.
    pub client_request_id: Option<String>,
    pub started_at: DateTime<Utc>,
    pub tenant_id: String,
    pub key_id: String,
    pub model: String,
    /// The deployment of the last attempt (none for a refused request).
    pub deployment_id: Option<String>,
    pub provider_id: Option<String>,
    pub endpoint: String,
    pub stream: bool,
    /// success, upstream_error, client_disconnected or refused.
    pub outcome: String,
    /// The HTTP status the client got.
    pub status: i16,
    /// Why it failed or was refused (`budget_exceeded`, `upstream_failed`, ...).
    pub error_kind: Option<String>,
    /// The attempt timeline: `[{deployment_id, status, error_kind?, latency_ms}]`.
    #[schema(value_type = Vec<Object>)]
    pub attempts: Value,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cached_read_tokens: i64,
    pub cache_creation_tokens: i64,
    /// Whether the provider read part of the prompt from its prompt cache.
    pub cache_hit: bool,
    pub cost_usd: f64,
    pub latency_ms: i32,
    pub ttft_ms: Option<i32>,
    /// Answered from the gateway's response cache: no upstream, cost 0.
    pub cached_response: bool,
    /// For a cached answer, what it cost when it was generated (USD).
    pub saved_usd: f64,
}

/// The captured content of one request (opted-in tenants only).
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ContentRow {
    pub prompt: String,
    pub completion: String,
    pub truncated: bool,
}

/// The filters of a listing; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct Filter<'a> {
    /// A tenant admin's own tenant (always applied).
    pub confined_to: Option<&'a str>,
    pub tenant_id: Option<&'a str>,
    pub key_id: Option<&'a str>,
    pub model: Option<&'a str>,
    pub deployment_id: Option<&'a str>,
    pub status: Option<i16>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// A substring of the client request id.
    pub client_request_id: Option<&'a str>,
    /// Only rows strictly after this position in the order (newest first).
    pub after: Option<(DateTime<Utc>, &'a str)>,
    pub limit: i64,
}

/// The record as one JSON object with the columns of `request_log`.
fn log_row(r: &UsageRecord) -> Value {
    json!({
        "started_at": r.started_at,
        "request_id": r.request_id,
        "client_request_id": r.client_request_id,
        "tenant_id": r.tenant_id,
        "key_id": r.key_id,
        "model": r.model,
        "deployment_id": r.deployment_id,
        "provider_id": r.provider_id,
        "endpoint": r.endpoint,
        "stream": r.stream,
        "outcome": r.outcome.as_str(),
        "status": r.status,
        "error_kind": r.error_kind,
        "attempts": r.attempt_log,
        "prompt_tokens": clamp(r.usage.prompt_tokens),
        "completion_tokens": clamp(r.usage.completion_tokens),
        "cached_read_tokens": clamp(r.usage.cached_read_tokens),
        "cache_creation_tokens": clamp(r.usage.cache_creation_tokens),
        "cache_hit": r.usage.cached_read_tokens > 0,
        "cost_usd": if r.cost_usd.is_finite() { r.cost_usd } else { 0.0 },
        "latency_ms": i32::try_from(r.latency_ms).unwrap_or(i32::MAX),
        "ttft_ms": r.ttft_ms.map(|t| i32::try_from(t).unwrap_or(i32::MAX)),
        "cached_response": r.cached_response,
        "saved_usd": if r.saved_usd.is_finite() { r.saved_usd } else { 0.0 },
    })
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Inserts the batch's request-log rows idempotently (a redelivered record changes nothing).
/// Returns how many were new.
pub async fn insert_log(db: impl PgExecutor<'_>, records: &[UsageRecord]) -> sqlx::Result<u64> {
    let rows = Value::Array(records.iter().map(log_row).collect());
    let done = sqlx::query!(
        r#"INSERT INTO request_log (started_at, request_id, client_request_id, tenant_id,
            key_id, model, deployment_id, provider_id, endpoint, stream, outcome, status,
            error_kind, attempts, prompt_tokens, completion_tokens, cached_read_tokens,
            cache_creation_tokens, cache_hit, cost_usd, latency_ms, ttft_ms, cached_response,
            saved_usd)
        SELECT started_at, request_id, client_request_id, tenant_id, key_id, model,
            deployment_id, provider_id, endpoint, stream, outcome, status, error_kind,
            coalesce(attempts, '[]'::jsonb), prompt_tokens, completion_tokens,
            cached_read_tokens, cache_creation_tokens, cache_hit, cost_usd, latency_ms, ttft_ms,
            coalesce(cached_response, false), coalesce(saved_usd, 0)
        FROM jsonb_to_recordset($1::jsonb) AS r(started_at timestamptz, request_id text,
            client_request_id text, tenant_id text, key_id text, model text,
            deployment_id text, provider_id text, endpoint text, stream boolean, outcome text,
            status smallint, error_kind text, attempts jsonb, prompt_tokens bigint,
            completion_tokens bigint, cached_read_tokens bigint, cache_creation_tokens bigint,
            cache_hit boolean, cost_usd double precision, latency_ms integer, ttft_ms integer,
            cached_response boolean, saved_usd double precision)
        ON CONFLICT DO NOTHING"#,
        rows
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// Inserts the captured content of the batch's records that carry some (idempotent).
pub async fn insert_content(db: impl PgExecutor<'_>, records: &[UsageRecord]) -> sqlx::Result<u64> {
    let rows: Vec<Value> = records
        .iter()
        .filter_map(|r| {
            let c = r.content.as_ref()?;
            Some(json!({
                "started_at": r.started_at, "request_id": r.request_id,
                "tenant_id": r.tenant_id, "prompt": c.prompt, "completion": c.completion,
                "truncated": c.truncated,
            }))
        })
        .collect();
    if rows.is_empty() {
        return Ok(0);
    }
    let done = sqlx::query!(
        r#"INSERT INTO request_content (started_at, request_id, tenant_id, prompt, completion,
            truncated)
        SELECT started_at, request_id, tenant_id, prompt, completion, truncated
        FROM jsonb_to_recordset($1::jsonb) AS r(started_at timestamptz, request_id text,
            tenant_id text, prompt text, completion text, truncated boolean)
        ON CONFLICT DO NOTHING"#,
        Value::Array(rows)
    )
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// One page of the request log, newest first, matching `f`.
pub async fn list(db: impl PgExecutor<'_>, f: &Filter<'_>) -> sqlx::Result<Vec<RequestRow>> {
    let (after_at, after_id) = f
        .after
        .map_or((None, None), |(at, id)| (Some(at), Some(id)));
    sqlx::query_as!(
        RequestRow,
        r#"SELECT request_id, client_request_id, started_at, tenant_id, key_id, model,
            deployment_id, provider_id, endpoint, stream, outcome, status, error_kind,
            attempts, prompt_tokens, completion_tokens, cached_read_tokens,
            cache_creation_tokens, cache_hit, cost_usd, latency_ms, ttft_ms, cached_response,
            saved_usd
        FROM request_log
        WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR tenant_id = $2)
        AND ($3::text IS NULL OR key_id = $3) AND ($4::text IS NULL OR model = $4)
        AND ($5::text IS NULL OR deployment_id = $5) AND ($6::smallint IS NULL OR status = $6)
        AND ($7::timestamptz IS NULL OR started_at >= $7)
        AND ($8::timestamptz IS NULL OR started_at < $8)
        AND ($9::text IS NULL OR strpos(client_request_id, $9) > 0)
        AND ($10::timestamptz IS NULL OR (started_at, request_id) < ($10, $11::text))
        ORDER BY started_at DESC, request_id DESC
        LIMIT $12"#,
        f.confined_to,
        f.tenant_id,
        f.key_id,
        f.model,
        f.deployment_id,
        f.status,
        f.from,
        f.to,
        f.client_request_id,
        after_at,
        after_id,
        f.limit
    )
    .fetch_all(db)
    .await
}

/// The request `request_id`, if it exists (and is `confined_to`'s, when given).
pub async fn get(
    db: impl PgExecutor<'_>,
    request_id: &str,
    confined_to: Option<&str>,
) -> sqlx::Result<Option<RequestRow>> {
    sqlx::query_as!(
        RequestRow,
        r#"SELECT request_id, client_request_id, started_at, tenant_id, key_id, model,
            deployment_id, provider_id, endpoint, stream, outcome, status, error_kind,
            attempts, prompt_tokens, completion_tokens, cached_read_tokens,
            cache_creation_tokens, cache_hit, cost_usd, latency_ms, ttft_ms, cached_response,
            saved_usd
        FROM request_log WHERE request_id = $1 AND ($2::text IS NULL OR tenant_id = $2)
        ORDER BY started_at DESC LIMIT 1"#,
        request_id,
        confined_to
    )
    .fetch_optional(db)
    .await
}

/// The captured content of request `request_id`, if any was kept.
pub async fn content(
    db: impl PgExecutor<'_>,
    request_id: &str,
    tenant_id: &str,
) -> sqlx::Result<Option<ContentRow>> {
    sqlx::query_as!(
        ContentRow,
        "SELECT prompt, completion, truncated FROM request_content
        WHERE request_id = $1 AND tenant_id = $2 LIMIT 1",
        request_id,
        tenant_id
    )
    .fetch_optional(db)
    .await
}
