//! Config deltas (`docs/cluster.md`, "Deltas"), against real Postgres and NATS: a key created,
//! revoked and deleted through the admin API reaches the data plane as a delta (not a full
//! install) and survives a restart from the cache and its delta journal; a forged, unsigned or
//! other-namespace delta is refused; a missed delta sends the data plane back to the full head
//! and it ends at the right revision; a key write that cannot follow on from what was
//! published goes out in full; and the full snapshot still follows the deltas.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use common::cluster::{ControlPlane, unique_namespace};
use common::*;
use controlplane::publish::{Built, Publisher};
use dataplane::cluster::{Event, Outcome};
use dataplane::config::ClusterConfig;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use switchboard_shared::cluster::{NatsNames, REVISION_HEADER};
use switchboard_shared::cluster_trust::{SnapshotSigner, SnapshotVerifier};
use switchboard_shared::config_delta::{self, ConfigDelta, DeltaHead};
use switchboard_shared::snapshot::{Snapshot, VirtualKey};
use switchboard_tests::cluster_keys::{FOREIGN_SEED, signer, signing_public};
use switchboard_tests::services::nats_url;
use tokio::sync::broadcast;

/// How long a test waits for something that should happen at once, before failing.
const PATIENCE: Duration = Duration::from_secs(10);

/// An in-process data plane following `namespace` on NATS only (`nats`: the test NATS;
/// otherwise an address nothing answers on), caching to `cache`.
async fn data_plane(
    namespace: &str,
    cache: &std::path::Path,
    nats: bool,
) -> (Gateway, dataplane::cluster::Cluster) {
    let url = if nats {
        nats_url()
    } else {
        let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("nats://{}", unused.local_addr().unwrap())
    };
    let mut cluster = ClusterConfig::with_urls(None, Some(url));
    cluster.namespace = namespace.to_owned();
    cluster.snapshot_cache = Some(cache.to_path_buf());
    cluster.heartbeat_interval_ms = 500;
    common::cluster::follower(cluster).await
}

