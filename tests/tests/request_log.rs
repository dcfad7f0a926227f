//! The request log, end to end: a data plane in cluster mode (the real server entry point, with
//! its usage publisher) → JetStream → the control plane's ingestion → `request_log` →
//! `GET /admin/v1/requests`.
//!
//! - A success, an upstream 500 after retries (every attempt in the timeline) and a request the
//!   gateway refused (429, tenant budget) each leave exactly one row; an unauthenticated one
//!   leaves none.
//! - Filters (client request id text, status, model) and the cursor pages work.
//! - A tenant admin sees only its own tenant's requests: another tenant's is "not found".
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{ControlPlane, call, unique_namespace};
use common::*;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::PgPool;

type DataPlane = common::cluster::Served;

async fn data_plane(namespace: &str, cp: &ControlPlane) -> DataPlane {
    common::cluster::served(namespace, cp, "").await
}

/// A chat for `model` with `secret` (and the client's `x-request-id`, if given).
async fn chat(dp: &DataPlane, secret: &str, model: &str, client_id: Option<&str>) -> Reply {
    let auth = format!("Bearer {secret}");
    let mut headers = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    if let Some(id) = client_id {
        headers.push(("x-request-id", id));
    }
    let body = json!({"model": model, "max_tokens": 32,
        "messages": [{"role": "user", "content": "hello"}]});
    send(request(
        Method::POST,
        &format!("{}/v1/chat/completions", dp.base),
        &headers,
        body.to_string(),
    ))
    .await
}

