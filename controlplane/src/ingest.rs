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
//! nothing was acknowledged. A message that is not a usage record, or whose values the books
//! refuse, is stored as a dead letter (`service::dead_letters`) and terminated (never
//! redelivered); when Postgres refuses a batch for its data, its rows are written one by one
//! and only the refused ones are dead-lettered, so a poisoned event never blocks its
//! batch-mates.
//!
//! Raw rows live in daily partitions made ahead of time ([`ensure_partitions`]) and dropped
//! after the retention period ([`drop_expired_partitions`]); the rollups stay. An event that
//! started before that retention (a spill file or a stream replayed long after the fact) is
//! refused and dead-lettered as `expired`: its raw row is gone, so storing it again would add
//! it to the rollups a second time.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, stream};
use chrono::{DateTime, NaiveDate, Utc};
use futures_util::StreamExt;
use sqlx::PgPool;
use switchboard_shared::cluster::NatsNames;
use switchboard_shared::usage::UsageRecord;
use tracing::Instrument;

/// Name of the durable consumer all control-plane replicas share.
pub const CONSUMER: &str = "spend-ingest";

/// How ingestion runs.
#[derive(Debug, Clone)]
pub struct IngestSettings {
    /// Largest batch written in one statement.
    pub batch: usize,
    /// How long a fetch waits for a batch to fill before writing what it has.
    pub max_wait: Duration,
    /// Ingest tag keys; events without a valid tag, or from an unknown data plane, are counted
    /// and kept as dead letters (`crate::fleet::authenticate`). `None` (development only):
    /// every event counts.
    pub keys: Option<switchboard_shared::cluster_trust::IngestKeys>,
    /// `spend.raw_retention_days` (0: forever): an event that started before it is refused
    /// and dead-lettered (`expired`), never added to the rollups a second time.
    pub raw_retention_days: u64,
}

