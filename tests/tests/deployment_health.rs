//! Deployment health and test calls, against a real control plane, a cluster-mode data plane
//! sharing its deployment state through the real Redis, and the mock upstream:
//!
//! - `POST /admin/v1/deployments/{id}/test` on a deployment whose provider has a wrong key
//!   is made by the data plane (asked over NATS request/reply; `via: dataplane`, naming it)
//!   and answers with the upstream's 401 explained (the mock saw the deployment's own
//!   credential and a one-token chat), and no data plane takes the deployment out: its shared
//!   breaker stays closed, no permanent error is recorded, and the next live chat is still
//!   sent to it. A right key tests OK; a Bedrock deployment tests OK through the data plane's
//!   SigV4 signing (the mock refuses unsigned requests).
//! - With no data plane listening, the control plane makes the call itself and says why
//!   (`via: control_plane`); a reply not tagged under the cluster's ingest key is not believed.
//! - A lasting error in an upstream's body (OpenAI's 429 `insufficient_quota`) takes the
//!   deployment out for longer than the 429's `Retry-After`, and `GET
//!   /admin/v1/deployments/{id}/health` (and the list form) shows the open breaker and the
//!   error in the upstream's words.
//! - A deployment's caps: health shows the settings, the requests and USD the data plane
//!   counted today and this month in the shared counters (nano-USD in Redis), and the cap used
//!   up once it is reached; a deployment without caps has none.
//! - Roles: a viewer reads health but may not send a test call; a tenant admin reads neither.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{ControlPlane, call, unique_namespace};
use common::*;
use controlplane::config::RedisSettings;
use dataplane::config::ClusterConfig;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use switchboard_tests::services::{nats_url, redis_url};

const RIGHT_KEY: &str = "sk-right-health-test";
const WRONG_KEY: &str = "sk-wrong-health-test";

struct Cluster {
    namespace: String,
    cp: ControlPlane,
    mock: MockUpstream,
    gw: Gateway,
    follower: dataplane::cluster::Cluster,
    secret: String,
}

/// Providers `good` (the right key), `wrong` (a wrong key), `broke` (an account out of quota)
/// `multi` (the right key and a wrong one), and `br` (Bedrock, signing with the mock's AWS
/// keys); deployments `d-good` (model `m`), `d-wrong` (`m-new`), `d-quota` (`m-quota`),
/// `d-multi` (`m-multi`), `d-br` (`m-br`).
async fn configure(cp: &ControlPlane, mock: &MockUpstream) -> String {
    use switchboard_tests::mock::bedrock::{BEDROCK_ACCESS_KEY_ID, BEDROCK_SECRET_ACCESS_KEY};
    cp.write(Method::POST, "/admin/v1/tenants", json!({"id": "acme"}))
        .await;
    let keyed = mock.scenario_url(&format!("api_key={RIGHT_KEY}"));
    for (id, url, key) in [
        ("good", keyed.clone(), RIGHT_KEY),
        ("wrong", keyed, WRONG_KEY),
        ("broke", mock.scenario_url("fault=quota"), RIGHT_KEY),
    ] {
        cp.write(
            Method::POST,
            "/admin/v1/providers",
            json!({"id": id, "kind": "openai", "base_url": url, "api_key": key}),
        )
        .await;
    }
    // Two keys, the second wrong: a test call tries each.
    let keyed_url = mock.scenario_url(&format!("api_key={RIGHT_KEY}"));
    cp.write(
        Method::POST,
        "/admin/v1/providers",
        json!({"id": "multi", "kind": "openai", "base_url": keyed_url,
               "api_keys": [{"key": RIGHT_KEY}, {"key": WRONG_KEY}]}),
    )
    .await;
    let bedrock_url = mock.base_url().trim_end_matches("/v1").to_owned();
    cp.write(
        Method::POST,
        "/admin/v1/providers",
        json!({"id": "br", "kind": "bedrock", "base_url": bedrock_url, "region": "us-east-1",
               "aws_access_key_id": BEDROCK_ACCESS_KEY_ID,
               "aws_secret_access_key": BEDROCK_SECRET_ACCESS_KEY}),
    )
    .await;
    for (id, model, provider, upstream) in [
        ("d-good", "m", "good", "gpt-4o"),
        ("d-wrong", "m-new", "wrong", "gpt-4o"),
        ("d-quota", "m-quota", "broke", "gpt-4o"),
        ("d-multi", "m-multi", "multi", "gpt-4o"),
        (
            "d-br",
            "m-br",
            "br",
            "anthropic.claude-3-5-sonnet-20240620-v1:0",
        ),
    ] {
        cp.write(
            Method::POST,
            "/admin/v1/deployments",
            json!({"id": id, "model": model, "provider": provider, "upstream_model": upstream}),
        )
        .await;
    }
    let key = cp
        .write(Method::POST, "/admin/v1/keys", json!({"tenant_id": "acme"}))
        .await;
    key.json()["key"].as_str().unwrap().to_owned()
}

