//! Anthropic both ways, against the mock's Messages API (fixtures in tests/fixtures/anthropic):
//! OpenAI clients in front of an Anthropic deployment (translated requests, answers, streams,
//! tool calls, images, usage with cache tokens, cost, errors), and `/v1/messages` clients in
//! front of an Anthropic deployment (bytes pass through) and of an OpenAI-compatible one
//! (translated), with errors in Anthropic's shape.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::time::Duration;

use common::*;
use http::Method;
use serde_json::{Value, json};
use switchboard_shared::usage::Usage;
use switchboard_tests::mock::anthropic::{ANTHROPIC_STREAM_TEXT, ANTHROPIC_USAGE};

const CHAT: &str = "/v1/chat/completions";
const MESSAGES: &str = "/v1/messages";
const UPSTREAM_KEY: &str = "sk-ant-upstream-secret";
const PRICE: &str = "price: { input_cost_per_token: 1.0e-06, output_cost_per_token: 1.0e-05, cache_read_input_token_cost: 1.0e-07, cache_creation_input_token_cost: 2.0e-06 }";

/// Model `claude` on an Anthropic deployment at `anthropic_url`, model `gpt` on an OpenAI one
/// at `openai_url`.
fn config(anthropic_url: &str, openai_url: &str, models: &str) -> String {
    config_yaml(
        &snapshot(
            "",
            &format!(
                "providers:
  - {{ id: ant, kind: anthropic, base_url: \"{anthropic_url}\", api_key: {{ value: \"{UPSTREAM_KEY}\" }} }}
  - {{ id: oai, kind: openai, base_url: \"{openai_url}\" }}
deployments:
  - {{ id: d-claude, model: claude, provider: ant, upstream_model: claude-up, {PRICE} }}
  - {{ id: d-gpt, model: gpt, provider: oai, upstream_model: gpt-up }}
{models}"
            ),
        ),
        "",
    )
}

fn anthropic_usage() -> Usage {
    let (input, creation, read, output) = ANTHROPIC_USAGE;
    Usage {
        prompt_tokens: input + creation + read,
        completion_tokens: output,
        cached_read_tokens: read,
        cache_creation_tokens: creation,
    }
}

async fn post_messages(url: &str, body: &Value, auth: (&str, &str)) -> Reply {
    send(request(
        Method::POST,
        url,
        &[
            auth,
            ("content-type", "application/json"),
            ("anthropic-version", "2023-06-01"),
        ],
        body.to_string(),
    ))
    .await
}

fn bearer() -> (&'static str, String) {
    ("authorization", format!("Bearer {KEY}"))
}

#[tokio::test]
async fn an_openai_chat_is_translated_to_anthropic_and_back_with_cache_usage_and_cost() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(
        &mock.scenario_url("retry_after=101"),
        &mock.base_url(),
        "",
    ))
    .await;
    let body = json!({
        "model": "claude",
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [
                {"type": "text", "text": "What is in this image?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
            ]}
        ],
        "stop": ["END"]
    });
    let reply = post(&gw.url(CHAT), &body.to_string()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hi! My name is Claude."
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let usage = anthropic_usage();
    assert_eq!(v["usage"]["prompt_tokens"], usage.prompt_tokens);
    assert_eq!(v["usage"]["completion_tokens"], usage.completion_tokens);
    assert_eq!(
        v["usage"]["prompt_tokens_details"]["cached_tokens"],
        usage.cached_read_tokens
    );

    // What went upstream: Anthropic's URL, headers and body shape.
    let sent = &mock.requests("retry_after=101")[0];
    assert_eq!(sent.path, "/v1/messages");
    assert_eq!(sent.header("x-api-key"), Some(UPSTREAM_KEY));
    assert_eq!(sent.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(sent.header("authorization"), None);
    let up = sent.json();
    assert_eq!(up["model"], "claude-up");
    assert_eq!(up["system"], json!([{"type": "text", "text": "Be brief."}]));
    assert_eq!(up["max_tokens"], 4096);
    assert_eq!(up["stop_sequences"], json!(["END"]));
    assert_eq!(
        up["messages"][0]["content"][1]["source"],
        json!({"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="})
    );

    // Accounting: cache read and creation charged at their own rates.
    let record = gw.usage_records(1).await.pop().unwrap();
    assert_eq!(record.usage, usage);
    assert!(record.usage_reported);
    let expected = 25.0 * 1e-6 + 40.0 * 1e-7 + 10.0 * 2e-6 + 15.0 * 1e-5;
    assert!(
        (record.cost_usd - expected).abs() < 1e-12,
        "cost {} vs {expected}",
        record.cost_usd
    );
}

#[tokio::test]
async fn an_openai_stream_is_translated_event_by_event_as_events_arrive() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(
        &mock.scenario_url("interval_ms=100"),
        &mock.base_url(),
        "",
    ))
    .await;
    let body = r#"{"model":"claude","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, headers, frames, ended) = post_timed(&gw.url(CHAT), body).await;
    assert_eq!(status, 200);
    assert!(ended.is_ok());
    assert_eq!(headers["content-type"], "text/event-stream");
    let data = sse_data(&joined(&frames));
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, ANTHROPIC_STREAM_TEXT);
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "stop")
    );
    // The client did not ask for usage: the translated usage chunk is hidden, but counted.
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "{chunks:?}"
    );
    assert_eq!(gw.usage_records(1).await[0].usage, anthropic_usage());

    // No buffering: each upstream text delta (100 ms apart) leaves as its own frame.
    let content_frames: Vec<&TimedFrame> = frames
        .iter()
        .filter(|f| String::from_utf8_lossy(&f.data).contains("\"content\":\""))
        .filter(|f| !String::from_utf8_lossy(&f.data).contains("\"content\":\"\""))
        .collect();
    assert_eq!(content_frames.len(), 3, "one frame per text delta");
    for pair in content_frames.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(70),
            "translated chunks bunched: {gap:?} apart"
        );
    }
}

