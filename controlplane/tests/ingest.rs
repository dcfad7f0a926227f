//! Spend ingestion against real Postgres and NATS JetStream: every usage event becomes exactly
//! one row, however often it is delivered, and the daily rollups equal the sum of the rows.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use controlplane::ingest::{self, IngestSettings};
use sqlx::PgPool;
use switchboard_shared::cluster::NatsNames;
use switchboard_shared::usage::{Outcome, Usage, UsageRecord};

fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

fn unique_namespace() -> String {
    format!("ing{}", uuid::Uuid::now_v7().simple())
        .chars()
        .take(32)
        .collect()
}

fn day(d: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, d, 12, 0, 0).unwrap()
}

fn record(i: usize, at: DateTime<Utc>) -> UsageRecord {
    UsageRecord {
        request_id: format!("req-{i:07}"),
        client_request_id: None,
        tenant_id: format!("tenant-{}", i % 2),
        key_id: format!("key-{}", i % 3),
        model: "gpt-4o".into(),
        deployment_id: (!i.is_multiple_of(5)).then(|| "d1".to_string()),
        provider_id: Some("p1".into()),
        endpoint: "chat_completions".into(),
        stream: i % 2 == 1,
        outcome: if i.is_multiple_of(7) {
            Outcome::ClientDisconnected
        } else {
            Outcome::Success
        },
        status: 200,
        attempts: 1,
        usage: Usage {
            prompt_tokens: 100 + i as u64,
            completion_tokens: 10 + (i % 13) as u64,
            cached_read_tokens: (i % 4) as u64,
            cache_creation_tokens: 0,
        },
        usage_reported: true,
        cost_usd: 0.000_25 * (1 + i % 9) as f64,
        price_revision: 3,
        price_version: Some(2),
        started_at: at,
        latency_ms: 12,
        ttft_ms: Some(4),
        error_kind: None,
        attempt_log: Vec::new(),
        content: None,
        cached_response: false,
        saved_usd: 0.0,
    }
}

