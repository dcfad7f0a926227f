//! Bedrock, against the mock's Converse API (fixtures in tests/fixtures/bedrock), which checks
//! every request's SigV4 signature: chat translated both ways, ConverseStream's binary
//! event-stream decoded into chunks as frames arrive, tool calls, images, usage with cache
//! reads and writes, cost, error mapping, and `/v1/messages` clients.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::time::Duration;

use common::*;
use http::Method;
use serde_json::{Value, json};
use switchboard_shared::usage::Usage;
use switchboard_tests::mock::bedrock::{
    BEDROCK_ACCESS_KEY_ID, BEDROCK_SECRET_ACCESS_KEY, BEDROCK_TEXT, BEDROCK_USAGE,
};

const CHAT: &str = "/v1/chat/completions";
const PRICE: &str = "price: { input_cost_per_token: 1.0e-06, output_cost_per_token: 1.0e-05, cache_read_input_token_cost: 1.0e-07, cache_creation_input_token_cost: 2.0e-06 }";
const MODEL_ID: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";

/// Model `br` on a Bedrock deployment at the mock (its `.../v1` URL), signed with `secret`.
fn config_with_secret(mock_url: &str, secret: &str, models: &str) -> String {
    let base = mock_url.trim_end_matches("/v1");
    config_yaml(
        &snapshot(
            "",
            &format!(
                "providers:
  - {{ id: b, kind: bedrock, base_url: \"{base}\", region: us-east-1, aws_access_key_id: {{ value: {BEDROCK_ACCESS_KEY_ID} }}, aws_secret_access_key: {{ value: \"{secret}\" }} }}
deployments:
  - {{ id: d-br, model: br, provider: b, upstream_model: \"{MODEL_ID}\", {PRICE} }}
{models}"
            ),
        ),
        "",
    )
}

fn config(mock_url: &str, models: &str) -> String {
    config_with_secret(mock_url, BEDROCK_SECRET_ACCESS_KEY, models)
}

fn usage() -> Usage {
    let (input, output, read, write) = BEDROCK_USAGE;
    Usage {
        prompt_tokens: input + read + write,
        completion_tokens: output,
        cached_read_tokens: read,
        cache_creation_tokens: write,
    }
}

#[tokio::test]
async fn signed_converse_requests_are_translated_with_images_usage_and_cost() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(&mock.scenario_url("retry_after=301"), "")).await;
    let body = json!({
        "model": "br", "max_tokens": 300, "temperature": 0.5,
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": [{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}]}
        ]
    });
    let reply = post(&gw.url(CHAT), &body.to_string()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    assert_eq!(v["choices"][0]["message"]["content"], BEDROCK_TEXT);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let u = usage();
    assert_eq!(v["usage"]["prompt_tokens"], u.prompt_tokens);
    assert_eq!(
        v["usage"]["prompt_tokens_details"]["cached_tokens"],
        u.cached_read_tokens
    );

    let sent = &mock.requests("retry_after=301")[0];
    assert_eq!(
        sent.path,
        "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    );
    assert!(
        sent.header("authorization")
            .unwrap()
            .starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    );
    assert!(sent.header("x-amz-date").is_some());
    let up = sent.json();
    assert_eq!(up["system"], json!([{"text": "Be brief."}]));
    assert_eq!(
        up["inferenceConfig"],
        json!({"maxTokens": 300, "temperature": 0.5})
    );
    assert_eq!(
        up["messages"][0]["content"][1],
        json!({"image": {"format": "png", "source": {"bytes": "iVBORw0KGgo="}}})
    );

    let record = gw.usage_records(1).await.pop().unwrap();
    assert_eq!(record.usage, u);
    let (input, output, read, write) = BEDROCK_USAGE;
    let expected =
        input as f64 * 1e-6 + read as f64 * 1e-7 + write as f64 * 2e-6 + output as f64 * 1e-5;
    assert!(
        (record.cost_usd - expected).abs() < 1e-12,
        "{} vs {expected}",
        record.cost_usd
    );
}

#[tokio::test]
async fn a_wrong_secret_fails_the_signature_check_and_takes_the_deployment_out() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config_with_secret(
        &mock.base_url(),
        "not-the-secret",
        "models:\n  - { model: br, retries: 0 }\n",
    ))
    .await;
    let reply = post(
        &gw.url(CHAT),
        r#"{"model":"br","messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    reply.openai_error(502);
    assert!(!reply.text().contains("not-the-secret"));
}

#[tokio::test]
async fn converse_stream_frames_become_chunks_as_they_arrive() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(&mock.scenario_url("interval_ms=100"), "")).await;
    let body = r#"{"model":"br","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let (status, headers, frames, ended) = post_timed(&gw.url(CHAT), body).await;
    assert_eq!(status, 200);
    assert!(ended.is_ok(), "{ended:?}");
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
    assert_eq!(text, BEDROCK_TEXT);
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "stop")
    );
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    assert_eq!(
        mock.requests("interval_ms=100")[0].path,
        "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse-stream"
    );
    assert_eq!(gw.usage_records(1).await[0].usage, usage());

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
async fn tool_use_becomes_tool_calls_streamed_and_not() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(&mock.scenario_url("retry_after=302"), "")).await;
    let tools = json!([{"type": "function", "function": {"name": "top_song", "parameters": {"type": "object", "properties": {"sign": {"type": "string"}}}}}]);
    let body = json!({"model": "br", "messages": [{"role": "user", "content": "Most popular song on WZPZ?"}], "tools": tools, "tool_choice": "auto"});
    let v = post(&gw.url(CHAT), &body.to_string()).await.json();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["id"], "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q");
    assert_eq!(
        serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap(),
        json!({"sign": "WZPZ"})
    );
    let up = mock.requests("retry_after=302")[0].json();
    assert_eq!(up["toolConfig"]["tools"][0]["toolSpec"]["name"], "top_song");
    assert_eq!(up["toolConfig"]["toolChoice"], json!({"auto": {}}));

    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let (_, _, frames, _) = post_timed(&gw.url(CHAT), &stream.to_string()).await;
    let chunks: Vec<Value> = sse_data(&joined(&frames))
        .iter()
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
        .collect();
    assert_eq!(calls[0][0]["function"]["name"], "top_song");
    let arguments: String = calls
        .iter()
        .filter_map(|c| c[0]["function"]["arguments"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&arguments).unwrap(),
        json!({"sign": "WZPZ"})
    );
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"] == "tool_calls")
    );
}

