//! Gemini, against the mock's generateContent API (fixtures in tests/fixtures/gemini): chat
//! translated both ways, streams event by event, tool calls, images, usage with cached
//! content and thoughts, cost, error mapping (an invalid key's 400 taken as the gateway's
//! credential failing), and `/v1/messages` clients through two translations.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::time::Duration;

use common::*;
use http::Method;
use serde_json::{Value, json};
use switchboard_tests::mock::gemini::{GEMINI_TEXT, GEMINI_USAGE};

const CHAT: &str = "/v1/chat/completions";
const GOOGLE_KEY: &str = "AIza-upstream-secret";
const PRICE: &str = "price: { input_cost_per_token: 1.0e-06, output_cost_per_token: 1.0e-05, cache_read_input_token_cost: 1.0e-07 }";

/// Model `gem` on a Gemini deployment behind `mock_url` (the mock's `.../v1` URL).
fn config(mock_url: &str, models: &str) -> String {
    let base = format!("{}/v1beta", mock_url.trim_end_matches("/v1"));
    config_yaml(
        &snapshot(
            "",
            &format!(
                "providers:
  - {{ id: g, kind: gemini, base_url: \"{base}\", api_key: {{ value: \"{GOOGLE_KEY}\" }} }}
deployments:
  - {{ id: d-gem, model: gem, provider: g, upstream_model: gemini-up, {PRICE} }}
{models}"
            ),
        ),
        "",
    )
}

#[tokio::test]
async fn chat_is_translated_with_images_usage_and_cost() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(&mock.scenario_url("retry_after=201"), "")).await;
    let body = json!({
        "model": "gem", "max_tokens": 256,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "Explain AI"}, {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}}]}
        ]
    });
    let reply = post(&gw.url(CHAT), &body.to_string()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    assert_eq!(v["choices"][0]["message"]["content"], GEMINI_TEXT);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let (prompt, cached, candidates, thoughts) = GEMINI_USAGE;
    assert_eq!(v["usage"]["prompt_tokens"], prompt);
    assert_eq!(v["usage"]["completion_tokens"], candidates + thoughts);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], cached);

    let sent = &mock.requests("retry_after=201")[0];
    assert_eq!(sent.path, "/v1beta/models/gemini-up:generateContent");
    assert_eq!(sent.header("x-goog-api-key"), Some(GOOGLE_KEY));
    let up = sent.json();
    assert_eq!(
        up["systemInstruction"],
        json!({"parts": [{"text": "Be brief."}]})
    );
    assert_eq!(up["generationConfig"]["maxOutputTokens"], 256);
    assert_eq!(up["contents"][0]["role"], "user");
    assert_eq!(
        up["contents"][0]["parts"][1],
        json!({"inlineData": {"mimeType": "image/jpeg", "data": "/9j/4AAQ"}})
    );

    let record = gw.usage_records(1).await.pop().unwrap();
    assert_eq!(record.usage.prompt_tokens, prompt);
    assert_eq!(record.usage.cached_read_tokens, cached);
    assert_eq!(record.usage.completion_tokens, candidates + thoughts);
    let expected = (prompt - cached) as f64 * 1e-6
        + cached as f64 * 1e-7
        + (candidates + thoughts) as f64 * 1e-5;
    assert!(
        (record.cost_usd - expected).abs() < 1e-12,
        "{} vs {expected}",
        record.cost_usd
    );
}

#[tokio::test]
async fn streams_are_translated_as_events_arrive() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(&mock.scenario_url("interval_ms=100"), "")).await;
    let body =
        r#"{"model":"gem","stream":true,"messages":[{"role":"user","content":"Explain AI"}]}"#;
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
    assert_eq!(text, GEMINI_TEXT);
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "stop")
    );
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "usage hidden unless asked"
    );
    let sent = &mock.requests("interval_ms=100")[0];
    assert_eq!(sent.path, "/v1beta/models/gemini-up:streamGenerateContent");
    assert_eq!(sent.query.as_deref(), Some("alt=sse"));
    let (prompt, _, candidates, thoughts) = GEMINI_USAGE;
    let record = gw.usage_records(1).await.pop().unwrap();
    assert_eq!(
        (record.usage.prompt_tokens, record.usage.completion_tokens),
        (prompt, candidates + thoughts)
    );

    let content_frames: Vec<&TimedFrame> = frames
        .iter()
        .filter(|f| {
            sse_data(&f.data).iter().any(|d| {
                serde_json::from_str::<Value>(d).is_ok_and(|c| {
                    c["choices"][0]["delta"]["content"]
                        .as_str()
                        .is_some_and(|t| !t.is_empty())
                })
            })
        })
        .collect();
    assert_eq!(content_frames.len(), 3, "one frame per upstream event");
    for pair in content_frames.windows(2) {
        assert!(
            pair[1].at - pair[0].at >= Duration::from_millis(70),
            "translated chunks bunched"
        );
    }
}

