//! Three data-plane replicas in one process sharing one real Redis: routing on the cluster's
//! view of each deployment (in-flight counts, latency, breakers).
//!
//! Each test uses its own key prefix, so tests (and other users of the same Redis) do not see
//! each other's state. `REDIS_URL` names the server (default `redis://127.0.0.1:6379`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use switchboard_tests::services::ThrowawayRedis;

use std::time::Duration;

use common::*;

const CHAT: &str = "/v1/chat/completions";
const GOOD: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("sbtest-route-{test}-{}-{nanos}", std::process::id())
}

/// A config with deployments `(id, scenario base URL, extra fields)` of model `m`, the model
/// policy `policy`, and a `redis:` section under `prefix`.
fn cluster_config(deployments: &[(&str, String, &str)], policy: &str, prefix: &str) -> String {
    let mut providers = String::new();
    let mut deps = String::new();
    for (id, url, extra) in deployments {
        providers.push_str(&format!(
            "  - {{ id: p{id}, kind: openai, base_url: \"{url}\" }}\n"
        ));
        deps.push_str(&format!(
            "  - {{ id: {id}, model: m, provider: p{id}, upstream_model: u{id}{extra} }}\n"
        ));
    }
    let snapshot = snapshot(
        "",
        &format!(
            "providers:\n{providers}deployments:\n{deps}models:\n  - {{ model: m, {policy} }}\n"
        ),
    );
    format!(
        "{}redis:\n  url: {{ value: \"{}\" }}\n  key_prefix: \"{prefix}\"\n  refresh_ms: 20\n  timeout_ms: 500\n",
        config_yaml(&snapshot, ""),
        redis_url()
    )
}

async fn three(config: &str) -> [Gateway; 3] {
    [
        Gateway::start(config).await,
        Gateway::start(config).await,
        Gateway::start(config).await,
    ]
}

/// Waits until `done` holds, up to `limit`.
async fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

