//! Snapshots leaving the control plane: published on NATS after commit per docs/cluster.md,
//! never moving the head backwards when publishers race, served over gRPC (including by a
//! second replica), and the fleet's heartbeats behind `GET /fleet` and `?wait_ms=`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use axum::http::StatusCode;
use controlplane::publish::{Built, Publisher};
use controlplane::service::auth::Role;
use futures_util::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use switchboard_shared::cluster::{Heartbeat, NatsNames, SNAPSHOTS_KEPT, SnapshotHead};
use switchboard_shared::proto::config_service_client::ConfigServiceClient;
use switchboard_shared::proto::{GetSnapshotRequest, WatchSnapshotRequest};
use switchboard_shared::secret::SecretRef;
use switchboard_shared::snapshot::Snapshot;
use tokio::io::AsyncReadExt;

use common::{nats_url, start, unique_namespace};

/// What a data plane would read: the head, then the body it names, hash-checked.
/// The last config delta on NATS: its head and body (hash checked).
async fn read_delta(
    namespace: &str,
) -> (
    switchboard_shared::config_delta::DeltaHead,
    switchboard_shared::config_delta::ConfigDelta,
) {
    let names = NatsNames::new(namespace);
    let js = jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let message = js
        .get_stream(&names.delta_stream)
        .await
        .unwrap()
        .get_last_raw_message_by_subject(&names.delta_subject)
        .await
        .unwrap();
    let (head, body) = switchboard_shared::config_delta::split(&message.payload).unwrap();
    (
        head,
        switchboard_shared::config_delta::parse_body(body).unwrap(),
    )
}

async fn read_published(namespace: &str) -> Option<(SnapshotHead, Snapshot)> {
    let names = NatsNames::new(namespace);
    let js = jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let stream = js.get_stream(&names.config_stream).await.ok()?;
    let message = stream
        .get_last_raw_message_by_subject(&names.head_subject)
        .await
        .ok()?;
    let head: SnapshotHead = serde_json::from_slice(&message.payload).unwrap();
    let store = js.get_object_store(&names.snapshot_bucket).await.unwrap();
    let mut body = Vec::new();
    store
        .get(&head.object)
        .await
        .unwrap()
        .read_to_end(&mut body)
        .await
        .unwrap();
    assert_eq!(hex::encode(Sha256::digest(&body)), head.content_hash);
    assert_eq!(head.size, body.len() as u64);
    let snapshot = Snapshot::from_json(&body).unwrap();
    assert_eq!(snapshot.content_hash(), head.content_hash);
    Some((head, snapshot))
}

async fn cleanup(namespace: &str) {
    let names = NatsNames::new(namespace);
    let js = jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let _ = js.delete_stream(&names.config_stream).await;
    let _ = js.delete_stream(&names.delta_stream).await;
    let _ = js.delete_object_store(&names.snapshot_bucket).await;
}

