//! Upstreams are untrusted input, and foreign ones answer in unusual shapes: the mock upstream's
//! hostile knobs (`oversize`, `line_ends`, `ratelimit_reset`, `litellm_usage`,
//! `stream_as_json`, `event_text`) against the gateway. Size caps give a clear 502 in the
//! client's shape and a metric; CRLF and CR streams are relayed event by event; absurd
//! rate-limit headers are no panic; usage the client did not ask for never reaches it; a JSON
//! answer to a stream is refused; a cut Gemini stream is charged by its text; a client that
//! leaves before a non-streamed answer is charged the usage the provider reports, and is no
//! longer counted in flight.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::time::Duration;

use common::*;
use http_body_util::BodyExt;
use switchboard_shared::usage::{Outcome, UsageRecord};
use switchboard_tests::mock::bedrock::{BEDROCK_ACCESS_KEY_ID, BEDROCK_SECRET_ACCESS_KEY};

const CHAT: &str = "/v1/chat/completions";
const MESSAGES: &str = "/v1/messages";
const ASK: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
const STREAM: &str = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const STREAM_WITH_USAGE: &str = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hi"}]}"#;
const CAP: usize = 64 * 1024;

/// [`one_deployment`] at `url`, with both upstream caps at [`CAP`].
async fn capped_gateway(url: &str) -> Gateway {
    let config = one_deployment(url, "", "").replacen(
        "server:\n",
        &format!("server:\n  max_upstream_body_bytes: {CAP}\n  max_upstream_event_bytes: {CAP}\n"),
        1,
    );
    Gateway::start(&config).await
}

/// The value of `switchboard_upstream_oversize_total{part=...}` (0 when absent).
async fn oversize_count(gw: &Gateway, part: &str) -> u64 {
    let text = send(request(http::Method::GET, &gw.url("/metrics"), &[], ""))
        .await
        .text();
    let prefix = format!("switchboard_upstream_oversize_total{{part=\"{part}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse::<f64>().unwrap() as u64)
}

/// Asserts the 502 of an upstream past a size cap, in OpenAI's shape.
fn assert_too_large(reply: &Reply) {
    let error = reply.openai_error(502);
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("larger than the gateway accepts"),
        "{error}"
    );
}

/// The `data:` payloads of an event stream with any of the spec's line ends.
fn events_data(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes)
        .replace("\r\n", "\n")
        .replace('\r', "\n");
    sse_data(text.as_bytes())
}

#[tokio::test]
async fn a_huge_body_is_a_502_in_the_clients_shape_and_counted() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = capped_gateway(&mock.scenario_url("oversize=1000000")).await;
    let before = oversize_count(&gw, "body").await;
    let reply = post(&gw.url(CHAT), ASK).await;
    assert_too_large(&reply);
    assert!(oversize_count(&gw, "body").await > before);
    // The same answer within the cap goes through.
    let gw = capped_gateway(&mock.scenario_url("oversize=1000")).await;
    assert_eq!(post(&gw.url(CHAT), ASK).await.status, 200);
}

#[tokio::test]
async fn an_endless_line_is_a_502_not_a_growing_buffer() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = capped_gateway(&mock.scenario_url("oversize=4000000")).await;
    let before = oversize_count(&gw, "event").await;
    let started = std::time::Instant::now();
    let reply = post(&gw.url(CHAT), STREAM).await;
    assert_too_large(&reply);
    assert!(oversize_count(&gw, "event").await > before);
    // Refused at the cap, long before the upstream's four megabytes.
    assert!(started.elapsed() < Duration::from_secs(5));
    // Anthropic's clients get Anthropic's shape (a fresh gateway: the failure cooled the
    // first one's deployment).
    let gw = capped_gateway(&mock.scenario_url("oversize=4000001")).await;
    let body = r#"{"model":"m","max_tokens":10,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let reply = post(&gw.url(MESSAGES), body).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert_eq!(reply.json()["type"], "error", "{}", reply.text());
}