#[tokio::test]
async fn least_busy_spreads_in_flight_requests_across_replicas() {
    let mock = MockUpstream::start().await.unwrap();
    let slow = |n: u32| format!("latency_ms=4000,cached={n}");
    // Unequal weights make a replica that sees only its own requests send its first one to
    // `a` every time (ties go to the higher weight): without the shared view, `c` would get
    // nothing and `a` three.
    let config = cluster_config(
        &[
            ("a", mock.scenario_url(&slow(1)), ", weight: 3"),
            ("b", mock.scenario_url(&slow(2)), ", weight: 2"),
            ("c", mock.scenario_url(&slow(3)), ""),
        ],
        "strategy: least_busy",
        &unique_prefix("least-busy"),
    );
    let gws = three(&config).await;
    let mut pending = Vec::new();
    for i in 0..6 {
        let url = gws[i % 3].url(CHAT);
        pending.push(tokio::spawn(async move { post(&url, GOOD).await }));
        // Let the request arrive upstream and the replicas' views catch up (refresh 20 ms).
        let arrived = i + 1;
        assert!(
            eventually(Duration::from_secs(2), || {
                (1..=3).map(|n| mock.request_count(&slow(n))).sum::<usize>() == arrived
            })
            .await
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let counts: Vec<usize> = (1..=3).map(|n| mock.request_count(&slow(n))).collect();
    assert_eq!(counts, vec![2, 2, 2], "in flight per deployment (a, b, c)");
    for p in pending {
        assert_eq!(p.await.unwrap().status, 200);
    }
}

#[tokio::test]
async fn lowest_latency_moves_traffic_to_the_faster_upstream() {
    let mock = MockUpstream::start().await.unwrap();
    let (fast, slow) = ("latency_ms=5", "latency_ms=200");
    let config = cluster_config(
        &[
            ("slow", mock.scenario_url(slow), ""),
            ("fast", mock.scenario_url(fast), ""),
        ],
        "strategy: lowest_latency",
        &unique_prefix("lowest-latency"),
    );
    let gws = three(&config).await;
    let started = std::time::Instant::now();
    // Replica 1 measures both (the unmeasured go first).
    for _ in 0..3 {
        assert_eq!(post(&gws[0].url(CHAT), GOOD).await.status, 200);
    }
    assert_eq!(mock.request_count(slow), 1);
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Replicas 2 and 3 have measured nothing themselves, yet know which one is slow.
    for i in 0..30 {
        assert_eq!(post(&gws[1 + i % 2].url(CHAT), GOOD).await.status, 200);
    }
    assert_eq!(
        mock.request_count(slow),
        1,
        "every replica sends to the fast one on the cluster's measurements"
    );
    assert_eq!(mock.request_count(fast), 32);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "within seconds"
    );
}

#[tokio::test]
async fn a_cooldown_caused_through_one_replica_keeps_the_others_away() {
    let mock = MockUpstream::start().await.unwrap();
    let (bad, good) = ("fault=500", "cached=1");
    let config = cluster_config(
        &[
            ("bad", mock.scenario_url(bad), ", priority: 0"),
            ("good", mock.scenario_url(good), ", priority: 1"),
        ],
        "strategy: priority, retries: 1, cooldown: { allowed_failures: 1, seconds: 60 }",
        &unique_prefix("cooldown"),
    );
    let gws = three(&config).await;
    // Replica 1 tries `bad` first (priority 0), which fails and opens its breaker.
    assert_eq!(post(&gws[0].url(CHAT), GOOD).await.status, 200);
    assert_eq!(mock.request_count(bad), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..20 {
        let reply = post(&gws[1 + i % 2].url(CHAT), GOOD).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(
        mock.request_count(bad),
        1,
        "replicas 2 and 3 never tried the deployment replica 1 took out"
    );
    assert_eq!(mock.request_count(good), 21);
}

#[tokio::test]
async fn a_half_open_breaker_lets_one_probe_through_in_the_whole_cluster() {
    let mock = MockUpstream::start().await.unwrap();
    let (bad, good) = ("fault=500,latency_ms=300", "cached=1");
    let config = cluster_config(
        &[
            ("bad", mock.scenario_url(bad), ", priority: 0"),
            ("good", mock.scenario_url(good), ", priority: 1"),
        ],
        "strategy: priority, retries: 1, cooldown: { allowed_failures: 1, seconds: 1 }",
        &unique_prefix("probe"),
    );
    let gws = three(&config).await;
    assert_eq!(post(&gws[0].url(CHAT), GOOD).await.status, 200);
    assert_eq!(mock.request_count(bad), 1, "failed once: open for 1 s");
    // Half-open now, on every replica.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let mut pending = Vec::new();
    for i in 0..15 {
        let url = gws[i % 3].url(CHAT);
        pending.push(tokio::spawn(async move { post(&url, GOOD).await }));
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    for p in pending {
        assert_eq!(p.await.unwrap().status, 200);
    }
    assert_eq!(
        mock.request_count(bad),
        2,
        "one probe for the cluster (it failed, so the breaker opened again for 2 s)"
    );
}

#[tokio::test]
async fn without_redis_replicas_keep_serving_and_share_again_when_it_returns() {
    let mock = MockUpstream::start().await.unwrap();
    let mut redis = ThrowawayRedis::start().await;
    let (bad, good) = ("fault=500", "cached=1");
    let config = cluster_config(
        &[
            ("bad", mock.scenario_url(bad), ", priority: 0"),
            ("good", mock.scenario_url(good), ", priority: 1"),
        ],
        "strategy: priority, retries: 1, cooldown: { allowed_failures: 1, seconds: 60 }",
        &unique_prefix("outage"),
    )
    .replace(&redis_url(), &format!("redis://127.0.0.1:{}", redis.port));
    let gws = three(&config).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    redis.stop().await;
    // Redis is gone: every request is still served (each replica learns about `bad` alone).
    for i in 0..30 {
        let reply = post(&gws[i % 3].url(CHAT), GOOD).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(
        mock.request_count(bad),
        3,
        "one failure per replica, on its own view"
    );
    // Redis returns (empty): the replicas reconnect by themselves and share again — a new
    // deployment's cooldown caused through replica 1 keeps the others away.
    let _redis = ThrowawayRedis::start_on(redis.port).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (bad2, good2) = ("fault=503", "cached=2");
    let config2 = config
        .replace(&mock.scenario_url(bad), &mock.scenario_url(bad2))
        .replace(&mock.scenario_url(good), &mock.scenario_url(good2))
        .replace("revision: 1", "revision: 2")
        .replace("id: bad,", "id: bad2,");
    let snapshot2 = dataplane::config::Config::parse(&config2, &[])
        .unwrap()
        .snapshot
        .expect("a standalone config");
    for gw in &gws {
        gw.state.install(&snapshot2).unwrap();
    }
    assert_eq!(post(&gws[0].url(CHAT), GOOD).await.status, 200);
    assert_eq!(mock.request_count(bad2), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..10 {
        assert_eq!(post(&gws[1 + i % 2].url(CHAT), GOOD).await.status, 200);
    }
    assert_eq!(mock.request_count(bad2), 1, "shared again");
}

#[tokio::test]
async fn prefix_affinity_finds_the_deployment_that_served_a_prefix_through_another_replica() {
    let mock = MockUpstream::start().await.unwrap();
    let scenario = |n: u32| format!("cached={n}");
    let config = cluster_config(
        &[
            ("a", mock.scenario_url(&scenario(1)), ""),
            ("b", mock.scenario_url(&scenario(2)), ""),
            ("c", mock.scenario_url(&scenario(3)), ""),
        ],
        "strategy: prefix_affinity, prefix_affinity: { block_bytes: 256 }",
        &unique_prefix("prefix"),
    );
    let gws = three(&config).await;
    let system = "You are a careful assistant. ".repeat(100); // ~2.9 KB: 11 blocks
    let chat = |question: &str| {
        format!(
            r#"{{"model":"m","messages":[{{"role":"system","content":"{system}"}},{{"role":"user","content":"{question}"}}]}}"#
        )
    };
    assert_eq!(post(&gws[0].url(CHAT), &chat("first")).await.status, 200);
    let counts = || {
        (1..=3)
            .map(|n| mock.request_count(&scenario(n)))
            .collect::<Vec<_>>()
    };
    let holder = counts().iter().position(|&c| c == 1).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..12 {
        let reply = post(&gws[1 + i % 2].url(CHAT), &chat(&format!("follow-up {i}"))).await;
        assert_eq!(reply.status, 200);
    }
    assert_eq!(
        counts()[holder],
        13,
        "replicas 2 and 3 send the shared prefix where replica 1 did: {:?}",
        counts()
    );
    // A different prompt is not tied to it: it spreads (least busy, ties at random).
    for i in 0..30 {
        let other =
            format!(r#"{{"model":"m","messages":[{{"role":"user","content":"other {i}"}}]}}"#);
        assert_eq!(post(&gws[i % 3].url(CHAT), &other).await.status, 200);
    }
    assert!(counts().iter().all(|&c| c > 1), "{:?}", counts());
}
