//! Azure OpenAI: deployment URLs with `api-version`, the `api-key` header, bodies passed
//! through, streams, usage and errors, against the mock's Azure routes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use common::*;
use http::Method;
use serde_json::{Value, json};
use switchboard_tests::mock::{PROMPT_TOKENS, TOTAL_TOKENS};

const AZURE_KEY: &str = "azure-upstream-secret";

/// `base_url` is the mock's OpenAI base (`.../v1`); Azure's is the resource root.
fn config(base_url: &str, models: &str) -> String {
    let base_url = base_url.trim_end_matches("/v1");
    config_yaml(
        &snapshot(
            "",
            &format!(
                "providers:
  - {{ id: az, kind: azure, base_url: \"{base_url}\", api_version: 2024-10-21, api_key: {{ value: \"{AZURE_KEY}\" }} }}
deployments:
  - {{ id: d-az, model: m, provider: az, upstream_model: gpt-4o-prod }}
  - {{ id: d-emb, model: emb, provider: az, upstream_model: embed-prod }}
{models}"
            ),
        ),
        "",
    )
}

#[tokio::test]
async fn chat_goes_to_the_deployment_url_with_api_version_and_api_key() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(&mock.scenario_url("chunks=3"), "")).await;
    let body = r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"hi"},{"type":"image_url","image_url":{"url":"https://x/cat.png"}}]}],"temperature":0.1}"#;
    let reply = post(&gw.url("/v1/chat/completions"), body).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["usage"]["total_tokens"], TOTAL_TOKENS);
    let sent = &mock.requests("chunks=3")[0];
    assert_eq!(
        sent.path,
        "/openai/deployments/gpt-4o-prod/chat/completions"
    );
    assert_eq!(sent.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(sent.header("api-key"), Some(AZURE_KEY));
    assert_eq!(sent.header("authorization"), None);
    // The body passes through, image part included; only the model name changes.
    let mut expected: Value = serde_json::from_str(body).unwrap();
    expected["model"] = json!("gpt-4o-prod");
    assert_eq!(sent.json(), expected);
    assert_eq!(
        gw.usage_records(1).await[0].usage.prompt_tokens,
        PROMPT_TOKENS
    );

    // Streamed, with usage switched on upstream and counted.
    let (status, _, frames, ended) = post_timed(
        &gw.url("/v1/chat/completions"),
        r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
    )
    .await;
    assert_eq!(status, 200);
    assert!(ended.is_ok());
    assert_eq!(
        sse_data(&joined(&frames)).last().map(String::as_str),
        Some("[DONE]")
    );
    let records = gw.usage_records(2).await;
    assert_eq!(records[1].usage.completion_tokens, 3);

    // Embeddings use the same deployment URL scheme.
    let reply = post(&gw.url("/v1/embeddings"), r#"{"model":"emb","input":"x"}"#).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        mock.requests("chunks=3")[2].path,
        "/openai/deployments/embed-prod/embeddings"
    );
}

#[tokio::test]
async fn azure_errors_are_classified_and_shaped() {
    let mock = MockUpstream::start().await.unwrap();
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    for (fault, status, kind) in [
        ("400", 400, "invalid_request_error"),
        ("429", 429, "rate_limit_error"),
        ("500", 502, "api_error"),
        ("401", 502, "api_error"),
    ] {
        let gw = Gateway::start(&config(
            &mock.scenario_url(&format!("fault={fault}")),
            "models:\n  - { model: m, retries: 0 }\n",
        ))
        .await;
        let reply = post(&gw.url("/v1/chat/completions"), body).await;
        let e = reply.openai_error(status);
        assert_eq!(e["type"], kind, "fault {fault}");
        assert!(!reply.text().contains(AZURE_KEY));
    }
    // The /v1/messages route works in front of Azure too (translated), in Anthropic's shape.
    let gw = Gateway::start(&config(&mock.base_url(), "")).await;
    let reply = send(request(
        Method::POST,
        &gw.url("/v1/messages"),
        &[("x-api-key", KEY), ("content-type", "application/json")],
        r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
    ))
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["type"], "message");
}
