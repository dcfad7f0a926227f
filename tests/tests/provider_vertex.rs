//! Vertex AI, against the mock's token endpoint and Vertex paths (fixtures in
//! tests/fixtures/vertex): every request signed with an access token from the service
//! account's JWT bearer grant, the token reused, refreshed near its expiry and after a 401
//! (once), one fetch for concurrent requests; Google's models through the Gemini translation
//! and Anthropic's through `rawPredict` (`/v1/messages` and chat, streamed and not); a refused
//! service account taking the deployment out; project, location and endpoint settings.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use common::*;
use http::Method;
use serde_json::{Value, json};
use switchboard_tests::mock::anthropic::{ANTHROPIC_STREAM_TEXT, ANTHROPIC_USAGE};
use switchboard_tests::mock::gemini::{GEMINI_TEXT, GEMINI_USAGE};
use switchboard_tests::mock::vertex::service_account;

const CHAT: &str = "/v1/chat/completions";
const MESSAGES: &str = "/v1/messages";
const GOOGLE_PREFIX: &str =
    "/v1/projects/switchboard-test/locations/us-central1/publishers/google/models";
const ANTHROPIC_PREFIX: &str =
    "/v1/projects/switchboard-test/locations/us-central1/publishers/anthropic/models";

/// Models `gem` (a Gemini model) and `claude` (Anthropic's) on one Vertex provider whose
/// endpoint is the mock under `scenario` and whose key gets its tokens from the mock under
/// `token_scenario`; `extra` is added to the provider, `models` after the deployments.
fn config(
    mock: &MockUpstream,
    scenario: &str,
    token_scenario: &str,
    extra: &str,
    models: &str,
) -> String {
    let addr = mock.addr();
    let key = service_account(&format!("http://{addr}/s/{token_scenario}/token"));
    let key = serde_json::to_string(&key).unwrap();
    let base = format!("http://{addr}/s/{scenario}");
    config_yaml(
        &snapshot(
            "",
            &format!(
                "providers:
  - {{ id: vx, kind: vertex, base_url: \"{base}\", region: us-central1, api_key: {{ value: {key} }}{extra} }}
deployments:
  - {{ id: d-gem, model: gem, provider: vx, upstream_model: gemini-up }}
  - {{ id: d-claude, model: claude, provider: vx, upstream_model: claude-up@2025 }}
{models}"
            ),
        ),
        "",
    )
}

const NO_RETRY: &str =
    "models:\n  - { model: gem, retries: 0 }\n  - { model: claude, retries: 0 }\n";

fn chat(model: &str, stream: bool) -> String {
    json!({"model": model, "stream": stream, "max_tokens": 64,
           "messages": [{"role": "user", "content": "Explain AI"}]})
    .to_string()
}

fn bearer(r: &switchboard_tests::mock::RecordedRequest) -> String {
    r.header("authorization").unwrap_or_default().to_owned()
}

#[tokio::test]
async fn gemini_requests_carry_a_token_from_the_token_endpoint_and_reuse_it() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(&mock, "retry_after=101", "retry_after=901", "", "")).await;
    for _ in 0..2 {
        let reply = post(&gw.url(CHAT), &chat("gem", false)).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(
            reply.json()["choices"][0]["message"]["content"],
            GEMINI_TEXT
        );
    }
    assert_eq!(mock.tokens_issued(), 1, "the token is reused");
    let grant = &mock.requests("retry_after=901")[0];
    assert_eq!(
        grant.header("content-type"),
        Some("application/x-www-form-urlencoded")
    );
    let sent = mock.requests("retry_after=101");
    assert_eq!(sent.len(), 2);
    assert_eq!(
        sent[0].path,
        format!("{GOOGLE_PREFIX}/gemini-up:generateContent")
    );
    assert!(
        bearer(&sent[0]).starts_with("Bearer ya29.mock-1-"),
        "{}",
        bearer(&sent[0])
    );
    assert_eq!(bearer(&sent[0]), bearer(&sent[1]));
    assert!(sent[0].header("x-goog-api-key").is_none());
    let up = sent[0].json();
    assert_eq!(up["contents"][0]["parts"][0]["text"], "Explain AI");
    assert_eq!(up["generationConfig"]["maxOutputTokens"], 64);
    let (prompt, _, candidates, thoughts) = GEMINI_USAGE;
    let record = gw.usage_records(2).await.pop().unwrap();
    assert_eq!(
        (record.usage.prompt_tokens, record.usage.completion_tokens),
        (prompt, candidates + thoughts)
    );

    // Streamed: `streamGenerateContent?alt=sse`, translated, with the same token.
    let reply = post(&gw.url(CHAT), &chat("gem", true)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let data = sse_data(reply.body.as_ref());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let text: String = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, GEMINI_TEXT);
    let sent = &mock.requests("retry_after=101")[2];
    assert_eq!(
        sent.path,
        format!("{GOOGLE_PREFIX}/gemini-up:streamGenerateContent")
    );
    assert_eq!(sent.query.as_deref(), Some("alt=sse"));
    assert_eq!(mock.tokens_issued(), 1);
}

