//! What one admission costs in Redis mode: Redis commands (each a round trip, since an
//! admission waits for its answer) and heap allocations, counted over many admissions against
//! a throwaway Redis of the test's own (so no other test's traffic is counted). The exact
//! path (`redis.lease` off) costs one round trip per admission; with leasing (the default)
//! these large limits and budgets are admitted from this replica's slices, and the round
//! trips are the slices' refills, far fewer than one per admission.
//!
//! Run alone to see the figures: `cargo test -p switchboard-tests --test admission_cost --
//! --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)] // Test harness.

#[allow(unused_imports)] // The harness re-exports the mock upstream, which this test needs not.
mod common;

use std::alloc::System;
use std::sync::Arc;

use common::*;
use dataplane::catalog::KeyEntry;
use dataplane::state::AppState;
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use switchboard_tests::services::ThrowawayRedis;

/// The system allocator, counting.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const ROUNDS: u64 = 500;

/// Keys: `kb` (limits and a budget, tenant `tb` with limits and a budget), `kl` (limits only,
/// tenant `tl` with limits), `ko` (a budget only, tenant `to` with nothing). `lease`: the
/// `redis.lease` setting.
fn config_text(redis_url: &str, lease: bool) -> String {
    let limits = "limits: { rpm: 1000000000, tpm: 1000000000 }";
    let budget = "budget: { max_usd: 1000000, period: monthly }";
    let snapshot = format!(
        "revision: 1
tenants: [{{ id: tb, {limits}, {budget} }}, {{ id: tl, {limits} }}, {{ id: to }}]
virtual_keys:
  - {{ id: kb, tenant_id: tb, key_hash: \"{}\", {limits}, {budget} }}
  - {{ id: kl, tenant_id: tl, key_hash: \"{}\", {limits} }}
  - {{ id: ko, tenant_id: to, key_hash: \"{}\", {budget} }}
providers: [{{ id: up, kind: openai, base_url: \"http://127.0.0.1:1/v1\" }}]
deployments:
  - {{ id: d1, model: m, provider: up, upstream_model: up-model, price: {{ input_cost_per_token: 0.00001, output_cost_per_token: 0.00003 }} }}
",
        key_hash("sk-kb"),
        key_hash("sk-kl"),
        key_hash("sk-ko"),
    );
    format!(
        "{}redis:\n  url: {{ value: \"{redis_url}\" }}\n  key_prefix: cost\n  timeout_ms: 2000\n  lease: {{ enabled: {lease} }}\n",
        config_yaml(&snapshot, "")
    )
}

fn entry(state: &AppState, secret: &str) -> Arc<KeyEntry> {
    let hash = switchboard_shared::keys::hash_key(PEPPER.as_bytes(), secret);
    Arc::clone(state.catalog().unwrap().key(&hash).unwrap())
}

/// The admission phase as the handler runs it: one quota ticket for limits and budgets.
async fn admit(state: &AppState, key: &KeyEntry) {
    let now = state.books.clock.now();
    let (ticket, _limits) =
        dataplane::quota::Ticket::admit(state.books.stores(), key, 100, || Ok(1_000), now)
            .await
            .unwrap();
    assert_eq!(ticket.has_budget(), key.budget_subjects().is_some());
}

/// Commands so far: those clients sent for admission (`EVALSHA`, `EVAL`, `SCRIPT LOAD`: each
/// a round trip, since admission waits for its answer), and every command Redis ran, the
/// scripts' own calls included.
async fn calls(conn: &mut redis::aio::MultiplexedConnection) -> (u64, u64) {
    let info: String = redis::cmd("INFO")
        .arg("everything")
        .query_async(conn)
        .await
        .unwrap();
    // `cmdstat_evalsha:calls=12,usec=...` and `total_commands_processed:34`.
    let stat = |prefix: &str| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map(|rest| rest.trim_start_matches("calls="))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    };
    (
        stat("cmdstat_evalsha:") + stat("cmdstat_eval:") + stat("cmdstat_script|load:"),
        stat("total_commands_processed:"),
    )
}

/// Per admission with `secret`, averaged over [`ROUNDS`]: round trips (client-level
/// commands), every command Redis ran, and allocations.
async fn measure(
    state: &AppState,
    conn: &mut redis::aio::MultiplexedConnection,
    secret: &str,
) -> (f64, f64, f64) {
    let key = entry(state, secret);
    // Warm up: scripts loaded, connection made, caches filled.
    for _ in 0..5 {
        admit(state, &key).await;
    }
    let (trips_before, commands_before) = calls(conn).await;
    let region = Region::new(GLOBAL);
    for _ in 0..ROUNDS {
        admit(state, &key).await;
    }
    let change = region.change();
    let allocations = (change.allocations + change.reallocations) as u64;
    let (trips, commands) = calls(conn).await;
    let per = |n: u64| n as f64 / ROUNDS as f64;
    // The second INFO counts itself.
    (
        per(trips - trips_before),
        per(commands - commands_before - 1),
        per(allocations),
    )
}

/// Allocations per admission with `secret`, averaged over [`ROUNDS`].
async fn allocations(state: &AppState, secret: &str) -> f64 {
    let key = entry(state, secret);
    for _ in 0..5 {
        admit(state, &key).await;
    }
    let region = Region::new(GLOBAL);
    for _ in 0..ROUNDS {
        admit(state, &key).await;
    }
    let change = region.change();
    (change.allocations + change.reallocations) as f64 / ROUNDS as f64
}

/// A Redis-mode state over `redis`, leasing or not.
fn redis_state(redis: &ThrowawayRedis, lease: bool) -> Arc<AppState> {
    let config = dataplane::config::Config::parse(&config_text(&redis.url(), lease), &[]).unwrap();
    let state = dataplane::build_state(
        &config.server,
        config.redis.as_ref(),
        Arc::new(dataplane::accounting::MemorySink::default()),
    )
    .unwrap();
    state.install(config.snapshot.as_ref().unwrap()).unwrap();
    state
}

const CASES: [(&str, &str); 3] = [
    ("key and tenant limits and budgets", "sk-kb"),
    ("key and tenant limits, no budget", "sk-kl"),
    ("a key budget, no limits", "sk-ko"),
];

/// One test, so that no other test allocates while this one counts.
#[tokio::test(flavor = "current_thread")]
async fn what_one_admission_costs() {
    let redis = ThrowawayRedis::start().await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();

    let state = redis_state(&redis, false);
    for (what, secret) in CASES {
        let (trips, commands, allocations) = measure(&state, &mut conn, secret).await;
        println!(
            "{what}: {trips} round trips, {commands} Redis commands (scripts' own calls \
             included), {allocations} allocations per admission"
        );
        assert_eq!(trips, 1.0, "{what}: one round trip per admission");
    }
    drop(state);

    let state = redis_state(&redis, true);
    for (what, secret) in CASES {
        let (trips, commands, allocations) = measure(&state, &mut conn, secret).await;
        println!(
            "leasing, {what}: {trips} round trips, {commands} Redis commands, {allocations} \
             allocations per admission"
        );
        assert!(
            trips < 0.1,
            "{what}: leased, yet {trips} round trips per admission"
        );
    }

    // Without Redis: this process's atomics.
    let standalone =
        dataplane::config::Config::parse(&config_text(&redis.url(), true), &[]).unwrap();
    let state = dataplane::build_state(
        &standalone.server,
        None,
        Arc::new(dataplane::accounting::MemorySink::default()),
    )
    .unwrap();
    state
        .install(standalone.snapshot.as_ref().unwrap())
        .unwrap();
    for (what, secret) in [
        ("key and tenant limits and budgets", "sk-kb"),
        ("key and tenant limits, no budget", "sk-kl"),
    ] {
        let n = allocations(&state, secret).await;
        println!("in process, {what}: {n} allocations per admission");
    }
}