async fn totals(pool: &PgPool) -> (i64, i64, f64, i64, i64, f64) {
    let raw: (i64, i64, f64) = sqlx::query_as(
        "SELECT count(*), coalesce(sum(prompt_tokens),0)::bigint, coalesce(sum(cost_usd),0) FROM spend_events",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let rolled: (i64, i64, f64) = sqlx::query_as(
        "SELECT coalesce(sum(requests),0)::bigint, coalesce(sum(prompt_tokens),0)::bigint, coalesce(sum(cost_usd),0) FROM spend_daily",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    (raw.0, raw.1, raw.2, rolled.0, rolled.1, rolled.2)
}

#[sqlx::test(migrations = "../migrations")]
async fn a_replayed_batch_changes_nothing_and_rollups_match_the_rows(pool: PgPool) {
    let first: Vec<_> = (0..100)
        .map(|i| record(i, day(1 + (i % 2) as u32)))
        .collect();
    assert_eq!(ingest::insert_batch(&pool, &first).await.unwrap(), 100);
    let before = totals(&pool).await;

    // The same 100 again (a redelivery after a lost ack) plus 10 new ones.
    let mut again = first.clone();
    again.extend((100..110).map(|i| record(i, day(2))));
    assert_eq!(ingest::insert_batch(&pool, &again).await.unwrap(), 10);

    let (rows, prompt, cost, requests, rolled_prompt, rolled_cost) = totals(&pool).await;
    assert_eq!(rows, 110);
    assert_eq!(requests, 110, "rollups count each request once");
    let want_prompt: u64 = again.iter().map(|r| r.usage.prompt_tokens).sum();
    assert_eq!(prompt as u64, want_prompt);
    assert_eq!(rolled_prompt, prompt);
    let want_cost: f64 = again.iter().map(|r| r.cost_usd).sum();
    assert!((cost - want_cost).abs() < 1e-9, "{cost} vs {want_cost}");
    assert!((rolled_cost - cost).abs() < 1e-9);
    assert_ne!(before.0, rows);

    // Errors are counted per day and key; deployment-less requests roll up under ''.
    let errors: i64 = sqlx::query_scalar("SELECT sum(errors)::bigint FROM spend_daily")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(errors as usize, (0..110).filter(|i| i % 7 == 0).count());
    let no_deployment: i64 = sqlx::query_scalar(
        "SELECT sum(requests)::bigint FROM spend_daily WHERE deployment_id = ''",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        no_deployment as usize,
        (0..110).filter(|i| i % 5 == 0).count()
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn events_from_jetstream_land_exactly_once(pool: PgPool) {
    let names = NatsNames::new(&unique_namespace());
    let js = jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    ingest::ensure_usage_stream(&js, &names).await.unwrap();

    const N: usize = 20_000;
    let records: Vec<_> = (0..N).map(|i| record(i, day(3))).collect();
    // Every tenth event is published twice without a message id, as a data plane that lost
    // an ack after JetStream's duplicate window would: both copies reach ingestion.
    let mut acks = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let payload: bytes::Bytes = serde_json::to_vec(r).unwrap().into();
        acks.push(
            js.publish(names.usage_subject.clone(), payload.clone())
                .await
                .unwrap(),
        );
        if i % 10 == 0 {
            acks.push(
                js.publish(names.usage_subject.clone(), payload)
                    .await
                    .unwrap(),
            );
        }
        // The client bounds unacknowledged publishes: collect acks as we go.
        if acks.len() >= 500 {
            futures_util::future::try_join_all(
                acks.drain(..).map(std::future::IntoFuture::into_future),
            )
            .await
            .unwrap();
        }
    }
    futures_util::future::try_join_all(acks.into_iter().map(std::future::IntoFuture::into_future))
        .await
        .unwrap();

    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let task = tokio::spawn(ingest::run(
        pool.clone(),
        js.clone(),
        names.clone(),
        IngestSettings::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut rows = 0i64;
    while Instant::now() < deadline {
        rows = sqlx::query_scalar("SELECT count(*) FROM spend_events")
            .fetch_one(&pool)
            .await
            .unwrap();
        if rows as usize >= N {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed();
    // Every delivery, duplicates included, is acknowledged in the end: the work queue empties.
    let mut stream = js.get_stream(&names.usage_stream).await.unwrap();
    let mut left = u64::MAX;
    while Instant::now() < deadline + Duration::from_secs(10) {
        left = stream.info().await.unwrap().state.messages;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(());
    task.await.unwrap();
    eprintln!(
        "ingestion: {N} events (+{} duplicates) in {:.2} s = {:.0} rows/s",
        N / 10,
        elapsed.as_secs_f64(),
        N as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(rows as usize, N);
    let ids: Vec<String> = sqlx::query_scalar("SELECT request_id FROM spend_events")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), N);
    let (_, _, _, requests, _, _) = totals(&pool).await;
    assert_eq!(
        requests as usize, N,
        "duplicates must not reach the rollups"
    );
    assert_eq!(
        left, 0,
        "unacknowledged usage events left in the work queue"
    );
    js.delete_stream(&names.usage_stream).await.unwrap();
}

#[sqlx::test(migrations = "../migrations")]
async fn rows_land_in_daily_partitions_and_expired_ones_are_dropped(pool: PgPool) {
    let today = NaiveDate::from_ymd_opt(2026, 11, 23).unwrap();
    ingest::ensure_partitions(&pool, today, 2).await.unwrap();
    ingest::insert_batch(
        &pool,
        &[
            record(1, Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap()),
            record(2, Utc.with_ymd_and_hms(2026, 11, 22, 23, 59, 59).unwrap()),
            record(3, Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap()),
        ],
    )
    .await
    .unwrap();
    let placed: Vec<(String, String)> = sqlx::query_as(
        "SELECT request_id, tableoid::regclass::text FROM spend_events ORDER BY request_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        placed,
        [
            ("req-0000001".into(), "spend_events_20261123".into()),
            ("req-0000002".into(), "spend_events_20261122".into()),
            ("req-0000003".into(), "spend_events_default".into()),
        ]
    );

    // Keep one day: the 22nd goes (with its raw row), the 23rd stays, rollups stay.
    let dropped = ingest::drop_expired_partitions(&pool, today, 0)
        .await
        .unwrap();
    assert_eq!(dropped, ["spend_events_20261122"]);
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM spend_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rows, 2);
    let rolled: i64 = sqlx::query_scalar("SELECT sum(requests)::bigint FROM spend_daily")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rolled, 3);
}
