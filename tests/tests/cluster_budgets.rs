//! Budgets end to end: two gateways share one real Redis (under a unique key prefix) and 32
//! concurrent clients spend a key's hard budget through both. What they are admitted to spend
//! stays within one request's maximum cost of the budget, the next request gets a 429 in
//! OpenAI's shape naming the budget, and a tenant budget refuses every key of the tenant.
//! Alerts (thresholds crossed, an upstream credential refused) arrive as signed webhooks.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::sync::Arc;
use switchboard_tests::services::redis_url;

use common::*;
use switchboard_tests::mock::{COMPLETION_TOKENS, PROMPT_TOKENS};

const CHAT: &str = "/v1/chat/completions";
const INPUT_PRICE: f64 = 0.000_01;
const OUTPUT_PRICE: f64 = 0.000_03;
const MAX_TOKENS: u64 = 40;
const BODY: &str = r#"{"model":"m","max_tokens":40,"messages":[{"role":"user","content":"hi"}]}"#;

fn unique_prefix() -> String {
    format!("test-budgets-{}", uuid::Uuid::now_v7().simple())
}

/// Key `k1` (secret [`KEY`]) with `key_budget`, tenant `t1` with `tenant_budget`, a second key
/// `k2` of the same tenant, one priced deployment of model `m`, Redis under `prefix`.
fn config(base_url: &str, key_budget: &str, tenant_budget: &str, prefix: &str) -> String {
    let snapshot = format!(
        "revision: 1
tenants: [{{ id: t1{tenant_budget} }}]
virtual_keys:
  - {{ id: k1, tenant_id: t1, key_hash: \"{}\"{key_budget} }}
  - {{ id: k2, tenant_id: t1, key_hash: \"{}\" }}
providers: [{{ id: up, kind: openai, base_url: \"{base_url}\" }}]
deployments:
  - {{ id: d1, model: m, provider: up, upstream_model: up-model, price: {{ input_cost_per_token: {INPUT_PRICE}, output_cost_per_token: {OUTPUT_PRICE} }} }}
",
        key_hash(KEY),
        key_hash("sk-second-key")
    );
    format!(
        "{}redis:\n  url: {{ value: \"{}\" }}\n  key_prefix: \"{prefix}\"\n  timeout_ms: 500\n",
        config_yaml(&snapshot, ""),
        redis_url()
    )
}

async fn chat(gw: &Gateway, secret: &str) -> Reply {
    let auth = format!("Bearer {secret}");
    send(request(
        http::Method::POST,
        &gw.url(CHAT),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        BODY,
    ))
    .await
}

#[tokio::test]
async fn concurrent_spend_through_two_replicas_stays_within_one_request_of_the_budget() {
    let mock = MockUpstream::start().await.unwrap();
    let budget = 0.02;
    let cfg = config(
        &mock.base_url(),
        &format!(", budget: {{ max_usd: {budget}, period: monthly }}"),
        "",
        &unique_prefix(),
    );
    let gws = Arc::new([Gateway::start(&cfg).await, Gateway::start(&cfg).await]);

    let mut workers = Vec::new();
    for w in 0..32usize {
        let gws = Arc::clone(&gws);
        workers.push(tokio::spawn(async move {
            let mut last = None;
            for _ in 0..50 {
                let reply = chat(&gws[w % 2], KEY).await;
                let done = reply.status != 200;
                last = Some(reply);
                if done {
                    break;
                }
            }
            last.unwrap()
        }));
    }
    let mut refusals = Vec::new();
    for w in workers {
        refusals.push(w.await.unwrap());
    }

    // What was admitted and served, priced by the gateways from the real usage.
    let real_cost = PROMPT_TOKENS as f64 * INPUT_PRICE + COMPLETION_TOKENS as f64 * OUTPUT_PRICE;
    let served: Vec<_> = gws
        .iter()
        .flat_map(|g| g.usage.records())
        .filter(|r| r.status == 200)
        .collect();
    let spent: f64 = served.iter().map(|r| r.cost_usd).sum();
    for r in &served {
        assert!((r.cost_usd - real_cost).abs() < 1e-12, "{}", r.cost_usd);
    }
    // The most one request could cost: its prompt estimate plus max_tokens, at these prices.
    let max_cost =
        (BODY.len() as f64 / 4.0).ceil() * INPUT_PRICE + MAX_TOKENS as f64 * OUTPUT_PRICE;
    assert!(
        spent <= budget + max_cost,
        "admitted ${spent} against a ${budget} budget ({} requests)",
        served.len()
    );
    assert!(spent >= budget - max_cost, "budget not used up: ${spent}");

    // Every worker ended on the budget's refusal, in OpenAI's shape.
    for reply in refusals {
        let error = reply.openai_error(429);
        assert_eq!(error["type"], "insufficient_quota");
        assert_eq!(error["code"], "budget_exceeded");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains("key `k1`"), "{message}");
        assert!(
            reply.headers.contains_key("retry-after"),
            "a monthly budget says when it resets"
        );
    }
    // The upstream saw only the admitted requests.
    assert_eq!(mock.request_count(""), served.len());
}

#[tokio::test]
async fn a_tenant_budget_stops_every_key_of_the_tenant() {
    let mock = MockUpstream::start().await.unwrap();
    let cfg = config(
        &mock.base_url(),
        "",
        ", budget: { max_usd: 0.0005, period: none }",
        &unique_prefix(),
    );
    let gw = Gateway::start(&cfg).await;
    let mut served = 0;
    loop {
        let reply = chat(&gw, KEY).await;
        if reply.status != 200 {
            let error = reply.openai_error(429);
            assert!(error["message"].as_str().unwrap().contains("tenant `t1`"));
            assert!(
                !reply.headers.contains_key("retry-after"),
                "a `none` budget never resets"
            );
            break;
        }
        served += 1;
        assert!(served < 100, "the tenant budget never ran out");
    }
    // The other key of the tenant is refused too, without reaching the upstream.
    let before = mock.request_count("");
    let reply = chat(&gw, "sk-second-key").await;
    assert_eq!(reply.openai_error(429)["code"], "budget_exceeded");
    assert_eq!(mock.request_count(""), before);
}

#[tokio::test]
async fn a_failed_upstream_answer_costs_the_budget_nothing() {
    use dataplane::budget::{BudgetScope, BudgetSubject};
    use switchboard_shared::snapshot::{Budget, BudgetPeriod};

    let mock = MockUpstream::start().await.unwrap();
    let cfg = config(
        &mock.scenario_url("fault=500"),
        ", budget: { max_usd: 1.0, period: daily }",
        "",
        &unique_prefix(),
    );
    let gw = Gateway::start(&cfg).await;
    assert_eq!(chat(&gw, KEY).await.status, 502);
    let budget = Budget {
        max_usd: 1.0,
        soft_usd: None,
        period: BudgetPeriod::Daily,
        time_zone: None,
    };
    let subject = BudgetSubject {
        scope: BudgetScope::Key,
        id: "k1",
        tenant_id: "t1",
        budget: &budget,
    };
    // The reservation is released in the background; it must come back to zero.
    let mut spent = None;
    for _ in 0..50 {
        spent = gw
            .state
            .books
            .budgets
            .spent_usd(&subject, chrono::Utc::now())
            .await;
        if spent == Some(0.0) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(spent, Some(0.0));
}

#[tokio::test]
async fn a_key_reads_its_own_budget_and_spend() {
    let mock = MockUpstream::start().await.unwrap();
    let cfg = config(
        &mock.base_url(),
        ", budget: { max_usd: 1.0, soft_usd: 0.5, period: monthly, time_zone: Europe/Berlin }",
        "",
        &unique_prefix(),
    );
    let gw = Gateway::start(&cfg).await;
    for _ in 0..3 {
        assert_eq!(chat(&gw, KEY).await.status, 200);
    }
    let spent: f64 = gw.usage_records(3).await.iter().map(|r| r.cost_usd).sum();
    let info_of = |secret: &'static str| {
        let url = gw.url("/v1/key/info");
        async move {
            let auth = format!("Bearer {secret}");
            send(request(
                http::Method::GET,
                &url,
                &[("authorization", &auth)],
                "",
            ))
            .await
        }
    };
    // Settlement runs in the background: wait until the counter shows the real costs.
    let mut info = serde_json::Value::Null;
    for _ in 0..50 {
        let reply = info_of(KEY).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        info = reply.json();
        if info["key"]["budget"]["spent_usd"]
            .as_f64()
            .is_some_and(|s| (s - spent).abs() < 1e-9)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let budget = &info["key"]["budget"];
    assert!(
        (budget["spent_usd"].as_f64().unwrap() - spent).abs() < 1e-9,
        "{info}"
    );
    assert!((budget["remaining_usd"].as_f64().unwrap() - (1.0 - spent)).abs() < 1e-9);
    assert_eq!(budget["period"], "monthly");
    assert_eq!(budget["time_zone"], "Europe/Berlin");
    assert!(budget["resets_at"].is_string());
    assert_eq!(info["key"]["id"], "k1");
    assert!(info["tenant"]["budget"].is_null());
    assert!(
        !info.to_string().contains("key_hash"),
        "never the hash: {info}"
    );
    // Another key of the tenant sees its own (unbudgeted) settings, not k1's.
    let other = info_of("sk-second-key").await.json();
    assert_eq!(other["key"]["id"], "k2");
    assert!(other["key"]["budget"].is_null());
    assert_eq!(
        info_of("sk-wrong").await.openai_error(401)["code"],
        "invalid_api_key"
    );
}

type Received = Arc<std::sync::Mutex<Vec<(String, bytes::Bytes)>>>;

/// A receiver that keeps every POST's signature header and body.
async fn webhook_receiver() -> (std::net::SocketAddr, Received) {
    let received: Received = Arc::default();
    let sink = Arc::clone(&received);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: http::HeaderMap, body: bytes::Bytes| {
            let sink = Arc::clone(&sink);
            async move {
                let sig = headers
                    .get(dataplane::webhooks::SIGNATURE_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                sink.lock().unwrap().push((sig, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, received)
}

#[tokio::test]
async fn crossing_thresholds_posts_signed_webhooks() {
    let (addr, received) = webhook_receiver().await;
    let mock = MockUpstream::start().await.unwrap();
    let cfg = format!(
        "{}webhooks:\n  url: \"http://{addr}/hook\"\n  secret: {{ value: \"whsec-test\" }}\n",
        config(
            &mock.base_url(),
            ", budget: { max_usd: 0.001, soft_usd: 0.0005, period: daily }",
            "",
            &unique_prefix(),
        )
    );
    let gw = Gateway::start(&cfg).await;
    for _ in 0..20 {
        if chat(&gw, KEY).await.status != 200 {
            break;
        }
    }
    let mut events = Vec::new();
    for _ in 0..100 {
        events = received.lock().unwrap().clone();
        if events.len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let mut kinds: Vec<String> = events
        .iter()
        .map(|(sig, body)| {
            // t=<unix>,v1=<hex>: recompute it from the body.
            let t: i64 = sig
                .strip_prefix("t=")
                .and_then(|rest| rest.split(',').next())
                .and_then(|t| t.parse().ok())
                .unwrap();
            assert_eq!(
                sig,
                &dataplane::webhooks::signature(b"whsec-test", t, body),
                "signature over the body"
            );
            let event: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert_eq!(event["scope"], "key");
            assert_eq!(event["id"], "k1");
            event["kind"].as_str().unwrap().to_owned()
        })
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["budget.exhausted", "budget.soft_threshold"]);
}

#[tokio::test]
async fn a_rejected_upstream_credential_posts_one_webhook() {
    let (addr, received) = webhook_receiver().await;
    let mock = MockUpstream::start().await.unwrap();
    let cfg = format!(
        "{}webhooks:\n  url: \"http://{addr}/hook\"\n  secret: {{ value: \"whsec-test\" }}\n",
        config(&mock.scenario_url("fault=401"), "", "", &unique_prefix())
    );
    let gw = Gateway::start(&cfg).await;
    for _ in 0..3 {
        assert_eq!(chat(&gw, KEY).await.status.as_u16() / 100, 5);
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let events = received.lock().unwrap().clone();
    assert_eq!(events.len(), 1, "alerted once, not per request");
    let event: serde_json::Value = serde_json::from_slice(&events[0].1).unwrap();
    assert_eq!(event["kind"], "upstream.credential_rejected");
    assert_eq!(event["scope"], "deployment");
    assert_eq!(event["id"], "d1");
    assert_eq!(event["provider"], "up");
    assert_eq!(event["status"], 401);
    assert!(
        !events[0].1.windows(9).any(|w| w == b"sk-upstre"),
        "no credential in the alert"
    );
}
