//! Budgets in the control plane against real Postgres (a fresh database per test), Redis (a
//! key prefix of each test's own) and NATS: period spend from Postgres, reconciliation of the
//! data planes' Redis counters, and the budget admin API.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::time::Duration;

use axum::http::{Method, StatusCode};
use chrono::{DateTime, Utc};
use common::{Cp, start, start_with, usage_record as record};
use controlplane::config::RedisSettings;
use controlplane::service::auth::Role;
use controlplane::service::budgets::counters::{
    Counters, Outcome, RECONCILE_LOCK, reconcile_once, reconcile_once_locked,
};
use serde_json::{Value, json};
use sqlx::PgPool;
use switchboard_shared::budget::{BudgetScope, Period, counter_key, period_of};
use switchboard_shared::snapshot::Budget;
use switchboard_shared::usage::UsageRecord;

const NANOS: i64 = 1_000_000_000;

fn at(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn spend(pool: &PgPool, records: &[UsageRecord]) {
    let inserted = controlplane::ingest::insert_batch(pool, records)
        .await
        .unwrap();
    assert_eq!(inserted, records.len() as u64);
}

fn budget(v: Value) -> Budget {
    serde_json::from_value(v).unwrap()
}

/// A tenant (and its budget) straight into Postgres, as earlier admin writes left it.
async fn tenant(pool: &PgPool, id: &str, b: Option<Value>) {
    sqlx::query("INSERT INTO tenants (id, budget) VALUES ($1, $2)")
        .bind(id)
        .bind(b)
        .execute(pool)
        .await
        .unwrap();
}

async fn key(pool: &PgPool, id: &str, tenant: &str, b: Option<Value>) {
    sqlx::query(
        "INSERT INTO virtual_keys (id, tenant_id, key_hash, display_prefix, budget) \
         VALUES ($1, $2, $3, 'sk-sb-xxxx', $4)",
    )
    .bind(id)
    .bind(tenant)
    .bind(format!("hash-of-{id}"))
    .bind(b)
    .execute(pool)
    .await
    .unwrap();
}

/// This test's corner of the shared Redis: a key prefix nobody else uses, deleted at the end.
struct Scratch {
    prefix: String,
    client: redis::Client,
}

impl Scratch {
    fn new() -> Self {
        Self {
            prefix: format!("cpb{}", uuid::Uuid::now_v7().simple()),
            client: redis::Client::open(redis_url()).unwrap(),
        }
    }

    fn settings(&self, interval: Duration) -> RedisSettings {
        RedisSettings {
            url: redis_url(),
            key_prefix: self.prefix.clone(),
            reconcile_interval: interval,
        }
    }

    fn counters(&self) -> Counters {
        Counters::connect(&self.settings(Duration::from_secs(30))).unwrap()
    }

    /// The data plane's name of a counter.
    fn key(&self, scope: BudgetScope, id: &str, tenant: &str, period: &Period) -> String {
        counter_key(&self.prefix, scope, id, tenant, period)
    }

    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        self.client
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    async fn get(&self, key: &str) -> Option<i64> {
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.conn().await)
            .await
            .unwrap()
    }

    async fn set(&self, key: &str, nanos: i64) {
        let () = redis::cmd("SET")
            .arg(key)
            .arg(nanos)
            .query_async(&mut self.conn().await)
            .await
            .unwrap();
    }

    async fn del(&self, key: &str) {
        let _: i64 = redis::cmd("DEL")
            .arg(key)
            .query_async(&mut self.conn().await)
            .await
            .unwrap();
    }

    async fn ttl(&self, key: &str) -> i64 {
        redis::cmd("TTL")
            .arg(key)
            .query_async(&mut self.conn().await)
            .await
            .unwrap()
    }

    /// Every key under the prefix.
    async fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query_async(&mut self.conn().await)
            .await
            .unwrap();
        keys.sort();
        keys
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let Ok(mut conn) = self.client.get_connection() else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.prefix))
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(keys).query(&mut conn);
        }
    }
}

/// The TTL the data planes give a counter: the period's seconds left plus a day. Redis counts
/// down from when it was set, so allow the test an hour of running time.
fn assert_ttl(ttl: i64, period: &Period, now: DateTime<Utc>) {
    let rule = period.seconds_left(now).unwrap() + 86_400;
    assert!(ttl <= rule && ttl > rule - 3600, "TTL {ttl}, want {rule}");
}

