//! Budgets end to end: two gateways share one real Redis (under a unique key prefix) and 32
//! concurrent clients spend a key's hard budget through both. What they are admitted to spend
//! stays within one request's maximum cost of the budget, the next request gets a 429 in
//! OpenAI's shape naming the budget, and a tenant budget refuses every key of the tenant.
//! Limits and budgets are admitted in one script call: a refusal by either leaves nothing
//! charged on the other. A budget's reservation is visible while its request is in flight and
//! released when the upstream fails; a new period (on the gateway's movable clock) starts from
//! zero. Alerts (thresholds crossed, an upstream credential refused) arrive as signed webhooks.
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

/// The most one request may cost: its prompt estimate plus `max_tokens`, at these prices.
fn max_cost() -> f64 {
    (BODY.len() as f64 / 4.0).ceil() * INPUT_PRICE + MAX_TOKENS as f64 * OUTPUT_PRICE
}

/// What one request really costs (the mock's usage at these prices).
fn real_cost() -> f64 {
    PROMPT_TOKENS as f64 * INPUT_PRICE + COMPLETION_TOKENS as f64 * OUTPUT_PRICE
}

/// Key `k1`'s budget spend this period in Redis, as `/v1/key/info` reports it.
async fn key_spent(gw: &Gateway) -> f64 {
    let info = key_info(gw).await;
    info["key"]["budget"]["spent_usd"]
        .as_f64()
        .unwrap_or_else(|| panic!("no spend reported: {info}"))
}

/// Polls the key's spend (settled in the background) until `done` holds for it, for up to
/// two seconds; returns the last value seen.
async fn spent_until(gw: &Gateway, done: impl Fn(f64) -> bool) -> f64 {
    let mut spent = key_spent(gw).await;
    for _ in 0..200 {
        if done(spent) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        spent = key_spent(gw).await;
    }
    spent
}

/// The values of `keys` in the shared Redis.
async fn mget(keys: &[String]) -> Vec<Option<String>> {
    let mut conn = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("MGET")
        .arg(keys)
        .query_async(&mut conn)
        .await
        .unwrap()
}

fn about(expected: f64) -> impl Fn(f64) -> bool {
    move |spent| (spent - expected).abs() < 1e-12
}

#[tokio::test]
async fn a_failed_upstream_answer_costs_the_budget_nothing() {
    let mock = MockUpstream::start().await.unwrap();
    // Every attempt waits 300 ms, then fails.
    let cfg = config(
        &mock.scenario_url("latency_ms=300,fault=500"),
        ", budget: { max_usd: 1.0, period: daily }",
        "",
        &unique_prefix(),
    );
    let gw = Arc::new(Gateway::start(&cfg).await);
    let in_flight = {
        let gw = Arc::clone(&gw);
        tokio::spawn(async move { chat(&gw, KEY).await })
    };
    // While the request waits on the upstream, its maximum cost is reserved.
    let reserved = spent_until(&gw, |spent| spent > 0.0).await;
    let expected = switchboard_shared::budget::nanos_to_usd(
        switchboard_shared::budget::usd_to_nanos(max_cost()),
    );
    assert!(
        about(expected)(reserved),
        "in flight: ${reserved} reserved, expected ${expected}"
    );
    assert!(
        !in_flight.is_finished(),
        "the request ended before it was seen"
    );
    assert_eq!(in_flight.await.unwrap().status, 502);
    // The reservation is released in the background; it must come back to zero.
    assert_eq!(spent_until(&gw, about(0.0)).await, 0.0);
}

#[tokio::test]
async fn a_rate_limit_refusal_reserves_nothing_on_the_budget() {
    let mock = MockUpstream::start().await.unwrap();
    let cfg = config(
        &mock.base_url(),
        ", limits: { rpm: 1 }, budget: { max_usd: 1.0, period: daily }",
        "",
        &unique_prefix(),
    );
    let gw = Gateway::start(&cfg).await;
    assert_eq!(chat(&gw, KEY).await.status, 200);
    let settled = spent_until(&gw, about(real_cost())).await;
    assert!(about(real_cost())(settled), "${settled}");
    for _ in 0..3 {
        assert_eq!(
            chat(&gw, KEY).await.openai_error(429)["code"],
            "rate_limit_exceeded"
        );
    }
    let after = key_spent(&gw).await;
    assert!(
        about(real_cost())(after),
        "refused requests left ${} reserved",
        after - real_cost()
    );
}

