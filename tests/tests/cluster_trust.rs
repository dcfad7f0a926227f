//! The cluster channels trust only the cluster, against a real control plane, Postgres and
//! NATS: the gRPC ConfigService wants its bearer token and caps its watchers; a forged snapshot
//! head (no valid signature, revision `u64::MAX`) freezes neither the data plane nor the control
//! plane; forged usage events and heartbeats never reach spend or the fleet view (events are
//! kept as dead letters), and with per-data-plane ingest keys a data plane speaks only for
//! itself; a rotated virtual key's old secret works on the data plane until its grace window
//! ends; after a master-key rotation (reseal, old key dropped) a data plane holding only the new
//! key installs and answers through Bedrock and weighted keys, while one holding only the old
//! key refuses the new revision and keeps serving its own.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

#[allow(unused_imports)] // Not every shared helper is needed here.
mod common;

use std::time::{Duration, Instant};

use common::cluster::{ControlPlane, MASTER_KEYS, call, follower_keyed, unique_namespace};
use common::*;
use dataplane::config::ClusterConfig;
use http::{Method, StatusCode};
use serde_json::json;
use sqlx::PgPool;
use switchboard_shared::cluster::{NatsNames, SnapshotHead, snapshot_object};
use switchboard_shared::cluster_trust::{
    DATAPLANE_HEADER, IngestKeys, SIGNATURE_HEADER, SnapshotClaims, SnapshotVerifier,
};
use switchboard_shared::proto::config_service_client::ConfigServiceClient;
use switchboard_shared::proto::{GetSnapshotRequest, WatchSnapshotRequest};
use switchboard_shared::sealed::MasterKeys;
use switchboard_tests::cluster_keys::{GRPC_TOKEN, INGEST_KEY, signing_public};
use switchboard_tests::services::nats_url;
use tonic::transport::Channel;

/// The control-plane binary's allocator (`controlplane/src/main.rs`), so that the memory
/// measurements below (`login_flood`, `watchers_memory`) see what a deployed control plane does.
#[global_allocator]
static GLOBAL: switchboard_alloc::Mimalloc = switchboard_alloc::Mimalloc;

/// A ConfigService client presenting `token` (if any).
async fn grpc_client(
    url: &str,
    token: Option<&str>,
) -> ConfigServiceClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone,
    >,
> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let header = token.map(|t| {
        format!("Bearer {t}")
            .parse::<tonic::metadata::AsciiMetadataValue>()
            .unwrap()
    });
    ConfigServiceClient::with_interceptor(channel, move |mut request: tonic::Request<()>| {
        if let Some(h) = &header {
            request.metadata_mut().insert("authorization", h.clone());
        }
        Ok(request)
    })
}

