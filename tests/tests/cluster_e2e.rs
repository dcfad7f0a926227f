//! The whole cluster in one process, against real Postgres and NATS: a control plane, data
//! planes in cluster mode and the mock upstream. What an operator does through the admin API
//! reaches every data plane within a second; a data plane started later, or while the control
//! plane is down (from its on-disk snapshot), serves the current config; usage events from
//! the data planes become exactly one spend row each.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::time::{Duration, Instant};
use switchboard_tests::services::nats_url;

use common::cluster::{ControlPlane, call, unique_namespace};
use common::*;
use dataplane::config::ClusterConfig;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use switchboard_shared::cluster::NatsNames;

const WITHIN: Duration = Duration::from_secs(1);

/// A data plane in cluster mode following `cp` (NATS and gRPC), caching to `cache`.
async fn data_plane(
    namespace: &str,
    grpc: &str,
    nats: &str,
    cache: &std::path::Path,
) -> (Gateway, dataplane::cluster::Cluster) {
    let mut cluster = ClusterConfig::with_urls(Some(grpc.to_owned()), Some(nats.to_owned()));
    cluster.namespace = namespace.to_owned();
    cluster.snapshot_cache = Some(cache.to_path_buf());
    cluster.heartbeat_interval_ms = 500;
    common::cluster::follower(cluster).await
}

const CHAT_BODY: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

