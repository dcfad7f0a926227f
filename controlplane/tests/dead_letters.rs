//! Ingestion that cannot be poisoned (issue 13 item 2), against real Postgres and NATS: a
//! malformed event and one with values the books refuse land in the dead-letter table with
//! their reason, every other event of the batch is stored, the work queue empties, and
//! platform admins list them; token rollups never overflow `bigint`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use controlplane::service::auth::Role;
use sqlx::PgPool;
use switchboard_shared::cluster::NatsNames;

use common::{start, usage_record};

#[sqlx::test(migrations = "../migrations")]
async fn poisoned_usage_events_are_dead_lettered_and_their_batch_mates_stored(pool: PgPool) {
    let cp = start(pool.clone()).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    let viewer = cp.admin("v@example.com", Role::Viewer, None).await;
    let names = NatsNames::new(&cp.namespace);
    let client = async_nats::connect(common::nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    controlplane::ingest::ensure_usage_stream(&js, &names)
        .await
        .unwrap();
    let now = chrono::Utc::now();
    let mut payloads: Vec<Vec<u8>> = Vec::new();
    for i in 0..3 {
        let r = usage_record(&format!("good-{i}"), "t1", "k1", now, 0.01);
        payloads.push(serde_json::to_vec(&r).unwrap());
    }
    let mut huge = usage_record("huge-tokens", "t1", "k1", now, 0.01);
    huge.usage.completion_tokens = u64::MAX;
    payloads.push(serde_json::to_vec(&huge).unwrap());
    payloads.push(b"{\"request_id\": \"half a record".to_vec());
    let mut negative = usage_record("negative-cost", "t1", "k1", now, -5.0);
    negative.usage.prompt_tokens = 1;
    payloads.push(serde_json::to_vec(&negative).unwrap());
    for i in 3..6 {
        let r = usage_record(&format!("good-{i}"), "t1", "k1", now, 0.01);
        payloads.push(serde_json::to_vec(&r).unwrap());
    }
    for p in payloads {
        js.publish(names.usage_subject.clone(), p.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }

    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut rows, mut letters, mut left) = (0i64, 0i64, u64::MAX);
    while Instant::now() < deadline {
        rows = sqlx::query_scalar("SELECT count(*) FROM spend_events")
            .fetch_one(&pool)
            .await
            .unwrap();
        letters = sqlx::query_scalar("SELECT count(*) FROM ingest_dead_letters")
            .fetch_one(&pool)
            .await
            .unwrap();
        left = js
            .get_stream(&names.usage_stream)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .state
            .messages;
        if rows == 6 && letters == 3 && left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        (rows, letters, left),
        (6, 3, 0),
        "stored, dead letters, queued"
    );

    let r = cp.get("/admin/v1/dead-letters", &root).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let items = r.body["items"].as_array().unwrap();
    let text = r.body.to_string();
    assert_eq!(items.len(), 3, "{text}");
    assert!(text.contains("completion_tokens"), "{text}");
    assert!(text.contains("cost_usd"), "{text}");
    assert!(text.contains("not a usage record"), "{text}");
    assert!(
        items.iter().any(|i| i["request_id"] == "huge-tokens"),
        "{text}"
    );
    let r = cp.get("/admin/v1/dead-letters", &viewer).await;
    r.assert_problem(StatusCode::FORBIDDEN, None, "viewer");
}

#[sqlx::test(migrations = "../migrations")]
async fn daily_token_rollups_saturate_instead_of_failing_the_batch(pool: PgPool) {
    let today = chrono::Utc::now();
    controlplane::ingest::ensure_partitions(&pool, today.date_naive(), 1)
        .await
        .unwrap();
    let mut a = usage_record("big-a", "t1", "k1", today, 0.01);
    a.usage.prompt_tokens = u64::MAX;
    let mut b = usage_record("big-b", "t1", "k1", today, 0.01);
    b.usage.prompt_tokens = u64::MAX;
    assert_eq!(
        controlplane::ingest::insert_batch(&pool, &[a])
            .await
            .unwrap(),
        1
    );
    // A second one on the same day and key: the rollup would pass bigint's maximum.
    assert_eq!(
        controlplane::ingest::insert_batch(&pool, &[b])
            .await
            .unwrap(),
        1
    );
    let rolled: i64 = sqlx::query_scalar("SELECT prompt_tokens FROM spend_daily")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(rolled, i64::MAX);
}

#[sqlx::test(migrations = "../migrations")]
async fn an_event_older_than_raw_retention_is_refused_not_booked_again(pool: PgPool) {
    // `spend.raw_retention_days` is 90 by default: a spill file replayed 100 days late.
    let cp = start(pool.clone()).await;
    let names = NatsNames::new(&cp.namespace);
    let js = async_nats::jetstream::new(async_nats::connect(common::nats_url()).await.unwrap());
    controlplane::ingest::ensure_usage_stream(&js, &names)
        .await
        .unwrap();
    let now = chrono::Utc::now();
    let old = usage_record("too-old", "t1", "k1", now - chrono::Days::new(100), 0.01);
    let fresh = usage_record("fresh", "t1", "k1", now, 0.01);
    for r in [old, fresh] {
        let payload = serde_json::to_vec(&r).unwrap();
        js.publish(names.usage_subject.clone(), payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = (Vec::new(), Vec::new());
    while Instant::now() < deadline {
        let booked: Vec<String> = sqlx::query_scalar("SELECT request_id FROM spend_events")
            .fetch_all(&pool)
            .await
            .unwrap();
        let refused: Vec<(Option<String>, String)> =
            sqlx::query_as("SELECT request_id, reason FROM ingest_dead_letters")
                .fetch_all(&pool)
                .await
                .unwrap();
        seen = (booked, refused);
        if !seen.0.is_empty() && !seen.1.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (booked, refused) = seen;
    assert_eq!(booked, ["fresh"]);
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0].0.as_deref(), Some("too-old"));
    assert!(refused[0].1.contains("retention"), "{}", refused[0].1);
    let daily: i64 = sqlx::query_scalar("SELECT count(*) FROM spend_daily")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(daily, 1, "only the fresh event reaches the rollups");
}