/// The event of `revision`, waiting for it.
async fn event_for(events: &mut broadcast::Receiver<Event>, revision: u64) -> Event {
    tokio::time::timeout(PATIENCE, async {
        loop {
            match events.recv().await {
                Ok(event) if event.revision == revision => return event,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("events: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no event for revision {revision}"))
}

/// `GET /v1/models` with `key`: 200 while the key works, 401 otherwise.
async fn models(gw: &Gateway, key: &str) -> StatusCode {
    let auth = format!("Bearer {key}");
    send(request(
        Method::GET,
        &gw.url("/v1/models"),
        &[("authorization", &auth)],
        "",
    ))
    .await
    .status
}

fn revision_of(reply: &Reply) -> u64 {
    reply.headers[REVISION_HEADER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

async fn metrics(gw: &Gateway) -> String {
    send(request(Method::GET, &gw.url("/metrics"), &[], ""))
        .await
        .text()
}

/// A tenant, a provider on the mock upstream and a deployment of model `m`.
async fn demo_config(cp: &ControlPlane) {
    let mock = MockUpstream::start().await.unwrap();
    cp.write(Method::POST, "/admin/v1/tenants", json!({"id": "acme"}))
        .await;
    cp.write(
        Method::POST,
        "/admin/v1/providers",
        json!({"id": "up", "kind": "openai", "base_url": mock.base_url(), "api_key": "sk-upstream-delta"}),
    )
    .await;
    cp.write(
        Method::POST,
        "/admin/v1/deployments",
        json!({"id": "d1", "model": "m", "provider": "up", "upstream_model": "gpt-4o"}),
    )
    .await;
}

/// Creates a key of tenant `acme`: its id, secret and revision.
async fn create_key(cp: &ControlPlane) -> (String, String, u64) {
    let created = cp
        .write(Method::POST, "/admin/v1/keys", json!({"tenant_id": "acme"}))
        .await;
    let body = created.json();
    (
        body["id"].as_str().unwrap().to_owned(),
        body["key"].as_str().unwrap().to_owned(),
        revision_of(&created),
    )
}

/// The head's revision on NATS, if there is a head.
async fn head_revision(namespace: &str) -> u64 {
    let client = async_nats::connect(nats_url()).await.unwrap();
    let publisher = Publisher::new(client, NatsNames::new(namespace));
    publisher
        .head()
        .await
        .unwrap()
        .and_then(|(_, h)| h)
        .map_or(0, |h| h.revision)
}

#[sqlx::test(migrations = "../migrations")]
async fn key_changes_travel_as_deltas_and_survive_a_restart(pool: PgPool) {
    let namespace = unique_namespace();
    let cp = ControlPlane::start(pool, &namespace).await;
    demo_config(&cp).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("snapshot.json");
    let (gw, cluster) = data_plane(&namespace, &cache, true).await;
    let mut events = cluster.installer().subscribe();

    let (id, secret, created) = create_key(&cp).await;
    assert_eq!(
        event_for(&mut events, created).await.outcome,
        Outcome::DeltaApplied
    );
    assert_eq!(models(&gw, &secret).await, StatusCode::OK);
    let revoked = cp
        .write(
            Method::POST,
            &format!("/admin/v1/keys/{id}/revoke"),
            Value::Null,
        )
        .await;
    let revoked = revision_of(&revoked);
    assert_eq!(
        event_for(&mut events, revoked).await.outcome,
        Outcome::DeltaApplied
    );
    assert_eq!(models(&gw, &secret).await, StatusCode::UNAUTHORIZED);
    let (other_id, other, created_other) = create_key(&cp).await;
    event_for(&mut events, created_other).await;
    let deleted = cp
        .write(
            Method::DELETE,
            &format!("/admin/v1/keys/{other_id}"),
            Value::Null,
        )
        .await;
    let deleted = revision_of(&deleted);
    assert_eq!(
        event_for(&mut events, deleted).await.outcome,
        Outcome::DeltaApplied
    );
    assert_eq!(models(&gw, &other).await, StatusCode::UNAUTHORIZED);
    assert_eq!(gw.state.revision(), deleted);
    assert!(
        metrics(&gw)
            .await
            .contains("switchboard_config_deltas_applied_total"),
    );
    // The head on NATS stays at the last full snapshot: these changes went out as deltas only.
    assert!(head_revision(&namespace).await < created);

    // A restart with neither NATS nor gRPC: the cached snapshot and the journalled deltas
    // after it, so the revoked key stays revoked.
    drop(cluster);
    drop(gw);
    let (gw, _cluster) = data_plane(&namespace, &cache, false).await;
    assert_eq!(gw.state.revision(), deleted);
    assert_eq!(models(&gw, &secret).await, StatusCode::UNAUTHORIZED);
    assert_eq!(models(&gw, &other).await, StatusCode::UNAUTHORIZED);
}

/// A delta message for `revision` on top of `revision - 1` adding `keys`, signed by `signer`
/// (if any) for `namespace`.
fn delta_message(
    namespace: &str,
    revision: u64,
    keys: Vec<VirtualKey>,
    signer: Option<&SnapshotSigner>,
) -> Vec<u8> {
    let body = serde_json::to_vec(&ConfigDelta {
        virtual_keys: keys,
        removed_virtual_keys: Vec::new(),
    })
    .unwrap();
    let mut head = DeltaHead {
        namespace: namespace.to_owned(),
        base_revision: revision - 1,
        revision,
        content_hash: config_delta::body_hash(&body),
        published_at: chrono::Utc::now(),
        signature: String::new(),
    };
    if let Some(signer) = signer {
        head.signature = signer.sign_delta(&head.claims());
    }
    config_delta::encode(&head, &body)
}

/// A key of tenant `t1` with the secret `secret`.
fn key(id: &str, secret: &str) -> VirtualKey {
    serde_json::from_value(json!({"id": id, "tenant_id": "t1", "key_hash": key_hash(secret)}))
        .unwrap()
}

/// A full snapshot at `revision` with the tenant `t1` and the test key.
fn full(revision: u64) -> Snapshot {
    let mut s = Snapshot::from_yaml(&snapshot("", "")).unwrap();
    s.revision = revision;
    s
}

/// The control plane's NATS side, signing with the test cluster's key.
async fn publisher(namespace: &str) -> (Publisher, jetstream::Context) {
    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = jetstream::new(client.clone());
    let signer = signer();
    let verifier = SnapshotVerifier::parse(namespace, &signing_public()).unwrap();
    let publisher = Publisher::new(client, NatsNames::new(namespace)).with_signing(
        namespace,
        Some(signer),
        Some(verifier),
    );
    (publisher, js)
}

async fn publish_full(publisher: &Publisher, revision: u64) {
    let built = publisher.sign(Arc::new(Built::from_snapshot(&full(revision))));
    publisher.publish(&built).await.unwrap();
}

async fn publish_raw(js: &jetstream::Context, namespace: &str, message: Vec<u8>) {
    js.publish(NatsNames::new(namespace).delta_subject, message.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

#[tokio::test]
async fn forged_unsigned_and_foreign_deltas_are_refused() {
    let namespace = unique_namespace();
    let (publisher, js) = publisher(&namespace).await;
    publish_full(&publisher, 5).await;
    let dir = tempfile::tempdir().unwrap();
    let (gw, cluster) = data_plane(&namespace, &dir.path().join("c.json"), true).await;
    let mut events = cluster.installer().subscribe();
    tokio::time::timeout(PATIENCE, async {
        while gw.state.revision() != 5 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();

    let mallory = || vec![key("k-mallory", "sk-mallory")];
    let foreign = SnapshotSigner::from_base64(FOREIGN_SEED).unwrap();
    let forged = [
        (delta_message(&namespace, 6, mallory(), None), "not signed"),
        (
            delta_message(&namespace, 6, mallory(), Some(&foreign)),
            "not valid",
        ),
        (
            delta_message("elsewhere", 6, mallory(), Some(&signer())),
            "namespace",
        ),
    ];
    for (message, why) in forged {
        publish_raw(&js, &namespace, message).await;
        match event_for(&mut events, 6).await.outcome {
            Outcome::Rejected(reason) => assert!(reason.contains(why), "{reason}"),
            other => panic!("a forged delta: {other:?}"),
        }
        assert_eq!(gw.state.revision(), 5);
        assert_eq!(models(&gw, "sk-mallory").await, StatusCode::UNAUTHORIZED);
    }
    // An edited body no longer matches its signed hash.
    let mut edited = delta_message(&namespace, 6, mallory(), Some(&signer()));
    let at = edited.len() - 3;
    edited[at] = b' ';
    publish_raw(&js, &namespace, edited).await;
    assert!(matches!(
        event_for(&mut events, 0).await.outcome,
        Outcome::Rejected(_)
    ));
    let text = metrics(&gw).await;
    for reason in [
        "unsigned",
        "bad_signature",
        "wrong_namespace",
        "hash_mismatch",
    ] {
        assert!(
            text.contains(&format!(
                "switchboard_snapshot_refused_total{{reason=\"{reason}\"}}"
            )),
            "{reason}: {text}"
        );
    }
    // The genuine one applies.
    publish_raw(
        &js,
        &namespace,
        delta_message(&namespace, 6, mallory(), Some(&signer())),
    )
    .await;
    assert_eq!(
        event_for(&mut events, 6).await.outcome,
        Outcome::DeltaApplied
    );
    assert_eq!(models(&gw, "sk-mallory").await, StatusCode::OK);
}

#[tokio::test]
async fn a_missed_delta_is_covered_by_the_full_head() {
    let namespace = unique_namespace();
    let (publisher, js) = publisher(&namespace).await;
    publish_full(&publisher, 5).await;
    let dir = tempfile::tempdir().unwrap();
    let (gw, cluster) = data_plane(&namespace, &dir.path().join("c.json"), true).await;
    let mut events = cluster.installer().subscribe();
    let signer = signer();
    let delta = |revision: u64, secret: &str| {
        delta_message(
            &namespace,
            revision,
            vec![key(&format!("k{revision}"), secret)],
            Some(&signer),
        )
    };
    publish_raw(&js, &namespace, delta(6, "sk-6")).await;
    assert_eq!(
        event_for(&mut events, 6).await.outcome,
        Outcome::DeltaApplied
    );
    // Revision 7 is lost on the way; 8 arrives and waits for it. After the gap wait the data
    // plane asks for the head again (still 5: nothing to install yet).
    publish_raw(&js, &namespace, delta(8, "sk-8")).await;
    tokio::time::sleep(dataplane::cluster::nats::GAP_WAIT * 3).await;
    assert_eq!(gw.state.revision(), 6);
    assert_eq!(models(&gw, "sk-8").await, StatusCode::UNAUTHORIZED);
    assert!(
        metrics(&gw)
            .await
            .contains("switchboard_config_delta_gaps_total")
    );
    // The control plane publishes revision 7 in full (what it does for a revision that went
    // out neither way): installed, then the kept delta 8 on top of it.
    let mut seven = full(7);
    seven.virtual_keys.push(key("k6", "sk-6"));
    seven.virtual_keys.push(key("k7", "sk-7"));
    let built = publisher.sign(Arc::new(Built::from_snapshot(&seven)));
    publisher.publish(&built).await.unwrap();
    assert_eq!(event_for(&mut events, 7).await.outcome, Outcome::Installed);
    assert_eq!(
        event_for(&mut events, 8).await.outcome,
        Outcome::DeltaApplied
    );
    assert_eq!(gw.state.revision(), 8);
    for secret in ["sk-6", "sk-7", "sk-8"] {
        assert_eq!(models(&gw, secret).await, StatusCode::OK, "{secret}");
    }
    // A head past the deltas kept: installed, the older ones dropped.
    publish_raw(&js, &namespace, delta(10, "sk-10")).await;
    publish_full(&publisher, 12).await;
    assert_eq!(event_for(&mut events, 12).await.outcome, Outcome::Installed);
    assert_eq!(gw.state.revision(), 12);
    assert_eq!(models(&gw, "sk-10").await, StatusCode::UNAUTHORIZED);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_key_write_that_cannot_follow_on_goes_out_in_full(pool: PgPool) {
    let namespace = unique_namespace();
    let cp = ControlPlane::start_tuned(pool.clone(), &namespace, &nats_url(), None, |s| {
        // No periodic full snapshot during the test.
        s.full_snapshots.every_deltas = 1_000;
        s.full_snapshots.every = Duration::from_secs(3600);
        s.reconcile_interval = Duration::from_secs(3600);
    })
    .await;
    demo_config(&cp).await;
    let dir = tempfile::tempdir().unwrap();
    let (gw, cluster) = data_plane(&namespace, &dir.path().join("c.json"), true).await;
    let mut events = cluster.installer().subscribe();
    let (_, _, first) = create_key(&cp).await;
    assert_eq!(
        event_for(&mut events, first).await.outcome,
        Outcome::DeltaApplied
    );
    // A write outside the server (as the CLI makes): committed, published by nobody.
    let actor = controlplane::service::Actor::system();
    let cx = controlplane::service::Ctx {
        pool: &pool,
        publisher: None,
    };
    let req: controlplane::service::keys::CreateKey =
        serde_json::from_value(json!({"tenant_id": "acme"})).unwrap();
    let (offline, _) = controlplane::service::keys::create(cx, &actor, PEPPER.as_bytes(), req)
        .await
        .unwrap();
    // The next key write cannot be a delta on top of what was published: it goes out in full,
    // and carries the offline key with it.
    let (_, secret, next) = create_key(&cp).await;
    assert_eq!(
        event_for(&mut events, next).await.outcome,
        Outcome::Installed
    );
    assert_eq!(models(&gw, &secret).await, StatusCode::OK);
    assert_eq!(models(&gw, &offline.key).await, StatusCode::OK);
}

#[sqlx::test(migrations = "../migrations")]
async fn a_full_snapshot_follows_the_deltas(pool: PgPool) {
    let namespace = unique_namespace();
    let cp = ControlPlane::start_tuned(pool, &namespace, &nats_url(), None, |s| {
        s.full_snapshots.every_deltas = 3;
        s.full_snapshots.every = Duration::from_secs(3600);
        s.reconcile_interval = Duration::from_millis(200);
    })
    .await;
    demo_config(&cp).await;
    let before = head_revision(&namespace).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("c.json");
    let (gw, _cluster) = data_plane(&namespace, &cache, true).await;
    let (_, _, first) = create_key(&cp).await;
    let (_, _, _) = create_key(&cp).await;
    // Two deltas past the head: no full snapshot yet (several reconcile passes go by).
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(head_revision(&namespace).await, before);
    assert!(first > before);
    let (_, _, third) = create_key(&cp).await;
    tokio::time::timeout(PATIENCE, async {
        while head_revision(&namespace).await < third {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the full snapshot follows three deltas");
    // The data plane had that revision from the deltas already; it fetches the full snapshot
    // for its cache file, which empties the delta journal.
    let journal = dataplane::cluster::cache::journal_path(&cache);
    tokio::time::timeout(PATIENCE, async {
        while journal.exists() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the cache file is rewritten from the full snapshot");
    assert_eq!(gw.state.revision(), third);
    let (_, body) = dataplane::cluster::cache::load(&cache).unwrap().unwrap();
    assert_eq!(Snapshot::from_json(&body).unwrap().revision, third);
}
