//! The exact response cache (`docs/response-cache.md`), end to end.
//!
//! Cluster: a control plane on its own database and NATS namespace, two data planes through
//! the real server entry point sharing one Redis (unique key prefix), the mock upstream.
//! - The same chat twice (through either replica): the second is a hit (`x-switchboard-cache`),
//!   the same body, no upstream call; its request-log row has cost 0, `cached_response` and
//!   the first one's cost as `saved_usd`; the spend report counts it and the saving.
//! - Another tenant sending the same body: a miss.
//! - A streamed hit is a valid SSE stream (OpenAI chunks up to `[DONE]`; Anthropic events up
//!   to `message_stop` on `/v1/messages`).
//! - `Cache-Control: no-store` is neither answered from nor stored; `no-cache` is not
//!   answered from.
//!
//! - A key's own cache policy, set through the admin API: its second identical chat on a model
//!   whose policy caches nothing is a hit (through the other replica); another key of the same
//!   tenant is not cached; a key with `enabled: false` is not cached on a caching model; `null`
//!   gives the model policy back the say.
//!
//! Standalone: the in-process store answers the second request; a model without a cache
//! policy says nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{ControlPlane, Served, call, served, unique_namespace};
use common::*;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;
use switchboard_tests::services::redis_url;

const OPENAI: &str = "chunks=6";

/// Tenants `acme` and `globex` with a key each; model `m` (OpenAI protocol, priced) and
/// `claude` (Anthropic) cache for 60 s; `plain` does not. Returns (acme's, globex's secret).
async fn configure(cp: &ControlPlane, mock: &MockUpstream) -> (String, String) {
    for tenant in ["acme", "globex"] {
        cp.write(Method::POST, "/admin/v1/tenants", json!({"id": tenant}))
            .await;
    }
    let providers = [
        ("up", "openai", mock.scenario_url(OPENAI)),
        ("claude-up", "anthropic", mock.base_url()),
    ];
    for (id, kind, url) in providers {
        cp.write(
            Method::POST,
            "/admin/v1/providers",
            json!({"id": id, "kind": kind, "base_url": url, "api_key": "sk-upstream-rc"}),
        )
        .await;
    }
    let price = json!({"input_cost_per_token": 2.5e-6, "output_cost_per_token": 1e-5});
    for (id, model, provider) in [
        ("d-m", "m", "up"),
        ("d-plain", "plain", "up"),
        ("d-claude", "claude", "claude-up"),
    ] {
        cp.write(
            Method::POST,
            "/admin/v1/deployments",
            json!({"id": id, "model": model, "provider": provider, "upstream_model": "gpt-4o",
                   "price": price}),
        )
        .await;
    }
    for model in ["m", "claude"] {
        let policy = cp
            .write(
                Method::PUT,
                &format!("/admin/v1/models/{model}"),
                json!({"cache": {"ttl_seconds": 60}}),
            )
            .await;
        assert_eq!(
            policy.json()["cache"]["ttl_seconds"],
            60,
            "{}",
            policy.text()
        );
    }
    let mut secrets = Vec::new();
    for tenant in ["acme", "globex"] {
        let key = cp
            .write(Method::POST, "/admin/v1/keys", json!({"tenant_id": tenant}))
            .await;
        secrets.push(key.json()["key"].as_str().unwrap().to_owned());
    }
    (secrets[0].clone(), secrets[1].clone())
}

