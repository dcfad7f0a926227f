//! Spend ingestion: usage events from the data planes, out of JetStream, into Postgres —
//! each exactly once, however often it is delivered.
//!
//! The control plane owns the usage stream (`NatsNames::usage_stream`, a file-backed work
//! queue) and one durable pull consumer on it, shared by every control-plane replica. A
//! replica fetches a batch, writes it with one statement — a multi-row insert from arrays
//! (`UNNEST`) with `ON CONFLICT DO NOTHING`, whose `RETURNING` rows (only those really
//! inserted) are added to the daily rollups in the same statement — commits, and only then
//! acknowledges the messages. A crash between commit and ack means redelivery, and the
//! redelivered rows conflict and change nothing; a crash before commit loses nothing because
//! nothing was acknowledged. A message that is not a usage record is terminated (never
//! redelivered) and logged.
//!
//! Raw rows live in daily partitions made ahead of time ([`ensure_partitions`]) and dropped
//! after the retention period ([`drop_expired_partitions`]); the rollups stay.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use chrono::{DateTime, Days, NaiveDate, Utc};
use futures_util::StreamExt;
use sqlx::PgPool;
use switchboard_shared::cluster::NatsNames;
use switchboard_shared::usage::UsageRecord;

/// Name of the durable consumer all control-plane replicas share.
pub const CONSUMER: &str = "spend-ingest";

/// How ingestion runs.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// Largest batch written in one statement.
    pub batch: usize,
    /// How long a fetch waits for a batch to fill before writing what it has.
    pub max_wait: Duration,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            batch: 1000,
            max_wait: Duration::from_millis(200),
        }
    }
}