#[tokio::test]
async fn tool_calls_translate_both_streamed_and_not() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(
        &mock.scenario_url("retry_after=102"),
        &mock.base_url(),
        "",
    ))
    .await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]);
    let body = json!({"model": "claude", "messages": [{"role": "user", "content": "Weather in SF?"}], "tools": tools, "tool_choice": {"type": "function", "function": {"name": "get_weather"}}});
    let reply = post(&gw.url(CHAT), &body.to_string()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["id"], "toolu_01A09q90qw90lq917835lq9");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(
        args,
        json!({"location": "San Francisco, CA", "unit": "celsius"})
    );
    let up = mock.requests("retry_after=102")[0].json();
    assert_eq!(up["tools"][0]["name"], "get_weather");
    assert_eq!(up["tools"][0]["input_schema"]["type"], "object");
    assert_eq!(
        up["tool_choice"],
        json!({"type": "tool", "name": "get_weather"})
    );

    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let (status, _, frames, _) = post_timed(&gw.url(CHAT), &stream_body.to_string()).await;
    assert_eq!(status, 200);
    let data = sse_data(&joined(&frames));
    let chunks: Vec<Value> = data
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
        .collect();
    assert_eq!(calls[0][0]["id"], "toolu_01T1x1fJ34qAmk2tNTrN7Up6");
    assert_eq!(calls[0][0]["function"]["name"], "get_weather");
    let arguments: String = calls
        .iter()
        .filter_map(|c| c[0]["function"]["arguments"].as_str())
        .collect();
    let args: Value = serde_json::from_str(&arguments).unwrap();
    assert_eq!(
        args,
        json!({"location": "San Francisco, CA", "unit": "fahrenheit"})
    );
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls")
    );
}

#[tokio::test]
async fn anthropic_errors_reach_openai_clients_in_openai_shape() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(
        &mock.scenario_url("fault=400"),
        &mock.base_url(),
        "models:\n  - { model: claude, retries: 0 }\n",
    ))
    .await;
    let body = r#"{"model":"claude","messages":[{"role":"user","content":"hi"}]}"#;
    let e = post(&gw.url(CHAT), body).await.openai_error(400);
    assert_eq!(e["code"], "context_length_exceeded");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("prompt is too long")
    );

    for (fault, status) in [("429", 429), ("503", 502), ("401", 502)] {
        let gw = Gateway::start(&config(
            &mock.scenario_url(&format!("fault={fault}")),
            &mock.base_url(),
            "models:\n  - { model: claude, retries: 0 }\n",
        ))
        .await;
        let reply = post(&gw.url(CHAT), body).await;
        let e = reply.openai_error(status);
        assert!(!reply.text().contains(UPSTREAM_KEY));
        assert!(e["type"].is_string());
    }
    // A translation refusal is a 400 naming the field, and nothing goes upstream.
    let gw = Gateway::start(&config(
        &mock.scenario_url("retry_after=103"),
        &mock.base_url(),
        "",
    ))
    .await;
    let e = post(&gw.url(CHAT), r#"{"model":"claude","messages":"hi"}"#)
        .await
        .openai_error(400);
    assert_eq!(e["param"], "messages");
    assert_eq!(mock.request_count("retry_after=103"), 0);
}