#[tokio::test]
async fn a_budget_refusal_leaves_no_rate_limit_charge() {
    let mock = MockUpstream::start().await.unwrap();
    let prefix = unique_prefix();
    // Two requests a minute; a budget the first request uses up.
    let cfg = config(
        &mock.base_url(),
        ", limits: { rpm: 2, tpm: 100000 }, budget: { max_usd: 0.0001, period: daily }",
        "",
        &prefix,
    );
    let gw = Gateway::start(&cfg).await;
    assert_eq!(chat(&gw, KEY).await.status, 200);
    // The key's request and token cells in Redis, once the first request is settled.
    let cells = [
        format!("{prefix}:rl:{{t:t1}}:k:k1:rpm"),
        format!("{prefix}:rl:{{t:t1}}:k:k1:tpm"),
    ];
    // (The token correction is sent in the background too.)
    spent_until(&gw, about(real_cost())).await;
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let before = mget(&cells).await;
    assert!(before.iter().all(Option::is_some), "{before:?}");
    for _ in 0..3 {
        let reply = chat(&gw, KEY).await;
        assert_eq!(reply.openai_error(429)["code"], "budget_exceeded");
    }
    assert_eq!(
        mget(&cells).await,
        before,
        "a refused request charged a limit"
    );
    // A new budget day (the limits' clock is Redis's and has not moved): the key's second
    // request of the minute is still there.
    gw.state
        .books
        .clock
        .advance(std::time::Duration::from_secs(86_400));
    let reply = chat(&gw, KEY).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        chat(&gw, KEY).await.openai_error(429)["code"],
        "rate_limit_exceeded"
    );
}

#[tokio::test]
async fn a_budget_in_redis_resets_when_the_clock_crosses_the_period_boundary() {
    let mock = MockUpstream::start().await.unwrap();
    let cfg = config(
        &mock.base_url(),
        ", budget: { max_usd: 0.001, period: daily }",
        "",
        &unique_prefix(),
    );
    let gw = Gateway::start(&cfg).await;
    let mut served = 0;
    loop {
        let reply = chat(&gw, KEY).await;
        if reply.status != 200 {
            assert_eq!(reply.openai_error(429)["code"], "budget_exceeded");
            break;
        }
        served += 1;
        assert!(served < 10, "the budget never ran out");
    }
    assert_eq!(
        chat(&gw, KEY).await.openai_error(429)["code"],
        "budget_exceeded"
    );
    gw.state
        .books
        .clock
        .advance(std::time::Duration::from_secs(86_400));
    assert_eq!(chat(&gw, KEY).await.status, 200, "a new day, a new budget");
    let spent = spent_until(&gw, about(real_cost())).await;
    assert!(about(real_cost())(spent), "the new day's counter: ${spent}");
}

#[tokio::test]
async fn admission_loads_its_script_again_after_a_redis_flush() {
    // A Redis of the test's own: flushing scripts must not disturb anyone else.
    let redis = switchboard_tests::services::ThrowawayRedis::start().await;
    let mock = MockUpstream::start().await.unwrap();
    let cfg = config(
        &mock.base_url(),
        ", limits: { rpm: 1000 }, budget: { max_usd: 1.0, period: daily }",
        "",
        &unique_prefix(),
    )
    .replace(&redis_url(), &redis.url());
    let gw = Gateway::start(&cfg).await;
    assert_eq!(chat(&gw, KEY).await.status, 200);
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(chat(&gw, KEY).await.status, 200);
    let settled = spent_until(&gw, about(2.0 * real_cost())).await;
    assert!(about(2.0 * real_cost())(settled), "${settled}");
    let dataplane::limits::Limiter::Redis(limiter) = gw.state.books.limiter.as_ref() else {
        panic!("a Redis-mode gateway");
    };
    assert!(limiter.redis().is_up(), "a missing script is not an outage");
}