#[sqlx::test(migrations = "../migrations")]
async fn the_config_service_wants_its_token_and_signs_what_it_serves(pool: PgPool) {
    let namespace = unique_namespace();
    let cp = ControlPlane::start(pool, &namespace).await;
    for token in [None, Some("wrong-token-0123456789abcdef")] {
        let status = grpc_client(&cp.grpc, token)
            .await
            .get_snapshot(GetSnapshotRequest { newer_than: 0 })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{token:?}");
        let status = grpc_client(&cp.grpc, token)
            .await
            .watch_snapshot(WatchSnapshotRequest {
                newer_than: 0,
                dataplane_id: "x".into(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{token:?}");
    }
    let envelope = grpc_client(&cp.grpc, Some(GRPC_TOKEN))
        .await
        .get_snapshot(GetSnapshotRequest { newer_than: 0 })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .expect("a snapshot");
    let verifier = SnapshotVerifier::parse(&namespace, &signing_public()).unwrap();
    let claims = SnapshotClaims {
        namespace: &envelope.namespace,
        revision: envelope.revision,
        content_hash: &envelope.content_hash,
        issued_at_micros: envelope.issued_at_micros,
    };
    verifier.verify(&claims, &envelope.signature).unwrap();
}

#[sqlx::test(migrations = "../migrations")]
async fn watchers_over_the_cap_get_resource_exhausted(pool: PgPool) {
    let namespace = unique_namespace();
    let cp = ControlPlane::start_tuned(pool, &namespace, &nats_url(), None, |s| {
        s.trust.grpc_max_watchers = 3;
    })
    .await;
    let client = grpc_client(&cp.grpc, Some(GRPC_TOKEN)).await;
    let watch = || {
        let mut client = client.clone();
        async move {
            client
                .watch_snapshot(WatchSnapshotRequest {
                    newer_than: 0,
                    dataplane_id: "w".into(),
                })
                .await
        }
    };
    let mut open = Vec::new();
    for _ in 0..3 {
        let mut stream = watch().await.unwrap().into_inner();
        assert!(stream.message().await.unwrap().is_some());
        open.push(stream);
    }
    let refused = watch().await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
    // A closed watcher frees its place.
    drop(open.pop());
    let started = Instant::now();
    loop {
        match watch().await {
            Ok(_) => break,
            Err(e) if started.elapsed() < Duration::from_secs(5) => {
                assert_eq!(e.code(), tonic::Code::ResourceExhausted);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("the place was not freed: {e}"),
        }
    }
}

/// A data plane in cluster mode following `cp` over NATS only.
async fn data_plane(namespace: &str) -> (Gateway, dataplane::cluster::Cluster) {
    let mut cluster = ClusterConfig::with_urls(None, Some(nats_url()));
    cluster.namespace = namespace.to_owned();
    common::cluster::follower(cluster).await
}

/// Waits until `check` holds, for up to 10 s.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < Duration::from_secs(10), "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_forged_head_freezes_neither_the_data_plane_nor_the_control_plane(pool: PgPool) {
    let namespace = unique_namespace();
    let cp = ControlPlane::start(pool, &namespace).await;
    cp.write(Method::POST, "/admin/v1/tenants", json!({"id": "acme"}))
        .await;
    let (gw, cluster) = data_plane(&namespace).await;
    let mut events = cluster.installer().subscribe();
    let names = NatsNames::new(&namespace);
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    eventually("the data plane installs the tenant", async || {
        gw.state.revision() > 0
    })
    .await;
    let serving = gw.state.revision();

    // What anyone who can publish on NATS could do: a body with a matching SHA-256 and a head
    // without a valid signature, once at the next revision and once at u64::MAX.
    let store = js.get_object_store(&names.snapshot_bucket).await.unwrap();
    for revision in [serving + 1, u64::MAX] {
        let body = format!(
            "{{\"revision\":{revision},\"tenants\":[{{\"id\":\"mallory\"}}],\"providers\":[],\"deployments\":[]}}"
        );
        let snapshot = switchboard_shared::snapshot::Snapshot::from_json(body.as_bytes()).unwrap();
        let json = snapshot.to_canonical_json();
        store
            .put(snapshot_object(revision).as_str(), &mut json.as_slice())
            .await
            .unwrap();
        let head = SnapshotHead {
            revision,
            content_hash: snapshot.content_hash(),
            object: snapshot_object(revision),
            size: json.len() as u64,
            published_at: chrono::Utc::now(),
            namespace: namespace.clone(),
            signature: String::new(),
        };
        js.publish(
            names.head_subject.clone(),
            serde_json::to_vec(&head).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
        let refused = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let event = events.recv().await.unwrap();
                if event.revision == revision {
                    return event.outcome;
                }
            }
        })
        .await
        .expect("the forged head reached the data plane");
        assert!(
            matches!(&refused, dataplane::cluster::Outcome::Rejected(r) if r.contains("not signed")),
            "{refused:?}"
        );
        assert_eq!(gw.state.revision(), serving);
    }
    let metrics = send(request(Method::GET, &gw.url("/metrics"), &[], ""))
        .await
        .text();
    assert!(
        metrics.contains("switchboard_snapshot_refused_total{reason=\"unsigned\"}"),
        "{metrics}"
    );

    // The control plane keeps publishing: the next write reaches the data plane, and the head
    // on NATS is the control plane's again.
    let written = cp
        .write(Method::POST, "/admin/v1/tenants", json!({"id": "beta"}))
        .await;
    assert!(written.status.is_success());
    eventually("the next revision is installed", async || {
        gw.state.revision() > serving
    })
    .await;
    let head: SnapshotHead = serde_json::from_slice(
        &js.get_stream(&names.config_stream)
            .await
            .unwrap()
            .get_last_raw_message_by_subject(&names.head_subject)
            .await
            .unwrap()
            .payload,
    )
    .unwrap();
    assert_eq!(head.revision, gw.state.revision());
    assert!(!head.signature.is_empty());
    let _ = js.delete_stream(&names.config_stream).await;
    let _ = js.delete_object_store(&names.snapshot_bucket).await;
}

/// What the data plane answers `secret` at `GET /v1/key/info`: the status and the key's id.
async fn key_info(gw: &Gateway, secret: &str) -> (StatusCode, Option<String>) {
    let auth = format!("Bearer {secret}");
    let reply = send(request(
        Method::GET,
        &gw.url("/v1/key/info"),
        &[("authorization", &auth)],
        "",
    ))
    .await;
    let id = (reply.status == StatusCode::OK)
        .then(|| reply.json()["key"]["id"].as_str().map(str::to_owned))
        .flatten();
    (reply.status, id)
}

#[sqlx::test(migrations = "../migrations")]
async fn a_rotated_out_secret_works_in_the_cluster_until_its_grace_window_ends(pool: PgPool) {
    let namespace = unique_namespace();
    let cp = ControlPlane::start(pool, &namespace).await;
    cp.write(Method::POST, "/admin/v1/tenants", json!({"id": "acme"}))
        .await;
    let created = cp
        .write(Method::POST, "/admin/v1/keys", json!({"tenant_id": "acme"}))
        .await
        .json();
    let id = created["id"].as_str().unwrap().to_owned();
    let old = created["key"].as_str().unwrap().to_owned();
    let (gw, _cluster) = data_plane(&namespace).await;
    eventually("the data plane knows the key", async || {
        key_info(&gw, &old).await.0 == StatusCode::OK
    })
    .await;

    // Rotated with ten minutes of grace: both secrets are the same key on the data plane.
    let rotate = format!("/admin/v1/keys/{id}/rotate");
    let rotated = cp
        .write(Method::POST, &rotate, json!({"grace_minutes": 10}))
        .await
        .json();
    assert!(
        rotated["previous_secret_expires_at"].is_string(),
        "{rotated}"
    );
    let new = rotated["key"].as_str().unwrap().to_owned();
    eventually("the data plane knows the new secret", async || {
        key_info(&gw, &new).await.0 == StatusCode::OK
    })
    .await;
    assert_eq!(
        key_info(&gw, &old).await,
        (StatusCode::OK, Some(id.clone()))
    );
    assert_eq!(
        key_info(&gw, &new).await,
        (StatusCode::OK, Some(id.clone()))
    );

    // Eleven minutes on (the data plane's clock): the old secret is refused, the new one not.
    gw.state.books.clock.advance(Duration::from_secs(11 * 60));
    assert_eq!(key_info(&gw, &old).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(key_info(&gw, &new).await.0, StatusCode::OK);

    // A rotation without grace: the secret it replaces stops at once.
    let third = cp
        .write(Method::POST, &rotate, serde_json::Value::Null)
        .await
        .json();
    assert!(third.get("previous_secret_expires_at").is_none(), "{third}");
    let third = third["key"].as_str().unwrap().to_owned();
    eventually("the data plane knows the third secret", async || {
        key_info(&gw, &third).await.0 == StatusCode::OK
    })
    .await;
    assert_eq!(key_info(&gw, &new).await.0, StatusCode::UNAUTHORIZED);
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let names = NatsNames::new(&namespace);
    let _ = js.delete_stream(&names.config_stream).await;
    let _ = js.delete_object_store(&names.snapshot_bucket).await;
}

/// A usage record of tenant `acme` with this request id.
fn usage_json(request_id: &str) -> Vec<u8> {
    format!(
        r#"{{"request_id":"{request_id}","tenant_id":"acme","key_id":"k","model":"m",
        "deployment_id":null,"provider_id":null,"endpoint":"chat_completions","stream":false,
        "outcome":"success","status":200,"attempts":1,
        "usage":{{"prompt_tokens":1,"completion_tokens":2}},"usage_reported":true,
        "cost_usd":1000.0,"price_revision":1,"started_at":"{}",
        "latency_ms":5,"ttft_ms":null}}"#,
        chrono::Utc::now().to_rfc3339()
    )
    .into_bytes()
}

