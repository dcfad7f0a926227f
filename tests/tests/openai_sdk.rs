//! The official `openai` Python SDK, pointed at a live gateway, gets the answers and the
//! exception classes it should (tests/python/test_openai_sdk.py).
//!
//! The SDK lives in a virtualenv at `tests/python/.venv` with the pinned
//! `tests/python/requirements.txt`; `scripts/test` creates it. `SWITCHBOARD_PYTHON` may name
//! another interpreter that has them.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::path::PathBuf;
use std::process::Stdio;

use common::*;

fn python() -> PathBuf {
    if let Ok(p) = std::env::var("SWITCHBOARD_PYTHON") {
        return PathBuf::from(p);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/.venv/bin/python")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_works_against_the_gateway() {
    let python = python();
    assert!(
        python.exists(),
        "{} not found: run scripts/test (it creates the venv from tests/python/requirements.txt), \
         or set SWITCHBOARD_PYTHON to an interpreter with openai and pytest installed",
        python.display()
    );
    let mock = MockUpstream::start().await.unwrap();
    let config = config_yaml(
        &format!(
            "revision: 1
tenants: [{{ id: t1 }}]
virtual_keys:
  - {{ id: main, tenant_id: t1, key_hash: \"{}\", allowed_models: [m, embed, broken] }}
  - {{ id: limited, tenant_id: t1, key_hash: \"{}\", limits: {{ rpm: 1 }} }}
providers:
  - {{ id: up, kind: openai, base_url: \"{}\" }}
  - {{ id: bad, kind: openai, base_url: \"{}\" }}
deployments:
  - {{ id: d-m, model: m, provider: up, upstream_model: gpt-mock }}
  - {{ id: d-embed, model: embed, provider: up, upstream_model: embed-mock }}
  - {{ id: d-other, model: other, provider: up, upstream_model: gpt-mock }}
  - {{ id: d-broken, model: broken, provider: bad, upstream_model: gpt-mock }}
models:
  - {{ model: broken, retries: 0 }}
",
            key_hash("sk-py-main"),
            key_hash("sk-py-limited"),
            mock.base_url(),
            mock.scenario_url("fault=500"),
        ),
        "  max_body_bytes: 200000\n",
    );
    let gw = Gateway::start(&config).await;
    let suite = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/test_openai_sdk.py");
    let output = tokio::process::Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(&suite)
        .env("SWITCHBOARD_BASE_URL", gw.url("/v1"))
        .env("SWITCHBOARD_KEY", "sk-py-main")
        .env("SWITCHBOARD_LIMITED_KEY", "sk-py-limited")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .expect("pytest runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the SDK suite failed:\n{stdout}");
    assert!(
        stdout.contains("12 passed"),
        "expected all 12 SDK tests to run:\n{stdout}"
    );
}