#[tokio::test]
async fn messages_pass_through_to_an_anthropic_deployment_byte_for_byte() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(
        &mock.scenario_url("retry_after=104"),
        &mock.base_url(),
        "",
    ))
    .await;
    let body = json!({"model": "claude", "max_tokens": 100, "messages": [{"role": "user", "content": "Hello"}], "top_k": 5});
    let reply = post_messages(&gw.url(MESSAGES), &body, ("x-api-key", KEY)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.body,
        include_str!("../fixtures/anthropic/message.json").as_bytes(),
        "the answer passes through unchanged"
    );
    let sent = mock.requests("retry_after=104")[0].json();
    let mut expected = body.clone();
    expected["model"] = json!("claude-up");
    assert_eq!(sent, expected, "only the model changes on the way up");
    assert_eq!(gw.usage_records(1).await[0].usage, anthropic_usage());

    // Streamed: the transcript passes through, no stream_options is added (the mock would
    // refuse it), and usage is read from message_start and message_delta.
    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let (b, v) = bearer();
    let reply = post_messages(&gw.url(MESSAGES), &stream_body, (b, &v)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.text(),
        include_str!("../fixtures/anthropic/message_stream.sse")
    );
    let records = gw.usage_records(2).await;
    assert_eq!(records[1].usage, anthropic_usage());
    assert_eq!(records[1].endpoint, "messages");
}

#[tokio::test]
async fn messages_are_translated_for_an_openai_deployment() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(
        &mock.base_url(),
        &mock.scenario_url("retry_after=105,chunks=4"),
        "",
    ))
    .await;
    let body = json!({
        "model": "gpt", "max_tokens": 50, "system": "Be brief.",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}]
    });
    let reply = post_messages(&gw.url(MESSAGES), &body, ("x-api-key", KEY)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(v["content"][0]["type"], "text");
    assert_eq!(
        v["content"][0]["text"],
        switchboard_tests::mock::CHAT_CONTENT
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(
        v["usage"]["input_tokens"],
        switchboard_tests::mock::PROMPT_TOKENS
    );
    assert_eq!(
        v["usage"]["output_tokens"],
        switchboard_tests::mock::COMPLETION_TOKENS
    );
    let up = mock.requests("retry_after=105,chunks=4")[0].json();
    assert_eq!(up["model"], "gpt-up");
    assert_eq!(
        up["messages"][0],
        json!({"role": "system", "content": "Be brief."})
    );

    // With tools, the upstream's tool call comes back as a tool_use block.
    let mut with_tools = body.clone();
    with_tools["tools"] = json!([{"name": "f", "input_schema": {"type": "object"}}]);
    with_tools["tool_choice"] = json!({"type": "auto"});
    let v = post_messages(&gw.url(MESSAGES), &with_tools, ("x-api-key", KEY))
        .await
        .json();
    assert_eq!(v["stop_reason"], "tool_use");
    assert_eq!(
        v["content"],
        json!([{"type": "tool_use", "id": "call_abc123", "name": "get_current_weather", "input": {"location": "Boston, MA"}}])
    );
    assert_eq!(v["usage"]["input_tokens"], 82);
    let up = mock.requests("retry_after=105,chunks=4")[1].json();
    assert_eq!(up["tools"][0]["function"]["name"], "f");
    assert_eq!(up["tool_choice"], "auto");

    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    let reply = post_messages(&gw.url(MESSAGES), &stream_body, ("x-api-key", KEY)).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers["content-type"], "text/event-stream");
    let text = reply.text();
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(&names[names.len() - 2..], ["message_delta", "message_stop"]);
    let deltas: String = sse_data(reply.body.as_ref())
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|e| e["delta"]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(deltas, switchboard_tests::mock::stream_content(4));
    let up = mock.requests("retry_after=105,chunks=4")[2].json();
    assert_eq!(up["stream_options"], json!({"include_usage": true}));
    let records = gw.usage_records(3).await;
    assert_eq!(
        records[2].usage.prompt_tokens,
        switchboard_tests::mock::PROMPT_TOKENS
    );
    assert_eq!(records[2].usage.completion_tokens, 4);
}