async fn start(pool: PgPool) -> Cluster {
    let namespace = unique_namespace();
    let prefix = format!("sbtest-health-{}", uuid::Uuid::now_v7().simple());
    let redis = RedisSettings {
        url: redis_url(),
        key_prefix: prefix.clone(),
        reconcile_interval: Duration::from_secs(60),
    };
    let cp = ControlPlane::start_with(pool, &namespace, &nats_url(), Some(redis)).await;
    let mock = MockUpstream::start().await.unwrap();
    let secret = configure(&cp, &mock).await;
    let mut cluster = ClusterConfig::with_urls(Some(cp.grpc.clone()), Some(nats_url()));
    cluster.namespace = namespace.clone();
    cluster.heartbeat_interval_ms = 200;
    let redis_yaml = format!(
        "redis:\n  url: {{ value: \"{}\" }}\n  key_prefix: \"{prefix}\"\n  refresh_ms: 100\n",
        redis_url()
    );
    let (gw, follower) = common::cluster::follower_with(cluster, &redis_yaml).await;
    let started = Instant::now();
    while chat(&gw, &secret, "m").await.status != StatusCode::OK {
        assert!(started.elapsed() < Duration::from_secs(15), "never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The snapshot may come over gRPC first: wait until the data plane's heartbeat shows it is
    // on NATS (its test-call subscription went to the server before that heartbeat).
    while get(&cp, &cp.token, "/admin/v1/fleet").await.json()["dataplanes"]
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        assert!(started.elapsed() < Duration::from_secs(15), "no heartbeat");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Cluster {
        namespace,
        cp,
        mock,
        gw,
        follower,
        secret,
    }
}

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

async fn get(cp: &ControlPlane, token: &str, path: &str) -> Reply {
    call(&cp.rest, Method::GET, path, Some(token), Value::Null).await
}

/// Polls `/deployments/{id}/health` until `done` holds for it (or 10 s pass).
async fn health_until(cp: &ControlPlane, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let reply = get(cp, &cp.token, &format!("/admin/v1/deployments/{id}/health")).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let health = reply.json();
        if done(&health) {
            return health;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still {health} after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn a_test_call_explains_a_wrong_key_without_taking_the_deployment_out(pool: PgPool) {
    let c = start(pool).await;
    let wrong = format!("api_key={RIGHT_KEY}");
    let before = c.mock.request_count(&wrong);
    let result = test_call(&c.cp, "d-wrong").await;
    assert_eq!(result["ok"], false, "{result}");
    assert_eq!(result["status"], 401, "{result}");
    assert_eq!(result["error_kind"], "credential_invalid", "{result}");
    assert_eq!(result["via"], "dataplane", "{result}");
    assert_eq!(
        result["answered_by"].as_str(),
        Some(c.follower.dataplane_id.as_str()),
        "{result}"
    );
    assert!(result["fallback"].is_null(), "{result}");
    let explanation = result["explanation"].as_str().unwrap();
    assert!(
        explanation.starts_with("the upstream refused the credential")
            && explanation.contains("Incorrect API key provided")
            && explanation.contains("/admin/v1/providers/wrong"),
        "{explanation}"
    );
    assert!(
        !result.to_string().contains(WRONG_KEY),
        "the key is never shown"
    );
    assert_eq!(c.mock.request_count(&wrong), before + 1, "one test request");
    let seen = c.mock.requests(&wrong);
    let test = seen.last().unwrap();
    assert_eq!(test.path, "/v1/chat/completions");
    assert_eq!(test.headers["authorization"], format!("Bearer {WRONG_KEY}"));
    let body: Value = serde_json::from_slice(&test.body).unwrap();
    assert_eq!(
        (body["model"].as_str(), body["max_tokens"].as_u64()),
        (Some("gpt-4o"), Some(1))
    );

    // No data plane took it out: its shared state (synced every 100 ms) stays closed, and the
    // next live chat for its model is still sent to it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let health = health_until(&c.cp, "d-wrong", |h| h["live"] == true).await;
    assert_eq!(health["breaker"], "closed", "{health}");
    assert!(health["last_permanent_error"].is_null(), "{health}");
    let live = chat(&c.gw, &c.secret, "m-new").await;
    assert_ne!(live.status, StatusCode::OK, "{}", live.text());
    assert_eq!(
        c.mock.request_count(&wrong),
        before + 2,
        "the live chat was routed to the tested deployment"
    );
    let last = c.mock.requests(&wrong).pop().unwrap();
    assert_eq!(last.headers["authorization"], format!("Bearer {WRONG_KEY}"));

    let result = test_call(&c.cp, "d-good").await;
    assert_eq!(
        (result["ok"].as_bool(), result["status"].as_u64()),
        (Some(true), Some(200)),
        "{result}"
    );
    assert_eq!(result["via"], "dataplane", "{result}");
    // Each key of a multi-key provider is tried: the second is named.
    let result = test_call(&c.cp, "d-multi").await;
    assert_eq!(
        (result["ok"].as_bool(), result["status"].as_u64()),
        (Some(false), Some(401)),
        "{result}"
    );
    assert_eq!(result["key_index"], 1, "{result}");
    assert!(
        result["explanation"]
            .as_str()
            .unwrap()
            .starts_with("key 1 of the provider's api_keys: the upstream refused the credential"),
        "{result}"
    );
    let keys: Vec<String> = c.mock.requests(&wrong)[before + 3..]
        .iter()
        .map(|r| r.headers["authorization"].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        keys,
        [format!("Bearer {RIGHT_KEY}"), format!("Bearer {WRONG_KEY}")],
        "after d-good's test: the first key, then the second"
    );
    // Bedrock: signed with SigV4 by the data plane (the mock answers 403 to anything else).
    let result = test_call(&c.cp, "d-br").await;
    assert_eq!(
        (result["ok"].as_bool(), result["status"].as_u64()),
        (Some(true), Some(200)),
        "{result}"
    );
    assert_eq!(result["via"], "dataplane", "{result}");
    absent_from_the_snapshot(&c).await;
    let reply = call(
        &c.cp.rest,
        Method::POST,
        "/admin/v1/deployments/nope/test",
        Some(&c.cp.token),
        Value::Null,
    )
    .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

/// Asked on NATS as the control plane asks, about a deployment its snapshot lacks, the data
/// plane replies "not found" with the revision it serves, tagged under the ingest key.
async fn absent_from_the_snapshot(c: &Cluster) {
    use switchboard_shared::cluster::{NatsNames, TEST_REPLY_KIND, TestCallReply};
    use switchboard_shared::cluster_trust::IngestKeys;
    let names = NatsNames::new(&c.namespace);
    let nats = async_nats::connect(nats_url()).await.unwrap();
    let question = json!({"deployment_id": "absent"}).to_string();
    let message = nats
        .request(names.test_subject, question.into())
        .await
        .unwrap();
    let reply: TestCallReply = serde_json::from_slice(&message.payload).unwrap();
    assert!(!reply.found, "{reply:?}");
    assert_eq!(reply.status, None, "nothing sent: {reply:?}");
    assert_eq!(reply.dataplane_id, c.follower.dataplane_id);
    assert_eq!(reply.revision, c.gw.state.revision(), "{reply:?}");
    let headers = message.headers.unwrap();
    let header = |name: &str| headers.get(name).unwrap().as_str().to_owned();
    let keys = IngestKeys::parse(switchboard_tests::cluster_keys::INGEST_KEY).unwrap();
    assert!(keys.verify(
        TEST_REPLY_KIND,
        &header("Switchboard-Dataplane"),
        &message.payload,
        &header("Switchboard-Signature"),
    ));
}

/// `POST /admin/v1/deployments/{id}/test` as the platform admin; its 200 answer.
async fn test_call(cp: &ControlPlane, id: &str) -> Value {
    let path = format!("/admin/v1/deployments/{id}/test");
    let reply = call(&cp.rest, Method::POST, &path, Some(&cp.token), Value::Null).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    reply.json()
}

#[sqlx::test(migrations = "../migrations")]
async fn without_a_data_plane_the_control_plane_makes_the_test_call(pool: PgPool) {
    use futures_util::StreamExt;
    let namespace = unique_namespace();
    let cp = ControlPlane::start(pool, &namespace).await;
    let mock = MockUpstream::start().await.unwrap();
    configure(&cp, &mock).await;

    // Something answering on the test subject without the cluster's ingest-key tag.
    let names = switchboard_shared::cluster::NatsNames::new(&namespace);
    let nats = async_nats::connect(nats_url()).await.unwrap();
    let mut asked = nats
        .queue_subscribe(
            names.test_subject.clone(),
            switchboard_shared::cluster::TEST_QUEUE_GROUP.into(),
        )
        .await
        .unwrap();
    let forger = nats.clone();
    let forging = tokio::spawn(async move {
        loop {
            let message = asked.next().await.unwrap();
            let reply_to = message.reply.unwrap();
            if &message.payload[..] == b"ping" {
                forger.publish(reply_to, "pong".into()).await.unwrap();
                continue;
            }
            let forged = json!({"dataplane_id": "dp-x", "deployment_id": "d-wrong",
                "revision": 1, "found": true, "status": 200, "latency_ms": 1});
            forger
                .publish(reply_to, forged.to_string().into())
                .await
                .unwrap();
            forger.flush().await.unwrap();
            return;
        }
    });
    // Asked on the same connection, after the subscription: answered once the server has it.
    let pong = nats
        .request(names.test_subject.clone(), "ping".into())
        .await
        .unwrap();
    assert_eq!(&pong.payload[..], b"pong");
    let result = test_call(&cp, "d-wrong").await;
    forging.await.unwrap();
    assert_eq!(result["via"], "control_plane", "{result}");
    assert!(
        result["fallback"]
            .as_str()
            .unwrap()
            .contains("not tagged by a data plane"),
        "{result}"
    );
    assert_eq!(
        (result["ok"].as_bool(), result["status"].as_u64()),
        (Some(false), Some(401)),
        "the control plane's own call: {result}"
    );
    assert_eq!(result["error_kind"], "credential_invalid", "{result}");
    drop(nats);

    // Nobody listening: the control plane calls at once and says so.
    let result = test_call(&cp, "d-good").await;
    assert_eq!(result["via"], "control_plane", "{result}");
    assert!(result["answered_by"].is_null(), "{result}");
    assert!(
        result["fallback"]
            .as_str()
            .unwrap()
            .contains("no data plane is listening"),
        "{result}"
    );
    assert_eq!(result["ok"], true, "{result}");
    // ... and cannot sign Bedrock.
    let result = test_call(&cp, "d-br").await;
    assert_eq!(result["ok"], false, "{result}");
    assert!(
        result["explanation"]
            .as_str()
            .unwrap()
            .contains("does not sign Bedrock"),
        "{result}"
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn a_lasting_upstream_error_shows_in_health_and_takes_the_deployment_out(pool: PgPool) {
    let c = start(pool).await;
    let refused = chat(&c.gw, &c.secret, "m-quota").await;
    assert_ne!(refused.status, StatusCode::OK, "{}", refused.text());
    assert_eq!(c.mock.request_count("fault=quota"), 1);
    let health = health_until(&c.cp, "d-quota", |h| !h["last_permanent_error"].is_null()).await;
    let error = &health["last_permanent_error"];
    assert_eq!(error["kind"], "quota_exhausted", "{health}");
    assert_eq!(error["status"], 429, "{health}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("You exceeded your current quota"),
        "{health}"
    );
    assert_eq!(health["breaker"], "open", "{health}");
    assert!(health["replicas"].as_u64().unwrap() >= 1, "{health}");

    // Out for longer than the 429's Retry-After (1 s): the upstream is not asked again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let again = chat(&c.gw, &c.secret, "m-quota").await;
    assert_ne!(again.status, StatusCode::OK);
    assert_eq!(
        c.mock.request_count("fault=quota"),
        1,
        "not retried as a passing 429"
    );

    let list = get(&c.cp, &c.cp.token, "/admin/v1/deployments/health").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text());
    let list = list.json();
    let by_id = |id: &str| {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["deployment_id"] == id)
            .unwrap_or_else(|| panic!("no {id} in {list}"))
            .clone()
    };
    assert_eq!(by_id("d-quota")["breaker"], "open");
    assert_eq!(by_id("d-good")["breaker"], "closed");
    roles(&c.cp).await;
}

/// USD per prompt or completion token of `d-capped`.
const TOKEN_USD: f64 = 0.0001;

#[sqlx::test(migrations = "../migrations")]
async fn caps_usage_counted_by_the_data_plane_shows_in_health(pool: PgPool) {
    let c = start(pool).await;
    let price = json!({"input_cost_per_token": TOKEN_USD, "output_cost_per_token": TOKEN_USD});
    let deployment = json!({"id": "d-capped", "model": "m-capped", "provider": "good",
        "upstream_model": "gpt-4o", "price": price,
        "caps": {"requests_per_day": 3, "usd_per_month": 100.0}});
    c.cp.write(Method::POST, "/admin/v1/deployments", deployment)
        .await;
    let fresh = health_until(&c.cp, "d-capped", |h| !h["caps"]["today"].is_null()).await;
    let caps = &fresh["caps"];
    assert_eq!(caps["requests_per_day"], 3, "{fresh}");
    assert_eq!(caps["usd_per_month"], 100.0, "{fresh}");
    assert!(caps["usd_per_day"].is_null(), "unlimited: {fresh}");
    assert_eq!(caps["today"]["requests"], 0, "{fresh}");
    assert!(caps["exhausted"].is_null(), "{fresh}");

    // Three chats (the first once the data plane has the deployment) use up the quota.
    let mut cost = 0.0;
    let started = Instant::now();
    let mut served = 0;
    while served < 3 {
        let reply = chat(&c.gw, &c.secret, "m-capped").await;
        if reply.status == StatusCode::OK {
            let usage = &reply.json()["usage"];
            let tokens = usage["prompt_tokens"].as_u64().unwrap()
                + usage["completion_tokens"].as_u64().unwrap();
            cost += tokens as f64 * TOKEN_USD;
            served += 1;
        } else {
            assert_eq!(served, 0, "{}", reply.text());
            assert!(started.elapsed() < Duration::from_secs(10), "never served");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let health = health_until(&c.cp, "d-capped", |h| {
        h["caps"]["today"]["requests"] == 3 && h["caps"]["this_month"]["requests"] == 3
    })
    .await;
    let caps = &health["caps"];
    assert_eq!(caps["exhausted"], "requests_per_day", "{health}");
    for period in ["today", "this_month"] {
        let usd = caps[period]["usd"].as_f64().unwrap();
        assert!(
            cost > 0.0 && (usd - cost).abs() < 1e-9,
            "{usd} vs {cost}: {health}"
        );
    }
    let list = get(&c.cp, &c.cp.token, "/admin/v1/deployments/health").await;
    let list = list.json();
    let of = |id: &str| {
        list["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["deployment_id"] == id)
            .unwrap_or_else(|| panic!("no {id} in {list}"))["caps"]
            .clone()
    };
    assert_eq!(of("d-capped")["exhausted"], "requests_per_day", "{list}");
    assert_eq!(of("d-capped")["today"]["requests"], 3, "{list}");
    assert!(of("d-good").is_null(), "no caps: {list}");
}

/// A viewer reads health but may not test; a tenant admin reads neither.
async fn roles(cp: &ControlPlane) {
    for (email, role, tenant) in [
        ("viewer@example.com", "viewer", None),
        ("acme-admin@example.com", "tenant_admin", Some("acme")),
    ] {
        let password = "a long enough password";
        cp.write(
            Method::POST,
            "/admin/v1/admins",
            json!({"email": email, "password": password, "role": role, "tenant_id": tenant}),
        )
        .await;
        let login = call(
            &cp.rest,
            Method::POST,
            "/admin/v1/auth/login",
            None,
            json!({"email": email, "password": password}),
        )
        .await;
        assert_eq!(login.status, StatusCode::OK, "{}", login.text());
        let token = login.json()["access_token"].as_str().unwrap().to_owned();
        let health = get(cp, &token, "/admin/v1/deployments/d-good/health").await;
        let test = call(
            &cp.rest,
            Method::POST,
            "/admin/v1/deployments/d-good/test",
            Some(&token),
            Value::Null,
        )
        .await;
        let reads = if role == "viewer" {
            StatusCode::OK
        } else {
            StatusCode::FORBIDDEN
        };
        assert_eq!(health.status, reads, "{role}: {}", health.text());
        assert_eq!(
            test.status,
            StatusCode::FORBIDDEN,
            "{role}: {}",
            test.text()
        );
    }
}
