//! The snapshot build at scale: 100,000 virtual keys. Ignored by default (it takes a while
//! in debug builds); run it with
//! `cargo test -p switchboard-controlplane --release --test snapshot_scale -- --ignored --nocapture`
//! and read the printed figures.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

use std::time::Instant;

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
    let snapshot = controlplane::snapshot::build_consistent(&pool)
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
}
