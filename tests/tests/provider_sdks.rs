//! The official SDKs against deployments on every provider: the `openai` SDK against
//! Anthropic, Azure, Gemini, Bedrock and Vertex AI (Gemini and Claude) deployments, the
//! `anthropic` SDK against `/v1/messages` with an Anthropic, an OpenAI-compatible and a Vertex AI
//! (Claude) deployment behind it
//! (tests/python/test_providers_openai_sdk.py, tests/python/test_anthropic_sdk.py), and the
//! `openai` SDK's Responses API against a native, an Anthropic and a chat-only deployment
//! (tests/python/test_responses_sdk.py).
//!
//! The SDKs live in the virtualenv that `scripts/test` creates (see openai_sdk.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::path::PathBuf;
use std::process::Stdio;

use common::*;
use switchboard_tests::mock::bedrock::{BEDROCK_ACCESS_KEY_ID, BEDROCK_SECRET_ACCESS_KEY};
use switchboard_tests::mock::vertex::service_account;

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("SWITCHBOARD_PYTHON") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/.venv/bin/python")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_and_anthropic_sdks_work_against_every_provider() {
    let python = python();
    assert!(
        python.exists(),
        "{} not found: run scripts/test (it creates the venv from tests/python/requirements.txt), \
         or set SWITCHBOARD_PYTHON to an interpreter with openai, anthropic and pytest installed",
        python.display()
    );
    let mock = MockUpstream::start().await.unwrap();
    let root = mock.base_url();
    let azure_root = root.trim_end_matches("/v1").to_owned();
    let gemini_root = format!("{azure_root}/v1beta");
    // A Vertex AI service account whose tokens come from the mock's token endpoint.
    let vertex_key =
        serde_json::to_string(&service_account(&format!("{azure_root}/token"))).unwrap();
    let config = config_yaml(
        &snapshot(
            "",
            &format!(
                "providers:
  - {{ id: ant, kind: anthropic, base_url: \"{root}\", api_key: {{ value: sk-ant-x }} }}
  - {{ id: ant-long, kind: anthropic, base_url: \"{long}\", api_key: {{ value: sk-ant-x }} }}
  - {{ id: ant-busy, kind: anthropic, base_url: \"{busy}\", api_key: {{ value: sk-ant-x }} }}
  - {{ id: oai, kind: openai, base_url: \"{root}\" }}
  - {{ id: gem, kind: gemini, base_url: \"{gemini_root}\", api_key: {{ value: g-x }} }}
  - {{ id: br, kind: bedrock, base_url: \"{azure_root}\", region: us-east-1, aws_access_key_id: {{ value: {BEDROCK_ACCESS_KEY_ID} }}, aws_secret_access_key: {{ value: \"{BEDROCK_SECRET_ACCESS_KEY}\" }} }}
  - {{ id: az, kind: azure, base_url: \"{azure_root}\", api_version: 2024-10-21, api_key: {{ value: az-x }} }}
  - {{ id: vx, kind: vertex, base_url: \"{azure_root}\", region: us-central1, api_key: {{ value: {vertex_key} }} }}
deployments:
  - {{ id: d1, model: claude, provider: ant, upstream_model: claude-up }}
  - {{ id: d2, model: claude-too-long, provider: ant-long, upstream_model: claude-up }}
  - {{ id: d8, model: claude-busy, provider: ant-busy, upstream_model: claude-up }}
  - {{ id: d3, model: gpt, provider: oai, upstream_model: gpt-up }}
  - {{ id: d9, model: gpt-native, provider: oai, upstream_model: gpt-up, tags: [responses_api] }}
  - {{ id: d4, model: azure, provider: az, upstream_model: gpt-4o-prod }}
  - {{ id: d5, model: azure-embed, provider: az, upstream_model: embed-prod }}
  - {{ id: d6, model: gemini, provider: gem, upstream_model: gemini-up }}
  - {{ id: d7, model: bedrock, provider: br, upstream_model: \"anthropic.claude-3-5-sonnet-20240620-v1:0\" }}
  - {{ id: d10, model: vertex-gemini, provider: vx, upstream_model: gemini-2.5-flash }}
  - {{ id: d11, model: vertex-claude, provider: vx, upstream_model: \"claude-sonnet-4@20250514\" }}
models:
  - {{ model: claude-too-long, retries: 0 }}
  - {{ model: claude-busy, retries: 0 }}
",
                long = mock.scenario_url("fault=400"),
                busy = mock.scenario_url("fault=429,retry_after=7"),
            ),
        ),
        "",
    );
    let gw = Gateway::start(&config).await;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python");
    let output = tokio::process::Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(dir.join("test_anthropic_sdk.py"))
        .arg(dir.join("test_providers_openai_sdk.py"))
        .arg(dir.join("test_responses_sdk.py"))
        .env("SWITCHBOARD_ROOT_URL", gw.url(""))
        .env("SWITCHBOARD_KEY", KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("pytest runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the SDK suites failed:\n{stdout}");
    assert!(
        stdout.contains("40 passed"),
        "expected all 40 SDK tests to run:\n{stdout}"
    );
    assert!(mock.tokens_issued() >= 1, "Vertex AI calls carried a token");
}
