//! Streams pass through as they arrive: timing kept, usage read, the gateway's own usage
//! request hidden, disconnects propagated, and no retry after the first byte. A request cut
//! short is charged what was generated (or, for a complete answer, the most it could cost).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::time::Duration;

use common::*;
use switchboard_shared::usage::Outcome;

const CHAT: &str = "/v1/chat/completions";
const STREAM: &str = r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
const STREAM_WITH_USAGE: &str =
    r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[]}"#;

#[tokio::test]
async fn chunk_timing_is_preserved() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&one_deployment(
        &mock.scenario_url("chunks=5,interval_ms=100"),
        "",
        "",
    ))
    .await;
    let (status, headers, frames, ended) = post_timed(&gw.url(CHAT), STREAM).await;
    assert_eq!(status, 200);
    assert!(ended.is_ok());
    assert_eq!(headers["content-type"], "text/event-stream");
    // Content chunks arrive one by one, about 100 ms apart: the gateway does not batch them.
    let content_frames: Vec<&TimedFrame> = frames
        .iter()
        .filter(|f| String::from_utf8_lossy(&f.data).contains("\"content\":\"tok"))
        .collect();
    assert!(
        content_frames.len() >= 5,
        "got {} content frames",
        content_frames.len()
    );
    for pair in content_frames.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(70),
            "chunks bunched together: {gap:?} apart"
        );
    }
    let span = content_frames[content_frames.len() - 1].at - content_frames[0].at;
    assert!(
        span >= Duration::from_millis(350),
        "5 chunks at 100 ms spread over {span:?}"
    );
}

#[tokio::test]
async fn the_usage_chunk_is_hidden_unless_asked_for_but_always_counted() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&one_deployment(&mock.scenario_url("chunks=3"), "", "")).await;

    // Not asked for: the gateway asks upstream anyway, and strips it again.
    let (_, _, frames, _) = post_timed(&gw.url(CHAT), STREAM).await;
    let data = sse_data(&joined(&frames));
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert!(
        data.iter().all(|d| !d.contains("\"prompt_tokens\"")),
        "usage chunk leaked to a client that did not ask: {data:?}"
    );
    let sent = &mock.requests("chunks=3")[0];
    let sent: serde_json::Value = serde_json::from_slice(&sent.body).unwrap();
    assert_eq!(sent["stream_options"]["include_usage"], true);
    assert_eq!(sent["model"], "up-model");

    // Asked for: it arrives, just before [DONE].
    let (_, _, frames, _) = post_timed(&gw.url(CHAT), STREAM_WITH_USAGE).await;
    let data = sse_data(&joined(&frames));
    let usage: serde_json::Value = serde_json::from_str(&data[data.len() - 2]).unwrap();
    assert_eq!(usage["choices"], serde_json::json!([]));
    assert_eq!(usage["usage"]["completion_tokens"], 3);

    // Both were counted from the upstream's report.
    let records = gw.usage_records(2).await;
    assert_eq!(records.len(), 2);
    for r in &records {
        assert!(r.stream && r.usage_reported, "{r:?}");
        assert_eq!(r.outcome, Outcome::Success);
        assert_eq!(
            r.usage.prompt_tokens,
            switchboard_tests::mock::PROMPT_TOKENS
        );
        assert_eq!(r.usage.completion_tokens, 3);
        assert!(r.ttft_ms.is_some());
    }
}

/// gpt-4o's rates, so that a charge shows up as a cost.
const PRICE: &str = "price: { input_cost_per_token: 2.5e-6, output_cost_per_token: 1e-5 }";

/// A gateway whose one deployment, at `url`, is priced with [`PRICE`].
async fn priced_gateway(url: &str, models: &str) -> Gateway {
    Gateway::start(&with_deployment_fields(
        &one_deployment(url, "", models),
        PRICE,
    ))
    .await
}

/// A stream cut short is charged what was generated: the prompt estimate (no report came)
/// and one completion token per event relayed — never nothing.
fn assert_charged_what_was_relayed(
    record: &switchboard_shared::usage::UsageRecord,
    relayed_events: u64,
) {
    assert!(!record.usage_reported, "{record:?}");
    assert!(record.usage.prompt_tokens > 0, "{record:?}");
    assert!(
        record.usage.completion_tokens >= relayed_events.max(1),
        "{record:?}: the client saw {relayed_events} events"
    );
    let want =
        record.usage.prompt_tokens as f64 * 2.5e-6 + record.usage.completion_tokens as f64 * 1e-5;
    assert!((record.cost_usd - want).abs() < 1e-15, "{record:?}");
}

#[tokio::test]
async fn a_client_disconnect_cancels_the_upstream_stream() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = priced_gateway(&mock.scenario_url("chunks=50,interval_ms=50"), "").await;
    let req = request(
        http::Method::POST,
        &gw.url(CHAT),
        &[("authorization", &format!("Bearer {KEY}"))],
        STREAM,
    );
    let response = client().request(req).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    use http_body_util::BodyExt;
    let first = body.frame().await.unwrap().unwrap();
    assert!(first.is_data());
    drop(body); // the client goes away after the first chunk

    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while mock.cancelled_streams() == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mock.cancelled_streams(), 1, "upstream stream not cancelled");
    assert_eq!(mock.completed_streams(), 0);
    let records = gw.usage_records(1).await;
    assert_eq!(records[0].outcome, Outcome::ClientDisconnected);
    let seen = sse_data(&first.into_data().unwrap()).len() as u64;
    assert_charged_what_was_relayed(&records[0], seen);
    assert!(
        records[0].usage.completion_tokens < 50,
        "charged for chunks never generated: {:?}",
        records[0]
    );
}

