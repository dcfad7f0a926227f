//! Numbers with bounds (issue 13, item 1): a client-supplied count the gateway reads
//! (`max_tokens`, `max_completion_tokens`, `n`) that is absurd — 1e18, negative, a fraction, a
//! string, `null`, above the model's `max_output_tokens`, or dear enough to cost more than one
//! request may reserve — gets a 400 in the route's API shape naming the field, on every route,
//! before anything is charged: the key's budget (in process, and in a real Redis) and
//! `/v1/key/info` read the same afterwards, and the next honest request is charged exactly.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use common::*;
use switchboard_tests::mock::{COMPLETION_TOKENS, PROMPT_TOKENS};
use switchboard_tests::services::redis_url;

const INPUT_PRICE: f64 = 0.000_01;
const OUTPUT_PRICE: f64 = 0.000_03;
const ROUTES: [&str; 4] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/messages",
];

/// Key `k1` with a budget and a generous TPM limit; model `m` (output limit 1000 in its price)
/// and model `dear` (a price no request may be reserved at for a million tokens).
fn config(base_url: &str, redis_prefix: Option<&str>) -> String {
    let snapshot = snapshot(
        ", budget: { max_usd: 100, period: monthly }, limits: { tpm: 1000000 }",
        &format!(
            "providers: [{{ id: up, kind: openai, base_url: \"{base_url}\" }}]
deployments:
  - {{ id: d1, model: m, provider: up, upstream_model: up-model, price: {{ input_cost_per_token: {INPUT_PRICE}, output_cost_per_token: {OUTPUT_PRICE}, max_output_tokens: 1000 }} }}
  - {{ id: d2, model: dear, provider: up, upstream_model: up-model, price: {{ input_cost_per_token: 1.0, output_cost_per_token: 100.0 }} }}
"
        ),
    );
    let mut text = config_yaml(&snapshot, "");
    if let Some(prefix) = redis_prefix {
        text.push_str(&format!(
            "redis:\n  url: {{ value: \"{}\" }}\n  key_prefix: \"{prefix}\"\n  timeout_ms: 2000\n",
            redis_url()
        ));
    }
    text
}

/// Every bad value with the field a 400 must name.
fn bad_bodies() -> Vec<(String, &'static str)> {
    let mut bodies = Vec::new();
    let values = [
        "1e18",
        "1000000000000000000",
        "-1",
        "0",
        "1.5",
        "\"100\"",
        "null",
        "5000",
    ];
    for field in ["max_tokens", "max_completion_tokens"] {
        for value in values {
            bodies.push((
                format!(
                    r#"{{"model":"m","{field}":{value},"messages":[{{"role":"user","content":"hi"}}],"input":"hi","prompt":"hi"}}"#
                ),
                if field == "max_completion_tokens" && value == "5000" {
                    "max_tokens" // the model's limit names the field the gateway reads
                } else {
                    field
                },
            ));
        }
    }
    for value in ["0", "-2", "1000", "2.0", "null", "\"3\""] {
        bodies.push((
            format!(r#"{{"model":"m","max_tokens":10,"n":{value},"input":"hi"}}"#),
            "n",
        ));
    }
    for value in ["0", "1e2", "null", "129"] {
        bodies.push((
            format!(r#"{{"model":"m","max_tokens":10,"best_of":{value},"prompt":"hi"}}"#),
            "best_of",
        ));
    }
    bodies.push((
        r#"{"model":"dear","max_tokens":1000000,"input":"hi"}"#.to_owned(),
        "max_tokens",
    ));
    bodies
}

/// Asserts the route's error shape and returns the message.
fn refusal(route: &str, reply: &Reply, param: &str, body: &str) -> String {
    if route == "/v1/messages" {
        assert_eq!(reply.status, 400, "{route} {body}: {}", reply.text());
        let v = reply.json();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
        v["error"]["message"].as_str().unwrap().to_owned()
    } else {
        let e = reply.openai_error(400);
        assert_eq!(e["type"], "invalid_request_error", "{route} {body}: {e}");
        assert_eq!(e["param"], param, "{route} {body}: {e}");
        e["message"].as_str().unwrap().to_owned()
    }
}

async fn bad_numbers_change_nothing(redis_prefix: Option<&str>) {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(&mock.base_url(), redis_prefix)).await;
    let before = key_info(&gw).await;
    assert_eq!(before["key"]["budget"]["spent_usd"], 0.0, "{before}");
    for route in ROUTES {
        for (body, param) in bad_bodies() {
            let reply = post(&gw.url(route), &body).await;
            let message = refusal(route, &reply, param, &body);
            assert!(message.contains(param), "{route} {body}: {message}");
        }
    }
    assert_eq!(
        mock.request_count(""),
        0,
        "a refused request reached upstream"
    );
    // Each refusal is in the request log (issue 15), charged nothing and never attempted.
    for r in gw.usage.records() {
        assert_eq!(
            r.outcome,
            switchboard_shared::usage::Outcome::Refused,
            "{r:?}"
        );
        assert_eq!((r.attempts, r.cost_usd, r.status), (0, 0.0, 400), "{r:?}");
        assert_eq!(r.error_kind.as_deref(), Some("bad_request"), "{r:?}");
    }
    assert_eq!(
        key_info(&gw).await,
        before,
        "a refusal changed the key's books"
    );

    // The books still work, to the nano-dollar: the next honest request costs what it used.
    let reply = post(
        &gw.url("/v1/chat/completions"),
        r#"{"model":"m","max_tokens":1000,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let expected = PROMPT_TOKENS as f64 * INPUT_PRICE + COMPLETION_TOKENS as f64 * OUTPUT_PRICE;
    let mut spent = f64::NAN;
    for _ in 0..200 {
        spent = key_info(&gw).await["key"]["budget"]["spent_usd"]
            .as_f64()
            .unwrap();
        if (spent - expected).abs() < 1e-12 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        (spent - expected).abs() < 1e-12,
        "spent {spent}, expected {expected}"
    );
}

#[tokio::test]
async fn bad_numbers_are_400s_that_leave_the_books_alone_without_redis() {
    bad_numbers_change_nothing(None).await;
}

#[tokio::test]
async fn bad_numbers_are_400s_that_leave_the_books_alone_with_redis() {
    let prefix = format!("test-bounded-{}", uuid::Uuid::now_v7().simple());
    bad_numbers_change_nothing(Some(&prefix)).await;
}