#[tokio::test]
async fn messages_errors_use_anthropics_shape() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(
        &mock.scenario_url("fault=400"),
        &mock.scenario_url("fault=401"),
        "models:\n  - { model: claude, retries: 0 }\n  - { model: gpt, retries: 0 }\n",
    ))
    .await;
    let ok_body = json!({"model": "claude", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]});
    let cases: Vec<(Value, (&str, &str), u16, &str)> = vec![
        (
            ok_body.clone(),
            ("x-api-key", "sk-wrong"),
            401,
            "authentication_error",
        ),
        (
            json!({"model": "nope", "max_tokens": 10, "messages": []}),
            ("x-api-key", KEY),
            404,
            "not_found_error",
        ),
        (
            json!({"model": "claude", "messages": []}),
            ("x-api-key", KEY),
            400,
            "invalid_request_error",
        ),
        // The upstream's own refusal passes through in Anthropic's shape.
        (
            ok_body.clone(),
            ("x-api-key", KEY),
            400,
            "invalid_request_error",
        ),
        // An OpenAI deployment rejecting the gateway's credential: a gateway error.
        (
            json!({"model": "gpt", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}),
            ("x-api-key", KEY),
            502,
            "api_error",
        ),
    ];
    for (body, auth, status, kind) in cases {
        let reply = post_messages(&gw.url(MESSAGES), &body, auth).await;
        assert_eq!(reply.status.as_u16(), status, "{body}: {}", reply.text());
        let v = reply.json();
        assert_eq!(v["type"], "error", "{v}");
        assert_eq!(v["error"]["type"], kind, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert!(v.get("param").is_none());
    }
    let reply = send(request(
        Method::POST,
        &gw.url(MESSAGES),
        &[("x-api-key", KEY)],
        "{not json",
    ))
    .await;
    assert_eq!(reply.status, 400);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
    let reply = send(request(
        Method::GET,
        &gw.url(MESSAGES),
        &[("x-api-key", KEY)],
        "",
    ))
    .await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.json()["type"], "error");
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
}

#[tokio::test]
async fn messages_streams_from_an_openai_deployment_are_translated_without_buffering() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(
        &mock.base_url(),
        &mock.scenario_url("chunks=4,interval_ms=100"),
        "",
    ))
    .await;
    let body = r#"{"model":"gpt","max_tokens":20,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, _, frames, ended) = post_timed(&gw.url(MESSAGES), body).await;
    assert_eq!(status, 200);
    assert!(ended.is_ok());
    let text_frames: Vec<&TimedFrame> = frames
        .iter()
        .filter(|f| String::from_utf8_lossy(&f.data).contains("\"text_delta\""))
        .collect();
    assert_eq!(text_frames.len(), 4, "one frame per upstream chunk");
    for pair in text_frames.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(70),
            "translated events bunched: {gap:?} apart"
        );
    }
}

#[tokio::test]
async fn messages_share_the_keys_limits_and_model_access() {
    let mock = MockUpstream::start().await.unwrap();
    let config = config_yaml(
        &snapshot(
            ", limits: { rpm: 1 }, allowed_models: [claude]",
            &format!(
                "providers:
  - {{ id: ant, kind: anthropic, base_url: \"{}\" }}
  - {{ id: oai, kind: openai, base_url: \"{}\" }}
deployments:
  - {{ id: d-claude, model: claude, provider: ant, upstream_model: claude-up }}
  - {{ id: d-gpt, model: gpt, provider: oai, upstream_model: gpt-up }}
",
                mock.base_url(),
                mock.base_url()
            ),
        ),
        "",
    );
    let gw = Gateway::start(&config).await;
    let body = |model: &str| json!({"model": model, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]});
    let reply = post_messages(&gw.url(MESSAGES), &body("gpt"), ("x-api-key", KEY)).await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(reply.json()["error"]["type"], "permission_error");
    let reply = post_messages(&gw.url(MESSAGES), &body("claude"), ("x-api-key", KEY)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let reply = post_messages(&gw.url(MESSAGES), &body("claude"), ("x-api-key", KEY)).await;
    assert_eq!(reply.status, 429, "{}", reply.text());
    assert_eq!(reply.json()["error"]["type"], "rate_limit_error");
    assert!(reply.headers.contains_key("retry-after"));
    // Only the admitted request was accounted; the refusals (403, 429) are only logged.
    let records = gw.usage_records(3).await;
    let refused = switchboard_shared::usage::Outcome::Refused;
    let charged: Vec<_> = records.iter().filter(|r| r.outcome != refused).collect();
    assert_eq!(charged.len(), 1, "{records:?}");
    let kinds: Vec<_> = records
        .iter()
        .filter_map(|r| r.error_kind.as_deref())
        .collect();
    assert_eq!(kinds, ["model_not_allowed", "rate_limited"], "{records:?}");
}
