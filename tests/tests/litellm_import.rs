//! `controlplane import litellm` end to end: LiteLLM proxy configs (the shared benchmark
//! config and a multi-provider one) imported through the control plane's service write path,
//! published to a data plane in cluster mode, and every imported model answering through the
//! gateway from the mock upstream in its provider's wire format.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{ControlPlane, MASTER_KEYS, unique_namespace};
use common::*;
use controlplane::service::litellm;
use controlplane::service::{Actor, Ctx};
use dataplane::config::ClusterConfig;
use http::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;
use switchboard_shared::sealed::MasterKeys;
use switchboard_tests::mock::bedrock::{BEDROCK_ACCESS_KEY_ID, BEDROCK_SECRET_ACCESS_KEY};
use switchboard_tests::services::nats_url;

const PEERS: &str = include_str!("../fixtures/litellm/peers-config.yaml");
const MULTI: &str = include_str!("../fixtures/litellm/multi-provider.yaml");

/// A data plane in cluster mode following `cp`.
async fn data_plane(
    namespace: &str,
    cp: &ControlPlane,
    cache: &std::path::Path,
) -> (Gateway, dataplane::cluster::Cluster) {
    let mut cluster = ClusterConfig::with_urls(Some(cp.grpc.clone()), Some(nats_url()));
    cluster.namespace = namespace.to_owned();
    cluster.snapshot_cache = Some(cache.to_path_buf());
    common::cluster::follower(cluster).await
}

/// Polls until `model` answers 200 through `gw` with `key`; the answer's body.
async fn answers(gw: &Gateway, key: &str, model: &str) -> serde_json::Value {
    let auth = format!("Bearer {key}");
    let body = json!({"model": model, "max_tokens": 16,
                      "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    let started = Instant::now();
    loop {
        let reply = send(request(
            Method::POST,
            &gw.url("/v1/chat/completions"),
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body.clone(),
        ))
        .await;
        if reply.status == StatusCode::OK {
            return reply.json();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{model} never answered: {} {}",
            reply.status,
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn env() -> Vec<(String, String)> {
    let key = |name: &str, value: &str| (name.to_owned(), value.to_owned());
    vec![
        key("OPENAI_API_KEY", "sk-openai-import-test"),
        key("AZURE_API_KEY", "azure-import-test"),
        key("ANTHROPIC_API_KEY", "sk-ant-import-test"),
        key("GEMINI_API_KEY", "gemini-import-test"),
        key("AWS_ACCESS_KEY_ID", BEDROCK_ACCESS_KEY_ID),
        key("AWS_SECRET_ACCESS_KEY", BEDROCK_SECRET_ACCESS_KEY),
    ]
}

#[sqlx::test(migrations = "../migrations")]
async fn imported_litellm_configs_answer_through_the_gateway(pool: PgPool) {
    let namespace = unique_namespace();
    let mock = MockUpstream::start().await.unwrap();
    let origin = format!("http://{}", mock.addr());
    let cp = ControlPlane::start(pool.clone(), &namespace).await;
    let cx = Ctx {
        pool: &pool,
        publisher: None,
    };
    let keys = MasterKeys::parse(MASTER_KEYS).unwrap();
    let urls = controlplane::config::ProvidersConfig::default();
    let rules = controlplane::service::providers::ProviderRules {
        keys: &keys,
        urls: &urls,
    };

    // The peers' mock paces streams under /paced/; this mock does it with a scenario knob.
    let peers = PEERS
        .replace(
            "http://127.0.0.1:MOCK_PORT/paced/v1",
            &mock.scenario_url("interval_ms=10"),
        )
        .replace("http://127.0.0.1:MOCK_PORT", &origin);
    let plan = litellm::plan(&peers, &[]).unwrap();
    let report = litellm::apply(cx, &Actor::system(), rules, &plan).await;
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(report.created.len(), 6, "{report:?}");

    let multi = MULTI.replace("MOCK_URL", &origin);
    let plan = litellm::plan(&multi, &env()).unwrap();
    let report = litellm::apply(cx, &Actor::system(), rules, &plan).await;
    // The vertex_ai fallback of gpt-4o was dropped in the plan; nothing failed to write.
    assert!(report.failed.is_empty(), "{report:?}");
    assert!(!format!("{report:?}{}", plan.describe()).contains("sk-openai-import-test"));

    // Imported again: everything is already there and left alone.
    let again = litellm::apply(cx, &Actor::system(), rules, &plan).await;
    assert!(
        again.created.is_empty() && again.failed.is_empty(),
        "{again:?}"
    );

    cp.write(Method::POST, "/admin/v1/tenants", json!({"id": "acme"}))
        .await;
    let created = cp
        .write(Method::POST, "/admin/v1/keys", json!({"tenant_id": "acme"}))
        .await;
    let secret = created.json()["key"].as_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let (gw, _cluster) = data_plane(&namespace, &cp, &dir.path().join("dp.json")).await;

    for model in [
        "gpt-4o-mini",
        "gpt-4o-mini-paced",
        "gpt-4o",
        "claude-sonnet",
        "gemini-flash",
        "claude-bedrock",
        "llama",
    ] {
        let body = answers(&gw, &secret, model).await;
        assert_eq!(body["object"], "chat.completion", "{model}: {body}");
    }
    // The upstream got the imported credentials and upstream model names.
    let seen = mock.requests("");
    let anthropic = seen
        .iter()
        .find(|r| r.path.ends_with("/messages"))
        .expect("anthropic call");
    assert_eq!(
        anthropic.headers.get("x-api-key").map(|v| v.as_bytes()),
        Some("sk-ant-import-test".as_bytes())
    );
    assert!(
        seen.iter()
            .any(|r| r.path.contains("/openai/deployments/gpt-4o-eu/")),
        "azure deployment name not used"
    );
}
