//! `POST /v1/responses` end to end against the mock: a native deployment gets the body with
//! only the model changed and its usage is priced; a translated stream is not buffered; stored
//! responses belong to their tenant; with Redis, every replica sees them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::time::Duration;

use common::*;
use http::Method;
use serde_json::{Value, json};
use switchboard_tests::mock::responses::{RESPONSES_USAGE, text_for};

const RESPONSES: &str = "/v1/responses";
const OTHER_KEY: &str = "sk-test-key-other-tenant";
const INPUT_PRICE: f64 = 0.000_01;
const OUTPUT_PRICE: f64 = 0.000_03;
const CACHE_READ_PRICE: f64 = 0.000_001;

/// Two tenants with a key each; `native` (tagged `responses_api`) and `chat` (not) on the mock.
fn config(native_url: &str, chat_url: &str, server_extra: &str) -> String {
    let snapshot = format!(
        "revision: 1
tenants: [{{ id: t1 }}, {{ id: t2 }}]
virtual_keys:
  - {{ id: k1, tenant_id: t1, key_hash: \"{}\" }}
  - {{ id: k2, tenant_id: t2, key_hash: \"{}\" }}
providers:
  - {{ id: native-up, kind: openai, base_url: \"{native_url}\" }}
  - {{ id: chat-up, kind: openai, base_url: \"{chat_url}\" }}
deployments:
  - {{ id: dn, model: native, provider: native-up, upstream_model: up-native, tags: [responses_api], price: {{ input_cost_per_token: {INPUT_PRICE}, output_cost_per_token: {OUTPUT_PRICE}, cache_read_input_token_cost: {CACHE_READ_PRICE} }} }}
  - {{ id: dc, model: chat, provider: chat-up, upstream_model: up-chat }}
",
        key_hash(KEY),
        key_hash(OTHER_KEY)
    );
    config_yaml(&snapshot, server_extra)
}

async fn call(method: Method, url: &str, key: &str, body: &str) -> Reply {
    send(request(
        method,
        url,
        &[
            ("authorization", &format!("Bearer {key}")),
            ("content-type", "application/json"),
        ],
        body.to_owned(),
    ))
    .await
}

#[tokio::test]
async fn a_native_deployment_gets_the_body_with_only_the_model_changed_and_usage_is_priced() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(&mock.base_url(), &mock.base_url(), "")).await;
    let body = json!({"model": "native", "input": [{"role": "user", "content": "Hi"}],
        "reasoning": {"effort": "low"}, "include": ["reasoning.encrypted_content"], "store": true});
    let reply = post(&gw.url(RESPONSES), &body.to_string()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["output"][0]["content"][0]["text"], text_for(1));
    let sent = mock.requests("");
    let last = sent.last().unwrap();
    assert_eq!(last.path, "/v1/responses");
    let mut expected = body.clone();
    expected["model"] = "up-native".into();
    assert_eq!(
        serde_json::from_slice::<Value>(&last.body).unwrap(),
        expected
    );

    let (input, cached, output) = RESPONSES_USAGE;
    let records = gw.usage_records(1).await;
    let record = records.last().unwrap();
    assert_eq!(record.endpoint, "responses");
    assert_eq!(record.usage.prompt_tokens, input);
    assert_eq!(record.usage.cached_read_tokens, cached);
    assert_eq!(record.usage.completion_tokens, output);
    let cost = (input - cached) as f64 * INPUT_PRICE
        + cached as f64 * CACHE_READ_PRICE
        + output as f64 * OUTPUT_PRICE;
    assert!(
        (record.cost_usd - cost).abs() < 1e-12,
        "{} != {cost}",
        record.cost_usd
    );

    // Streamed: usage from `response.completed`, which reaches the client unchanged.
    let stream = json!({"model": "native", "input": "Hi", "stream": true});
    let reply = post(&gw.url(RESPONSES), &stream.to_string()).await;
    assert_eq!(reply.status, 200);
    let events = sse_data(&reply.body);
    let done: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(done["type"], "response.completed");
    assert_eq!(done["response"]["usage"]["output_tokens"], output);
    let records = gw.usage_records(2).await;
    let record = records.last().unwrap();
    assert!(record.stream && record.usage_reported);
    assert_eq!(record.usage.completion_tokens, output);
}

#[tokio::test]
async fn a_translated_stream_is_passed_on_event_by_event() {
    let mock = MockUpstream::start().await.unwrap();
    let chat_url = mock.scenario_url("chunks=5,interval_ms=100");
    let gw = Gateway::start(&config(&mock.base_url(), &chat_url, "")).await;
    let body = r#"{"model":"chat","input":"Hi","stream":true}"#;
    let (status, _, frames, ended) = post_timed(&gw.url(RESPONSES), body).await;
    assert_eq!(status, 200);
    assert!(ended.is_ok());
    let deltas: Vec<&TimedFrame> = frames
        .iter()
        .filter(|f| String::from_utf8_lossy(&f.data).contains("response.output_text.delta"))
        .collect();
    assert!(deltas.len() >= 5, "got {} delta frames", deltas.len());
    let span = deltas[deltas.len() - 1].at - deltas[0].at;
    assert!(
        span >= Duration::from_millis(350),
        "5 deltas spread over {span:?}"
    );
    let sent = mock.requests("chunks=5,interval_ms=100");
    assert_eq!(sent.last().unwrap().path, "/v1/chat/completions");
    let text = String::from_utf8_lossy(&joined(&frames)).into_owned();
    assert!(text.contains("event: response.completed"), "{text}");
    let records = gw.usage_records(1).await;
    assert!(records.last().unwrap().usage_reported);
}

#[tokio::test]
async fn stored_responses_belong_to_their_tenant() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(&mock.base_url(), &mock.base_url(), "")).await;
    let reply = post(&gw.url(RESPONSES), r#"{"model":"chat","input":"Hi"}"#).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let id = reply.json()["id"].as_str().unwrap().to_owned();
    let path = gw.url(&format!("{RESPONSES}/{id}"));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(call(Method::GET, &path, KEY, "").await.status, 200);
    // Another tenant's key: 404, as for an id that does not exist.
    let other = call(Method::GET, &path, OTHER_KEY, "").await;
    assert_eq!(other.status, 404);
    assert_eq!(other.json()["error"]["code"], "response_not_found");
    assert_eq!(call(Method::DELETE, &path, OTHER_KEY, "").await.status, 404);
    let chained = json!({"model": "chat", "input": "More", "previous_response_id": id});
    let other = call(
        Method::POST,
        &gw.url(RESPONSES),
        OTHER_KEY,
        &chained.to_string(),
    )
    .await;
    assert_eq!(other.status, 404);
    assert_eq!(other.json()["error"]["param"], "previous_response_id");
    // Without a key: 401.
    let anonymous = send(request(Method::GET, &path, &[], "")).await;
    assert_eq!(anonymous.status, 401);
    // The owner still has it, and can delete it once.
    assert_eq!(call(Method::DELETE, &path, KEY, "").await.status, 200);
    assert_eq!(call(Method::DELETE, &path, KEY, "").await.status, 404);
}

#[tokio::test]
async fn with_redis_every_replica_sees_a_stored_response() {
    let mock = MockUpstream::start().await.unwrap();
    let prefix = format!("resp-test-{}", std::process::id());
    let redis = format!(
        "redis:\n  url: {{ value: \"redis://127.0.0.1:6379\" }}\n  key_prefix: {prefix}\n  timeout_ms: 2000\n"
    );
    let text = config(&mock.base_url(), &mock.base_url(), "");
    // The `redis:` section is top-level: put it before `snapshot:`.
    let text = text.replacen("snapshot:\n", &format!("{redis}snapshot:\n"), 1);
    let a = Gateway::start(&text).await;
    let b = Gateway::start(&text).await;
    let reply = post(&a.url(RESPONSES), r#"{"model":"native","input":"Hi"}"#).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let id = reply.json()["id"].as_str().unwrap().to_owned();
    let chained = json!({"model": "native", "input": "More", "previous_response_id": id});
    let reply = post(&b.url(RESPONSES), &chained.to_string()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["output"][0]["content"][0]["text"], text_for(3));
    let got = call(Method::GET, &b.url(&format!("{RESPONSES}/{id}")), KEY, "").await;
    assert_eq!(got.status, 200);
    assert_eq!(got.json()["id"], id);
    assert_eq!(
        call(
            Method::DELETE,
            &b.url(&format!("{RESPONSES}/{id}")),
            KEY,
            ""
        )
        .await
        .status,
        200
    );
    let gone = call(Method::GET, &a.url(&format!("{RESPONSES}/{id}")), KEY, "").await;
    assert_eq!(gone.status, 404);
}