#[sqlx::test(migrations = "../migrations")]
async fn a_committed_write_is_published_with_its_revision_and_sealed_credentials(pool: PgPool) {
    let cp = start(pool).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    cp.post("/admin/v1/tenants", &root, json!({"id": "acme"}))
        .await;
    let secret = "sk-upstream-do-not-leak-42";
    let r = cp
        .post(
            "/admin/v1/providers",
            &root,
            json!({"id": "up", "kind": "openai", "base_url": "http://127.0.0.1:9/v1", "api_key": secret}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let r = cp
        .post(
            "/admin/v1/deployments",
            &root,
            json!({"id": "d1", "model": "gpt-4o", "provider": "up", "upstream_model": "gpt-4o-2024", "price": {"input_cost_per_token": 2.5e-06}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    let key = cp
        .post(
            "/admin/v1/keys",
            &root,
            json!({"tenant_id": "acme", "allowed_models": ["gpt-4o"]}),
        )
        .await;
    assert_eq!(key.status, StatusCode::CREATED, "{}", key.body);
    let revision = key.revision();

    // Published before the response (publishing failures would only delay it): the key as a
    // delta on top of the deployment's revision (this control plane signs nothing), the full
    // head at that revision.
    let (delta_head, delta) = read_delta(&cp.namespace).await;
    assert_eq!(
        (delta_head.base_revision, delta_head.revision),
        (revision - 1, revision)
    );
    let hash =
        switchboard_shared::keys::hash_key_hex(common::PEPPER, key.body["key"].as_str().unwrap());
    let k = delta
        .virtual_keys
        .iter()
        .find(|k| k.key_hash == hash)
        .expect("the new key");
    assert_eq!(k.allowed_models, vec!["gpt-4o".to_owned()]);
    let (head, snapshot) = read_published(&cp.namespace).await.expect("a head");
    assert_eq!(head.revision, revision - 1);
    assert_eq!(snapshot.revision, revision - 1);
    assert!(snapshot.validate().is_ok());

    // The credential travels sealed, and opens with the master keys.
    let text = String::from_utf8(snapshot.to_canonical_json()).unwrap();
    assert!(!text.contains(secret));
    let Some(SecretRef::Sealed(sealed)) = &snapshot.providers[0].api_key else {
        panic!("credential not sealed: {:?}", snapshot.providers[0].api_key)
    };
    let keys = switchboard_shared::sealed::MasterKeys::parse(common::MASTER_KEYS).unwrap();
    assert_eq!(keys.open(sealed).unwrap(), secret);

    // A revoke is the next revision on NATS, a delta with the key revoked.
    let id = key.body["id"].as_str().unwrap();
    let r = cp
        .post(&format!("/admin/v1/keys/{id}/revoke"), &root, json!({}))
        .await;
    let (delta_head, delta) = read_delta(&cp.namespace).await;
    assert_eq!(delta_head.revision, r.revision());
    assert!(r.revision() > revision);
    let k = delta
        .virtual_keys
        .iter()
        .find(|k| k.key_hash == hash)
        .unwrap();
    assert_eq!(k.status, switchboard_shared::snapshot::KeyStatus::Revoked);

    // A refused write publishes nothing.
    let r = cp
        .post("/admin/v1/tenants", &root, json!({"id": "acme"}))
        .await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        read_published(&cp.namespace).await.unwrap().0.revision,
        head.revision
    );
    cleanup(&cp.namespace).await;
}

fn built(revision: u64) -> Arc<Built> {
    let snapshot = Snapshot {
        revision,
        ..Snapshot::from_json(b"{}").unwrap()
    };
    Arc::new(Built::from_snapshot(&snapshot))
}

#[tokio::test]
async fn racing_publishers_never_move_the_head_backwards() {
    let namespace = unique_namespace();
    let names = NatsNames::new(&namespace);
    let a = Arc::new(Publisher::new(
        async_nats::connect(nats_url()).await.unwrap(),
        names.clone(),
    ));
    let b = Arc::new(Publisher::new(
        async_nats::connect(nats_url()).await.unwrap(),
        names.clone(),
    ));
    // Create the stream first so the observer can follow it from the start.
    a.publish(&built(1)).await.unwrap();

    let js = jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let stream = js.get_stream(&names.config_stream).await.unwrap();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            filter_subject: names.head_subject.clone(),
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();

    // Two replicas publish revisions 2..=30 in opposite orders at the same time.
    let up: Vec<u64> = (2..=30).collect();
    let down: Vec<u64> = (2..=30).rev().collect();
    let (pa, pb) = (a.clone(), b.clone());
    let ta = tokio::spawn(async move {
        for r in up {
            pa.publish(&built(r)).await.unwrap();
        }
    });
    let tb = tokio::spawn(async move {
        for r in down {
            pb.publish(&built(r)).await.unwrap();
        }
    });
    ta.await.unwrap();
    tb.await.unwrap();

    let mut seen = Vec::new();
    while let Ok(Some(Ok(m))) =
        tokio::time::timeout(Duration::from_millis(500), messages.next()).await
    {
        let head: SnapshotHead = serde_json::from_slice(&m.payload).unwrap();
        seen.push(head.revision);
    }
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "head went backwards: {seen:?}"
    );
    assert_eq!(seen.last(), Some(&30), "{seen:?}");
    let (_, head) = a.head().await.unwrap().unwrap();
    let head = head.expect("an unsigned publisher counts every head");
    assert_eq!(head.revision, 30);
    // Old bodies are pruned; the head's body is kept.
    let store = js.get_object_store(&names.snapshot_bucket).await.unwrap();
    let objects = tokio::time::timeout(Duration::from_secs(10), async {
        let mut objects = Vec::new();
        let mut list = store.list().await.unwrap();
        while let Some(info) = list.next().await {
            objects.push(info.unwrap().name);
        }
        objects
    })
    .await
    .expect("listing the bucket within 10 s");
    assert!(objects.len() as u64 <= SNAPSHOTS_KEPT + 1, "{objects:?}");
    assert!(objects.contains(&head.object));
    cleanup(&namespace).await;
}

async fn next(
    w: &mut tonic::Streaming<switchboard_shared::proto::SnapshotEnvelope>,
) -> switchboard_shared::proto::SnapshotEnvelope {
    tokio::time::timeout(Duration::from_secs(5), w.message())
        .await
        .expect("a snapshot within 5 s")
        .unwrap()
        .unwrap()
}

#[sqlx::test(migrations = "../migrations")]
async fn grpc_get_and_watch_deliver_the_latest_on_every_replica(pool: PgPool) {
    let cp = start(pool.clone()).await;
    // The replica's reconcile loop (which reads Postgres) is too slow to matter here: what it
    // serves comes from following the NATS head.
    let mut slow = common::settings(&cp.namespace);
    slow.reconcile_interval = Duration::from_secs(600);
    let replica = common::start_with(pool, slow).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    let first = cp
        .post("/admin/v1/tenants", &root, json!({"id": "acme"}))
        .await
        .revision();

    let mut client = ConfigServiceClient::connect(format!("http://{}", cp.running.grpc_addr))
        .await
        .unwrap();
    let got = client
        .get_snapshot(GetSnapshotRequest { newer_than: 0 })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap();
    assert_eq!(got.revision, first);
    assert_eq!(
        hex::encode(Sha256::digest(&got.snapshot_json)),
        got.content_hash
    );
    let none = client
        .get_snapshot(GetSnapshotRequest { newer_than: first })
        .await
        .unwrap()
        .into_inner();
    assert!(none.snapshot.is_none());

    // Watch on the *other* replica: it learns of cp's writes through NATS.
    let mut other = ConfigServiceClient::connect(format!("http://{}", replica.running.grpc_addr))
        .await
        .unwrap();
    let mut watch = other
        .watch_snapshot(WatchSnapshotRequest {
            newer_than: 0,
            dataplane_id: "test".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut env = next(&mut watch).await;
    while env.revision < first {
        env = next(&mut watch).await;
    }
    assert_eq!(env.revision, first);
    let second = cp
        .post("/admin/v1/tenants", &root, json!({"id": "globex"}))
        .await
        .revision();
    let env = next(&mut watch).await;
    assert_eq!(env.revision, second);
    let snapshot = Snapshot::from_json(&env.snapshot_json).unwrap();
    assert_eq!(snapshot.tenants.len(), 2);
    cleanup(&cp.namespace).await;
}

#[sqlx::test(migrations = "../migrations")]
async fn the_fleet_is_listed_and_writes_can_wait_for_it(pool: PgPool) {
    let cp = start(pool).await;
    let root = cp
        .admin("root@example.com", Role::PlatformAdmin, None)
        .await;
    let names = NatsNames::new(&cp.namespace);
    let nats = async_nats::connect(nats_url()).await.unwrap();
    let beat = |id: &str, revision: u64| Heartbeat {
        dataplane_id: id.into(),
        hostname: "host-1".into(),
        version: "0.1.0".into(),
        revision,
        content_hash: String::new(),
        ready: true,
        started_at: chrono::Utc::now(),
        sent_at: chrono::Utc::now(),
    };
    // "dp-fast" follows the control plane's revision; "dp-stuck" stays at 0.
    let publisher = cp.running.state.publisher.clone();
    let (n, subject_fast, subject_stuck) = (
        nats.clone(),
        names.heartbeat_subject("dp-fast"),
        names.heartbeat_subject("dp-stuck"),
    );
    let beats = tokio::spawn(async move {
        loop {
            let fast = beat("dp-fast", publisher.latest_revision());
            n.publish(
                subject_fast.clone(),
                serde_json::to_vec(&fast).unwrap().into(),
            )
            .await
            .unwrap();
            n.publish(
                subject_stuck.clone(),
                serde_json::to_vec(&beat("dp-stuck", 0)).unwrap().into(),
            )
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let fleet = cp.get("/admin/v1/fleet", &root).await;
        if fleet.body["dataplanes"].as_array().unwrap().len() == 2 {
            let stuck = &fleet.body["dataplanes"][1];
            assert_eq!(stuck["id"], "dp-stuck");
            assert_eq!(stuck["lag"], fleet.body["revision"]);
            assert_eq!(stuck["hostname"], "host-1");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", fleet.body);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let r = cp
        .post("/admin/v1/tenants?wait_ms=400", &root, json!({"id": "a"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.headers["x-switchboard-fleet-pending"], "dp-stuck");

    // Once the stuck one goes silent (3 intervals), a write waits only for the live one.
    beats.abort();
    let n = nats.clone();
    let publisher = cp.running.state.publisher.clone();
    let subject = names.heartbeat_subject("dp-fast");
    let fast_only = tokio::spawn(async move {
        loop {
            let fast = beat("dp-fast", publisher.latest_revision());
            n.publish(subject.clone(), serde_json::to_vec(&fast).unwrap().into())
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(1700)).await;
    let r = cp
        .post("/admin/v1/tenants?wait_ms=5000", &root, json!({"id": "b"}))
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert!(
        r.headers.get("x-switchboard-fleet-pending").is_none(),
        "{:?}",
        r.headers
    );
    fast_only.abort();
    cleanup(&cp.namespace).await;
}