#[tokio::test]
async fn function_calls_become_tool_calls() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(&mock.scenario_url("retry_after=202"), "")).await;
    let tools = json!([{"type": "function", "function": {"name": "get_current_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}}]);
    let body = json!({"model": "gem", "messages": [{"role": "user", "content": "Weather in Boston?"}], "tools": tools, "tool_choice": "required"});
    let v = post(&gw.url(CHAT), &body.to_string()).await.json();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "get_current_weather");
    assert_eq!(
        serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap(),
        json!({"location": "Boston, MA"})
    );
    let up = mock.requests("retry_after=202")[0].json();
    assert_eq!(
        up["tools"][0]["functionDeclarations"][0]["name"],
        "get_current_weather"
    );
    assert_eq!(up["toolConfig"]["functionCallingConfig"]["mode"], "ANY");

    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let (_, _, frames, _) = post_timed(&gw.url(CHAT), &stream.to_string()).await;
    let chunks: Vec<Value> = sse_data(&joined(&frames))
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let call = chunks
        .iter()
        .find_map(|c| c["choices"][0]["delta"]["tool_calls"].get(0).cloned())
        .unwrap();
    assert_eq!(call["index"], 0);
    assert_eq!(call["function"]["name"], "get_current_weather");
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls")
    );
}

#[tokio::test]
async fn gemini_errors_are_classified_and_shaped() {
    let mock = MockUpstream::start().await.unwrap();
    let body = r#"{"model":"gem","messages":[{"role":"user","content":"hi"}]}"#;
    let no_retry = "models:\n  - { model: gem, retries: 0 }\n";
    let gw = Gateway::start(&config(&mock.scenario_url("fault=400"), no_retry)).await;
    let e = post(&gw.url(CHAT), body).await.openai_error(400);
    assert_eq!(e["code"], "context_length_exceeded");
    // An invalid key is a 400 from Gemini, but the gateway's fault, not the client's.
    for (fault, status) in [("401", 502), ("429", 429), ("503", 502), ("500", 502)] {
        let gw = Gateway::start(&config(
            &mock.scenario_url(&format!("fault={fault}")),
            no_retry,
        ))
        .await;
        let reply = post(&gw.url(CHAT), body).await;
        reply.openai_error(status);
        assert!(!reply.text().contains(GOOGLE_KEY));
        if status == 429 {
            // RetryInfo's retryDelay ("2s" in the fixture) becomes the cooldown.
            assert_eq!(reply.headers["retry-after"], "2");
        }
    }
}

#[tokio::test]
async fn messages_clients_reach_gemini_through_two_translations() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(&mock.base_url(), "")).await;
    let body = json!({"model": "gem", "max_tokens": 50, "messages": [{"role": "user", "content": "Explain AI"}]});
    let headers = [("x-api-key", KEY), ("content-type", "application/json")];
    let reply = send(request(
        Method::POST,
        &gw.url("/v1/messages"),
        &headers,
        body.to_string(),
    ))
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    assert_eq!(v["type"], "message");
    assert_eq!(v["content"][0]["text"], GEMINI_TEXT);
    let (prompt, cached, _, _) = GEMINI_USAGE;
    assert_eq!(v["usage"]["input_tokens"], prompt - cached);
    assert_eq!(v["usage"]["cache_read_input_tokens"], cached);

    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let reply = send(request(
        Method::POST,
        &gw.url("/v1/messages"),
        &headers,
        stream.to_string(),
    ))
    .await;
    let text = reply.text();
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.last(), Some(&"message_stop"));
    let deltas: String = sse_data(reply.body.as_ref())
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|e| e["delta"]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(deltas, GEMINI_TEXT);
    let records = gw.usage_records(2).await;
    assert_eq!(records[1].usage.prompt_tokens, prompt);
}