#[tokio::test]
async fn crlf_and_cr_streams_are_relayed_event_by_event_and_counted() {
    let mock = MockUpstream::start().await.unwrap();
    for ends in ["crlf", "cr"] {
        let scenario = format!("line_ends={ends},chunks=4");
        let gw = Gateway::start(&one_deployment(&mock.scenario_url(&scenario), "", "")).await;
        let (status, _, frames, ended) = post_timed(&gw.url(CHAT), STREAM).await;
        assert_eq!(status, 200);
        assert!(ended.is_ok());
        let data = events_data(&joined(&frames));
        assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{ends}");
        assert!(
            data.iter().all(|d| !d.contains("\"prompt_tokens\"")),
            "{ends}: usage leaked to a client that did not ask: {data:?}"
        );
        let content = data
            .iter()
            .filter(|d| d.contains("\"content\":\"tok"))
            .count();
        assert_eq!(content, 4, "{ends}: {data:?}");
        let records = gw.usage_records(1).await;
        assert!(records[0].usage_reported, "{ends}: {:?}", records[0]);
        assert_eq!(records[0].usage.completion_tokens, 4);
    }
}

#[tokio::test]
async fn a_client_leaving_a_crlf_stream_is_charged_what_it_saw() {
    let mock = MockUpstream::start().await.unwrap();
    let scenario = "line_ends=crlf,chunks=50,interval_ms=50";
    let gw = Gateway::start(&one_deployment(&mock.scenario_url(scenario), "", "")).await;
    let auth = format!("Bearer {KEY}");
    let headers = [("authorization", auth.as_str())];
    let response = client()
        .request(request(http::Method::POST, &gw.url(CHAT), &headers, STREAM))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    // Events arrive one by one: the relay does not wait for the end of a CRLF stream.
    let first = tokio::time::timeout(Duration::from_secs(2), body.frame())
        .await
        .expect("the first CRLF event arrives before the stream ends")
        .unwrap()
        .unwrap();
    assert!(first.is_data());
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(body);
    let records = gw.usage_records(1).await;
    assert_eq!(records[0].outcome, Outcome::ClientDisconnected);
    assert!(
        records[0].usage.completion_tokens >= 1,
        "charged nothing for a relayed CRLF stream: {:?}",
        records[0]
    );
    assert!(records[0].usage.completion_tokens < 50, "{:?}", records[0]);
}

#[tokio::test]
async fn absurd_rate_limit_headers_are_no_panic() {
    let mock = MockUpstream::start().await.unwrap();
    for value in [
        "1e30",
        "1e308",
        "inf",
        "NaN",
        "-5",
        "99999999999999999h",
        "1e30s",
    ] {
        let scenario = format!("ratelimit_reset={value}");
        let gw = Gateway::start(&one_deployment(&mock.scenario_url(&scenario), "", "")).await;
        for _ in 0..2 {
            let reply = post(&gw.url(CHAT), ASK).await;
            assert_eq!(reply.status, 200, "{value}: {}", reply.text());
        }
    }
}

#[tokio::test]
async fn litellms_usage_chunk_keeps_its_choices_but_loses_usage_unless_asked() {
    let mock = MockUpstream::start().await.unwrap();
    let scenario = "litellm_usage=true,chunks=3";
    let gw = Gateway::start(&one_deployment(&mock.scenario_url(scenario), "", "")).await;

    let (_, _, frames, _) = post_timed(&gw.url(CHAT), STREAM).await;
    let data = sse_data(&joined(&frames));
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<serde_json::Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(
        chunks
            .iter()
            .all(|c| c.get("usage").is_none_or(|u| u.is_null())),
        "usage reached a client that did not ask: {data:?}"
    );
    let last = chunks.last().unwrap();
    assert_eq!(
        last["choices"][0]["delta"],
        serde_json::json!({}),
        "{data:?}"
    );

    let (_, _, frames, _) = post_timed(&gw.url(CHAT), STREAM_WITH_USAGE).await;
    let data = sse_data(&joined(&frames));
    let last: serde_json::Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(last["usage"]["completion_tokens"], 3, "{data:?}");

    let records = gw.usage_records(2).await;
    for r in &records {
        assert!(r.usage_reported, "{r:?}");
        assert_eq!(r.usage.completion_tokens, 3);
    }
}

