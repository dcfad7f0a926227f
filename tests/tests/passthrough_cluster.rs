//! Metered passthrough in a whole cluster (control plane, a data plane in cluster mode, real
//! Postgres and NATS, the mock upstream): a passthrough to the mock's Anthropic endpoint, set
//! up through the admin API, leaves one spend row at the price of its answer's usage, and once
//! the key's budget is spent the next passthrough is refused like any other request.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{ControlPlane, unique_namespace};
use common::*;
use dataplane::config::ClusterConfig;
use http::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;
use switchboard_shared::cluster::NatsNames;
use switchboard_tests::mock::anthropic::ANTHROPIC_USAGE;
use switchboard_tests::services::nats_url;

const INPUT: f64 = 3e-6;
const OUTPUT: f64 = 1.5e-5;
const CACHE_READ: f64 = 3e-7;
const CACHE_WRITE: f64 = 3.75e-6;
const BODY: &str =
    r#"{"model":"claude","max_tokens":20,"messages":[{"role":"user","content":"Hello"}]}"#;

async fn data_plane(
    namespace: &str,
    grpc: &str,
    cache: &std::path::Path,
) -> (Gateway, dataplane::cluster::Cluster) {
    let mut cluster = ClusterConfig::with_urls(Some(grpc.to_owned()), Some(nats_url()));
    cluster.namespace = namespace.to_owned();
    cluster.snapshot_cache = Some(cache.to_path_buf());
    cluster.heartbeat_interval_ms = 500;
    common::cluster::follower(cluster).await
}

async fn passthrough(gw: &Gateway, key: &str) -> Reply {
    let auth = format!("Bearer {key}");
    send(request(
        Method::POST,
        &gw.url("/passthrough/anthropic/messages"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        BODY,
    ))
    .await
}

#[sqlx::test(migrations = "../migrations")]
async fn a_passthrough_is_a_priced_spend_row_and_is_refused_at_the_budget(pool: PgPool) {
    let namespace = unique_namespace();
    let mock = MockUpstream::start().await.unwrap();
    let cp = ControlPlane::start(pool.clone(), &namespace).await;
    cp.write(Method::POST, "/admin/v1/tenants", json!({"id": "acme"}))
        .await;
    cp.write(
        Method::POST,
        "/admin/v1/providers",
        json!({"id": "ant", "kind": "anthropic", "base_url": mock.base_url(), "api_key": "sk-ant-e2e"}),
    )
    .await;
    cp.write(
        Method::POST,
        "/admin/v1/deployments",
        json!({"id": "d1", "model": "claude", "provider": "ant", "upstream_model": "claude-up",
               "price": {"input_cost_per_token": INPUT, "output_cost_per_token": OUTPUT,
                         "cache_read_input_token_cost": CACHE_READ, "cache_creation_input_token_cost": CACHE_WRITE}}),
    )
    .await;
    let created = cp
        .write(Method::POST, "/admin/v1/keys", json!({"tenant_id": "acme"}))
        .await;
    let secret = created.json()["key"].as_str().unwrap().to_owned();
    let key_id = created.json()["id"].as_str().unwrap().to_owned();
    // Less than one answer costs: the first passthrough is admitted, the next refused.
    let budgeted = cp
        .write(
            Method::PUT,
            &format!("/admin/v1/keys/{key_id}/budget?wait_ms=5000"),
            json!({"max_usd": 0.0001, "period": "monthly"}),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let (gw, _cluster) = data_plane(&namespace, &cp.grpc, &dir.path().join("dp.json")).await;
    // The budget (a delta) is served before the first passthrough.
    common::cluster::until_revision(
        &format!("http://{}", gw.addr),
        common::cluster::written_revision(&budgeted),
    )
    .await;
    let started = Instant::now();
    let reply = loop {
        let reply = passthrough(&gw, &secret).await;
        if reply.status == StatusCode::OK || started.elapsed() > Duration::from_secs(10) {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let records = gw.usage_records(1).await;
    assert_eq!(records.len(), 1);

    // The record, published as the cluster-mode server does, becomes one spend row.
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let names = NatsNames::new(&namespace);
    let sink = dataplane::usage_publisher::NatsUsageSink::start(
        js.clone(),
        dataplane::usage_publisher::PublisherSettings {
            subject: names.usage_subject.clone(),
            capacity: 100,
            spill_path: None,
            tag: common::cluster::usage_tag("dp-passthrough"),
            ..Default::default()
        },
    );
    dataplane::accounting::UsageSink::emit(sink.as_ref(), records[0].clone());
    sink.close(Duration::from_secs(10)).await;
    let (uncached, write, read, output) = ANTHROPIC_USAGE;
    let want = uncached as f64 * INPUT
        + write as f64 * CACHE_WRITE
        + read as f64 * CACHE_READ
        + output as f64 * OUTPUT;
    let deadline = Instant::now() + Duration::from_secs(20);
    let row: Option<(String, String, f64, i64)> = loop {
        let row =
            sqlx::query_as("SELECT endpoint, key_id, cost_usd, prompt_tokens FROM spend_events")
                .fetch_optional(&pool)
                .await
                .unwrap();
        if row.is_some() || Instant::now() > deadline {
            break row;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (endpoint, row_key, cost, prompt) = row.expect("a spend row");
    assert_eq!(endpoint, "passthrough");
    assert_eq!(row_key, key_id);
    assert_eq!(prompt as u64, uncached + write + read);
    assert!((cost - want).abs() < 1e-12, "{cost} != {want}");

    // The budget is spent: refused with a 429 in Anthropic's shape, nothing sent upstream.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = mock.request_count("");
    let refused = passthrough(&gw, &secret).await;
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.text()
    );
    assert_eq!(refused.json()["error"]["type"], "rate_limit_error");
    assert!(refused.text().contains("budget"), "{}", refused.text());
    assert_eq!(mock.request_count(""), before);
    let _ = js.delete_stream(&names.usage_stream).await;
}