#[tokio::test]
async fn bedrock_errors_are_classified_and_shaped() {
    let mock = MockUpstream::start().await.unwrap();
    let no_retry = "models:\n  - { model: br, retries: 0 }\n";
    let body = r#"{"model":"br","messages":[{"role":"user","content":"hi"}]}"#;
    let gw = Gateway::start(&config(&mock.scenario_url("fault=400"), no_retry)).await;
    let e = post(&gw.url(CHAT), body).await.openai_error(400);
    assert_eq!(e["code"], "context_length_exceeded");
    for (fault, status) in [("401", 502), ("429", 429), ("503", 502), ("500", 502)] {
        let gw = Gateway::start(&config(
            &mock.scenario_url(&format!("fault={fault}")),
            no_retry,
        ))
        .await;
        let reply = post(&gw.url(CHAT), body).await;
        reply.openai_error(status);
        assert!(!reply.text().contains(BEDROCK_SECRET_ACCESS_KEY));
    }
    // Bedrock needs image bytes: a plain image URL is refused before anything is sent.
    let gw = Gateway::start(&config(&mock.scenario_url("retry_after=303"), "")).await;
    let e = post(&gw.url(CHAT), r#"{"model":"br","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]}"#).await.openai_error(400);
    assert!(e["message"].as_str().unwrap().contains("data URLs"));
    assert_eq!(mock.request_count("retry_after=303"), 0);
}

#[tokio::test]
async fn messages_clients_reach_bedrock() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(&mock.base_url(), "")).await;
    let headers = [("x-api-key", KEY), ("content-type", "application/json")];
    let body =
        json!({"model": "br", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]});
    let reply = send(request(
        Method::POST,
        &gw.url("/v1/messages"),
        &headers,
        body.to_string(),
    ))
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    assert_eq!(v["content"][0]["text"], BEDROCK_TEXT);
    let (input, _, read, write) = BEDROCK_USAGE;
    assert_eq!(v["usage"]["input_tokens"], input);
    assert_eq!(v["usage"]["cache_read_input_tokens"], read);
    assert_eq!(v["usage"]["cache_creation_input_tokens"], write);
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
    assert!(text.starts_with("event: message_start"), "{text}");
    assert!(
        text.trim_end()
            .ends_with(r#"data: {"type":"message_stop"}"#),
        "{text}"
    );
    assert_eq!(gw.usage_records(2).await[1].usage, usage());
}
