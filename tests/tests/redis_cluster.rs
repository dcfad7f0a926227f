//! Limits on a real Redis Cluster: three masters (each with a replica) started by the test from
//! `redis-server` binaries, three gateways in one process given the seed nodes as
//! `redis.url`. A key limit and a tenant limit hold to ±2% across the replicas exactly as on
//! one server (every script call's keys share one hash tag, so each runs on one node), and
//! when the master holding the limits' slot is killed under load the gateways keep serving
//! (degraded per the failure policy while the replica is promoted), nothing panics, and the
//! limits are enforced in the cluster again afterwards.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use dataplane::limits::Limiter;
use http::Method;
use switchboard_tests::services::ThrowawayRedisCluster;

const CHAT: &str = "/v1/chat/completions";

/// One cluster test at a time: each starts six Redis servers and three gateways, and two at
/// once overload a 2-core machine.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn secret(id: &str) -> String {
    format!("sk-rcluster-{id}")
}

fn unique_prefix(name: &str) -> String {
    format!("test-rc-{name}-{}", uuid::Uuid::now_v7().simple())
}

/// Tenants `t1` (unlimited) and `t2` (90 rpm), the given keys, model `m`; Redis at `url`.
fn config(base_url: &str, keys: &[(&str, &str, &str)], url: &str, prefix: &str) -> String {
    let keys: String = keys
        .iter()
        .map(|(id, tenant, limits)| {
            format!(
                "  - {{ id: {id}, tenant_id: {tenant}, key_hash: \"{}\", limits: {{ {limits} }} }}\n",
                key_hash(&secret(id))
            )
        })
        .collect();
    let snapshot = format!(
        "revision: 1
tenants: [{{ id: t1 }}, {{ id: t2, limits: {{ rpm: 90 }} }}]
virtual_keys:
{keys}providers: [{{ id: up, kind: openai, base_url: \"{base_url}\" }}]
deployments:
  - {{ id: d1, model: m, provider: up, upstream_model: up-model }}
"
    );
    format!(
        "{}redis:\n  url: {{ value: \"{url}\" }}\n  key_prefix: \"{prefix}\"\n  timeout_ms: 200\n  failure_policy: open\n",
        config_yaml(&snapshot, "")
    )
}

/// Three gateways, each connected to the cluster (discovery takes a few round trips; a
/// request before it completes would be admitted in-process, degraded).
async fn three_gateways(config: &str, ports: &[u16]) -> Arc<Vec<Gateway>> {
    let gateways = vec![
        Gateway::start(config).await,
        Gateway::start(config).await,
        Gateway::start(config).await,
    ];
    for gw in &gateways {
        let Limiter::Redis(l) = gw.state.books.limiter.as_ref() else {
            panic!("the gateway was built without Redis");
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !l.redis().ping().await {
            assert!(
                Instant::now() < deadline,
                "a gateway never reached the cluster"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Ready when the admission script is on every node (each gateway loads it at start).
    let sha = redis::Script::new(include_str!("../../dataplane/src/limits/gcra.lua"))
        .get_hash()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    for port in ports {
        loop {
            let out = tokio::process::Command::new("redis-cli")
                .args(["-p", &port.to_string(), "SCRIPT", "EXISTS", &sha])
                .output()
                .await
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).trim() == "1" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the script never reached node {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Arc::new(gateways)
}

const BODY: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

async fn post_as(gw: &Gateway, key_id: &str) -> Reply {
    send(request(
        Method::POST,
        &gw.url(CHAT),
        &[
            ("authorization", &format!("Bearer {}", secret(key_id))),
            ("content-type", "application/json"),
        ],
        BODY.to_owned(),
    ))
    .await
}

/// `total` requests with `key_id`, `concurrency` at a time, round-robin over the gateways;
/// returns how many were admitted (the rest must be 429s) and how long it took.
async fn hammer(
    gateways: &Arc<Vec<Gateway>>,
    key_id: &'static str,
    total: usize,
    concurrency: usize,
) -> (u64, Duration) {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (gateways, next) = (gateways.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut admitted = 0u64;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return admitted;
                }
                let reply = post_as(&gateways[n % 3], key_id).await;
                match reply.status.as_u16() {
                    200 => admitted += 1,
                    429 => {}
                    other => panic!("{key_id}: {other} {}", reply.text()),
                }
            }
        }));
    }
    let mut admitted = 0;
    for w in workers {
        admitted += w.await.unwrap();
    }
    (admitted, started.elapsed())
}

/// `admitted` is `limit` ±2%, plus what refilled while the test ran (GCRA refills smoothly).
fn assert_about(admitted: u64, limit: u64, elapsed: Duration, what: &str) {
    let refill = (limit as f64 * elapsed.as_secs_f64() / 60.0).ceil() as u64;
    let low = (limit as f64 * 0.98).floor() as u64;
    let high = (limit as f64 * 1.02).ceil() as u64 + refill;
    assert!(
        (low..=high).contains(&admitted),
        "{what}: {admitted} admitted, expected {low}..={high} ({elapsed:?})"
    );
}

fn redis_is_up(gw: &Gateway) -> bool {
    match gw.state.books.limiter.as_ref() {
        Limiter::Redis(l) => l.redis().is_up(),
        Limiter::Local(_) => panic!("the gateway was built without Redis"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_and_tenant_limits_hold_across_three_replicas_on_a_redis_cluster() {
    let _one = ONE_AT_A_TIME.lock().await;
    let cluster = ThrowawayRedisCluster::start().await;
    let mock = MockUpstream::start().await.unwrap();
    let prefix = unique_prefix("limits");
    let config = config(
        &mock.base_url(),
        &[("k1", "t1", "rpm: 150"), ("ka", "t2", ""), ("kb", "t2", "")],
        &cluster.url(),
        &prefix,
    );
    let gateways = three_gateways(&config, &cluster.ports[..3]).await;
    let (admitted, elapsed) = hammer(&gateways, "k1", 450, 24).await;
    assert_about(admitted, 150, elapsed, "key rpm on a cluster");
    let ((a, ea), (b, eb)) = tokio::join!(
        hammer(&gateways, "ka", 135, 8),
        hammer(&gateways, "kb", 135, 8)
    );
    assert_about(
        a + b,
        90,
        ea.max(eb),
        "tenant rpm over two keys on a cluster",
    );
    assert!(gateways.iter().all(redis_is_up), "no call failed");
    // The cells live in the cluster, on the master that owns their hash tag.
    let cell = format!("{prefix}:rl:{{t:t1}}:k:k1:rpm");
    let owner = cluster.master_of(cluster.ports[0], &cell).await;
    let exists = tokio::process::Command::new("redis-cli")
        .args(["-p", &owner.to_string(), "EXISTS", &cell])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&exists.stdout).trim(), "1");
}

/// Sends with `roomy` (limited, never near its limit) and `free` (unlimited) through all
/// gateways until `stop`; returns every status seen.
async fn steady_load(gateways: Arc<Vec<Gateway>>, stop: Arc<AtomicBool>) -> Vec<(u16, String)> {
    let mut tasks = Vec::new();
    for worker in 0..6usize {
        let (gateways, stop) = (gateways.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut n = worker;
            let key = if worker % 2 == 0 { "roomy" } else { "free" };
            while !stop.load(Ordering::Relaxed) {
                let reply = post_as(&gateways[n % 3], key).await;
                n += 1;
                seen.push((reply.status.as_u16(), reply.text()));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            seen
        }));
    }
    let mut seen = Vec::new();
    for t in tasks {
        seen.extend(t.await.unwrap());
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_failover_under_load_keeps_serving_and_limits_hold_after() {
    let _one = ONE_AT_A_TIME.lock().await;
    let mut cluster = ThrowawayRedisCluster::start().await;
    let mock = MockUpstream::start().await.unwrap();
    let prefix = unique_prefix("failover");
    let config = config(
        &mock.base_url(),
        &[
            ("roomy", "t1", "rpm: 1000000"),
            ("free", "t1", ""),
            ("after", "t1", "rpm: 30"),
        ],
        &cluster.url(),
        &prefix,
    );
    let gateways = three_gateways(&config, &cluster.ports[..3]).await;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(steady_load(gateways.clone(), stop.clone()));

    tokio::time::sleep(Duration::from_millis(700)).await;
    // Kill the master that holds tenant t1's cells; its replica must take over.
    let cell = format!("{prefix}:rl:{{t:t1}}:k:roomy:rpm");
    let dead = cluster.master_of(cluster.ports[0], &cell).await;
    cluster.kill(dead).await;
    let survivor = *cluster.ports.iter().find(|p| **p != dead).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while cluster.master_of(survivor, &cell).await == dead {
        assert!(Instant::now() < deadline, "no replica took over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster.until_ok(survivor).await;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !gateways.iter().all(redis_is_up) {
        assert!(
            Instant::now() < deadline,
            "the replicas never went back to Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let seen = load.await.unwrap();
    assert!(seen.len() > 40, "load ran: {}", seen.len());
    for (status, body) in &seen {
        // Open policy: through the switch every request is served (in-process limits).
        assert_eq!(*status, 200, "during the failover: {body}");
    }
    // The switch was noticed and the degraded-mode policy applied while it lasted.
    let mut degraded = false;
    for gw in gateways.iter() {
        let metrics = send(request(Method::GET, &gw.url("/metrics"), &[], ""))
            .await
            .text();
        degraded |= metrics
            .lines()
            .any(|l| l.starts_with("switchboard_limits_degraded_total{policy=\"open\"}"));
        assert!(metrics.lines().any(|l| l == "switchboard_redis_up 1"));
    }
    assert!(
        degraded,
        "admissions during the failover were counted as degraded"
    );
    // After the switch the limit is shared through the cluster again: 30 across three.
    let (admitted, elapsed) = hammer(&gateways, "after", 90, 9).await;
    assert_about(admitted, 30, elapsed, "key rpm after the failover");
    let owner = cluster.master_of(survivor, &cell).await;
    let exists = tokio::process::Command::new("redis-cli")
        .args([
            "-p",
            &owner.to_string(),
            "EXISTS",
            &format!("{prefix}:rl:{{t:t1}}:k:after:rpm"),
        ])
        .output()
        .await
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&exists.stdout).trim(),
        "1",
        "cell on the new master"
    );
}