/// Creates the usage stream if it is missing (idempotent; every replica may call it).
pub async fn ensure_usage_stream(
    js: &jetstream::Context,
    names: &NatsNames,
) -> anyhow::Result<stream::Stream> {
    js.get_or_create_stream(stream::Config {
        name: names.usage_stream.clone(),
        subjects: vec![names.usage_subject.clone()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        // Data planes set Nats-Msg-Id to the request id; a resend within this window is
        // dropped by JetStream before ingestion sees it.
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow::anyhow!("usage stream {}: {e}", names.usage_stream))
}

async fn ensure_consumer(
    stream: &stream::Stream,
) -> anyhow::Result<consumer::Consumer<consumer::pull::Config>> {
    stream
        .get_or_create_consumer(
            CONSUMER,
            consumer::pull::Config {
                durable_name: Some(CONSUMER.into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 20_000,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("usage consumer: {e}"))
}

/// Consumes usage events until `shutdown` resolves. Reconnects and retries on its own;
/// returns only at shutdown.
pub async fn run(
    pool: PgPool,
    js: jetstream::Context,
    names: NatsNames,
    settings: IngestSettings,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(200);
    loop {
        let session = async {
            let stream = ensure_usage_stream(&js, &names).await?;
            let consumer = ensure_consumer(&stream).await?;
            loop {
                ingest_one_batch(&pool, &consumer, &settings).await?;
            }
            #[allow(unreachable_code)]
            Ok::<(), anyhow::Error>(())
        };
        tokio::select! {
            () = &mut shutdown => return,
            result = session => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "spend ingestion interrupted; retrying");
                }
            }
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Fetches up to one batch, writes it, acknowledges it. Returns how many rows were new.
pub async fn ingest_one_batch(
    pool: &PgPool,
    consumer: &consumer::Consumer<consumer::pull::Config>,
    settings: &IngestSettings,
) -> anyhow::Result<u64> {
    let mut messages = consumer
        .batch()
        .max_messages(settings.batch)
        .expires(settings.max_wait)
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("fetch: {e}"))?;
    let mut records = Vec::with_capacity(settings.batch);
    let mut delivered = Vec::with_capacity(settings.batch);
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| anyhow::anyhow!("fetch: {e}"))?;
        match serde_json::from_slice::<UsageRecord>(&message.payload) {
            Ok(record) => {
                records.push(record);
                delivered.push(message);
            }
            Err(e) => {
                tracing::error!(error = %e, "not a usage record; discarding the message");
                let _ = message.ack_with(AckKind::Term).await;
            }
        }
    }
    if records.is_empty() {
        return Ok(0);
    }
    let inserted = insert_batch(pool, &records).await?;
    // After commit only. A failed ack means redelivery, which the insert absorbs.
    let acks = delivered.iter().map(|m| m.ack());
    for result in futures_util::future::join_all(acks).await {
        if let Err(e) = result {
            tracing::warn!(error = %e, "usage ack failed; the event will be redelivered");
        }
    }
    tracing::debug!(delivered = records.len(), inserted, "spend batch written");
    Ok(inserted)
}

/// Inserts records idempotently and adds the new ones to the daily rollups, atomically.
/// Returns how many rows were new.
pub async fn insert_batch(pool: &PgPool, records: &[UsageRecord]) -> sqlx::Result<u64> {
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
    for r in records {
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
    }
    let new_rows: i64 = sqlx::query_scalar(
        r#"
WITH new_rows AS (
    INSERT INTO spend_events (
        started_at, request_id, tenant_id, key_id, model, deployment_id, provider_id,
        endpoint, stream, outcome, status, attempts, prompt_tokens, completion_tokens,
        cached_read_tokens, cache_creation_tokens, usage_reported, cost_usd, price_revision,
        latency_ms, ttft_ms, price_version)
    SELECT * FROM UNNEST(
        $1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
        $7::text[], $8::text[], $9::boolean[], $10::text[], $11::smallint[], $12::smallint[],
        $13::bigint[], $14::bigint[], $15::bigint[], $16::bigint[], $17::boolean[],
        $18::double precision[], $19::bigint[], $20::integer[], $21::integer[], $22::bigint[])
    ON CONFLICT DO NOTHING
    RETURNING started_at, tenant_id, key_id, model, deployment_id, outcome, prompt_tokens,
        completion_tokens, cached_read_tokens, cache_creation_tokens, cost_usd
),
rollup AS (
INSERT INTO spend_daily AS d (
    day, tenant_id, key_id, model, deployment_id, requests, errors, prompt_tokens,
    completion_tokens, cached_read_tokens, cache_creation_tokens, cost_usd)
SELECT (started_at AT TIME ZONE 'UTC')::date, tenant_id, key_id, model,
    coalesce(deployment_id, ''), count(*), count(*) FILTER (WHERE outcome <> 'success'),
    sum(prompt_tokens), sum(completion_tokens), sum(cached_read_tokens),
    sum(cache_creation_tokens), sum(cost_usd)
FROM new_rows
GROUP BY 1, 2, 3, 4, 5
ON CONFLICT (day, tenant_id, key_id, model, deployment_id) DO UPDATE SET
    requests = d.requests + EXCLUDED.requests,
    errors = d.errors + EXCLUDED.errors,
    prompt_tokens = d.prompt_tokens + EXCLUDED.prompt_tokens,
    completion_tokens = d.completion_tokens + EXCLUDED.completion_tokens,
    cached_read_tokens = d.cached_read_tokens + EXCLUDED.cached_read_tokens,
    cache_creation_tokens = d.cache_creation_tokens + EXCLUDED.cache_creation_tokens,
    cost_usd = d.cost_usd + EXCLUDED.cost_usd
RETURNING 1
)
SELECT count(*) FROM new_rows
"#,
    )
    .bind(&started_at)
    .bind(&request_id)
    .bind(&tenant_id)
    .bind(&key_id)
    .bind(&model)
    .bind(&deployment_id)
    .bind(&provider_id)
    .bind(&endpoint)
    .bind(&stream)
    .bind(&outcome)
    .bind(&status)
    .bind(&attempts)
    .bind(&prompt)
    .bind(&completion)
    .bind(&cached_read)
    .bind(&cache_creation)
    .bind(&reported)
    .bind(&cost)
    .bind(&price_revision)
    .bind(&latency)
    .bind(&ttft)
    .bind(&price_version)
    .fetch_one(pool)
    .await?;
    Ok(u64::try_from(new_rows).unwrap_or(0))
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn partition_name(day: NaiveDate) -> String {
    format!("spend_events_{}", day.format("%Y%m%d"))
}

/// Makes daily partitions from yesterday to `days_ahead` days after `today` (idempotent).
pub async fn ensure_partitions(
    pool: &PgPool,
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
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF spend_events \
             FOR VALUES FROM ('{day} 00:00:00+00') TO ('{next} 00:00:00+00')",
            partition_name(day)
        );
        // Built from dates only: nothing from outside reaches this statement.
        if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(sql)).execute(pool).await {
            // Rows for that day already sit in the default partition (a replay of old
            // events): they stay there, which is correct, only less tidy.
            tracing::warn!(error = %e, %day, "cannot create spend partition");
        }
    }
    Ok(())
}

/// Drops daily partitions wholly older than `keep_days` before `today`. Rollups stay.
/// Returns the partitions dropped.
pub async fn drop_expired_partitions(
    pool: &PgPool,
    today: NaiveDate,
    keep_days: u64,
) -> sqlx::Result<Vec<String>> {
    let Some(cutoff) = today.checked_sub_days(Days::new(keep_days)) else {
        return Ok(Vec::new());
    };
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i \
         JOIN pg_class c ON c.oid = i.inhrelid \
         JOIN pg_class p ON p.oid = i.inhparent \
         WHERE p.relname = 'spend_events' AND c.relname ~ '^spend_events_[0-9]{8}$'",
    )
    .fetch_all(pool)
    .await?;
    let mut dropped = Vec::new();
    for name in names {
        let Some(day) = name
            .strip_prefix("spend_events_")
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok())
        else {
            continue;
        };
        if day < cutoff {
            // `name` matched ^spend_events_[0-9]{8}$ above.
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {name}")))
                .execute(pool)
                .await?;
            dropped.push(name);
        }
    }
    Ok(dropped)
}

/// Today in UTC, the partitions' time zone.
pub fn utc_today(now: DateTime<Utc>) -> NaiveDate {
    now.date_naive()
}