#[tokio::test]
async fn a_json_answer_to_a_stream_is_refused_in_the_clients_shape() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&one_deployment(
        &mock.scenario_url("stream_as_json=true"),
        "",
        "",
    ))
    .await;
    let reply = post(&gw.url(CHAT), STREAM).await;
    let error = reply.openai_error(502);
    assert!(
        error["message"].as_str().unwrap().contains("not a stream"),
        "{error}"
    );
    assert_ne!(reply.headers["content-type"], "text/event-stream");
    // An Anthropic client in front of the same upstream: Anthropic's error, never JSON posing
    // as its stream (a fresh gateway: the failure cooled the first one's deployment).
    let gw = Gateway::start(&one_deployment(
        &mock.scenario_url("stream_as_json=true,chunks=2"),
        "",
        "",
    ))
    .await;
    let body = r#"{"model":"m","max_tokens":10,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
    let reply = post(&gw.url(MESSAGES), body).await;
    assert_eq!(reply.status, 502, "{}", reply.text());
    let v = reply.json();
    assert_eq!(v["type"], "error", "{v}");
    assert!(v["error"]["message"].as_str().is_some(), "{v}");
    // Not streamed, the same upstream answers normally.
    let gw = Gateway::start(&one_deployment(
        &mock.scenario_url("stream_as_json=true"),
        "",
        "",
    ))
    .await;
    assert_eq!(post(&gw.url(CHAT), ASK).await.status, 200);
}

#[tokio::test]
async fn messages_without_any_message_are_a_400_in_anthropics_shape() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&one_deployment(&mock.scenario_url("empty=1"), "", "")).await;
    let reply = post(
        &gw.url(MESSAGES),
        r#"{"model":"m","max_tokens":10,"messages":[]}"#,
    )
    .await;
    assert_eq!(reply.status, 400, "{}", reply.text());
    let v = reply.json();
    assert_eq!(v["type"], "error", "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("messages"),
        "{v}"
    );
    assert_eq!(mock.request_count("empty=1"), 0, "forwarded anyway");
}

#[tokio::test]
async fn an_anthropic_base_url_without_v1_works() {
    let mock = MockUpstream::start().await.unwrap();
    for base in [
        mock.base_url(),
        mock.base_url().trim_end_matches("/v1").to_owned(),
    ] {
        let config = config_yaml(
            &snapshot(
                "",
                &format!(
                    "providers: [{{ id: ant, kind: anthropic, base_url: \"{base}\", api_key: {{ value: \"sk-ant\" }} }}]\ndeployments:\n  - {{ id: d1, model: m, provider: ant, upstream_model: claude-up }}\n"
                ),
            ),
            "",
        );
        let gw = Gateway::start(&config).await;
        let body = r#"{"model":"m","max_tokens":10,"messages":[{"role":"user","content":"hi"}]}"#;
        let reply = post(&gw.url(MESSAGES), body).await;
        assert_eq!(reply.status, 200, "{base}: {}", reply.text());
        assert_eq!(reply.json()["type"], "message", "{base}");
    }
}

/// A gateway whose model `m` is served by a `kind` deployment (`gemini` or `bedrock`) at the
/// mock under `scenario`.
async fn translated_gateway(mock: &MockUpstream, kind: &str, scenario: &str) -> Gateway {
    let url = mock.scenario_url(scenario);
    let root = url.trim_end_matches("/v1");
    let provider = match kind {
        "gemini" => format!(
            "{{ id: p, kind: gemini, base_url: \"{root}/v1beta\", api_key: {{ value: \"AIza-x\" }} }}"
        ),
        _ => format!(
            "{{ id: p, kind: bedrock, base_url: \"{root}\", region: us-east-1, aws_access_key_id: {{ value: {BEDROCK_ACCESS_KEY_ID} }}, aws_secret_access_key: {{ value: \"{BEDROCK_SECRET_ACCESS_KEY}\" }} }}"
        ),
    };
    let config = config_yaml(
        &snapshot(
            "",
            &format!(
                "providers: [{provider}]\ndeployments:\n  - {{ id: d1, model: m, provider: p, upstream_model: up-model }}\n"
            ),
        ),
        "",
    );
    Gateway::start(&config).await
}

