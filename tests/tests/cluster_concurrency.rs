//! Concurrency limits: requests in flight per deployment, key and tenant, held as expiring
//! leases in one real Redis by three replicas in one process (each test under its own key
//! prefix), or as in-process counters without Redis. The mock upstream records how many
//! requests it was answering at once.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::time::{Duration, Instant};

use common::*;
use switchboard_tests::services::redis_url;

const CHAT: &str = "/v1/chat/completions";
const STREAM: &str = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const GOOD: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

fn unique_prefix(name: &str) -> String {
    format!("sbtest-cc-{name}-{}", uuid::Uuid::now_v7().simple())
}

/// Deployments `(id, base URL, extra fields)` of model `m`, the model's policy fields, the
/// key's extra fields, and (with `redis`) a `redis:` section `(prefix, lease ms)`.
fn config(
    deployments: &[(&str, String, &str)],
    policy: &str,
    key_extra: &str,
    redis: Option<(&str, u64)>,
) -> String {
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
        key_extra,
        &format!(
            "providers:\n{providers}deployments:\n{deps}models:\n  - {{ model: m{policy} }}\n"
        ),
    );
    let mut text = config_yaml(&snapshot, "");
    if let Some((prefix, lease_ms)) = redis {
        text.push_str(&format!(
            "redis:\n  url: {{ value: \"{}\" }}\n  key_prefix: \"{prefix}\"\n  refresh_ms: 20\n  timeout_ms: 500\n  concurrency_lease_ms: {lease_ms}\n",
            redis_url()
        ));
    }
    text
}

/// Waits until `done` holds, up to `limit`.
async fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    done()
}

#[tokio::test]
async fn a_deployment_limit_of_4_holds_across_three_replicas_under_32_streams() {
    let mock = MockUpstream::start().await.unwrap();
    let scenario = "chunks=4,interval_ms=40";
    let prefix = unique_prefix("four");
    let config = config(
        &[(
            "a",
            mock.scenario_url(scenario),
            ", limits: { concurrency: 4 }",
        )],
        ", concurrency_wait_ms: 20000",
        "",
        Some((&prefix, 2000)),
    );
    let gws = [
        Gateway::start(&config).await,
        Gateway::start(&config).await,
        Gateway::start(&config).await,
    ];
    let mut streams = Vec::new();
    for i in 0..32 {
        let url = gws[i % 3].url(CHAT);
        streams.push(tokio::spawn(async move { post(&url, STREAM).await }));
    }
    for s in streams {
        let reply = s.await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert!(reply.text().contains("[DONE]"), "a whole stream");
    }
    assert_eq!(mock.request_count(scenario), 32);
    let most = mock.max_in_flight();
    assert!(most <= 4, "{most} in flight at the upstream at once");
    assert!(most >= 2, "the streams did overlap ({most})");
}