#[sqlx::test(migrations = "../migrations")]
async fn reconcile_restores_lost_counters_to_this_periods_postgres_spend(pool: PgPool) {
    let now = at("2026-11-20T12:00:00Z");
    let monthly = json!({"max_usd": 100, "period": "monthly"});
    let daily = json!({"max_usd": 10, "period": "daily"});
    tenant(&pool, "acme", Some(monthly.clone())).await;
    tenant(&pool, "globex", None).await;
    key(&pool, "k1", "acme", Some(daily.clone())).await;
    key(&pool, "k2", "acme", None).await;
    key(&pool, "g1", "globex", Some(daily.clone())).await;
    spend(
        &pool,
        &[
            record("r1", "acme", "k1", at("2026-11-20T00:00:00Z"), 0.25),
            record("r2", "acme", "k1", at("2026-11-20T11:59:59Z"), 0.5),
            // Yesterday: the month's, not the day's.
            record("r3", "acme", "k1", at("2026-11-19T23:59:59Z"), 1.0),
            // Another key of the tenant, without a budget of its own.
            record("r4", "acme", "k2", at("2026-11-05T08:00:00Z"), 2.0),
            // Last month: neither's.
            record("r5", "acme", "k1", at("2026-10-31T23:59:59Z"), 4.0),
            // Another tenant.
            record("r6", "globex", "g1", at("2026-11-20T02:00:00Z"), 8.0),
        ],
    )
    .await;
    let redis = Scratch::new();
    let day = period_of(&budget(daily.clone()), now);
    let month = period_of(&budget(monthly.clone()), now);
    let k1 = redis.key(BudgetScope::Key, "k1", "acme", &day);
    let acme = redis.key(BudgetScope::Tenant, "acme", "acme", &month);
    let g1 = redis.key(BudgetScope::Key, "g1", "globex", &day);
    assert_eq!(
        redis.keys().await,
        Vec::<String>::new(),
        "Redis starts empty"
    );

    let outcome = reconcile_once(&pool, &redis.counters(), now, 90)
        .await
        .unwrap();
    assert_eq!(
        outcome,
        Outcome {
            subjects: 3,
            raised: 3,
            raised_nanos: 3_750_000_000 + 750_000_000 + 8 * NANOS,
            failed: 0,
        }
    );
    assert_eq!(redis.get(&k1).await, Some(750_000_000));
    assert_eq!(redis.get(&acme).await, Some(3_750_000_000));
    assert_eq!(redis.get(&g1).await, Some(8 * NANOS));
    assert_ttl(redis.ttl(&k1).await, &day, now);
    assert_ttl(redis.ttl(&acme).await, &month, now);
    // Only the current periods' counters exist: none for yesterday or last month.
    let mut expected = vec![k1.clone(), acme.clone(), g1.clone()];
    expected.sort();
    assert_eq!(redis.keys().await, expected);

    // A second pass finds nothing below Postgres and changes nothing.
    let again = reconcile_once(&pool, &redis.counters(), now, 90)
        .await
        .unwrap();
    assert_eq!((again.raised, again.raised_nanos), (0, 0));
    assert_eq!(redis.get(&k1).await, Some(750_000_000));
    assert_eq!(redis.get(&acme).await, Some(3_750_000_000));
}