/// Waits until `secret` is served by the data plane (a model listing, which is not logged).
async fn until_served(dp: &DataPlane, secret: &str) {
    let started = Instant::now();
    loop {
        let reply = send(request(
            Method::GET,
            &format!("{}/v1/models", dp.base),
            &[("authorization", &format!("Bearer {secret}"))],
            "",
        ))
        .await;
        if reply.status == StatusCode::OK && reply.text().contains("m-bad") {
            return;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "never served");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Lists `/admin/v1/requests?{query}` as `token` until it holds `n` rows (or 15 s pass).
async fn until_rows(cp: &ControlPlane, token: &str, query: &str, n: usize) -> Value {
    let started = Instant::now();
    loop {
        let path = format!("/admin/v1/requests?{query}");
        let reply = call(&cp.rest, Method::GET, &path, Some(token), Value::Null).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let page = reply.json();
        if page["data"].as_array().unwrap().len() >= n {
            return page;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "only {page} after 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Tenants `acme` and `poor` (a budget nothing fits in); model `m` answers, model `m-bad`'s two
/// deployments answer 500 to everything. Returns (acme's secret, poor's secret).
async fn configure(cp: &ControlPlane, mock: &MockUpstream) -> (String, String) {
    cp.write(Method::POST, "/admin/v1/tenants", json!({"id": "acme"}))
        .await;
    cp.write(
        Method::POST,
        "/admin/v1/tenants",
        json!({"id": "poor", "budget": {"max_usd": 1e-9}}),
    )
    .await;
    let bad = mock.scenario_url("fault=500");
    for (id, url) in [("up", mock.base_url()), ("bad", bad)] {
        cp.write(
            Method::POST,
            "/admin/v1/providers",
            json!({"id": id, "kind": "openai", "base_url": url, "api_key": "sk-upstream-log"}),
        )
        .await;
    }
    let price = json!({"input_cost_per_token": 2.5e-6, "output_cost_per_token": 1e-5});
    for (id, model, provider) in [
        ("d-ok", "m", "up"),
        ("d-bad1", "m-bad", "bad"),
        ("d-bad2", "m-bad", "bad"),
    ] {
        cp.write(
            Method::POST,
            "/admin/v1/deployments",
            json!({"id": id, "model": model, "provider": provider, "upstream_model": "gpt-4o",
                   "price": price}),
        )
        .await;
    }
    let mut secrets = Vec::new();
    for tenant in ["acme", "poor"] {
        let key = cp
            .write(Method::POST, "/admin/v1/keys", json!({"tenant_id": tenant}))
            .await;
        secrets.push(key.json()["key"].as_str().unwrap().to_owned());
    }
    (secrets[0].clone(), secrets[1].clone())
}

fn row<'a>(page: &'a Value, id: &str) -> &'a Value {
    page["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["request_id"] == id)
        .unwrap_or_else(|| panic!("no row {id} in {page}"))
}

fn gateway_id(reply: &Reply) -> String {
    reply.headers["x-switchboard-request-id"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[sqlx::test(migrations = "../migrations")]
async fn successes_failures_and_refusals_are_logged_with_their_attempts(pool: PgPool) {
    let namespace = unique_namespace();
    let mock = MockUpstream::start().await.unwrap();
    let cp = ControlPlane::start(pool.clone(), &namespace).await;
    let (acme, poor) = configure(&cp, &mock).await;
    let dp = data_plane(&namespace, &cp).await;
    until_served(&dp, &acme).await;
    until_served(&dp, &poor).await;

    let ok = chat(&dp, &acme, "m", Some("client-ok-1")).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    let failed = chat(&dp, &acme, "m-bad", Some("client-bad-1")).await;
    assert_eq!(failed.status, StatusCode::BAD_GATEWAY, "{}", failed.text());
    // The budget admits a request while nothing is spent yet; once spent, it refuses.
    let mut poor_requests = 0;
    let refused = loop {
        let reply = chat(&dp, &poor, "m", None).await;
        poor_requests += 1;
        if reply.status != StatusCode::OK || poor_requests == 5 {
            break reply;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        refused.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        refused.text()
    );
    let total = 2 + poor_requests;
    let unauthenticated = chat(&dp, "sk-not-a-key", "m", None).await;
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);

    until_rows(&cp, &cp.token, "", total).await;
    // Give a stray extra row (the 401) time to arrive, then count again.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let page = until_rows(&cp, &cp.token, "", total).await;
    assert_eq!(page["data"].as_array().unwrap().len(), total, "{page}");

    let ok_row = row(&page, &gateway_id(&ok));
    assert_eq!(ok_row["outcome"], "success");
    assert_eq!(ok_row["status"], 200);
    assert_eq!(ok_row["tenant_id"], "acme");
    assert_eq!(ok_row["client_request_id"], "client-ok-1");
    assert_eq!(ok_row["deployment_id"], "d-ok");
    assert!(ok_row["error_kind"].is_null());
    assert!(ok_row["prompt_tokens"].as_i64().unwrap() > 0);
    assert!(ok_row["cost_usd"].as_f64().unwrap() > 0.0);
    let attempts = ok_row["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 1, "{ok_row}");
    assert_eq!(attempts[0]["deployment_id"], "d-ok");
    assert_eq!(attempts[0]["status"], 200);

    let bad_row = row(&page, &gateway_id(&failed));
    assert_eq!(bad_row["outcome"], "upstream_error");
    assert_eq!(bad_row["status"], 502);
    assert_eq!(bad_row["error_kind"], "upstream_failed");
    let attempts = bad_row["attempts"].as_array().unwrap();
    assert_eq!(attempts.len(), 3, "1 + 2 retries: {bad_row}");
    for a in attempts {
        assert!(
            a["deployment_id"].as_str().unwrap().starts_with("d-bad"),
            "{a}"
        );
        assert_eq!(a["status"], 502, "{a}");
        assert_eq!(a["error_kind"], "upstream_failed", "{a}");
    }

    let refused_row = row(&page, &gateway_id(&refused));
    assert_eq!(refused_row["outcome"], "refused");
    assert_eq!(refused_row["status"], 429);
    assert_eq!(refused_row["error_kind"], "budget_exceeded");
    assert_eq!(refused_row["tenant_id"], "poor");
    assert_eq!(refused_row["model"], "m");
    assert_eq!(refused_row["attempts"], json!([]));
    assert_eq!(refused_row["cost_usd"], 0.0);

    // One request, with its timeline.
    let path = format!("/admin/v1/requests/{}", gateway_id(&failed));
    let one = call(&cp.rest, Method::GET, &path, Some(&cp.token), Value::Null).await;
    assert_eq!(one.status, StatusCode::OK, "{}", one.text());
    assert_eq!(one.json()["attempts"].as_array().unwrap().len(), 3);
    assert!(one.json()["content"].is_null(), "no tenant opted in");

    // Filters.
    let found = until_rows(&cp, &cp.token, "q=ok-1", 1).await;
    assert_eq!(found["data"].as_array().unwrap().len(), 1, "{found}");
    assert_eq!(found["data"][0]["request_id"], gateway_id(&ok).as_str());
    let by_status = until_rows(&cp, &cp.token, "status=429", 1).await;
    assert_eq!(by_status["data"].as_array().unwrap().len(), 1);
    let by_deployment = until_rows(&cp, &cp.token, "deployment_id=d-ok&tenant_id=acme", 1).await;
    assert_eq!(by_deployment["data"].as_array().unwrap().len(), 1);
    let bad_query = call(
        &cp.rest,
        Method::GET,
        "/admin/v1/requests?limit=0",
        Some(&cp.token),
        Value::Null,
    )
    .await;
    assert_eq!(bad_query.status, StatusCode::UNPROCESSABLE_ENTITY);

    pages_cover_every_row_once(&cp, total).await;
    let (acme_id, poor_id) = (gateway_id(&ok), gateway_id(&refused));
    tenant_admins_see_only_their_tenant(&cp, &acme_id, &poor_id, poor_requests).await;
}

/// `limit=1` pages, followed by their cursors: every row once, newest first, then no cursor.
async fn pages_cover_every_row_once(cp: &ControlPlane, total: usize) {
    let mut seen = Vec::new();
    let mut query = "limit=1".to_owned();
    loop {
        let page = until_rows(cp, &cp.token, &query, 1).await;
        let data = page["data"].as_array().unwrap();
        assert_eq!(data.len(), 1);
        seen.push((
            data[0]["started_at"].as_str().unwrap().to_owned(),
            data[0]["request_id"].as_str().unwrap().to_owned(),
        ));
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("limit=1&cursor={cursor}"),
            None => break,
        }
        assert!(seen.len() <= total, "more pages than rows: {seen:?}");
    }
    assert_eq!(seen.len(), total, "{seen:?}");
    let mut sorted = seen.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    sorted.dedup();
    assert_eq!(sorted.len(), total, "a row twice: {seen:?}");
    assert_eq!(sorted, seen, "newest first");
    let bad = call(
        &cp.rest,
        Method::GET,
        "/admin/v1/requests?cursor=nonsense",
        Some(&cp.token),
        Value::Null,
    )
    .await;
    assert_eq!(
        bad.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        bad.text()
    );
}

async fn tenant_admins_see_only_their_tenant(
    cp: &ControlPlane,
    acme_id: &str,
    poor_id: &str,
    poor_rows: usize,
) {
    let email = "poor-admin@example.com";
    let password = "a long enough password";
    cp.write(
        Method::POST,
        "/admin/v1/admins",
        json!({"email": email, "password": password, "role": "tenant_admin", "tenant_id": "poor"}),
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
    let page = until_rows(cp, &token, "tenant_id=acme", 0).await;
    let ids: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["request_id"].as_str().unwrap())
        .collect();
    assert!(ids.is_empty(), "asking for acme's rows gives none: {ids:?}");
    let own = until_rows(cp, &token, "", poor_rows).await;
    let own = own["data"].as_array().unwrap();
    assert_eq!(own.len(), poor_rows, "{own:?}");
    assert!(own.iter().all(|r| r["tenant_id"] == "poor"), "{own:?}");
    assert_eq!(own[0]["request_id"], poor_id, "the refusal is the newest");
    let other = format!("/admin/v1/requests/{acme_id}");
    let hidden = call(&cp.rest, Method::GET, &other, Some(&token), Value::Null).await;
    assert_eq!(hidden.status, StatusCode::NOT_FOUND, "{}", hidden.text());
}

/// `GET /admin/v1/requests/{id}` as the platform admin until it answers 200 (the row arrives
/// through the usage pipeline).
async fn detail(cp: &ControlPlane, id: &str) -> Value {
    let started = Instant::now();
    loop {
        let path = format!("/admin/v1/requests/{id}");
        let reply = call(&cp.rest, Method::GET, &path, Some(&cp.token), Value::Null).await;
        if reply.status == StatusCode::OK {
            return reply.json();
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{}",
            reply.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[sqlx::test(migrations = "../migrations")]
async fn content_is_captured_only_for_the_tenant_that_opted_in(pool: PgPool) {
    let namespace = unique_namespace();
    let mock = MockUpstream::start().await.unwrap();
    let cp = ControlPlane::start(pool.clone(), &namespace).await;
    let (acme, poor) = configure(&cp, &mock).await;
    let reply = cp
        .write(
            Method::PUT,
            "/admin/v1/tenants/acme",
            json!({"capture_content": true}),
        )
        .await;
    assert_eq!(reply.json()["capture_content"], true);
    let dp = data_plane(&namespace, &cp).await;
    // The PUT came before the data plane started: it serves it once it reaches its revision.
    until_served(&dp, &acme).await;
    common::cluster::until_revision(&dp.base, common::cluster::written_revision(&reply)).await;

    let captured = chat(&dp, &acme, "m", Some("capture-1")).await;
    assert_eq!(captured.status, StatusCode::OK, "{}", captured.text());
    let body = json!({"model": "m", "stream": true,
        "messages": [{"role": "user", "content": "stream me"}]});
    let auth = format!("Bearer {acme}");
    let streamed = send(request(
        Method::POST,
        &format!("{}/v1/chat/completions", dp.base),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    ))
    .await;
    assert_eq!(streamed.status, StatusCode::OK);
    let other = chat(&dp, &poor, "m", Some("not-captured-1")).await;

    let row = detail(&cp, &gateway_id(&captured)).await;
    let content = &row["content"];
    assert!(
        content["prompt"].as_str().unwrap().contains("\"hello\""),
        "{row}"
    );
    assert!(
        content["completion"]
            .as_str()
            .unwrap()
            .contains("Hello! How can I assist you today?"),
        "{row}"
    );
    assert_eq!(content["truncated"], false, "{row}");
    let row = detail(&cp, &gateway_id(&streamed)).await;
    let content = &row["content"];
    assert!(
        content["prompt"].as_str().unwrap().contains("stream me"),
        "{row}"
    );
    let completion = content["completion"].as_str().unwrap();
    assert!(
        completion.contains("tok0") && completion.contains("[DONE]"),
        "{row}"
    );
    let row = detail(&cp, &gateway_id(&other)).await;
    assert!(
        row["content"].is_null(),
        "another tenant's content is never kept: {row}"
    );
}