#[tokio::test]
async fn a_crashed_replicas_slots_come_back_after_the_lease_time() {
    let mock = MockUpstream::start().await.unwrap();
    let long = "chunks=100,interval_ms=100";
    let prefix = unique_prefix("crash");
    let lease_ms = 1000;
    let config = config(
        &[("a", mock.scenario_url(long), ", limits: { concurrency: 2 }")],
        ", retries: 0",
        "",
        Some((&prefix, lease_ms)),
    );
    // The replica that will crash runs on its own runtime, which is shut down mid-stream:
    // its tasks vanish without giving anything back, as a killed process would.
    let doomed = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let doomed_config = config.clone();
    let crashing = doomed
        .spawn(async move { Gateway::start(&doomed_config).await })
        .await
        .unwrap();
    let survivor = Gateway::start(&config).await;
    let mut orphans = Vec::new();
    for _ in 0..2 {
        let url = crashing.url(CHAT);
        orphans.push(tokio::spawn(async move { post(&url, STREAM).await }));
    }
    assert!(eventually(Duration::from_secs(5), || mock.in_flight() == 2).await);
    let refused = post(&survivor.url(CHAT), GOOD).await;
    let error = refused.openai_error(429);
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("deployment `a`") && message.contains("2 requests in flight"),
        "{message}"
    );

    doomed.shutdown_background();
    let crashed = Instant::now();
    for o in orphans {
        o.abort();
    }
    let mut first_served = None;
    while crashed.elapsed() < Duration::from_millis(lease_ms * 3) {
        // Not streamed: answered at once once a slot is free.
        if post(&survivor.url(CHAT), GOOD).await.status == 200 {
            first_served = Some(crashed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let back = first_served.expect("the slots came back");
    assert!(
        back <= Duration::from_millis(lease_ms + 500),
        "served again after {back:?}, lease {lease_ms} ms"
    );
    drop(crashing);
}

#[tokio::test]
async fn a_full_deployment_is_skipped_for_another_then_refused_naming_the_limit() {
    let mock = MockUpstream::start().await.unwrap();
    let slow = "latency_ms=600";
    let config_text = config(
        &[
            (
                "a",
                mock.scenario_url(slow),
                ", priority: 0, limits: { concurrency: 1 }",
            ),
            ("b", mock.scenario_url("cached=1"), ", priority: 1"),
        ],
        ", strategy: priority",
        "",
        None,
    );
    let gw = Gateway::start(&config_text).await;
    let url = gw.url(CHAT);
    let first = tokio::spawn(async move { post(&url, GOOD).await });
    assert!(eventually(Duration::from_secs(2), || mock.request_count(slow) == 1).await);
    // `a` is full: the next request goes to `b`.
    assert_eq!(post(&gw.url(CHAT), GOOD).await.status, 200);
    assert_eq!(mock.request_count("cached=1"), 1);
    assert_eq!(mock.request_count(slow), 1);
    assert_eq!(first.await.unwrap().status, 200);

    // One deployment with limit 1 and no wait: the second concurrent request gets a 429.
    let only = config(
        &[("a", mock.scenario_url(slow), ", limits: { concurrency: 1 }")],
        "",
        "",
        None,
    );
    let gw = Gateway::start(&only).await;
    let url = gw.url(CHAT);
    let first = tokio::spawn(async move { post(&url, GOOD).await });
    assert!(eventually(Duration::from_secs(2), || mock.request_count(slow) == 2).await);
    let refused = post(&gw.url(CHAT), GOOD).await;
    let error = refused.openai_error(429);
    assert_eq!(error["code"], "rate_limit_exceeded");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("deployment `a` allows 1 requests in flight"),
        "{error}"
    );
    assert!(refused.headers.contains_key("retry-after"));
    assert_eq!(first.await.unwrap().status, 200);
    // The slot came back with the answer.
    assert_eq!(post(&gw.url(CHAT), GOOD).await.status, 200);
}

#[tokio::test]
async fn a_waiting_request_takes_the_slot_when_it_frees() {
    let mock = MockUpstream::start().await.unwrap();
    let slow = "latency_ms=300";
    let config_text = config(
        &[("a", mock.scenario_url(slow), ", limits: { concurrency: 1 }")],
        ", concurrency_wait_ms: 5000",
        "",
        None,
    );
    let gw = Gateway::start(&config_text).await;
    let started = Instant::now();
    let url = gw.url(CHAT);
    let first = tokio::spawn(async move { post(&url, GOOD).await });
    assert!(eventually(Duration::from_secs(2), || mock.request_count(slow) == 1).await);
    let second = post(&gw.url(CHAT), GOOD).await;
    assert_eq!(second.status, 200, "{}", second.text());
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "one after the other"
    );
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(mock.max_in_flight(), 1);
}

#[tokio::test]
async fn a_key_limit_refuses_the_request_beyond_it_in_the_callers_shape() {
    let mock = MockUpstream::start().await.unwrap();
    let slow = "latency_ms=500";
    let config_text = config(
        &[("a", mock.scenario_url(slow), "")],
        "",
        ", limits: { concurrency: 1 }",
        None,
    );
    let gw = Gateway::start(&config_text).await;
    let url = gw.url(CHAT);
    let first = tokio::spawn(async move { post(&url, GOOD).await });
    assert!(eventually(Duration::from_secs(2), || mock.request_count(slow) == 1).await);
    let refused = post(&gw.url(CHAT), GOOD).await;
    let error = refused.openai_error(429);
    assert!(
        error["message"].as_str().unwrap().contains("key `k1`"),
        "{error}"
    );
    assert_eq!(mock.request_count(slow), 1, "never sent upstream");
    assert_eq!(first.await.unwrap().status, 200);
    assert_eq!(post(&gw.url(CHAT), GOOD).await.status, 200);
}