#[sqlx::test(migrations = "../migrations")]
async fn reconcile_never_lowers_a_counter_and_raises_only_those_below(pool: PgPool) {
    let now = at("2026-11-20T12:00:00Z");
    let monthly = json!({"max_usd": 100, "period": "monthly"});
    tenant(&pool, "acme", None).await;
    key(&pool, "high", "acme", Some(monthly.clone())).await;
    key(&pool, "low", "acme", Some(monthly.clone())).await;
    spend(
        &pool,
        &[
            record("r1", "acme", "high", at("2026-11-10T00:00:00Z"), 3.0),
            record("r2", "acme", "low", at("2026-11-10T00:00:00Z"), 3.0),
        ],
    )
    .await;
    let redis = Scratch::new();
    let month = period_of(&budget(monthly), now);
    let high = redis.key(BudgetScope::Key, "high", "acme", &month);
    let low = redis.key(BudgetScope::Key, "low", "acme", &month);
    // Above Postgres: reservations in flight and spend not ingested yet. Set without a TTL,
    // so that a touched counter would show.
    redis.set(&high, 5 * NANOS).await;
    redis.set(&low, NANOS).await;

    let outcome = reconcile_once(&pool, &redis.counters(), now, 90)
        .await
        .unwrap();
    assert_eq!((outcome.raised, outcome.raised_nanos), (1, 2 * NANOS));
    assert_eq!(
        redis.get(&high).await,
        Some(5 * NANOS),
        "a counter was lowered"
    );
    assert_eq!(
        redis.ttl(&high).await,
        -1,
        "a counter above Postgres was touched"
    );
    assert_eq!(redis.get(&low).await, Some(3 * NANOS));
    assert_ttl(redis.ttl(&low).await, &month, now);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_none_period_counts_all_time_from_the_rollups_and_never_expires(pool: PgPool) {
    let now = at("2026-11-20T12:00:00Z");
    let forever = json!({"max_usd": 100, "period": "none"});
    tenant(&pool, "acme", Some(forever.clone())).await;
    key(&pool, "k1", "acme", Some(forever.clone())).await;
    spend(
        &pool,
        &[
            // Long past any raw retention.
            record("r1", "acme", "k1", at("2025-01-15T10:00:00Z"), 1.0),
            record("r2", "acme", "k1", at("2026-11-20T06:00:00Z"), 0.5),
            record("r3", "acme", "k2", at("2026-06-01T06:00:00Z"), 0.25),
        ],
    )
    .await;
    // The raw rows are gone (retention); the rollups answer.
    sqlx::query("DELETE FROM spend_events")
        .execute(&pool)
        .await
        .unwrap();
    let redis = Scratch::new();
    let all_time = period_of(&budget(forever), now);
    assert_eq!(all_time.id(), 0);
    let k1 = redis.key(BudgetScope::Key, "k1", "acme", &all_time);
    let acme = redis.key(BudgetScope::Tenant, "acme", "acme", &all_time);

    reconcile_once(&pool, &redis.counters(), now, 90)
        .await
        .unwrap();
    assert_eq!(redis.get(&k1).await, Some(1_500_000_000));
    assert_eq!(redis.get(&acme).await, Some(1_750_000_000));
    assert_eq!(
        redis.ttl(&k1).await,
        -1,
        "an all-time counter must not expire"
    );
    assert_eq!(redis.ttl(&acme).await, -1);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_period_older_than_raw_retention_is_answered_by_whole_utc_days_of_rollups(pool: PgPool) {
    let now = at("2026-11-20T12:00:00Z");
    let utc = json!({"max_usd": 100, "period": "monthly"});
    let tokyo = json!({"max_usd": 100, "period": "monthly", "time_zone": "Asia/Tokyo"});
    tenant(&pool, "acme", None).await;
    key(&pool, "utc", "acme", Some(utc.clone())).await;
    key(&pool, "tokyo", "acme", Some(tokyo.clone())).await;
    spend(
        &pool,
        &[
            record("u1", "acme", "utc", at("2026-10-31T23:00:00Z"), 4.0),
            record("u2", "acme", "utc", at("2026-11-02T10:00:00Z"), 1.0),
            record("u3", "acme", "utc", at("2026-11-19T10:00:00Z"), 0.25),
            // Tokyo's November began at 2026-10-31T15:00Z: this is November there, but on a UTC
            // day that began in October, which the rollups cannot split: left out.
            record("t1", "acme", "tokyo", at("2026-10-31T16:00:00Z"), 8.0),
            record("t2", "acme", "tokyo", at("2026-11-03T10:00:00Z"), 2.0),
        ],
    )
    .await;
    // Seven days of raw rows: the months began before that; the raw rows are dropped.
    sqlx::query("DELETE FROM spend_events WHERE started_at < '2026-11-13'")
        .execute(&pool)
        .await
        .unwrap();
    let redis = Scratch::new();
    let utc_key = redis.key(
        BudgetScope::Key,
        "utc",
        "acme",
        &period_of(&budget(utc), now),
    );
    let tokyo_key = redis.key(
        BudgetScope::Key,
        "tokyo",
        "acme",
        &period_of(&budget(tokyo), now),
    );

    reconcile_once(&pool, &redis.counters(), now, 7)
        .await
        .unwrap();
    assert_eq!(redis.get(&utc_key).await, Some(1_250_000_000));
    assert_eq!(redis.get(&tokyo_key).await, Some(2 * NANOS));
}

#[sqlx::test(migrations = "../migrations")]
async fn a_daily_budget_in_new_york_counts_from_local_midnight(pool: PgPool) {
    // 03:00 UTC on the 23rd is 22:00 on the 22nd in New York (UTC-5 in November).
    let now = at("2026-11-23T03:00:00Z");
    let ny = json!({"max_usd": 10, "period": "daily", "time_zone": "America/New_York"});
    tenant(&pool, "acme", None).await;
    key(&pool, "k1", "acme", Some(ny.clone())).await;
    spend(
        &pool,
        &[
            // 23:59:59 on the 21st in New York, though the same UTC day as the next one.
            record("r1", "acme", "k1", at("2026-11-22T04:59:59Z"), 0.5),
            // Local midnight.
            record("r2", "acme", "k1", at("2026-11-22T05:00:00Z"), 0.25),
            // Another UTC day, the same New York day.
            record("r3", "acme", "k1", at("2026-11-23T02:59:59Z"), 1.0),
        ],
    )
    .await;
    let redis = Scratch::new();
    let day = period_of(&budget(ny), now);
    assert_eq!(day.start, at("2026-11-22T05:00:00Z"));
    let k1 = redis.key(BudgetScope::Key, "k1", "acme", &day);

    reconcile_once(&pool, &redis.counters(), now, 90)
        .await
        .unwrap();
    assert_eq!(redis.get(&k1).await, Some(1_250_000_000));
    assert_ttl(redis.ttl(&k1).await, &day, now);
    assert_eq!(
        redis.keys().await,
        vec![k1],
        "a counter under another period's name"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn two_replicas_reconciling_at_once_leave_the_exact_sum(pool: PgPool) {
    let now = at("2026-11-20T12:00:00Z");
    let monthly = json!({"max_usd": 100, "period": "monthly"});
    tenant(&pool, "acme", None).await;
    key(&pool, "k1", "acme", Some(monthly.clone())).await;
    spend(
        &pool,
        &[
            record("r1", "acme", "k1", at("2026-11-02T00:00:00Z"), 1.0),
            record("r2", "acme", "k1", at("2026-11-03T00:00:00Z"), 0.5),
        ],
    )
    .await;
    let redis = Scratch::new();
    let k1 = redis.key(
        BudgetScope::Key,
        "k1",
        "acme",
        &period_of(&budget(monthly), now),
    );

    // Another replica mid-pass holds the lock: this one skips and touches nothing.
    let mut other = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(RECONCILE_LOCK)
        .execute(&mut *other)
        .await
        .unwrap();
    let skipped = reconcile_once_locked(&pool, &redis.counters(), now, 90)
        .await
        .unwrap();
    assert_eq!(skipped, None);
    assert_eq!(redis.get(&k1).await, None);
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(RECONCILE_LOCK)
        .execute(&mut *other)
        .await
        .unwrap();

    // Two at once: however they interleave, the counter is raised once, to the exact sum.
    let (a, b) = (redis.counters(), redis.counters());
    let (ra, rb) = tokio::join!(
        reconcile_once_locked(&pool, &a, now, 90),
        reconcile_once_locked(&pool, &b, now, 90)
    );
    let done: Vec<Outcome> = [ra.unwrap(), rb.unwrap()].into_iter().flatten().collect();
    assert!(!done.is_empty(), "neither replica reconciled");
    assert_eq!(done.iter().map(|o| o.raised).sum::<usize>(), 1);
    assert_eq!(redis.get(&k1).await, Some(1_500_000_000));
}

#[sqlx::test(migrations = "../migrations")]
async fn a_redis_failure_fails_the_pass_without_the_password_and_frees_the_lock(pool: PgPool) {
    let now = at("2026-11-20T12:00:00Z");
    let monthly = json!({"max_usd": 100, "period": "monthly"});
    tenant(&pool, "acme", None).await;
    key(&pool, "k1", "acme", Some(monthly.clone())).await;
    spend(
        &pool,
        &[record("r1", "acme", "k1", at("2026-11-02T00:00:00Z"), 1.0)],
    )
    .await;
    let redis = Scratch::new();
    // Nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = Counters::connect(&RedisSettings {
        url: format!("redis://:hunter2@127.0.0.1:{port}"),
        key_prefix: redis.prefix.clone(),
        reconcile_interval: Duration::from_secs(30),
    })
    .unwrap();
    let err = reconcile_once_locked(&pool, &down, now, 90)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("redis: "), "{text}");
    assert!(
        !text.contains("hunter2") && !text.contains(&port.to_string()),
        "{text}"
    );

    // The failed pass let go of the lock: the next one runs.
    let outcome = reconcile_once_locked(&pool, &redis.counters(), now, 90)
        .await
        .unwrap();
    assert_eq!(outcome.map(|o| o.raised), Some(1));
}

/// Waits until `key` holds `want` (the reconciliation loop runs every second).
async fn until_counter(redis: &Scratch, key: &str, want: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = redis.get(key).await;
        if got == Some(want) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{key} is {got:?}, never became {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn serve_with_redis_restores_a_lost_counter_in_the_background(pool: PgPool) {
    let redis = Scratch::new();
    let mut settings = common::settings(&common::unique_namespace());
    settings.redis = Some(redis.settings(Duration::from_secs(1)));
    let cp = start_with(pool.clone(), settings).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    let r = cp
        .post("/admin/v1/tenants", &root, json!({"id": "acme"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = cp
        .post("/admin/v1/keys", &root, json!({"tenant_id": "acme"}))
        .await;
    let id = r.body["id"].as_str().unwrap().to_owned();
    let forever = json!({"max_usd": 100, "period": "none"});
    let r = cp
        .call(
            Method::PUT,
            &format!("/admin/v1/keys/{id}/budget"),
            &root,
            Some(forever.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let counter = redis.key(
        BudgetScope::Key,
        &id,
        "acme",
        &period_of(&budget(forever), Utc::now()),
    );

    // Spend arrives in Postgres that the counter never saw (admitted while Redis was down).
    let now = Utc::now();
    spend(
        &pool,
        &[
            record("r1", "acme", &id, now - chrono::Duration::minutes(1), 0.5),
            record("r2", "acme", &id, now - chrono::Duration::minutes(2), 0.25),
        ],
    )
    .await;
    until_counter(&redis, &counter, 750_000_000).await;

    // Redis loses its data: the loop puts the counter back.
    redis.del(&counter).await;
    until_counter(&redis, &counter, 750_000_000).await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_budget_write_raises_its_counter_at_once(pool: PgPool) {
    let mut cp = start(pool.clone()).await;
    // No reconciliation loop runs (the control plane has no redis section); only the write's
    // own raise can fill the counter in.
    let redis = Scratch::new();
    let mut state = cp.running.state.clone();
    state.counters = Some(redis.counters());
    cp.router = controlplane::routes::router(state);
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    let r = cp
        .post("/admin/v1/tenants", &root, json!({"id": "acme"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = cp
        .post("/admin/v1/keys", &root, json!({"tenant_id": "acme"}))
        .await;
    let id = r.body["id"].as_str().unwrap().to_owned();
    spend(
        &pool,
        &[record(
            "r1",
            "acme",
            &id,
            Utc::now() - chrono::Duration::minutes(1),
            1.5,
        )],
    )
    .await;
    let forever = json!({"max_usd": 100, "period": "none"});
    let r = cp
        .call(
            Method::PUT,
            &format!("/admin/v1/keys/{id}/budget"),
            &root,
            Some(forever.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let counter = redis.key(
        BudgetScope::Key,
        &id,
        "acme",
        &period_of(&budget(forever), Utc::now()),
    );
    assert_eq!(redis.get(&counter).await, Some(1_500_000_000));
}

// ---------------------------------------------------------------------------------------------
// The admin API.

/// `cp.fingerprint()` plus every budget's text.
async fn fingerprint(cp: &Cp) -> (Vec<i64>, String) {
    let (budgets,): (String,) = sqlx::query_as(
        "SELECT coalesce(string_agg(id || '=' || coalesce(budget::text, '-'), ',' ORDER BY id), '') \
         FROM (SELECT id, budget FROM tenants UNION ALL SELECT id, budget FROM virtual_keys) b",
    )
    .fetch_one(cp.pool())
    .await
    .unwrap();
    (cp.fingerprint().await, budgets)
}

async fn revision(pool: &PgPool) -> u64 {
    let (r,): (i64,) = sqlx::query_as("SELECT revision FROM config_revision")
        .fetch_one(pool)
        .await
        .unwrap();
    r as u64
}

/// Tenants acme and globex, one key each; returns the keys' ids.
async fn two_tenants_with_keys(cp: &Cp, root: &str) -> (String, String) {
    let mut ids = Vec::new();
    for t in ["acme", "globex"] {
        let r = cp.post("/admin/v1/tenants", root, json!({"id": t})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        let r = cp
            .post("/admin/v1/keys", root, json!({"tenant_id": t, "name": t}))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        ids.push(r.body["id"].as_str().unwrap().to_owned());
    }
    (ids[0].clone(), ids[1].clone())
}

/// The budget of `id` as published: a key's in the config delta of `revision` (key-only
/// writes go out as deltas, `docs/cluster.md`), a tenant's in the latest snapshot this control
/// plane built, once its revision is at least `revision`.
async fn published_budget(cp: &Cp, section: &str, id: &str, revision: u64) -> Value {
    if section == "virtual_keys" {
        let names = switchboard_shared::cluster::NatsNames::new(&cp.namespace);
        let js = async_nats::jetstream::new(async_nats::connect(common::nats_url()).await.unwrap());
        let message = js
            .get_stream(&names.delta_stream)
            .await
            .unwrap()
            .get_last_raw_message_by_subject(&names.delta_subject)
            .await
            .unwrap();
        let (head, body) = switchboard_shared::config_delta::split(&message.payload).unwrap();
        assert!(
            head.revision >= revision,
            "the write's delta was never published"
        );
        let delta: Value = serde_json::from_slice(body).unwrap();
        let key = delta["virtual_keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["id"] == id)
            .unwrap()
            .clone();
        return key.get("budget").cloned().unwrap_or(Value::Null);
    }
    let mut latest = cp.running.state.publisher.subscribe();
    let built = tokio::time::timeout(
        Duration::from_secs(10),
        latest.wait_for(|b| b.as_ref().is_some_and(|b| b.revision >= revision)),
    )
    .await
    .expect("the write's snapshot was never offered")
    .unwrap()
    .clone()
    .unwrap();
    let snapshot: Value = serde_json::from_slice(&built.json).unwrap();
    let item = snapshot[section]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["id"] == id)
        .unwrap()
        .clone();
    item.get("budget").cloned().unwrap_or(Value::Null)
}

/// One audit row about a budget.
#[derive(Debug, PartialEq, sqlx::FromRow)]
struct AuditRow {
    action: String,
    object_type: String,
    object_id: String,
    tenant_id: Option<String>,
    revision: i64,
    before: Option<Value>,
    after: Option<Value>,
}

/// The audit rows about budgets, oldest first.
async fn budget_audit(pool: &PgPool) -> Vec<AuditRow> {
    sqlx::query_as(
        "SELECT action, object_type, object_id, tenant_id, revision, before, after \
         FROM audit_log WHERE action LIKE '%budget' ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = "../migrations")]
async fn budget_crud_round_trip_publishes_audits_and_shows_postgres_spend(pool: PgPool) {
    let cp = start(pool.clone()).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    let (k, g) = two_tenants_with_keys(&cp, &root).await;
    let uri = format!("/admin/v1/keys/{k}/budget");
    let r = cp.get(&uri, &root).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "no budget yet: {}", r.body);

    // Set.
    let before = revision(&pool).await;
    let first = json!({"max_usd": 10.0, "soft_usd": 4.0, "period": "none"});
    let r = cp.call(Method::PUT, &uri, &root, Some(first.clone())).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let rev1 = r.revision();
    assert_eq!(rev1, before + 1);
    assert_eq!(revision(&pool).await, rev1);
    assert_eq!(r.body["scope"], "key");
    assert_eq!(r.body["id"], k.as_str());
    assert_eq!(r.body["tenant_id"], "acme");
    assert_eq!(r.body["budget"], first);
    assert_eq!(r.body["period_start"], "1970-01-01T00:00:00Z");
    assert_eq!(r.body["period_end"], Value::Null);
    assert_eq!(r.body["spent_usd"], 0.0);
    assert_eq!(r.body["remaining_usd"], 10.0);
    assert_eq!(r.body["state"], "ok");
    assert_eq!(r.body["spend_source"], "daily_rollups");
    assert_eq!(published_budget(&cp, "virtual_keys", &k, rev1).await, first);
    let audit = budget_audit(&pool).await;
    assert_eq!(audit.len(), 1);
    assert_eq!(
        audit[0],
        AuditRow {
            action: "set_budget".into(),
            object_type: "virtual_key".into(),
            object_id: k.clone(),
            tenant_id: Some("acme".into()),
            revision: rev1 as i64,
            before: None,
            after: Some(first.clone()),
        }
    );

    // Read, with Postgres' spend: the key's own only, all time.
    let now = Utc::now();
    let minute = chrono::Duration::minutes(1);
    spend(
        &pool,
        &[
            record("r1", "acme", &k, now - minute, 3.0),
            record("r2", "acme", "another-key", now - minute, 1.0),
            record("r3", "globex", &g, now - minute, 100.0),
            record("r4", "acme", &k, now - chrono::Duration::days(400), 1.0),
        ],
    )
    .await;
    let r = cp.get(&uri, &root).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        (
            &r.body["spent_usd"],
            &r.body["remaining_usd"],
            &r.body["state"]
        ),
        (&json!(4.0), &json!(6.0), &json!("soft_exceeded"))
    );
    spend(&pool, &[record("r5", "acme", &k, now - minute, 6.0)]).await;
    let r = cp.get(&uri, &root).await;
    assert_eq!(
        (
            &r.body["spent_usd"],
            &r.body["remaining_usd"],
            &r.body["state"]
        ),
        (&json!(10.0), &json!(0.0), &json!("exhausted"))
    );

    // A tenant's budget counts every key of the tenant.
    let tenant_budget = json!({"max_usd": 50.0, "period": "none"});
    let r = cp
        .call(
            Method::PUT,
            "/admin/v1/tenants/acme/budget",
            &root,
            Some(tenant_budget.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["scope"], "tenant");
    assert_eq!(r.body["spent_usd"], 11.0);
    assert_eq!(r.body["state"], "ok");
    assert_eq!(
        published_budget(&cp, "tenants", "acme", r.revision()).await,
        tenant_budget
    );

    // The list: each tenant's budget before its keys'; filters and pages.
    let daily = json!({"max_usd": 5.0, "period": "daily", "time_zone": "Europe/Berlin"});
    let r = cp
        .call(
            Method::PUT,
            &format!("/admin/v1/keys/{g}/budget"),
            &root,
            Some(daily.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["spend_source"], "events");
    let start: DateTime<Utc> = r.body["period_start"].as_str().unwrap().parse().unwrap();
    let end: DateTime<Utc> = r.body["period_end"].as_str().unwrap().parse().unwrap();
    assert!(
        end - start >= chrono::Duration::hours(23) && end - start <= chrono::Duration::hours(25)
    );
    let listed = |body: &Value| -> Vec<(String, String)> {
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["scope"].as_str().unwrap().to_owned(),
                    i["id"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let all = cp.get("/admin/v1/budgets", &root).await;
    assert_eq!(all.status, StatusCode::OK, "{}", all.body);
    assert_eq!(
        listed(&all.body),
        [
            ("tenant".to_owned(), "acme".to_owned()),
            ("key".to_owned(), k.clone()),
            ("key".to_owned(), g.clone()),
        ]
    );
    assert_eq!(all.body["items"][0]["spent_usd"], 11.0);
    assert_eq!(all.body["items"][1]["spent_usd"], 10.0);
    let keys_only = cp.get("/admin/v1/budgets?scope=key", &root).await;
    assert_eq!(
        listed(&keys_only.body),
        [("key".to_owned(), k.clone()), ("key".to_owned(), g.clone())]
    );
    let globex = cp.get("/admin/v1/budgets?tenant_id=globex", &root).await;
    assert_eq!(listed(&globex.body), [("key".to_owned(), g.clone())]);
    let page1 = cp.get("/admin/v1/budgets?limit=2", &root).await;
    assert_eq!(listed(&page1.body).len(), 2);
    assert_eq!(page1.body["next_offset"], 2);
    let page2 = cp.get("/admin/v1/budgets?limit=2&offset=2", &root).await;
    assert_eq!(listed(&page2.body), [("key".to_owned(), g.clone())]);
    assert!(page2.body.get("next_offset").is_none());

    // Replace.
    let second = json!({"max_usd": 20.0, "period": "none"});
    let r = cp
        .call(Method::PUT, &uri, &root, Some(second.clone()))
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        (&r.body["remaining_usd"], &r.body["state"]),
        (&json!(10.0), &json!("ok"))
    );
    let replaced = r.revision();
    let audit = budget_audit(&pool).await;
    let last = audit.last().unwrap();
    assert_eq!(
        (
            last.action.as_str(),
            last.revision,
            last.before.as_ref(),
            last.after.as_ref()
        ),
        ("set_budget", replaced as i64, Some(&first), Some(&second))
    );

    // Remove.
    let r = cp.call(Method::DELETE, &uri, &root, None).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    let removed = r.revision();
    assert_eq!(removed, replaced + 1);
    assert_eq!(
        published_budget(&cp, "virtual_keys", &k, removed).await,
        Value::Null
    );
    let audit = budget_audit(&pool).await;
    let last = audit.last().unwrap();
    assert_eq!(
        (
            last.action.as_str(),
            last.object_type.as_str(),
            last.revision,
            last.before.as_ref(),
            last.after.as_ref()
        ),
        (
            "delete_budget",
            "virtual_key",
            removed as i64,
            Some(&second),
            None
        )
    );
    assert_eq!(cp.get(&uri, &root).await.status, StatusCode::NOT_FOUND);
    let (key_budget,): (Option<Value>,) =
        sqlx::query_as("SELECT budget FROM virtual_keys WHERE id = $1")
            .bind(&k)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(key_budget, None);
    // Removing it again: 404, and no revision is spent.
    let r = cp.call(Method::DELETE, &uri, &root, None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{}", r.body);
    assert_eq!(revision(&pool).await, removed);
    let r = cp
        .call(Method::DELETE, "/admin/v1/tenants/acme/budget", &root, None)
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
    assert_eq!(
        listed(&cp.get("/admin/v1/budgets", &root).await.body),
        [("key".to_owned(), g.clone())]
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn tenant_admins_see_only_their_tenants_budgets_and_viewers_cannot_write(pool: PgPool) {
    let cp = start(pool).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    let (a, g) = two_tenants_with_keys(&cp, &root).await;
    let b = json!({"max_usd": 10.0, "period": "monthly"});
    for uri in [
        format!("/admin/v1/keys/{a}/budget"),
        format!("/admin/v1/keys/{g}/budget"),
        "/admin/v1/tenants/acme/budget".to_owned(),
        "/admin/v1/tenants/globex/budget".to_owned(),
    ] {
        let r = cp.call(Method::PUT, &uri, &root, Some(b.clone())).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}: {}", r.body);
    }
    let acme = cp
        .admin("ops@acme.example", Role::TenantAdmin, Some("acme"))
        .await;
    let viewer = cp.admin("audit@example.com", Role::Viewer, None).await;
    let before = fingerprint(&cp).await;
    let other = json!({"max_usd": 99.0});

    // Another tenant's budgets read like unknown ids, for reading and writing.
    for uri in [
        format!("/admin/v1/keys/{g}/budget"),
        "/admin/v1/tenants/globex/budget".to_owned(),
    ] {
        for (method, body) in [
            (Method::GET, None),
            (Method::PUT, Some(other.clone())),
            (Method::DELETE, None),
        ] {
            let r = cp.call(method.clone(), &uri, &acme, body).await;
            assert_eq!(
                r.status,
                StatusCode::NOT_FOUND,
                "{method} {uri}: {}",
                r.body
            );
            assert_eq!(r.headers["content-type"], "application/problem+json");
        }
    }
    let r = cp.get("/admin/v1/budgets", &acme).await;
    let ids: Vec<&str> = r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["acme", a.as_str()]);
    let r = cp.get("/admin/v1/budgets?tenant_id=globex", &acme).await;
    assert_eq!(r.body["items"], json!([]));
    // Its own tenant's budget: readable, not writable (a platform admin's to set).
    assert_eq!(
        cp.get("/admin/v1/tenants/acme/budget", &acme).await.status,
        StatusCode::OK
    );
    for (method, body) in [(Method::PUT, Some(other.clone())), (Method::DELETE, None)] {
        let r = cp
            .call(method.clone(), "/admin/v1/tenants/acme/budget", &acme, body)
            .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{method}: {}", r.body);
    }

    // A viewer reads everything and writes nothing.
    let r = cp.get("/admin/v1/budgets", &viewer).await;
    assert_eq!(r.body["items"].as_array().unwrap().len(), 4);
    for uri in [
        format!("/admin/v1/keys/{g}/budget"),
        "/admin/v1/tenants/globex/budget".to_owned(),
    ] {
        assert_eq!(cp.get(&uri, &viewer).await.status, StatusCode::OK);
        for (method, body) in [(Method::PUT, Some(other.clone())), (Method::DELETE, None)] {
            let r = cp.call(method.clone(), &uri, &viewer, body).await;
            assert_eq!(
                r.status,
                StatusCode::FORBIDDEN,
                "{method} {uri}: {}",
                r.body
            );
        }
    }
    // No token at all.
    for (method, uri) in [
        (Method::GET, "/admin/v1/budgets".to_owned()),
        (Method::PUT, format!("/admin/v1/keys/{a}/budget")),
    ] {
        let r = cp
            .raw(
                method.clone(),
                &uri,
                None,
                serde_json::to_vec(&other).unwrap(),
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{method} {uri}");
    }
    assert_eq!(
        fingerprint(&cp).await,
        before,
        "a refused request changed the database"
    );

    // The tenant admin manages its own keys' budgets.
    let r = cp
        .call(
            Method::PUT,
            &format!("/admin/v1/keys/{a}/budget"),
            &acme,
            Some(other.clone()),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["budget"]["max_usd"], 99.0);
    let r = cp
        .call(
            Method::DELETE,
            &format!("/admin/v1/keys/{a}/budget"),
            &acme,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT, "{}", r.body);
}

#[sqlx::test(migrations = "../migrations")]
async fn bad_budget_input_gets_the_right_4xx_and_changes_nothing(pool: PgPool) {
    let cp = start(pool).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    let (k, _) = two_tenants_with_keys(&cp, &root).await;
    let set = cp
        .call(
            Method::PUT,
            "/admin/v1/tenants/acme/budget",
            &root,
            Some(json!({"max_usd": 10.0})),
        )
        .await;
    assert_eq!(set.status, StatusCode::OK, "{}", set.body);
    let before = fingerprint(&cp).await;

    let key_uri = format!("/admin/v1/keys/{k}/budget");
    let tenant_uri = "/admin/v1/tenants/acme/budget".to_owned();
    // (method, uri, body, expected status, a field path the problem must name)
    type Case = (
        Method,
        String,
        &'static str,
        StatusCode,
        Option<&'static str>,
    );
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let mut cases: Vec<Case> = Vec::new();
    for uri in [&key_uri, &tenant_uri] {
        for (body, status, path) in [
            (r#"{"max_usd": 0}"#, unprocessable, Some("max_usd")),
            (r#"{"max_usd": -1}"#, unprocessable, Some("max_usd")),
            (
                r#"{"max_usd": 1, "soft_usd": 5}"#,
                unprocessable,
                Some("soft_usd"),
            ),
            (
                r#"{"max_usd": 1, "soft_usd": 0}"#,
                unprocessable,
                Some("soft_usd"),
            ),
            (
                r#"{"max_usd": 1, "soft_usd": -1}"#,
                unprocessable,
                Some("soft_usd"),
            ),
            (
                r#"{"max_usd": 1, "time_zone": "Mars/Olympus"}"#,
                unprocessable,
                Some("time_zone"),
            ),
            (
                r#"{"max_usd": 1, "period": "yearly"}"#,
                unprocessable,
                Some("period"),
            ),
            (r#"{"max_usd": "ten"}"#, unprocessable, Some("max_usd")),
            (r#"{"max_usd": 1, "colour": "red"}"#, unprocessable, None),
            (r#"{"soft_usd": 1}"#, unprocessable, None),
            ("[1, 2]", unprocessable, None),
            (r#"{"max_usd": "#, StatusCode::BAD_REQUEST, None),
            ("not json", StatusCode::BAD_REQUEST, None),
            // Beyond a double: refused at its field, like any other bad amount.
            (
                r#"{"max_usd": 1e999}"#,
                StatusCode::UNPROCESSABLE_ENTITY,
                Some("max_usd"),
            ),
        ] {
            cases.push((Method::PUT, uri.clone(), body, status, path));
        }
    }
    let good = r#"{"max_usd": 1}"#;
    for (method, uri, body) in [
        (Method::PUT, "/admin/v1/keys/nope/budget", good),
        (Method::PUT, "/admin/v1/tenants/ghost/budget", good),
        (Method::GET, "/admin/v1/keys/nope/budget", ""),
        (Method::GET, "/admin/v1/tenants/ghost/budget", ""),
        (Method::DELETE, "/admin/v1/keys/nope/budget", ""),
        (Method::DELETE, "/admin/v1/tenants/ghost/budget", ""),
        // The key exists but has no budget.
        (Method::DELETE, key_uri.as_str(), ""),
        (Method::GET, key_uri.as_str(), ""),
    ] {
        cases.push((method, uri.to_owned(), body, StatusCode::NOT_FOUND, None));
    }
    for uri in [
        "/admin/v1/budgets?limit=0",
        "/admin/v1/budgets?limit=5000",
        "/admin/v1/budgets?scope=user",
        "/admin/v1/budgets?offset=-1",
        "/admin/v1/budgets?bogus=1",
    ] {
        cases.push((
            Method::GET,
            uri.to_owned(),
            "",
            StatusCode::BAD_REQUEST,
            None,
        ));
    }
    cases.push((
        Method::PUT,
        format!("{key_uri}?wait_ms=999999"),
        good,
        StatusCode::BAD_REQUEST,
        None,
    ));

    for (method, uri, body, status, path) in cases {
        let r = cp
            .raw(method.clone(), &uri, Some(&root), body.as_bytes().to_vec())
            .await;
        r.assert_problem(status, path, &format!("{method} {uri} {body}"));
        assert_eq!(
            fingerprint(&cp).await,
            before,
            "{method} {uri} {body} changed the database"
        );
    }
    // An unknown field is named in the problem.
    let r = cp
        .raw(
            Method::PUT,
            &key_uri,
            Some(&root),
            br#"{"max_usd": 1, "colour": "red"}"#.to_vec(),
        )
        .await;
    assert!(
        r.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("colour"),
        "{}",
        r.body
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn one_tenants_refused_counter_does_not_stop_the_others_reconciliation(pool: PgPool) {
    let now = at("2026-11-20T12:00:00Z");
    let daily = json!({"max_usd": 100, "period": "daily"});
    tenant(&pool, "acme", None).await;
    tenant(&pool, "globex", None).await;
    key(&pool, "a1", "acme", Some(daily.clone())).await;
    key(&pool, "g1", "globex", Some(daily.clone())).await;
    spend(
        &pool,
        &[
            record("r1", "acme", "a1", at("2026-11-20T01:00:00Z"), 1.0),
            record("r2", "globex", "g1", at("2026-11-20T01:00:00Z"), 2.0),
        ],
    )
    .await;
    let redis = Scratch::new();
    let day = period_of(&budget(daily), now);
    let a1 = redis.key(BudgetScope::Key, "a1", "acme", &day);
    let g1 = redis.key(BudgetScope::Key, "g1", "globex", &day);
    // acme's counter is something Redis refuses to read as a number (WRONGTYPE).
    let () = redis::cmd("LPUSH")
        .arg(&a1)
        .arg("not a counter")
        .query_async(&mut redis.conn().await)
        .await
        .unwrap();

    let outcome = reconcile_once(&pool, &redis.counters(), now, 90)
        .await
        .unwrap();
    assert_eq!(
        (outcome.raised, outcome.failed),
        (1, 1),
        "globex raised, acme refused: {outcome:?}"
    );
    assert_eq!(redis.get(&g1).await, Some(2 * NANOS));
}