#[tokio::test]
async fn a_token_near_its_expiry_is_replaced_before_use() {
    let mock = MockUpstream::start().await.unwrap();
    // Tokens that live 100 s are inside the gateway's 300 s refresh margin at once.
    let gw = Gateway::start(&config(&mock, "retry_after=102", "token_ttl=100", "", "")).await;
    for _ in 0..2 {
        let reply = post(&gw.url(CHAT), &chat("gem", false)).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(mock.tokens_issued(), 2);
    let sent = mock.requests("retry_after=102");
    assert_ne!(
        bearer(&sent[0]),
        bearer(&sent[1]),
        "a fresh token each time"
    );
}

#[tokio::test]
async fn concurrent_requests_share_one_token_fetch() {
    let mock = MockUpstream::start().await.unwrap();
    // A slow token endpoint, so that every request finds the fetch under way.
    let gw = Gateway::start(&config(&mock, "retry_after=103", "latency_ms=300", "", "")).await;
    let (url, body) = (gw.url(CHAT), chat("gem", false));
    let replies = futures_util::future::join_all((0..8).map(|_| post(&url, &body))).await;
    for reply in replies {
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(mock.tokens_issued(), 1);
    let sent = mock.requests("retry_after=103");
    assert_eq!(sent.len(), 8);
    assert!(sent.iter().all(|r| bearer(r) == bearer(&sent[0])));
}

#[tokio::test]
async fn a_refused_token_is_replaced_once() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(
        &mock,
        "retry_after=104",
        "retry_after=904",
        "",
        NO_RETRY,
    ))
    .await;
    assert_eq!(post(&gw.url(CHAT), &chat("gem", false)).await.status, 200);
    // Revoked before its expiry: the 401 drops it, a new one is fetched, the request resent.
    mock.revoke_tokens();
    let reply = post(&gw.url(CHAT), &chat("gem", false)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(mock.tokens_issued(), 2);
    let sent = mock.requests("retry_after=104");
    assert_eq!(sent.len(), 3);
    assert_eq!(bearer(&sent[0]), bearer(&sent[1]));
    assert_ne!(bearer(&sent[1]), bearer(&sent[2]));

    // Refused every time: one resend, then the deployment is out (a 502 for the client).
    let gw = Gateway::start(&config(&mock, "fault=401", "retry_after=905", "", NO_RETRY)).await;
    let reply = post(&gw.url(CHAT), &chat("gem", false)).await;
    reply.openai_error(502);
    assert_eq!(mock.request_count("fault=401"), 2);
}

#[tokio::test]
async fn a_service_account_the_token_endpoint_refuses_takes_the_deployment_out() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(&mock, "retry_after=106", "fault=401", "", NO_RETRY)).await;
    let reply = post(&gw.url(CHAT), &chat("gem", false)).await;
    reply.openai_error(502);
    assert!(!reply.text().contains("PRIVATE KEY"));
    assert_eq!(
        mock.request_count("fault=401"),
        1,
        "the assertion was refused"
    );
    assert_eq!(
        mock.request_count("retry_after=106"),
        0,
        "nothing sent without a token"
    );
}

