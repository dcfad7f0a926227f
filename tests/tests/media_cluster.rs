//! Images and audio in a whole cluster: prices synced from LiteLLM's real price file into
//! Postgres, deployments of `gpt-image-1`, `whisper-1` and `tts-1` set up through the admin API
//! without prices of their own, a cluster-mode data plane following the control plane. The
//! snapshot carries each model's entry — `gpt-image-1` with its per-size-and-quality entries
//! (`high/1024-x-1024/gpt-image-1`, ...) — and the spend rows cost what the file states.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{ControlPlane, unique_namespace};
use common::*;
use dataplane::config::ClusterConfig;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use switchboard_shared::cluster::NatsNames;
use switchboard_tests::services::nats_url;

const PRICE_FILE: &str = "../shared/data/model_prices_and_context_window.json";

async fn call(gw: &Gateway, secret: &str, path: &str, content_type: &str, body: Vec<u8>) -> Reply {
    send(request(
        Method::POST,
        &gw.url(path),
        &[
            ("authorization", &format!("Bearer {secret}")),
            ("content-type", content_type),
        ],
        body,
    ))
    .await
}

fn upload(audio_bytes: usize) -> Vec<u8> {
    let mut body = b"--b0\r\nContent-Disposition: form-data; name=\"model\"\r\n\r\nstt\r\n--b0\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\nContent-Type: audio/wav\r\n\r\n".to_vec();
    body.resize(body.len() + audio_bytes, 9);
    body.extend_from_slice(b"\r\n--b0--\r\n");
    body
}

/// Waits for `n` spend rows; returns (endpoint, cost) by request id.
async fn spend_rows(pool: &PgPool, n: usize) -> Vec<(String, String, f64)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows: Vec<(String, String, f64)> =
            sqlx::query_as("SELECT request_id, endpoint, cost_usd FROM spend_events")
                .fetch_all(pool)
                .await
                .unwrap();
        if rows.len() >= n || Instant::now() > deadline {
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn media_spend_rows_cost_what_the_price_file_states(pool: PgPool) {
    controlplane::service::prices::sync_from_file(&pool, std::path::Path::new(PRICE_FILE))
        .await
        .unwrap();
    let namespace = unique_namespace();
    let mock = MockUpstream::start().await.unwrap();
    let cp = ControlPlane::start(pool.clone(), &namespace).await;
    cp.write(Method::POST, "/admin/v1/tenants", json!({"id": "acme"}))
        .await;
    cp.write(
        Method::POST,
        "/admin/v1/providers",
        json!({"id": "oai", "kind": "openai", "base_url": mock.base_url(), "api_key": "sk-oai-e2e"}),
    )
    .await;
    for (id, model, upstream) in [
        ("d-img", "img", "gpt-image-1"),
        ("d-stt", "stt", "whisper-1"),
        ("d-tts", "tts", "tts-1"),
    ] {
        cp.write(
            Method::POST,
            "/admin/v1/deployments",
            json!({"id": id, "model": model, "provider": "oai", "upstream_model": upstream}),
        )
        .await;
    }
    let created = cp
        .write(Method::POST, "/admin/v1/keys", json!({"tenant_id": "acme"}))
        .await;
    let secret = created.json()["key"].as_str().unwrap().to_owned();
    let mut cluster = ClusterConfig::with_urls(Some(cp.grpc.clone()), Some(nats_url()));
    cluster.namespace = namespace.clone();
    let dir = tempfile::tempdir().unwrap();
    cluster.snapshot_cache = Some(dir.path().join("dp.json"));
    let (gw, _follower) = common::cluster::follower(cluster).await;

    let image = json!({"model": "img", "prompt": "a fox", "size": "1536x1024", "quality": "low"});
    let started = Instant::now();
    let reply = loop {
        let reply = call(
            &gw,
            &secret,
            "/v1/images/generations",
            "application/json",
            image.to_string().into_bytes(),
        )
        .await;
        if reply.status == StatusCode::OK || started.elapsed() > Duration::from_secs(10) {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let reply = call(
        &gw,
        &secret,
        "/v1/audio/transcriptions",
        "multipart/form-data; boundary=b0",
        upload(64_000),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let speech = json!({"model": "tts", "input": "twelve chars", "voice": "alloy"});
    let reply = call(
        &gw,
        &secret,
        "/v1/audio/speech",
        "application/json",
        speech.to_string().into_bytes(),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());

    let records = gw.usage_records(3).await;
    assert_eq!(records.len(), 3);
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let names = NatsNames::new(&namespace);
    let sink = dataplane::usage_publisher::NatsUsageSink::start(
        js.clone(),
        dataplane::usage_publisher::PublisherSettings {
            subject: names.usage_subject.clone(),
            capacity: 100,
            spill_path: None,
            tag: common::cluster::usage_tag("dp-media"),
            ..Default::default()
        },
    );
    for record in &records {
        dataplane::accounting::UsageSink::emit(sink.as_ref(), record.clone());
    }
    sink.close(Duration::from_secs(10)).await;
    let rows = spend_rows(&pool, 3).await;
    let file: Value = serde_json::from_str(&std::fs::read_to_string(PRICE_FILE).unwrap()).unwrap();
    let want = |endpoint: &str| match endpoint {
        // One low-quality 1536×1024 image.
        "images_generations" => file["low/1536-x-1024/gpt-image-1"]["input_cost_per_image"]
            .as_f64()
            .unwrap(),
        // 64,000 bytes are 4 s of the mock's audio.
        "audio_transcriptions" => {
            4.0 * file["whisper-1"]["input_cost_per_second"].as_f64().unwrap()
        }
        "audio_speech" => 12.0 * file["tts-1"]["input_cost_per_character"].as_f64().unwrap(),
        other => panic!("unexpected endpoint {other}"),
    };
    assert_eq!(rows.len(), 3, "{rows:?}");
    for (_, endpoint, cost) in &rows {
        let want = want(endpoint);
        assert!((cost - want).abs() < 1e-12, "{endpoint}: {cost} != {want}");
    }
    let _ = js.delete_stream(&names.usage_stream).await;
}