async fn spend_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar::<_, i64>("SELECT count(*) FROM spend_events")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[sqlx::test(migrations = "../migrations")]
async fn forged_usage_and_heartbeats_are_dropped_and_counted(pool: PgPool) {
    let namespace = unique_namespace();
    let cp = ControlPlane::start(pool.clone(), &namespace).await;
    let names = NatsNames::new(&namespace);
    let client = async_nats::connect(nats_url()).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let usage_before = controlplane::fleet::unauthenticated_count("usage");
    let beats_before = controlplane::fleet::unauthenticated_count("heartbeat");
    let keys = IngestKeys::parse(INGEST_KEY).unwrap();
    let wrong = IngestKeys::parse("not-the-cluster-ingest-key-000").unwrap();

    // Untagged, tagged with another key, and tagged for another sender than the header says.
    let forged = [
        (None, "forged-1"),
        (
            Some(("dp-1", wrong.tag("usage", "dp-1", &usage_json("forged-2")))),
            "forged-2",
        ),
        (
            Some(("dp-2", keys.tag("usage", "dp-1", &usage_json("forged-3")))),
            "forged-3",
        ),
    ];
    for (tag, id) in forged {
        let payload = usage_json(id);
        let mut headers = async_nats::HeaderMap::new();
        if let Some((sender, tag)) = &tag {
            headers.insert(DATAPLANE_HEADER, *sender);
            headers.insert(SIGNATURE_HEADER, tag.as_str());
        }
        js.publish_with_headers(names.usage_subject.clone(), headers, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    eventually("three forged events are counted", async || {
        controlplane::fleet::unauthenticated_count("usage") >= usage_before + 3
    })
    .await;
    assert_eq!(spend_rows(&pool).await, 0, "a forged event reached spend");
    // Each is kept, with its reason, as a dead letter.
    eventually("three forged events are dead letters", async || {
        dead_letters(&pool).await.len() == 3
    })
    .await;
    for (request_id, reason) in dead_letters(&pool).await {
        assert!(request_id.starts_with("forged-"), "{request_id}");
        assert!(reason.starts_with("not authenticated: "), "{reason}");
    }

    // The same event, tagged by a data plane with the cluster's key, is taken.
    let payload = usage_json("genuine-1");
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(DATAPLANE_HEADER, "dp-1");
    headers.insert(
        SIGNATURE_HEADER,
        keys.tag("usage", "dp-1", &payload).as_str(),
    );
    js.publish_with_headers(names.usage_subject.clone(), headers, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
    eventually("the tagged event reaches spend", async || {
        spend_rows(&pool).await == 1
    })
    .await;

    // A forged heartbeat (claiming to serve far ahead) is not in the fleet view.
    let beat = json!({"dataplane_id": "ghost", "hostname": "h", "version": "0", "revision": 999,
        "content_hash": "", "ready": true, "started_at": chrono::Utc::now(),
        "sent_at": chrono::Utc::now()});
    let payload = serde_json::to_vec(&beat).unwrap();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(DATAPLANE_HEADER, "ghost");
    headers.insert(
        SIGNATURE_HEADER,
        wrong.tag("heartbeat", "ghost", &payload).as_str(),
    );
    client
        .publish_with_headers(
            names.heartbeat_subject("ghost"),
            headers,
            payload.clone().into(),
        )
        .await
        .unwrap();
    client
        .publish(names.heartbeat_subject("ghost"), payload.into())
        .await
        .unwrap();
    client.flush().await.unwrap();
    eventually("two forged heartbeats are counted", async || {
        controlplane::fleet::unauthenticated_count("heartbeat") >= beats_before + 2
    })
    .await;
    let fleet = call(
        &cp.rest,
        Method::GET,
        "/admin/v1/fleet",
        Some(&cp.token),
        json!(null),
    )
    .await;
    assert_eq!(fleet.status, StatusCode::OK);
    assert!(!fleet.text().contains("ghost"), "{}", fleet.text());
    let _ = js.delete_stream(&names.usage_stream).await;
}

/// The dead letters' request ids and reasons, oldest first.
async fn dead_letters(pool: &PgPool) -> Vec<(String, String)> {
    sqlx::query_as::<_, (Option<String>, String)>(
        "SELECT request_id, reason FROM ingest_dead_letters ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(id, reason)| (id.unwrap_or_default(), reason))
    .collect()
}

/// Publishes a usage event with `request_id` on JetStream, tagged by `sender` under `keys`.
async fn publish_usage(
    js: &async_nats::jetstream::Context,
    names: &NatsNames,
    (sender, keys): (&str, &IngestKeys),
    request_id: &str,
) {
    let payload = usage_json(request_id);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(DATAPLANE_HEADER, sender);
    let tag = keys.tag("usage", sender, &payload);
    headers.insert(SIGNATURE_HEADER, tag.as_str());
    js.publish_with_headers(names.usage_subject.clone(), headers, payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
}

#[sqlx::test(migrations = "../migrations")]
async fn usage_is_authenticated_per_data_plane_and_strangers_are_kept_aside(pool: PgPool) {
    const DP1_KEY: &str = "dp-1-own-ingest-key-0123456789";
    let namespace = unique_namespace();
    let cp = ControlPlane::start_tuned(pool.clone(), &namespace, &nats_url(), None, |s| {
        // Per-data-plane keys only: dp-1 is known, nobody else is.
        s.trust.ingest_keys =
            Some(IngestKeys::dataplanes_only(&format!("dp-1:{DP1_KEY}")).unwrap());
    })
    .await;
    let names = NatsNames::new(&namespace);
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let dp1 = IngestKeys::parse(DP1_KEY).unwrap();
    let cluster_key = IngestKeys::parse(INGEST_KEY).unwrap();
    let before = controlplane::fleet::unauthenticated_count("usage");

    // dp-1 under its own key: booked. dp-1 under the (former) cluster key, and dp-2, which
    // has no key here even though its tag is well formed: counted and kept, never booked.
    publish_usage(&js, &names, ("dp-1", &dp1), "own-key").await;
    publish_usage(&js, &names, ("dp-1", &cluster_key), "shared-key").await;
    publish_usage(&js, &names, ("dp-2", &dp1), "stranger").await;
    eventually("dp-1's event reaches spend", async || {
        spend_rows(&pool).await == 1
    })
    .await;
    eventually("the other two are dead letters", async || {
        dead_letters(&pool).await.len() == 2
    })
    .await;
    let kept = dead_letters(&pool).await;
    assert_eq!(kept[0].0, "shared-key");
    assert!(
        kept[0].1.contains("not valid for data plane \"dp-1\""),
        "{}",
        kept[0].1
    );
    assert_eq!(kept[1].0, "stranger");
    assert!(
        kept[1].1.contains("unknown data plane \"dp-2\""),
        "{}",
        kept[1].1
    );
    assert!(controlplane::fleet::unauthenticated_count("usage") >= before + 2);
    let listed = call(
        &cp.rest,
        Method::GET,
        "/admin/v1/dead-letters",
        Some(&cp.token),
        json!(null),
    )
    .await;
    assert_eq!(listed.status, StatusCode::OK);
    assert!(
        listed.text().contains("unknown data plane"),
        "{}",
        listed.text()
    );
    let _ = js.delete_stream(&names.usage_stream).await;
}

/// The sealing key a rotation introduces (the old one is the test cluster's `k1`).
const NEW_MASTER_KEY: &str = "k2:ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM=";
/// The two weighted keys of the OpenAI-compatible provider.
const WEIGHTED: [&str; 2] = ["sk-rotation-heavy", "sk-rotation-light"];

/// A Bedrock provider (`br`, signing with the mock's AWS credentials) and an OpenAI-compatible
/// one with two weighted keys (`multi`), both on the mock; models `mb` and `mm` on them; a
/// tenant and a virtual key, whose secret is returned.
async fn sealed_providers(cp: &ControlPlane, mock: &MockUpstream) -> String {
    use switchboard_tests::mock::bedrock::{BEDROCK_ACCESS_KEY_ID, BEDROCK_SECRET_ACCESS_KEY};
    let price = json!({"input_cost_per_token": 1e-6, "output_cost_per_token": 1e-5});
    let bedrock_url = mock.base_url().trim_end_matches("/v1").to_owned();
    let writes = [
        ("/admin/v1/tenants", json!({"id": "acme"})),
        (
            "/admin/v1/providers",
            json!({"id": "br", "kind": "bedrock", "base_url": bedrock_url, "region": "us-east-1",
                   "aws_access_key_id": BEDROCK_ACCESS_KEY_ID,
                   "aws_secret_access_key": BEDROCK_SECRET_ACCESS_KEY}),
        ),
        (
            "/admin/v1/providers",
            json!({"id": "multi", "kind": "openai", "base_url": mock.base_url(),
                   "api_keys": [{"key": WEIGHTED[0], "weight": 3}, {"key": WEIGHTED[1]}]}),
        ),
        (
            "/admin/v1/deployments",
            json!({"id": "d-br", "model": "mb", "provider": "br",
                   "upstream_model": "anthropic.claude-3-5-sonnet-20240620-v1:0", "price": price}),
        ),
        (
            "/admin/v1/deployments",
            json!({"id": "d-multi", "model": "mm", "provider": "multi",
                   "upstream_model": "gpt-4o", "price": price}),
        ),
    ];
    for (path, body) in writes {
        cp.write(Method::POST, path, body).await;
    }
    let key = cp
        .write(Method::POST, "/admin/v1/keys", json!({"tenant_id": "acme"}))
        .await
        .json();
    key["key"].as_str().unwrap().to_owned()
}

/// A chat completion of `model` on `gw` with the virtual key `secret`.
async fn chat(gw: &Gateway, secret: &str, model: &str) -> Reply {
    let auth = format!("Bearer {secret}");
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    send(request(
        Method::POST,
        &gw.url("/v1/chat/completions"),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    ))
    .await
}

/// The revision of the head on NATS now.
async fn head_revision(js: &async_nats::jetstream::Context, names: &NatsNames) -> u64 {
    let message = js
        .get_stream(&names.config_stream)
        .await
        .unwrap()
        .get_last_raw_message_by_subject(&names.head_subject)
        .await
        .unwrap();
    serde_json::from_slice::<SnapshotHead>(&message.payload)
        .unwrap()
        .revision
}

/// What became of `revision` at an installer (waits up to 10 s for its event).
async fn fate_of(
    events: &mut tokio::sync::broadcast::Receiver<dataplane::cluster::Event>,
    revision: u64,
) -> dataplane::cluster::Outcome {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Ok(event) if event.revision == revision => return event.outcome,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("installer events ended: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("revision {revision} never reached the data plane"))
}

/// Chats through `multi` until the mock has seen both weighted keys (at most 200 requests;
/// with weights 3:1 missing one that long has odds below 1e-24); each answer must be 200 and
/// every key the mock sees one of the two.
async fn both_weighted_keys_reach_the_mock(gw: &Gateway, secret: &str, mock: &MockUpstream) {
    for _ in 0..200 {
        let reply = chat(gw, secret, "mm").await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let seen: std::collections::BTreeSet<String> = mock
            .requests("")
            .iter()
            .filter(|r| r.path == "/v1/chat/completions")
            .filter_map(|r| r.header("authorization").map(str::to_owned))
            .collect();
        let expected: std::collections::BTreeSet<String> =
            WEIGHTED.iter().map(|k| format!("Bearer {k}")).collect();
        assert!(seen.is_subset(&expected), "{seen:?}");
        if seen == expected {
            return;
        }
    }
    panic!("one weighted key never reached the mock");
}

#[sqlx::test(migrations = "../migrations")]
async fn after_a_master_key_rotation_data_planes_with_only_the_new_key_install_and_answer(
    pool: PgPool,
) {
    let namespace = unique_namespace();
    let names = NatsNames::new(&namespace);
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let mock = MockUpstream::start().await.unwrap();
    let mut cp = ControlPlane::start(pool.clone(), &namespace).await;
    let secret = sealed_providers(&cp, &mock).await;
    let cluster = || {
        let mut c = ClusterConfig::with_urls(None, Some(nats_url()));
        c.namespace = namespace.clone();
        c
    };
    // A data plane that holds only the old key, serving what was sealed with it.
    let (old_gw, old_dp) = follower_keyed(cluster(), "", MASTER_KEYS).await;
    let mut old_events = old_dp.installer().subscribe();
    // The committed revision (the key went out as a delta, past the head).
    let before = controlplane::repo::revision::current(&pool).await.unwrap();
    eventually("the old data plane installs", async || {
        old_gw.state.revision() == before
    })
    .await;
    cp.stop().await;

    // The rotation as documented: the new key first with the old one still listed, reseal,
    // then a control plane with only the new key, which publishes the next write.
    let both = format!("{NEW_MASTER_KEY},{MASTER_KEYS}");
    let mut cp = ControlPlane::start_tuned(pool.clone(), &namespace, &nats_url(), None, |s| {
        s.master_keys = MasterKeys::parse(&both).unwrap();
    })
    .await;
    let keys = MasterKeys::parse(&both).unwrap();
    let resealed = controlplane::service::providers::reseal_credentials(&pool, &keys)
        .await
        .unwrap();
    assert_eq!(resealed, 2, "both providers hold sealed fields");
    cp.stop().await;
    let cp = ControlPlane::start_tuned(pool, &namespace, &nats_url(), None, |s| {
        s.master_keys = MasterKeys::parse(NEW_MASTER_KEY).unwrap();
    })
    .await;
    cp.write(Method::POST, "/admin/v1/tenants", json!({"id": "beta"}))
        .await;
    let after = head_revision(&js, &names).await;
    assert!(
        after > before,
        "the write was published ({before} -> {after})"
    );

    // A data plane with only the new key installs it and every sealed field opens: Bedrock's
    // SigV4 checks out at the mock, and both weighted keys arrive as they were entered.
    let (new_gw, _new_dp) = follower_keyed(cluster(), "", NEW_MASTER_KEY).await;
    eventually("the new data plane installs the new revision", async || {
        new_gw.state.revision() == after
    })
    .await;
    let reply = chat(&new_gw, &secret, "mb").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let signed = mock
        .requests("")
        .into_iter()
        .find(|r| r.path.starts_with("/model/"))
        .expect("the Bedrock call reached the mock");
    let credential = format!(
        "Credential={}/",
        switchboard_tests::mock::bedrock::BEDROCK_ACCESS_KEY_ID
    );
    assert!(
        signed
            .header("authorization")
            .unwrap()
            .contains(&credential),
        "{:?}",
        signed.header("authorization")
    );
    both_weighted_keys_reach_the_mock(&new_gw, &secret, &mock).await;

    // The data plane left with only the old key cannot open the new revision: it refuses it,
    // counts the refusal, and keeps serving (and answering from) the revision it had.
    let refused = fate_of(&mut old_events, after).await;
    assert!(
        matches!(&refused, dataplane::cluster::Outcome::Rejected(r) if r.contains("no master key with id \"k2\"")),
        "{refused:?}"
    );
    assert_eq!(old_gw.state.revision(), before);
    let metrics = send(request(Method::GET, &old_gw.url("/metrics"), &[], ""))
        .await
        .text();
    assert!(
        metrics.contains("switchboard_snapshot_refused_total{reason=\"invalid\"}"),
        "{metrics}"
    );
    let reply = chat(&old_gw, &secret, "mb").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let _ = js.delete_stream(&names.config_stream).await;
    let _ = js.delete_object_store(&names.snapshot_bucket).await;
}

/// This process's resident set size in KiB (Linux).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// `cargo test -p switchboard-tests --test cluster_trust -- --ignored --nocapture watchers_memory`
/// A measurement, not a check: 1,000 open watchers on one control plane, the growth of this
/// process's RSS (server and clients together, so an upper bound for the server).
#[sqlx::test(migrations = "../migrations")]
#[ignore = "a measurement, not a check"]
async fn watchers_memory(pool: PgPool) {
    let namespace = unique_namespace();
    let cp = ControlPlane::start(pool, &namespace).await;
    for i in 0..200 {
        cp.write(
            Method::POST,
            "/admin/v1/tenants",
            json!({"id": format!("t{i}"), "name": "x".repeat(200)}),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let client = grpc_client(&cp.grpc, Some(GRPC_TOKEN)).await;
    let size = client
        .clone()
        .get_snapshot(GetSnapshotRequest { newer_than: 0 })
        .await
        .unwrap()
        .into_inner()
        .snapshot
        .unwrap()
        .snapshot_json
        .len();
    let before = rss_kib();
    let mut open = Vec::new();
    for _ in 0..1000 {
        let mut stream = client
            .clone()
            .watch_snapshot(WatchSnapshotRequest {
                newer_than: 0,
                dataplane_id: "m".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(stream.message().await.unwrap().is_some());
        open.push(stream);
    }
    let after = rss_kib();
    eprintln!(
        "1000 watchers of a {size}-byte snapshot: RSS {before} KiB -> {after} KiB (+{} KiB, {} bytes per watcher, clients included)",
        after.saturating_sub(before),
        after.saturating_sub(before) * 1024 / 1000
    );
}

/// `cargo test -p switchboard-tests --test cluster_trust -- --ignored --nocapture login_flood`
/// A measurement: 500 concurrent bad logins against one control plane while a usage event is
/// ingested and an admin write is published; prints the answers, this process's peak RSS
/// (server and clients together) and how long ingestion and publishing took meanwhile.
#[sqlx::test(migrations = "../migrations")]
#[ignore = "a measurement, not a check"]
async fn login_flood(pool: PgPool) {
    let namespace = unique_namespace();
    // As if the flood came from many addresses: the per-address limit never answers early, so
    // every login that is not refused for its account runs argon2 (under the global cap).
    let cp = ControlPlane::start_tuned(pool.clone(), &namespace, &nats_url(), None, |s| {
        s.admin_auth.login_per_ip_per_minute = 100_000;
    })
    .await;
    cp.write(Method::POST, "/admin/v1/tenants", json!({"id": "acme"}))
        .await;
    let names = NatsNames::new(&namespace);
    let js = async_nats::jetstream::new(async_nats::connect(nats_url()).await.unwrap());
    let keys = IngestKeys::parse(INGEST_KEY).unwrap();
    let before = rss_kib();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    // 500 bad logins at once (each from a different account, so the per-account limit does
    // not answer them all early), while a usage event is ingested and a write is published.
    let started = Instant::now();
    let logins = (0..500).map(|i| {
        let rest = cp.rest.clone();
        async move {
            call(
                &rest,
                Method::POST,
                "/admin/v1/auth/login",
                None,
                json!({"email": format!("nobody{i}@example.com"), "password": "wrong password"}),
            )
            .await
            .status
        }
    });
    let during = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t = Instant::now();
        publish_usage(&js, &names, ("dp-1", &keys), "during-flood").await;
        eventually("the event is ingested during the flood", async || {
            spend_rows(&pool).await == 1
        })
        .await;
        let ingested = t.elapsed();
        let head_before = head_revision(&js, &names).await;
        let t = Instant::now();
        cp.write(Method::POST, "/admin/v1/tenants", json!({"id": "beta"}))
            .await;
        let mut head_after = head_revision(&js, &names).await;
        while head_after <= head_before {
            assert!(t.elapsed() < Duration::from_secs(10), "never published");
            tokio::time::sleep(Duration::from_millis(10)).await;
            head_after = head_revision(&js, &names).await;
        }
        (ingested, t.elapsed(), (head_before, head_after))
    };
    let (statuses, (ingested, published, heads)) =
        tokio::join!(futures_util::future::join_all(logins), during);
    let flood = started.elapsed();
    sampler.abort();
    let mut counts = std::collections::BTreeMap::new();
    for s in &statuses {
        *counts.entry(s.as_u16()).or_insert(0) += 1;
    }
    eprintln!(
        "500 concurrent bad logins in {flood:?}: answers {counts:?}; process RSS {before} KiB -> peak {} KiB; \
         during the flood a usage event was ingested in {ingested:?} and an admin write was published on NATS \
         (head revision {} -> {}) {published:?} after it was sent",
        peak.load(std::sync::atomic::Ordering::Relaxed),
        heads.0,
        heads.1
    );
    assert!(
        statuses
            .iter()
            .all(|s| *s == StatusCode::UNAUTHORIZED || *s == StatusCode::TOO_MANY_REQUESTS)
    );
    let _ = js.delete_stream(&names.usage_stream).await;
}