impl Default for IngestSettings {
    fn default() -> Self {
        Self {
            batch: 1000,
            max_wait: Duration::from_millis(200),
            keys: None,
            raw_retention_days: 0,
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
        num_replicas: names.replicas,
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
        if let Err(why) = crate::fleet::authenticate(
            settings.keys.as_ref(),
            "usage",
            message.headers.as_ref(),
            &message.payload,
        ) {
            quarantine(pool, &message, &why).await?;
            continue;
        }
        if let Some(record) = admit(pool, &message, settings.raw_retention_days).await? {
            records.push(record);
            delivered.push(message);
        }
    }
    if records.is_empty() {
        return Ok(0);
    }
    let span = tracing::debug_span!(target: switchboard_shared::telemetry::TARGET,
        "ingest usage", messaging.system = "nats", switchboard.records = records.len());
    let inserted = async {
        let inserted = insert_or_dead_letter(pool, &records, &delivered).await?;
        record_requests(pool, &records).await?;
        Ok::<u64, anyhow::Error>(inserted)
    }
    .instrument(span)
    .await?;
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

/// Keeps an event that failed authentication as a dead letter (never in spend) with `why`,
/// and terminates it. Fails only when the dead letter cannot be stored (the message is then
/// redelivered).
async fn quarantine(pool: &PgPool, message: &jetstream::Message, why: &str) -> anyhow::Result<()> {
    // The request id is the sender's claim, kept only as the payload says it.
    let request_id = serde_json::from_slice::<UsageRecord>(&message.payload)
        .ok()
        .map(|r| r.request_id);
    let reason = format!("not authenticated: {why}");
    crate::service::dead_letters::store(
        pool,
        "unauthenticated",
        request_id.as_deref(),
        &reason,
        &message.payload,
    )
    .await
    .map_err(|e| anyhow::anyhow!("storing a dead letter: {e}"))?;
    let _ = message.ack_with(AckKind::Term).await;
    Ok(())
}

/// The message's record when it can be booked; otherwise it is dead-lettered and terminated.
/// Fails only when the dead letter cannot be stored (the message is then redelivered).
async fn admit(
    pool: &PgPool,
    message: &jetstream::Message,
    raw_retention_days: u64,
) -> anyhow::Result<Option<UsageRecord>> {
    use crate::service::dead_letters::{check_record, expired, store};
    let today = utc_today(Utc::now());
    let (kind, request_id, reason) = match serde_json::from_slice::<UsageRecord>(&message.payload) {
        Ok(record) => match check_record(&record) {
            Some(reason) => ("out_of_range", Some(record.request_id), reason),
            None => match expired(&record, today, raw_retention_days) {
                None => return Ok(Some(record)),
                Some(reason) => ("expired", Some(record.request_id), reason),
            },
        },
        Err(e) => ("malformed", None, format!("not a usage record: {e}")),
    };
    store(pool, kind, request_id.as_deref(), &reason, &message.payload)
        .await
        .map_err(|e| anyhow::anyhow!("storing a dead letter: {e}"))?;
    let _ = message.ack_with(AckKind::Term).await;
    Ok(None)
}

/// Inserts the batch; when Postgres refuses it for its data (SQLSTATE class 22 or 23), writes
/// the rows one by one and dead-letters (and terminates) those it refuses. Connection and
/// other faults fail the batch, which is redelivered.
async fn insert_or_dead_letter(
    pool: &PgPool,
    records: &[UsageRecord],
    delivered: &[jetstream::Message],
) -> anyhow::Result<u64> {
    let refused_for_data = |e: &sqlx::Error| {
        e.as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| c.starts_with("22") || c.starts_with("23"))
    };
    match insert_batch(pool, records).await {
        Ok(n) => return Ok(n),
        Err(e) if refused_for_data(&e) => {
            tracing::warn!(error = %e, "usage batch refused; writing its rows one by one");
        }
        Err(e) => return Err(e.into()),
    }
    let mut inserted = 0;
    for (record, message) in records.iter().zip(delivered) {
        match insert_batch(pool, std::slice::from_ref(record)).await {
            Ok(n) => inserted += n,
            Err(e) if refused_for_data(&e) => {
                let reason = format!("refused by Postgres: {e}");
                crate::service::dead_letters::store(
                    pool,
                    "refused",
                    Some(&record.request_id),
                    &reason,
                    &message.payload,
                )
                .await
                .map_err(|e| anyhow::anyhow!("storing a dead letter: {e}"))?;
                let _ = message.ack_with(AckKind::Term).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(inserted)
}

/// Inserts records idempotently and adds the new ones to the daily rollups, atomically.
/// Returns how many rows were new.
pub async fn insert_batch(pool: &PgPool, records: &[UsageRecord]) -> sqlx::Result<u64> {
    crate::repo::spend::insert_usage(pool, records).await
}

pub use crate::repo::spend::{drop_expired_partitions, ensure_partitions};

/// The request log: every record (refusals included) becomes one `request_log` row, and the
/// content an opted-in tenant's data plane captured one `request_content` row. Idempotent like
/// the spend insert, and done before the batch is acknowledged, so it is as lossless.
pub async fn record_requests(pool: &PgPool, records: &[UsageRecord]) -> sqlx::Result<()> {
    crate::repo::requests::insert_log(pool, records).await?;
    crate::repo::requests::insert_content(pool, records).await?;
    Ok(())
}

/// Keeps the request log's and captured content's daily partitions made a week ahead and drops
/// those past their retentions (`request_log_retention_days`, `content_retention_days`).
pub async fn request_log_upkeep(
    pool: &PgPool,
    today: NaiveDate,
    settings: &crate::config::SpendConfig,
) {
    use crate::repo::spend::{drop_expired_partitions_of, ensure_partitions_of};
    let tables = [
        ("request_log", settings.request_log_retention_days),
        ("request_content", settings.content_retention_days),
    ];
    for (table, keep_days) in tables {
        if let Err(e) = ensure_partitions_of(pool, table, today, 7).await {
            tracing::warn!(error = %e, table, "partitions not made");
        }
        if keep_days > 0 {
            match drop_expired_partitions_of(pool, table, today, keep_days).await {
                Ok(dropped) if !dropped.is_empty() => {
                    tracing::info!(?dropped, "partitions past retention dropped");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, table, "retention not applied"),
            }
        }
    }
}

/// Today in UTC, the partitions' time zone.
pub fn utc_today(now: DateTime<Utc>) -> NaiveDate {
    now.date_naive()
}