#[tokio::test]
async fn while_redis_is_down_budgets_follow_the_failure_policy() {
    let mock = MockUpstream::start().await.unwrap();
    // Nothing listens on port 1. Key k1 has a limit and a budget; k2 has neither, under a
    // tenant budget.
    let down = |key: &str, tenant: &str, policy: &str| {
        format!(
            "{}  failure_policy: {policy}\n",
            config(&mock.base_url(), key, tenant, &unique_prefix())
                .replace(&redis_url(), "redis://127.0.0.1:1")
        )
    };
    let limited_and_budgeted = ", limits: { rpm: 1000 }, budget: { max_usd: 1.0, period: daily }";
    // `open`: served, uncounted.
    let gw = Gateway::start(&down(limited_and_budgeted, "", "open")).await;
    for _ in 0..2 {
        assert_eq!(chat(&gw, KEY).await.status, 200);
    }
    // `closed`: a limited key is refused for its limits, before its budget is looked at...
    let gw = Gateway::start(&down(limited_and_budgeted, "", "closed")).await;
    let reply = chat(&gw, KEY).await;
    let message = reply.openai_error(503)["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.starts_with("rate limits"), "{message}");
    // ... and an unlimited key with a (tenant) budget for its budget.
    let gw = Gateway::start(&down(
        "",
        ", budget: { max_usd: 1.0, period: daily }",
        "closed",
    ))
    .await;
    let reply = chat(&gw, "sk-second-key").await;
    let message = reply.openai_error(503)["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.starts_with("budgets"), "{message}");
    assert_eq!(
        mock.request_count(""),
        2,
        "refused requests never reach the upstream"
    );
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

/// `redis.lease` with slices of a tenth of a budget: $0.02 of $0.20, which covers more than
/// ten requests' maximum cost, so the budget is leased.
fn leasing(config: String) -> String {
    config.replace(
        "  timeout_ms: 500\n",
        "  timeout_ms: 500\n  lease: { fraction: 0.1 }\n",
    )
}

/// Polls the key's spend until `done` holds for it, for up to ten seconds (slices are given
/// back after a second unused); returns the last value seen.
async fn spent_eventually(gw: &Gateway, done: impl Fn(f64) -> bool) -> f64 {
    let mut spent = key_spent(gw).await;
    for _ in 0..200 {
        if done(spent) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        spent = key_spent(gw).await;
    }
    spent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leased_budget_is_never_overrun_and_its_unused_slices_come_back() {
    const BUDGET: f64 = 0.2;
    const SLICE: f64 = 0.02;
    let mock = MockUpstream::start().await.unwrap();
    let cfg = leasing(config(
        &mock.base_url(),
        &format!(", budget: {{ max_usd: {BUDGET}, period: monthly }}"),
        "",
        &unique_prefix(),
    ));
    let gws = Arc::new([
        Gateway::start(&cfg).await,
        Gateway::start(&cfg).await,
        Gateway::start(&cfg).await,
    ]);
    // One request: charged exactly, and a slice fetched beside it, charged whole.
    assert_eq!(chat(&gws[0], KEY).await.status, 200);
    let held = spent_eventually(&gws[0], |s| s > SLICE).await;
    assert!(about(real_cost() + SLICE)(held), "a slice held: ${held}");
    // Unused, it goes back: the counter returns to what was spent.
    let back = spent_eventually(&gws[0], about(real_cost())).await;
    assert!(about(real_cost())(back), "slice given back: ${back}");

    // Then 24 clients spend the rest through three replicas, each until refused.
    let workers = (0..24usize).map(|w| {
        let gws = Arc::clone(&gws);
        tokio::spawn(async move {
            loop {
                let reply = chat(&gws[w % 3], KEY).await;
                if reply.status != 200 {
                    return reply;
                }
            }
        })
    });
    for w in workers.collect::<Vec<_>>() {
        let refusal = w.await.unwrap();
        assert_eq!(refusal.openai_error(429)["code"], "budget_exceeded");
    }
    let served = gws.iter().flat_map(|g| g.usage.records());
    let spent: f64 = served.filter(|r| r.status == 200).map(|r| r.cost_usd).sum();
    // Slices are charged before use and only when they fit: the overrun is the exact path's,
    // at most one request's maximum cost; the slices held elsewhere refuse early by at most
    // one per replica.
    assert!(spent <= BUDGET + max_cost(), "${spent} of ${BUDGET}");
    assert!(
        spent >= BUDGET - 3.0 * SLICE - max_cost(),
        "${spent} of ${BUDGET}"
    );
    // Once every slice is back, the counter is exactly the real spend.
    let counted = spent_eventually(&gws[0], |s| (s - spent).abs() < 1e-9).await;
    assert!(
        (counted - spent).abs() < 1e-9,
        "${counted} counted, ${spent} spent"
    );
}
