//! Metered passthrough (`/passthrough/{kind}/{path}`) in process, against the mock: the
//! credential is injected and only the model changed; the key's allow-list and budget admit or
//! refuse it like chat; an admitted request leaves a usage record priced from the answer
//! (Gemini's `usageMetadata` too, whole and streamed; Azure at its deployment URLs).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use common::*;
use http::Method;
use serde_json::{Value, json};
use switchboard_tests::mock::anthropic::ANTHROPIC_USAGE;
use switchboard_tests::mock::gemini::GEMINI_USAGE;
use switchboard_tests::mock::{COMPLETION_TOKENS, PROMPT_TOKENS};

const INPUT: f64 = 0.000_01;
const OUTPUT: f64 = 0.000_03;
const CACHE_READ: f64 = 0.000_001;
const CACHE_WRITE: f64 = 0.000_012_5;
const LIMITED_KEY: &str = "sk-test-limited";

fn config(root: &str, budget: &str) -> String {
    let price = format!(
        "price: {{ input_cost_per_token: {INPUT}, output_cost_per_token: {OUTPUT}, cache_read_input_token_cost: {CACHE_READ}, cache_creation_input_token_cost: {CACHE_WRITE} }}"
    );
    let host = root.trim_end_matches("/v1");
    let snapshot = format!(
        "revision: 1
tenants: [{{ id: t1 }}]
virtual_keys:
  - {{ id: k1, tenant_id: t1, key_hash: \"{}\"{budget} }}
  - {{ id: k2, tenant_id: t1, key_hash: \"{}\", allowed_models: [gpt] }}
providers:
  - {{ id: ant, kind: anthropic, base_url: \"{root}\", api_key: {{ value: sk-ant-upstream }} }}
  - {{ id: oai, kind: openai, base_url: \"{root}\", api_key: {{ value: sk-oai-upstream }} }}
  - {{ id: az, kind: azure, base_url: \"{host}\", api_version: 2024-10-21, api_key: {{ value: az-upstream }} }}
  - {{ id: gem, kind: gemini, base_url: \"{host}/v1beta\", api_key: {{ value: AIza-upstream }} }}
deployments:
  - {{ id: d1, model: claude, provider: ant, upstream_model: claude-up, {price} }}
  - {{ id: d2, model: gpt, provider: oai, upstream_model: gpt-up, {price} }}
  - {{ id: d3, model: gemini, provider: gem, upstream_model: gemini-up, {price} }}
  - {{ id: d4, model: azgpt, provider: az, upstream_model: gpt-prod, {price} }}
",
        key_hash(KEY),
        key_hash(LIMITED_KEY)
    );
    config_yaml(&snapshot, "")
}

async fn call(gw: &Gateway, path: &str, key: &str, body: &Value, extra: &[(&str, &str)]) -> Reply {
    let auth = format!("Bearer {key}");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    headers.extend_from_slice(extra);
    send(request(
        Method::POST,
        &gw.url(path),
        &headers,
        body.to_string(),
    ))
    .await
}

fn message() -> Value {
    json!({"model": "claude", "max_tokens": 20, "messages": [{"role": "user", "content": "Hello"}]})
}

#[tokio::test]
async fn an_anthropic_passthrough_is_priced_from_its_answer_and_refused_at_the_budget() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(
        &mock.base_url(),
        ", budget: { max_usd: 0.0008, period: monthly }",
    ))
    .await;
    let beta = ("anthropic-beta", "prompt-caching-2024-07-31");
    let reply = call(
        &gw,
        "/passthrough/anthropic/messages",
        KEY,
        &message(),
        &[beta],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["type"], "message");
    let sent = mock.requests("");
    let sent = sent.last().unwrap();
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.headers["x-api-key"], "sk-ant-upstream");
    assert!(
        sent.headers.get("authorization").is_none(),
        "the client's key went upstream"
    );
    assert_eq!(sent.headers["anthropic-beta"], "prompt-caching-2024-07-31");
    let mut expected = message();
    expected["model"] = "claude-up".into();
    assert_eq!(
        serde_json::from_slice::<Value>(&sent.body).unwrap(),
        expected
    );

    let records = gw.usage_records(1).await;
    let record = records.last().unwrap();
    assert_eq!(record.endpoint, "passthrough");
    assert_eq!(record.deployment_id.as_deref(), Some("d1"));
    let (uncached, write, read, output) = ANTHROPIC_USAGE;
    assert_eq!(record.usage.prompt_tokens, uncached + write + read);
    assert_eq!(record.usage.completion_tokens, output);
    let cost = uncached as f64 * INPUT
        + write as f64 * CACHE_WRITE
        + read as f64 * CACHE_READ
        + output as f64 * OUTPUT;
    assert!(
        (record.cost_usd - cost).abs() < 1e-12,
        "{} != {cost}",
        record.cost_usd
    );

    // The budget (admission refuses once a counter reaches its limit) is now spent: refused,
    // in Anthropic's shape, and nothing reaches the upstream. Settlement runs in the
    // background: give it a moment.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let before = mock.request_count("");
    let refused = call(&gw, "/passthrough/anthropic/messages", KEY, &message(), &[]).await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.json()["type"], "error");
    assert!(refused.text().contains("budget"), "{}", refused.text());
    assert_eq!(mock.request_count(""), before);
}

#[tokio::test]
async fn an_openai_passthrough_is_recorded_and_the_allow_list_applies() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(&mock.base_url(), "")).await;
    let body = json!({"model": "gpt", "messages": [{"role": "user", "content": "Hi"}], "logit_bias": {"50256": -100}});
    let reply = call(&gw, "/passthrough/openai/chat/completions", KEY, &body, &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let sent = mock.requests("");
    let sent = sent.last().unwrap();
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(sent.headers["authorization"], "Bearer sk-oai-upstream");
    let record = gw.usage_records(1).await.pop().unwrap();
    assert_eq!(record.endpoint, "passthrough");
    assert_eq!(record.usage.prompt_tokens, PROMPT_TOKENS);
    assert_eq!(record.usage.completion_tokens, COMPLETION_TOKENS);
    let cost = PROMPT_TOKENS as f64 * INPUT + COMPLETION_TOKENS as f64 * OUTPUT;
    assert!((record.cost_usd - cost).abs() < 1e-12);

    // A key limited to `gpt` may not reach `claude` through a passthrough either.
    let refused = call(
        &gw,
        "/passthrough/anthropic/messages",
        LIMITED_KEY,
        &message(),
        &[],
    )
    .await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    // A kind the model has no deployment of: no upstream call.
    let before = mock.request_count("");
    let wrong = call(
        &gw,
        "/passthrough/anthropic/messages",
        KEY,
        &json!({"model": "gpt", "max_tokens": 5, "messages": []}),
        &[],
    )
    .await;
    assert_eq!(wrong.status, 400, "{}", wrong.text());
    assert_eq!(mock.request_count(""), before);
    // Unknown kinds and odd paths.
    assert_eq!(
        call(&gw, "/passthrough/nope/x", KEY, &body, &[])
            .await
            .status,
        404
    );
    assert_eq!(
        call(&gw, "/passthrough/openai/a%2F..%2Fb", KEY, &body, &[])
            .await
            .status,
        400
    );
    // Without a key: 401.
    let anonymous = send(request(
        Method::POST,
        &gw.url("/passthrough/openai/chat/completions"),
        &[],
        body.to_string(),
    ))
    .await;
    assert_eq!(anonymous.status, 401);
}

fn contents() -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": "Hello"}]}], "generationConfig": {"maxOutputTokens": 20}})
}

/// What the mock's Gemini answer (and its stream's last event) costs: the cached part of the
/// prompt at the cache-read price, thoughts as output.
fn gemini_cost() -> f64 {
    let (prompt, cached, candidates, thoughts) = GEMINI_USAGE;
    (prompt - cached) as f64 * INPUT
        + cached as f64 * CACHE_READ
        + (candidates + thoughts) as f64 * OUTPUT
}

/// Checks the latest upstream call went to Gemini for `method` with the deployment's key and
/// the body as sent, and the `n`th usage record is priced from `usageMetadata`.
async fn assert_gemini_metered(gw: &Gateway, mock: &MockUpstream, method: &str, n: usize) {
    let sent = mock.requests("");
    let sent = sent.last().unwrap();
    assert_eq!(sent.path, format!("/v1beta/models/gemini-up:{method}"));
    assert_eq!(sent.headers["x-goog-api-key"], "AIza-upstream");
    assert!(
        sent.headers.get("authorization").is_none(),
        "the client's key went upstream"
    );
    assert_eq!(sent.json(), contents());
    let records = gw.usage_records(n).await;
    assert_eq!(records.len(), n);
    let record = records.last().unwrap();
    assert_eq!(record.endpoint, "passthrough");
    assert_eq!(record.deployment_id.as_deref(), Some("d3"));
    assert_eq!(record.model, "gemini");
    assert!(record.usage_reported);
    let (prompt, cached, candidates, thoughts) = GEMINI_USAGE;
    assert_eq!(record.usage.prompt_tokens, prompt);
    assert_eq!(record.usage.cached_read_tokens, cached);
    assert_eq!(record.usage.completion_tokens, candidates + thoughts);
    let cost = gemini_cost();
    assert!(
        (record.cost_usd - cost).abs() < 1e-12,
        "{} != {cost}",
        record.cost_usd
    );
}

#[tokio::test]
async fn a_gemini_passthrough_is_priced_from_usage_metadata_whole_and_streamed() {
    let mock = MockUpstream::start().await.unwrap();
    // Two calls spend the budget; the third is refused.
    let budget = format!(
        ", budget: {{ max_usd: {}, period: monthly }}",
        gemini_cost() * 1.5
    );
    let gw = Gateway::start(&config(&mock.base_url(), &budget)).await;
    let whole = "/passthrough/gemini/models/gemini:generateContent";
    let reply = call(&gw, whole, KEY, &contents(), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.json()["usageMetadata"]["promptTokenCount"],
        GEMINI_USAGE.0
    );
    assert_gemini_metered(&gw, &mock, "generateContent", 1).await;

    let streamed = "/passthrough/gemini/models/gemini:streamGenerateContent?alt=sse";
    let reply = call(&gw, streamed, KEY, &contents(), &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    // The events arrive as Gemini sent them, usage included.
    assert!(
        reply.text().contains("\"thoughtsTokenCount\":4"),
        "{}",
        reply.text()
    );
    assert_gemini_metered(&gw, &mock, "streamGenerateContent", 2).await;
    assert_eq!(
        mock.requests("").last().unwrap().query.as_deref(),
        Some("alt=sse")
    );
    assert!(gw.usage_records(2).await[1].stream);

    // Settlement runs in the background: give it a moment. Then the budget refuses, in
    // Google's error shape, and nothing reaches the upstream.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let before = mock.request_count("");
    let refused = call(&gw, whole, KEY, &contents(), &[]).await;
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(refused.json()["error"]["status"], "RESOURCE_EXHAUSTED");
    assert_eq!(refused.json()["error"]["code"], 429);
    assert!(refused.text().contains("budget"), "{}", refused.text());
    assert_eq!(mock.request_count(""), before);
}

#[tokio::test]
async fn a_gemini_passthrough_keeps_the_allow_list_and_refuses_odd_paths() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(&mock.base_url(), "")).await;
    let whole = "/passthrough/gemini/models/gemini:generateContent";
    // A key limited to `gpt` may not reach `gemini`: refused in Google's shape.
    let refused = call(&gw, whole, LIMITED_KEY, &contents(), &[]).await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert_eq!(refused.json()["error"]["status"], "PERMISSION_DENIED");
    // A model without Gemini deployments, a stream without `alt=sse`, another query, a path
    // that names no model: 400s, and no upstream call.
    for path in [
        "/passthrough/gemini/models/gpt:generateContent",
        "/passthrough/gemini/models/gemini:streamGenerateContent",
        "/passthrough/gemini/models/gemini:generateContent?key=AIza-client",
        "/passthrough/gemini/cachedContents",
        "/passthrough/openai/chat/completions?x=1",
    ] {
        let reply = call(&gw, path, KEY, &contents(), &[]).await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.text());
    }
    let reply = call(
        &gw,
        "/passthrough/gemini/cachedContents",
        KEY,
        &contents(),
        &[],
    )
    .await;
    assert_eq!(reply.json()["error"]["status"], "INVALID_ARGUMENT");
    assert_eq!(mock.request_count(""), 0);
}

#[tokio::test]
async fn an_azure_passthrough_goes_to_the_deployment_url_and_is_priced() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(&mock.base_url(), "")).await;
    let body = json!({"model": "azgpt", "messages": [{"role": "user", "content": "Hi"}]});
    let path = "/passthrough/azure/chat/completions";
    let reply = call(&gw, path, KEY, &body, &[]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let sent = mock.requests("");
    let sent = sent.last().unwrap();
    assert_eq!(sent.path, "/openai/deployments/gpt-prod/chat/completions");
    assert_eq!(sent.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(sent.headers["api-key"], "az-upstream");
    assert!(sent.headers.get("authorization").is_none());
    let record = gw.usage_records(1).await.pop().unwrap();
    assert_eq!(record.endpoint, "passthrough");
    assert_eq!(record.deployment_id.as_deref(), Some("d4"));
    assert_eq!(record.usage.prompt_tokens, PROMPT_TOKENS);
    let cost = PROMPT_TOKENS as f64 * INPUT + COMPLETION_TOKENS as f64 * OUTPUT;
    assert!((record.cost_usd - cost).abs() < 1e-12);
    // The allow-list holds here too.
    let refused = call(&gw, path, LIMITED_KEY, &body, &[]).await;
    assert_eq!(refused.status, 403, "{}", refused.text());
}