#[tokio::test]
async fn anthropic_models_are_called_through_raw_predict() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(&mock, "retry_after=107", "retry_after=907", "", "")).await;
    let headers = [
        ("x-api-key", KEY),
        ("content-type", "application/json"),
        ("anthropic-version", "2023-06-01"),
    ];
    let body = json!({"model": "claude", "max_tokens": 50, "messages": [{"role": "user", "content": "Hi"}]});
    let reply = send(request(
        Method::POST,
        &gw.url(MESSAGES),
        &headers,
        body.to_string(),
    ))
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.json(),
        serde_json::from_str::<Value>(include_str!("../fixtures/anthropic/message.json")).unwrap()
    );
    let sent = &mock.requests("retry_after=107")[0];
    assert_eq!(
        sent.path,
        format!("{ANTHROPIC_PREFIX}/claude-up@2025:rawPredict")
    );
    assert!(bearer(sent).starts_with("Bearer ya29.mock-"));
    let up = sent.json();
    assert_eq!(up["anthropic_version"], "vertex-2023-10-16");
    assert!(up.get("model").is_none(), "{up}");
    assert_eq!(up["messages"], body["messages"]);

    // Streamed `/v1/messages`: `streamRawPredict`, Anthropic's events as they came.
    let mut stream = body.clone();
    stream["stream"] = json!(true);
    let reply = send(request(
        Method::POST,
        &gw.url(MESSAGES),
        &headers,
        stream.to_string(),
    ))
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let deltas: String = sse_data(reply.body.as_ref())
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|e| e["delta"]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(deltas, ANTHROPIC_STREAM_TEXT);
    let sent = &mock.requests("retry_after=107")[1];
    assert_eq!(
        sent.path,
        format!("{ANTHROPIC_PREFIX}/claude-up@2025:streamRawPredict")
    );

    // OpenAI chat clients, translated both ways, streamed and not.
    let reply = post(&gw.url(CHAT), &chat("claude", false)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let v = reply.json();
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Hi! My name is Claude."
    );
    let (input, creation, read, output) = ANTHROPIC_USAGE;
    assert_eq!(v["usage"]["prompt_tokens"], input + creation + read);
    assert_eq!(v["usage"]["completion_tokens"], output);
    let up = mock.requests("retry_after=107")[2].json();
    assert_eq!(up["anthropic_version"], "vertex-2023-10-16");
    assert!(up.get("model").is_none(), "{up}");
    let reply = post(&gw.url(CHAT), &chat("claude", true)).await;
    let data = sse_data(reply.body.as_ref());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let text: String = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str::<Value>(d).unwrap())
        .filter_map(|c| {
            c["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, ANTHROPIC_STREAM_TEXT);
    assert_eq!(mock.tokens_issued(), 1);
}

#[tokio::test]
async fn errors_are_classified_and_unserved_apis_refused_without_a_call() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(&mock, "fault=400", "retry_after=908", "", NO_RETRY)).await;
    let e = post(&gw.url(CHAT), &chat("gem", false))
        .await
        .openai_error(400);
    assert_eq!(e["code"], "context_length_exceeded");
    let gw = Gateway::start(&config(&mock, "fault=429", "retry_after=908", "", NO_RETRY)).await;
    let reply = post(&gw.url(CHAT), &chat("gem", false)).await;
    reply.openai_error(429);
    assert_eq!(reply.headers["retry-after"], "2", "Google's RetryInfo");
    let gw = Gateway::start(&config(&mock, "fault=503", "retry_after=908", "", NO_RETRY)).await;
    post(&gw.url(CHAT), &chat("claude", false))
        .await
        .openai_error(502);

    let gw = Gateway::start(&config(&mock, "retry_after=109", "retry_after=909", "", "")).await;
    let body = json!({"model": "gem", "input": "hello"}).to_string();
    let e = post(&gw.url("/v1/embeddings"), &body)
        .await
        .openai_error(400);
    assert!(e["message"].as_str().unwrap().contains("Vertex AI"), "{e}");
    assert_eq!(mock.request_count("retry_after=109"), 0);
    assert_eq!(
        mock.request_count("retry_after=909"),
        0,
        "no token fetched for a refusal"
    );
}

#[tokio::test]
async fn project_location_and_endpoint_are_settings() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(
        &mock,
        "retry_after=110",
        "retry_after=910",
        ", project: billing-proj",
        "",
    ))
    .await;
    assert_eq!(post(&gw.url(CHAT), &chat("gem", false)).await.status, 200);
    let sent = &mock.requests("retry_after=110")[0];
    assert_eq!(
        sent.path,
        "/v1/projects/billing-proj/locations/us-central1/publishers/google/models/gemini-up:generateContent"
    );
    let global = config(&mock, "retry_after=111", "retry_after=911", "", "")
        .replace("us-central1", "global");
    let gw = Gateway::start(&global).await;
    assert_eq!(
        post(&gw.url(CHAT), &chat("claude", false)).await.status,
        200
    );
    assert_eq!(
        mock.requests("retry_after=111")[0].path,
        "/v1/projects/switchboard-test/locations/global/publishers/anthropic/models/claude-up@2025:rawPredict"
    );
}