#[tokio::test]
async fn failures_before_the_first_byte_are_retried() {
    let mock = MockUpstream::start().await.unwrap();
    let scenario = "fail_first=2,fault=503,chunks=2";
    let gw = Gateway::start(&one_deployment(
        &mock.scenario_url(scenario),
        "",
        "models: [{ model: m, retries: 2 }]\n",
    ))
    .await;
    let (status, _, frames, ended) = post_timed(&gw.url(CHAT), STREAM).await;
    assert_eq!(status, 200);
    assert!(ended.is_ok());
    assert_eq!(
        sse_data(&joined(&frames)).last().map(String::as_str),
        Some("[DONE]")
    );
    assert_eq!(
        mock.request_count(scenario),
        3,
        "two failures, then the success"
    );
    let records = gw.usage_records(1).await;
    assert_eq!(records[0].attempts, 3);
}

#[tokio::test]
async fn failures_after_the_first_byte_are_not_retried() {
    let mock = MockUpstream::start().await.unwrap();
    let scenario = "fault=reset_mid_stream,chunks=10,interval_ms=10";
    let gw = priced_gateway(
        &mock.scenario_url(scenario),
        "models: [{ model: m, retries: 3 }]\n",
    )
    .await;
    let (status, _, frames, ended) = post_timed(&gw.url(CHAT), STREAM).await;
    assert_eq!(status, 200, "the head was already sent");
    assert!(!frames.is_empty(), "the first chunks arrived");
    assert!(
        ended.is_err(),
        "the client must see a broken stream, not a clean end"
    );
    assert!(!sse_data(&joined(&frames)).contains(&"[DONE]".to_owned()));
    assert_eq!(
        mock.request_count(scenario),
        1,
        "no retry after the first byte"
    );
    let records = gw.usage_records(1).await;
    assert_eq!(records[0].outcome, Outcome::UpstreamError);
    // What was generated before the break was relayed, and is charged.
    assert_charged_what_was_relayed(&records[0], sse_data(&joined(&frames)).len() as u64);
}

#[tokio::test]
async fn a_stream_that_hangs_before_its_first_byte_times_out_and_falls_back() {
    let mock = MockUpstream::start().await.unwrap();
    let config = config_yaml(
        &snapshot(
            "",
            &format!(
                "providers:
  - {{ id: slow, kind: openai, base_url: \"{}\" }}
  - {{ id: fine, kind: openai, base_url: \"{}\" }}
deployments:
  - {{ id: d-slow, model: m, provider: slow, upstream_model: u }}
  - {{ id: d-fine, model: backup, provider: fine, upstream_model: u }}
models:
  - {{ model: m, retries: 0, fallbacks: [backup], timeouts: {{ first_byte_ms: 200, total_ms: 5000 }} }}
",
                mock.scenario_url("fault=hang"),
                mock.scenario_url("chunks=2")
            ),
        ),
        "",
    );
    let gw = Gateway::start(&config).await;
    let (status, _, frames, _) = post_timed(&gw.url(CHAT), STREAM).await;
    assert_eq!(status, 200);
    assert_eq!(
        sse_data(&joined(&frames)).last().map(String::as_str),
        Some("[DONE]")
    );
    assert_eq!(mock.request_count("fault=hang"), 1);
    assert_eq!(mock.request_count("chunks=2"), 1);
    let records = gw.usage_records(1).await;
    assert_eq!(records[0].deployment_id.as_deref(), Some("d-fine"));
    assert_eq!(
        records[0].model, "m",
        "recorded under the model the client asked for"
    );
}

#[tokio::test]
async fn legacy_completions_stream_too() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&one_deployment(&mock.scenario_url("chunks=4"), "", "")).await;
    let (status, _, frames, _) = post_timed(
        &gw.url("/v1/completions"),
        r#"{"model":"m","prompt":"hi","stream":true}"#,
    )
    .await;
    assert_eq!(status, 200);
    let data = sse_data(&joined(&frames));
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    assert!(data.iter().all(|d| !d.contains("prompt_tokens")));
    let records = gw.usage_records(1).await;
    assert_eq!(records[0].usage.completion_tokens, 4);
    assert_eq!(records[0].endpoint, "completions");
}

#[tokio::test]
async fn the_total_timeout_cuts_a_stream_that_runs_too_long() {
    let mock = MockUpstream::start().await.unwrap();
    let scenario = "chunks=20,interval_ms=50";
    let models =
        "models: [{ model: m, retries: 0, timeouts: { first_byte_ms: 200, total_ms: 400 } }]\n";
    let gw = Gateway::start(&one_deployment(&mock.scenario_url(scenario), "", models)).await;
    let started = std::time::Instant::now();
    let (status, _, frames, ended) = post_timed(&gw.url(CHAT), STREAM).await;
    assert_eq!(status, 200);
    assert!(!frames.is_empty(), "the stream started");
    assert!(ended.is_err(), "a cut stream must not look complete");
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "cut at about 400 ms, not after 1 s"
    );
    assert!(!sse_data(&joined(&frames)).contains(&"[DONE]".to_owned()));
    let records = gw.usage_records(1).await;
    assert_eq!(records[0].outcome, Outcome::UpstreamError);
    assert_eq!(records[0].status, 504);
}
