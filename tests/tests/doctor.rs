//! `controlplane doctor` against the real services: passes on a healthy local cluster (a
//! control plane serving on the test's database and NATS namespace, Redis, a provider on the
//! mock upstream), and names a stopped Redis, a wrong master key and an upstream that refuses
//! its credential, failing the run.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::time::Duration;

use common::cluster::{ControlPlane, MASTER_KEYS, unique_namespace};
use common::*;
use controlplane::config::{PricesConfig, RedisSettings, Settings, SpendConfig};
use http::Method;
use serde_json::json;
use sqlx::PgPool;
use switchboard_shared::doctor::Status;
use switchboard_shared::sealed::MasterKeys;
use switchboard_tests::services::nats_url;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// The settings of the running `cp` (as its `serve` would have them).
fn settings(cp: &ControlPlane, namespace: &str, redis: &str, keys: &str) -> Settings {
    Settings {
        listen: cp.rest.trim_start_matches("http://").parse().unwrap(),
        grpc_listen: cp.grpc.trim_start_matches("http://").parse().unwrap(),
        max_body_bytes: 1 << 20,
        nats_url: nats_url(),
        namespace: namespace.to_owned(),
        heartbeat_interval: Duration::from_millis(500),
        reconcile_interval: Duration::from_millis(500),
        full_snapshots: Default::default(),
        pepper: PEPPER.as_bytes().to_vec(),
        jwt_secret: b"e2e-jwt-secret-that-is-long-enough-0123456".to_vec(),
        token_ttl: Duration::from_secs(900),
        master_keys: MasterKeys::parse(keys).unwrap(),
        spend: SpendConfig::default(),
        prices: PricesConfig::default(),
        redis: Some(RedisSettings {
            url: redis.to_owned(),
            key_prefix: "sbtest-doctor".to_owned(),
            reconcile_interval: Duration::from_secs(60),
        }),
        nats_replicas: 1,
        admin_auth: controlplane::config::AdminAuthSettings::default(),
        providers: controlplane::config::ProvidersConfig::default(),
        trust: controlplane::config::ClusterTrust::with_keys(
            namespace,
            switchboard_tests::cluster_keys::SIGNING_SEED,
            switchboard_tests::cluster_keys::GRPC_TOKEN,
            switchboard_tests::cluster_keys::INGEST_KEY,
        ),
        ui: Default::default(),
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn doctor_passes_a_healthy_cluster_and_names_what_is_broken(pool: PgPool) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let namespace = unique_namespace();
    let mock = MockUpstream::start().await.unwrap();
    let cp = ControlPlane::start(pool.clone(), &namespace).await;
    cp.write(
        Method::POST,
        "/admin/v1/providers",
        json!({"id": "up", "kind": "openai", "base_url": mock.base_url(), "api_key": "sk-doctor-upstream"}),
    )
    .await;

    let healthy =
        controlplane::doctor::run(&settings(&cp, &namespace, &redis_url(), MASTER_KEYS), &pool)
            .await;
    assert!(healthy.passed(), "{healthy}");
    let text = healthy.to_string();
    for name in [
        "postgres",
        "migrations",
        "nats",
        "jetstream",
        "redis",
        "master keys",
        "grpc",
        "upstream up",
    ] {
        assert!(
            healthy
                .checks
                .iter()
                .any(|c| c.name == name && c.status == Status::Ok),
            "no passing {name} check: {text}"
        );
    }
    // The upstream check sent the stored credential (opened for the call, never printed).
    let probe = mock.requests("");
    assert!(probe.iter().any(|r| {
        r.path == "/v1/models"
            && r.headers
                .get("authorization")
                .is_some_and(|v| v == "Bearer sk-doctor-upstream")
    }));
    assert!(!text.contains("sk-doctor-upstream"));

    // Redis stopped (a closed port) and a master key that did not seal the credentials.
    let wrong_key = "k9:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
    let broken = controlplane::doctor::run(
        &settings(&cp, &namespace, "redis://127.0.0.1:1", wrong_key),
        &pool,
    )
    .await;
    assert!(!broken.passed());
    let text = broken.to_string();
    assert_eq!(broken.failures(), ["redis", "master keys"], "{text}");
    assert!(
        text.contains("FAIL redis: cannot reach redis://127.0.0.1:1"),
        "{text}"
    );
    assert!(
        text.contains("provider up (sealed with key \"k1\")"),
        "{text}"
    );
    assert!(text.contains("fix: SWITCHBOARD_MASTER_KEYS"), "{text}");

    // An upstream that refuses the credential.
    cp.write(
        Method::POST,
        "/admin/v1/providers",
        json!({"id": "refusing", "kind": "openai", "base_url": mock.scenario_url("fault=401"), "api_key": "sk-revoked"}),
    )
    .await;
    let refused =
        controlplane::doctor::run(&settings(&cp, &namespace, &redis_url(), MASTER_KEYS), &pool)
            .await;
    assert_eq!(refused.failures(), ["upstream refusing"], "{refused}");
    assert!(
        refused
            .to_string()
            .contains("refused the credential (HTTP 401)"),
        "{refused}"
    );
}

/// A standalone data-plane config: one provider on `base_url` whose key is sealed under
/// [`MASTER_KEYS`], and a `redis:` section at `redis`.
fn dataplane_config(base_url: &str, redis: &str) -> String {
    let sealed = MasterKeys::parse(MASTER_KEYS).unwrap().seal("sk-dp-doctor");
    let sealed = serde_json::to_string(&sealed).unwrap();
    let rest = format!(
        "providers:\n  - {{ id: up, kind: openai, base_url: \"{base_url}\", api_key: {{ sealed: {sealed} }} }}\n\
         deployments:\n  - {{ id: d1, model: m, provider: up, upstream_model: u }}\n"
    );
    format!(
        "{}redis:\n  url: {{ value: \"{redis}\" }}\n  key_prefix: \"sbtest-doctor\"\n",
        config_yaml(&snapshot("", &rest), "")
    )
}

async fn dataplane_doctor(config: &str, keys: &str) -> switchboard_shared::doctor::Report {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dataplane.yaml");
    std::fs::write(&path, config).unwrap();
    dataplane::doctor::run(&path, &[], Some(keys), (None, None)).await
}

#[tokio::test]
async fn dataplane_doctor_passes_a_healthy_setup_and_names_what_is_broken() {
    let mock = MockUpstream::start().await.unwrap();
    let healthy = dataplane_doctor(
        &dataplane_config(&mock.base_url(), &redis_url()),
        MASTER_KEYS,
    )
    .await;
    assert!(healthy.passed(), "{healthy}");
    for name in [
        "config",
        "redis",
        "clock skew vs redis",
        "master keys",
        "upstream up",
    ] {
        assert!(
            healthy
                .checks
                .iter()
                .any(|c| c.name == name && c.status == Status::Ok),
            "no passing {name} check: {healthy}"
        );
    }

    let wrong_key = "k9:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
    let broken = dataplane_doctor(
        &dataplane_config("http://127.0.0.1:1/v1", "redis://127.0.0.1:1"),
        wrong_key,
    )
    .await;
    let text = broken.to_string();
    assert_eq!(
        broken.failures(),
        ["redis", "master keys", "upstream up"],
        "{text}"
    );
    assert!(
        text.contains("FAIL redis: cannot reach redis://127.0.0.1:1"),
        "{text}"
    );
    assert!(
        text.contains("provider up (sealed with key \"k1\")"),
        "{text}"
    );
    assert!(!text.contains("sk-dp-doctor"));

    let invalid = dataplane_doctor("server: {}\n", MASTER_KEYS).await;
    assert_eq!(invalid.failures(), ["config"], "{invalid}");
}