#[tokio::test]
async fn cut_gemini_and_bedrock_streams_are_charged_by_their_text_not_per_event() {
    let mock = MockUpstream::start().await.unwrap();
    for kind in ["gemini", "bedrock"] {
        let scenario = "event_text=400,chunks=6,fault=reset_mid_stream";
        let gw = translated_gateway(&mock, kind, scenario).await;
        let (status, _, frames, ended) = post_timed(&gw.url(CHAT), STREAM).await;
        assert_eq!(status, 200, "{kind}");
        assert!(ended.is_err(), "{kind}: the cut must reach the client");
        let text: usize = sse_data(&joined(&frames))
            .iter()
            .filter_map(|d| serde_json::from_str::<serde_json::Value>(d).ok())
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::len))
            .sum();
        assert!(
            text >= 800,
            "{kind}: 400-byte events relayed, saw {text} bytes"
        );
        let records = gw.usage_records(1).await;
        let r = &records[0];
        assert!(!r.usage_reported, "{kind}: {r:?}");
        assert!(
            r.usage.completion_tokens >= (text as u64) / 4,
            "{kind}: {text} bytes of text relayed, charged {} completion tokens",
            r.usage.completion_tokens
        );
    }
}

#[tokio::test]
async fn the_mock_provider_embeds_each_input() {
    let config = config_yaml(
        &snapshot(
            "",
            "providers: [{ id: mk, kind: mock }]\ndeployments:\n  - { id: d1, model: m, provider: mk, upstream_model: mock-1 }\n",
        ),
        "",
    );
    let gw = Gateway::start(&config).await;
    let reply = post(
        &gw.url("/v1/embeddings"),
        r#"{"model":"m","input":["hello","world"]}"#,
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let data = reply.json()["data"].as_array().unwrap().clone();
    assert_eq!(data.len(), 2);
    assert_eq!(
        (data[0]["index"].clone(), data[1]["index"].clone()),
        (0.into(), 1.into())
    );
    assert_ne!(data[0]["embedding"], data[1]["embedding"]);
}

/// A client that gives up on a non-streamed request after 150 ms, while its upstream takes
/// 600 ms to answer; returned once the exchange has finished on its own (its usage record
/// written), with the gateway and that record.
async fn a_client_leaves_early() -> (MockUpstream, Gateway, UsageRecord) {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&one_deployment(
        &mock.scenario_url("latency_ms=600"),
        "",
        "",
    ))
    .await;
    let auth = format!("Bearer {KEY}");
    let sent = client().request(request(
        http::Method::POST,
        &gw.url(CHAT),
        &[("authorization", auth.as_str())],
        ASK,
    ));
    // The client gives up while the upstream is still working on the answer.
    assert!(
        tokio::time::timeout(Duration::from_millis(150), sent)
            .await
            .is_err()
    );
    let record = gw.usage_records(1).await.remove(0);
    (mock, gw, record)
}

#[tokio::test]
async fn a_client_leaving_before_a_non_streamed_answer_is_charged_its_real_usage() {
    let (_mock, _gw, r) = a_client_leaves_early().await;
    assert!(r.usage_reported, "charged an estimate: {r:?}");
    assert_eq!(
        (r.usage.prompt_tokens, r.usage.completion_tokens),
        (
            switchboard_tests::mock::PROMPT_TOKENS,
            switchboard_tests::mock::COMPLETION_TOKENS
        ),
        "charged what the provider reported, not prompt + max_tokens"
    );
}

/// The value of `switchboard_inflight_requests`, read by a scrape that is itself in flight.
async fn in_flight(gw: &Gateway) -> f64 {
    let text = send(request(http::Method::GET, &gw.url("/metrics"), &[], ""))
        .await
        .text();
    text.lines()
        .find_map(|l| l.strip_prefix("switchboard_inflight_requests "))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test]
async fn a_client_that_leaves_before_its_answer_is_no_longer_in_flight() {
    let (_mock, gw, _) = a_client_leaves_early().await;
    // The exchange finished on its own; only the scrape is in flight.
    let mut seen = in_flight(&gw).await;
    for _ in 0..50 {
        if seen == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        seen = in_flight(&gw).await;
    }
    assert_eq!(seen, 1.0, "requests in flight after the client left");
}
