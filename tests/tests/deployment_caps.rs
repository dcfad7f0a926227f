//! Deployment caps: a deployment whose daily spend cap or request quota is used up leaves the
//! rotation and traffic continues on the others — in one process, and across two replicas
//! sharing the counters in one real Redis.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::time::{Duration, Instant};

use common::*;
use http::Method;
use switchboard_tests::services::redis_url;

const CHAT: &str = "/v1/chat/completions";
const GOOD: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
/// Every mock answer: 19 prompt + 10 completion tokens at $0.0001 each.
const PRICE: &str = "price: { input_cost_per_token: 0.0001, output_cost_per_token: 0.0001 }";

/// `a` (priority 0, with `caps`) and `b` (priority 1) of model `m`.
fn config(mock: &MockUpstream, caps: &str, redis_prefix: Option<&str>) -> String {
    let snapshot = snapshot(
        "",
        &format!(
            "providers:\n  - {{ id: pa, kind: openai, base_url: \"{a}\" }}\n  - {{ id: pb, kind: openai, base_url: \"{b}\" }}\n\
             deployments:\n  - {{ id: a, model: m, provider: pa, upstream_model: ua, priority: 0, {PRICE}, caps: {caps} }}\n  - {{ id: b, model: m, provider: pb, upstream_model: ub, priority: 1, {PRICE} }}\n\
             models:\n  - {{ model: m, strategy: priority }}\n",
            a = mock.scenario_url("cached=1"),
            b = mock.scenario_url("cached=2"),
        ),
    );
    let mut text = config_yaml(&snapshot, "");
    if let Some(prefix) = redis_prefix {
        text.push_str(&format!(
            "redis:\n  url: {{ value: \"{}\" }}\n  key_prefix: \"{prefix}\"\n  timeout_ms: 500\n",
            redis_url()
        ));
    }
    text
}

async fn explained(gw: &Gateway) -> Reply {
    send(request(
        Method::POST,
        &gw.url(CHAT),
        &[
            ("authorization", &format!("Bearer {KEY}")),
            ("content-type", "application/json"),
            ("x-switchboard-explain", "1"),
        ],
        GOOD,
    ))
    .await
}

fn route(reply: &Reply) -> String {
    reply
        .headers
        .get("x-switchboard-route")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test]
async fn a_daily_cap_of_a_cent_moves_traffic_to_the_other_deployment() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(&mock, "{ usd_per_day: 0.01 }", None)).await;
    for _ in 0..10 {
        let reply = explained(&gw).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    // $0.0029 a request: the fourth passes $0.01, so `a` served four.
    assert_eq!(mock.request_count("cached=1"), 4, "served by a");
    assert_eq!(mock.request_count("cached=2"), 6, "served by b");
    let last = explained(&gw).await;
    assert!(
        route(&last).contains("-a:cap:usd_per_day"),
        "explain: {}",
        route(&last)
    );
    // The usage records name who served each request.
    let records = gw.usage_records(11).await;
    let by_a = records
        .iter()
        .filter(|r| r.deployment_id.as_deref() == Some("a"));
    assert_eq!(by_a.count(), 4);
}

#[tokio::test]
async fn when_every_deployment_is_capped_the_answer_says_when_to_retry() {
    let mock = MockUpstream::start().await.unwrap();
    let snapshot = snapshot(
        "",
        &format!(
            "providers: [{{ id: pa, kind: openai, base_url: \"{}\" }}]\ndeployments:\n  - {{ id: a, model: m, provider: pa, upstream_model: ua, caps: {{ requests_per_day: 2 }} }}\nmodels: [{{ model: m }}]\n",
            mock.base_url()
        ),
    );
    let gw = Gateway::start(&config_yaml(&snapshot, "")).await;
    for _ in 0..2 {
        assert_eq!(post(&gw.url(CHAT), GOOD).await.status, 200);
    }
    let refused = post(&gw.url(CHAT), GOOD).await;
    refused.openai_error(503);
    let retry: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=86_400).contains(&retry), "until midnight UTC: {retry}");
    assert_eq!(mock.request_count(""), 2);
}

#[tokio::test]
async fn replicas_share_a_request_quota_through_redis() {
    let mock = MockUpstream::start().await.unwrap();
    let prefix = format!("sbtest-caps-{}", uuid::Uuid::now_v7().simple());
    let config = config(&mock, "{ requests_per_day: 3 }", Some(&prefix));
    let (one, two) = (Gateway::start(&config).await, Gateway::start(&config).await);
    for _ in 0..3 {
        assert_eq!(post(&one.url(CHAT), GOOD).await.status, 200);
    }
    assert_eq!(mock.request_count("cached=1"), 3);
    // Replica two has sent nothing to `a`; its first request there learns the cluster's count
    // (at most one request beyond the quota per replica) and the next ones go to `b`.
    assert_eq!(post(&two.url(CHAT), GOOD).await.status, 200);
    let deadline = Instant::now() + Duration::from_secs(2);
    let catalog = two.state.catalog().unwrap();
    let a = &catalog.model("m").unwrap().deployments[0].state.caps;
    while a.used(chrono::Utc::now()).0.0 < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..3 {
        assert_eq!(post(&two.url(CHAT), GOOD).await.status, 200);
        assert_eq!(post(&one.url(CHAT), GOOD).await.status, 200);
    }
    assert!(
        mock.request_count("cached=1") <= 4,
        "a served {}",
        mock.request_count("cached=1")
    );
    assert_eq!(
        mock.request_count("cached=1") + mock.request_count("cached=2"),
        10
    );
}