/// Waits until `dp` serves `secret` with the cache policy in place (a model listing is not
/// logged; the policy is in the same snapshot as the key).
async fn until_served(dp: &Served, secret: &str) {
    let started = Instant::now();
    loop {
        let reply = send(request(
            Method::GET,
            &format!("{}/v1/models", dp.base),
            &[("authorization", &format!("Bearer {secret}"))],
            "",
        ))
        .await;
        if reply.status == StatusCode::OK && reply.text().contains("claude") {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "never served");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// POSTs `body` to `path` on `base` with `secret` and extra `headers`.
async fn post_as<B: std::fmt::Display + ?Sized>(
    base: &str,
    path: &str,
    secret: &str,
    headers: &[(&str, &str)],
    body: &B,
) -> Reply {
    let auth = format!("Bearer {secret}");
    let mut all = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    all.extend_from_slice(headers);
    send(request(
        Method::POST,
        &format!("{base}{path}"),
        &all,
        body.to_string(),
    ))
    .await
}

fn chat_body(model: &str, text: &str, stream: bool) -> Value {
    json!({"model": model, "max_tokens": 32, "stream": stream,
        "messages": [{"role": "user", "content": text}]})
}

fn cache_header(reply: &Reply) -> &str {
    reply
        .headers
        .get("x-switchboard-cache")
        .map_or("(none)", |v| v.to_str().unwrap())
}

fn gateway_id(reply: &Reply) -> String {
    reply.headers["x-switchboard-request-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// Sends `body` (as `secret`, through `base`) until the answer is a hit; returns it and how
/// many misses came first. A miss's answer is stored in the background just after its last
/// byte, so the next request may be quicker (and another miss).
async fn until_hit(base: &str, path: &str, secret: &str, body: &Value) -> (Reply, usize) {
    let started = Instant::now();
    // Anthropic's version header is part of the entry key: sent on `/v1/messages` only.
    let version = [("anthropic-version", "2023-06-01")];
    let headers: &[(&str, &str)] = if path == "/v1/messages" {
        &version
    } else {
        &[]
    };
    for misses in 0.. {
        let reply = post_as(base, path, secret, headers, body).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        if cache_header(&reply) == "hit" {
            return (reply, misses);
        }
        assert!(started.elapsed() < Duration::from_secs(5), "never a hit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unreachable!()
}

/// `/admin/v1/requests?{query}` once it holds at least `n` rows.
async fn until_rows(cp: &ControlPlane, query: &str, n: usize) -> Vec<Value> {
    let started = Instant::now();
    loop {
        let path = format!("/admin/v1/requests?{query}");
        let reply = call(&cp.rest, Method::GET, &path, Some(&cp.token), Value::Null).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let rows = reply.json()["data"].as_array().unwrap().clone();
        if rows.len() >= n {
            return rows;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "only {rows:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn row<'a>(rows: &'a [Value], id: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["request_id"] == id)
        .unwrap_or_else(|| panic!("no row {id} in {rows:?}"))
}

#[sqlx::test(migrations = "../migrations")]
async fn the_same_chat_twice_is_answered_from_the_cache_at_no_cost(pool: PgPool) {
    let namespace = unique_namespace();
    let mock = MockUpstream::start().await.unwrap();
    let cp = ControlPlane::start(pool.clone(), &namespace).await;
    let (acme, globex) = configure(&cp, &mock).await;
    let redis = format!(
        "redis:\n  url: {{ value: \"{}\" }}\n  key_prefix: \"rc{}\"\n",
        redis_url(),
        uuid::Uuid::now_v7().simple()
    );
    let (a, b) = (
        served(&namespace, &cp, &redis).await,
        served(&namespace, &cp, &redis).await,
    );
    for dp in [&a, &b] {
        until_served(dp, &acme).await;
        until_served(dp, &globex).await;
    }

    let body = chat_body("m", "What is the capital of France?", false);
    let first = post_as(&a.base, "/v1/chat/completions", &acme, &[], &body).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    assert_eq!(cache_header(&first), "miss");
    // The second, through the other replica: the shared store answers it, unchanged.
    let (second, misses) = until_hit(&b.base, "/v1/chat/completions", &acme, &body).await;
    assert_eq!(second.json(), first.json());
    assert!(second.headers.contains_key("age"));
    let calls = 1 + misses;
    assert_eq!(mock.request_count(OPENAI), calls, "a hit calls no upstream");
    // Key order, whitespace and `user` do not matter; the tenant does.
    let reordered = r#"{"messages": [{"content": "What is the capital of France?", "role": "user"}],
        "user": "u-9", "stream": false, "max_tokens": 32, "model": "m"}"#;
    let third = post_as(&a.base, "/v1/chat/completions", &acme, &[], reordered).await;
    assert_eq!(cache_header(&third), "hit", "{}", third.text());
    let other = post_as(&a.base, "/v1/chat/completions", &globex, &[], &body).await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.text());
    assert_eq!(cache_header(&other), "miss", "never across tenants");
    assert_eq!(mock.request_count(OPENAI), calls + 1);
    let plain = post_as(
        &a.base,
        "/v1/chat/completions",
        &acme,
        &[],
        &chat_body("plain", "x", false),
    )
    .await;
    assert!(!plain.headers.contains_key("x-switchboard-cache"));

    // The request log and spend show the hits at cost 0 with what they saved.
    let rows = until_rows(&cp, "tenant_id=acme&model=m", 3 + misses).await;
    let miss = row(&rows, &gateway_id(&first));
    let cost = miss["cost_usd"].as_f64().unwrap();
    assert!(cost > 0.0, "{miss}");
    assert_eq!(miss["cached_response"], false);
    for hit in [&second, &third] {
        let hit = row(&rows, &gateway_id(hit));
        assert_eq!(hit["cached_response"], true, "{hit}");
        assert_eq!(hit["cost_usd"], 0.0);
        assert_eq!(hit["saved_usd"].as_f64().unwrap(), cost);
        assert_eq!(hit["outcome"], "success");
        assert!(hit["deployment_id"].is_null());
    }
    let today = chrono::Utc::now().date_naive();
    let spend = format!("/admin/v1/spend?group_by=model&tenant_id=acme&from={today}&to={today}");
    let report = call(&cp.rest, Method::GET, &spend, Some(&cp.token), Value::Null).await;
    assert_eq!(report.status, StatusCode::OK, "{}", report.text());
    let data = report.json()["rows"].as_array().unwrap().clone();
    let acme_spend = data.iter().find(|r| r["group"] == "m").unwrap();
    assert_eq!(acme_spend["cached_responses"], 2, "{acme_spend}");
    let saved = acme_spend["saved_usd"].as_f64().unwrap();
    assert!((saved - 2.0 * cost).abs() < 1e-12, "{acme_spend}");
    let paid = acme_spend["cost_usd"].as_f64().unwrap();
    assert!((paid - calls as f64 * cost).abs() < 1e-12, "{acme_spend}");

    streams_are_replayed_as_sse(&a, &b, &acme).await;
    no_store_and_no_cache_are_honoured(&a, &acme, &mock).await;
}

/// A streamed chat and a streamed Anthropic message: the hit is the same, valid event stream.
async fn streams_are_replayed_as_sse(a: &Served, b: &Served, secret: &str) {
    let body = chat_body("m", "Stream me a story", true);
    let first = post_as(&a.base, "/v1/chat/completions", secret, &[], &body).await;
    assert_eq!(cache_header(&first), "miss");
    let (hit, _) = until_hit(&b.base, "/v1/chat/completions", secret, &body).await;
    assert!(
        hit.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert_eq!(hit.text(), first.text());
    let data = sse_data(hit.text().as_bytes());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"), "{data:?}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(
        chunks.len() > 1
            && chunks
                .iter()
                .all(|c| c["object"] == "chat.completion.chunk")
    );

    let anthropic = json!({"model": "claude", "max_tokens": 32, "stream": true,
        "messages": [{"role": "user", "content": "Stream me a poem"}]});
    let headers = [("anthropic-version", "2023-06-01")];
    let first = post_as(&a.base, "/v1/messages", secret, &headers, &anthropic).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    assert_eq!(cache_header(&first), "miss");
    let (hit, _) = until_hit(&b.base, "/v1/messages", secret, &anthropic).await;
    assert_eq!(hit.text(), first.text());
    let text = hit.text();
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(events.first(), Some(&"message_start"), "{events:?}");
    assert_eq!(events.last(), Some(&"message_stop"), "{events:?}");
}

/// `no-store`: not answered from the cache, and its answer is not kept; `no-cache`: not
/// answered from it either; `x-switchboard-cache: bypass` like `no-store`.
async fn no_store_and_no_cache_are_honoured(dp: &Served, secret: &str, mock: &MockUpstream) {
    let body = chat_body("m", "Do not keep this", false);
    let path = "/v1/chat/completions";
    let calls = mock.request_count(OPENAI);
    let kept_not = post_as(
        &dp.base,
        path,
        secret,
        &[("cache-control", "no-store")],
        &body,
    )
    .await;
    assert_eq!(cache_header(&kept_not), "bypass");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let next = post_as(&dp.base, path, secret, &[], &body).await;
    assert_eq!(cache_header(&next), "miss", "a no-store answer was stored");
    let (_, misses) = until_hit(&dp.base, path, secret, &body).await;
    let fresh = post_as(
        &dp.base,
        path,
        secret,
        &[("cache-control", "no-cache")],
        &body,
    )
    .await;
    assert_eq!(cache_header(&fresh), "bypass");
    let ours = post_as(
        &dp.base,
        path,
        secret,
        &[("x-switchboard-cache", "bypass")],
        &body,
    )
    .await;
    assert_eq!(cache_header(&ours), "bypass");
    assert_eq!(mock.request_count(OPENAI), calls + 4 + misses);
}

/// A new key of `acme` with `cache` as its own policy: (id, secret).
async fn key_with_cache(cp: &ControlPlane, cache: Value) -> (String, String) {
    let body = json!({"tenant_id": "acme", "cache": cache});
    let key = cp.write(Method::POST, "/admin/v1/keys", body).await.json();
    for (field, value) in cache.as_object().unwrap() {
        assert_eq!(&key["cache"][field], value, "{key}");
    }
    let text = |field: &str| key[field].as_str().unwrap().to_owned();
    (text("id"), text("key"))
}

#[sqlx::test(migrations = "../migrations")]
async fn a_keys_own_cache_policy_set_through_the_admin_api_is_honoured(pool: PgPool) {
    let namespace = unique_namespace();
    let mock = MockUpstream::start().await.unwrap();
    let cp = ControlPlane::start(pool.clone(), &namespace).await;
    let (uncached, _) = configure(&cp, &mock).await;
    let (caching_id, caching) = key_with_cache(&cp, json!({"ttl_seconds": 60})).await;
    let (_, off) = key_with_cache(&cp, json!({"enabled": false})).await;
    let redis = format!(
        "redis:\n  url: {{ value: \"{}\" }}\n  key_prefix: \"rck{}\"\n",
        redis_url(),
        uuid::Uuid::now_v7().simple()
    );
    let (a, b) = (
        served(&namespace, &cp, &redis).await,
        served(&namespace, &cp, &redis).await,
    );
    for dp in [&a, &b] {
        for secret in [&uncached, &caching, &off] {
            until_served(dp, secret).await;
        }
    }
    let path = "/v1/chat/completions";
    // `plain`'s policy caches nothing: the key's own policy does.
    let body = chat_body("plain", "Cached for this key", false);
    let first = post_as(&a.base, path, &caching, &[], &body).await;
    assert_eq!(cache_header(&first), "miss", "{}", first.text());
    let (hit, misses) = until_hit(&b.base, path, &caching, &body).await;
    assert_eq!(hit.json(), first.json());
    let other = post_as(&a.base, path, &uncached, &[], &body).await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.text());
    assert_eq!(cache_header(&other), "(none)", "another key is not cached");
    assert_eq!(mock.request_count(OPENAI), 2 + misses);
    // `m`'s policy caches; the key with `enabled: false` turns it off for itself.
    let m = chat_body("m", "Never cached for this key", false);
    for _ in 0..2 {
        let reply = post_as(&a.base, path, &off, &[], &m).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(cache_header(&reply), "(none)");
    }
    assert_eq!(mock.request_count(OPENAI), 4 + misses);

    // `null` clears the key's policy: `plain` is no longer cached for it.
    let uri = format!("/admin/v1/keys/{caching_id}");
    let cleared = cp.write(Method::PATCH, &uri, json!({"cache": null})).await;
    assert!(cleared.json().get("cache").is_none(), "{}", cleared.text());
    let started = Instant::now();
    loop {
        let reply = post_as(&a.base, path, &caching, &[], &body).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        if cache_header(&reply) == "(none)" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "still cached");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn standalone_gateways_cache_in_process() {
    let mock = MockUpstream::start().await.unwrap();
    let config = with_deployment_fields(
        &one_deployment(
            &mock.scenario_url("chunks=7"),
            "",
            "models:\n  - { model: m, cache: { ttl_seconds: 30 } }",
        ),
        "price: { input_cost_per_token: 0.000001, output_cost_per_token: 0.000002 }",
    );
    let gw = Gateway::start(&config).await;
    let body = chat_body("m", "hello", false);
    let first = post_as(&gw.url(""), "/v1/chat/completions", KEY, &[], &body).await;
    assert_eq!(cache_header(&first), "miss", "{}", first.text());
    let (hit, _) = until_hit(&gw.url(""), "/v1/chat/completions", KEY, &body).await;
    assert_eq!(hit.json(), first.json());
    let records = gw.usage_records(2).await;
    let miss = records.iter().find(|r| !r.cached_response).unwrap();
    let cached = records.iter().find(|r| r.cached_response).unwrap();
    assert!(miss.cost_usd > 0.0);
    assert_eq!(cached.cost_usd, 0.0);
    assert_eq!(cached.saved_usd, miss.cost_usd);
    assert_eq!(cached.attempts, 0);
    let metrics = send(request(Method::GET, &gw.url("/metrics"), &[], "")).await;
    let text = metrics.text();
    assert!(
        text.contains(r#"switchboard_response_cache_lookups_total{model="m",result="hit"}"#),
        "{text}"
    );
}