async fn chat(gw: &Gateway, key: &str) -> StatusCode {
    let auth = format!("Bearer {key}");
    send(request(
        Method::POST,
        &gw.url("/v1/chat/completions"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        CHAT_BODY,
    ))
    .await
    .status
}

/// Polls until `gw` answers `key` with `want`; the time it took.
async fn until_answers(gw: &Gateway, key: &str, want: StatusCode) -> Duration {
    let started = Instant::now();
    loop {
        if chat(gw, key).await == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never answered {want}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Sets up a tenant, a provider on the mock upstream and a deployment of model `m`.
async fn demo_config(cp: &ControlPlane, mock_url: &str) {
    cp.write(Method::POST, "/admin/v1/tenants", json!({"id": "acme"}))
        .await;
    cp.write(
        Method::POST,
        "/admin/v1/providers",
        json!({"id": "up", "kind": "openai", "base_url": mock_url, "api_key": "sk-upstream-e2e"}),
    )
    .await;
    cp.write(
        Method::POST,
        "/admin/v1/deployments",
        json!({"id": "d1", "model": "m", "provider": "up", "upstream_model": "gpt-4o",
               "price": {"input_cost_per_token": 2.5e-6, "output_cost_per_token": 1e-5}}),
    )
    .await;
}

#[sqlx::test(migrations = "../migrations")]
async fn admin_writes_reach_two_data_planes_within_a_second(pool: PgPool) {
    let namespace = unique_namespace();
    let mock = MockUpstream::start().await.unwrap();
    let cp = ControlPlane::start(pool, &namespace).await;
    demo_config(&cp, &mock.base_url()).await;
    let dir = tempfile::tempdir().unwrap();
    let (a, _a) = data_plane(
        &namespace,
        &cp.grpc,
        &nats_url(),
        &dir.path().join("a.json"),
    )
    .await;
    let (b, _b) = data_plane(
        &namespace,
        &cp.grpc,
        &nats_url(),
        &dir.path().join("b.json"),
    )
    .await;

    // 50 keys created and revoked: 100 changes, each timed from the admin API's answer until
    // both data planes answer the key the new way.
    let mut took = Vec::new();
    for _ in 0..50 {
        let created = cp
            .write(Method::POST, "/admin/v1/keys", json!({"tenant_id": "acme"}))
            .await;
        let started = Instant::now();
        let body = created.json();
        let (id, secret) = (
            body["id"].as_str().unwrap().to_owned(),
            body["key"].as_str().unwrap().to_owned(),
        );
        tokio::join!(
            until_answers(&a, &secret, StatusCode::OK),
            until_answers(&b, &secret, StatusCode::OK)
        );
        took.push(started.elapsed());

        cp.write(
            Method::POST,
            &format!("/admin/v1/keys/{id}/revoke"),
            Value::Null,
        )
        .await;
        let started = Instant::now();
        tokio::join!(
            until_answers(&a, &secret, StatusCode::UNAUTHORIZED),
            until_answers(&b, &secret, StatusCode::UNAUTHORIZED)
        );
        took.push(started.elapsed());
    }
    took.sort();
    eprintln!(
        "admin write answered → both data planes apply it, 100 changes: p50 {:?}, p99 {:?}, max {:?}",
        took[49], took[98], took[99]
    );
    assert!(took[99] < WITHIN, "slowest change took {:?}", took[99]);

    // The fleet view lists both data planes at the current revision. A data plane applies a
    // snapshot before its heartbeat says so, so the view may trail the answers briefly.
    let started = Instant::now();
    let fleet = loop {
        let reply = call(
            &cp.rest,
            Method::GET,
            "/admin/v1/fleet",
            Some(&cp.token),
            Value::Null,
        )
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let fleet = reply.json();
        let caught_up = fleet["dataplanes"]
            .as_array()
            .is_some_and(|p| p.len() == 2 && p.iter().all(|p| p["lag"] == 0));
        if caught_up || started.elapsed() > Duration::from_secs(5) {
            break fleet;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let planes = fleet["dataplanes"].as_array().unwrap();
    assert_eq!(planes.len(), 2, "{fleet}");
    for plane in planes {
        assert_eq!(plane["revision"], fleet["revision"], "{fleet}");
        assert_eq!(plane["lag"], 0);
        assert_eq!(plane["ready"], true);
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn late_and_offline_starts_serve_the_current_config(pool: PgPool) {
    let namespace = unique_namespace();
    let mock = MockUpstream::start().await.unwrap();
    let mut cp = ControlPlane::start(pool, &namespace).await;
    demo_config(&cp, &mock.base_url()).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("first.json");
    let (first, first_cluster) = data_plane(&namespace, &cp.grpc, &nats_url(), &cache).await;

    let created = cp
        .write(
            Method::POST,
            "/admin/v1/keys?wait_ms=5000",
            json!({"tenant_id": "acme"}),
        )
        .await;
    let secret = created.json()["key"].as_str().unwrap().to_owned();
    until_answers(&first, &secret, StatusCode::OK).await;

    // Started after the change: it gets the current snapshot at once.
    let (late, _late) = data_plane(
        &namespace,
        &cp.grpc,
        &nats_url(),
        &dir.path().join("late.json"),
    )
    .await;
    assert!(until_answers(&late, &secret, StatusCode::OK).await < WITHIN);

    // Control plane gone, NATS unreachable: a data plane starting from the on-disk snapshot
    // that the first one wrote serves the same config.
    cp.stop().await;
    drop(first_cluster);
    drop(first);
    let (offline, _offline) = data_plane(&namespace, &cp.grpc, "nats://127.0.0.1:1", &cache).await;
    assert_eq!(chat(&offline, &secret).await, StatusCode::OK);
}

#[sqlx::test(migrations = "../migrations")]
async fn usage_from_data_planes_becomes_one_spend_row_per_request(pool: PgPool) {
    let namespace = unique_namespace();
    let mock = MockUpstream::start().await.unwrap();
    let cp = ControlPlane::start(pool.clone(), &namespace).await;
    demo_config(&cp, &mock.base_url()).await;
    let created = cp
        .write(
            Method::POST,
            "/admin/v1/keys?wait_ms=5000",
            json!({"tenant_id": "acme"}),
        )
        .await;
    let secret = created.json()["key"].as_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let (gw, _cluster) = data_plane(
        &namespace,
        &cp.grpc,
        &nats_url(),
        &dir.path().join("dp.json"),
    )
    .await;
    until_answers(&gw, &secret, StatusCode::OK).await;

    // The data plane's usage records, published as the cluster-mode server does.
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let names = NatsNames::new(&namespace);
    let sink = dataplane::usage_publisher::NatsUsageSink::start(
        js.clone(),
        dataplane::usage_publisher::PublisherSettings {
            subject: names.usage_subject.clone(),
            capacity: 1000,
            spill_path: None,
            tag: common::cluster::usage_tag("dp-e2e"),
            ..Default::default()
        },
    );
    const N: usize = 40;
    for _ in 0..N - 1 {
        assert_eq!(chat(&gw, &secret).await, StatusCode::OK);
    }
    let records = gw.usage_records(N).await;
    for r in &records {
        dataplane::accounting::UsageSink::emit(sink.as_ref(), r.clone());
        // Delivered twice: ingestion must keep one row.
        dataplane::accounting::UsageSink::emit(sink.as_ref(), r.clone());
    }
    sink.close(Duration::from_secs(10)).await;

    let want_cost: f64 = records.iter().map(|r| r.cost_usd).sum();
    let deadline = Instant::now() + Duration::from_secs(20);
    let (rows, cost) = loop {
        let (rows, cost): (i64, f64) =
            sqlx::query_as("SELECT count(*), coalesce(sum(cost_usd), 0) FROM spend_events")
                .fetch_one(&pool)
                .await
                .unwrap();
        if rows as usize >= records.len() || Instant::now() > deadline {
            break (rows, cost);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(rows as usize, records.len());
    assert!((cost - want_cost).abs() < 1e-12, "{cost} vs {want_cost}");
    let _ = js.delete_stream(&names.usage_stream).await;
}
