//! Measurements, ignored by default (slow in debug builds): the snapshot build for 100,000
//! virtual keys, and the latency of admin writes including their publication on NATS. Run
//! `cargo test -p switchboard-controlplane --release --test snapshot_scale -- --ignored --nocapture`
//! and read the printed figures.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::time::{Duration, Instant};

use controlplane::service::auth::Role;
use serde_json::json;

use controlplane::publish::Built;
use sqlx::PgPool;

#[sqlx::test(migrations = "../migrations")]
#[ignore = "measurement; run explicitly"]
async fn build_100k_keys(pool: PgPool) {
    sqlx::query("INSERT INTO tenants (id) SELECT 't' || g FROM generate_series(1, 100) g")
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO virtual_keys (id, tenant_id, name, key_hash, display_prefix, rpm, metadata) \
         SELECT 'k' || g, 't' || (g % 100 + 1), 'key ' || g, \
                encode(sha256(('secret' || g)::bytea), 'hex'), 'sk-sb-abcd', 600, \
                '{\"team\": \"ml\"}'::jsonb \
         FROM generate_series(1, 100000) g",
    )
    .execute(&pool)
    .await
    .unwrap();

    let started = Instant::now();
    let snapshot = controlplane::service::snapshot::build_consistent(&pool)
        .await
        .unwrap();
    let read = started.elapsed();
    snapshot.validate().unwrap();
    let validated = started.elapsed();
    let built = Built::from_snapshot(&snapshot);
    let total = started.elapsed();
    assert_eq!(snapshot.virtual_keys.len(), 100_000);
    let line = format!(
        "snapshot with 100000 keys: {} bytes ({:.1} MB); read {:?}, +validate {:?}, +JSON and hash {:?} (total {:?})",
        built.json.len(),
        built.json.len() as f64 / 1e6,
        read,
        validated - read,
        total - validated,
        total,
    );
    eprintln!("{line}");

    // One admin write at this size: it validates the whole snapshot in its transaction and
    // publishes a 29 MB body.
    let cp = common::start(pool).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    let mut times = Vec::new();
    for _ in 0..5 {
        let started = Instant::now();
        let r = cp
            .post("/admin/v1/keys", &root, json!({"tenant_id": "t1"}))
            .await;
        assert_eq!(r.status, axum::http::StatusCode::CREATED, "{}", r.body);
        times.push(started.elapsed());
    }
    eprintln!("admin key creation with 100000 keys, committed and published: {times:?}");
}

#[sqlx::test(migrations = "../migrations")]
#[ignore = "measurement; run explicitly"]
async fn write_latency_including_publication(pool: PgPool) {
    let cp = common::start(pool).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    cp.post("/admin/v1/tenants", &root, json!({"id": "acme"}))
        .await;
    let mut create = Vec::new();
    let mut revoke = Vec::new();
    for _ in 0..100 {
        let started = Instant::now();
        let r = cp
            .post("/admin/v1/keys", &root, json!({"tenant_id": "acme"}))
            .await;
        create.push(started.elapsed());
        let id = r.body["id"].as_str().unwrap().to_owned();
        let started = Instant::now();
        cp.post(&format!("/admin/v1/keys/{id}/revoke"), &root, json!({}))
            .await;
        revoke.push(started.elapsed());
    }
    let pct = |v: &mut Vec<Duration>, p: usize| {
        v.sort();
        v[(v.len() * p / 100).min(v.len() - 1)]
    };
    eprintln!(
        "100 key creations, committed and published: p50 {:?} p99 {:?}; 100 revocations: p50 {:?} p99 {:?}",
        pct(&mut create, 50),
        pct(&mut create, 99),
        pct(&mut revoke, 50),
        pct(&mut revoke, 99),
    );
}
