//! Every error a client can meet has the right status and OpenAI's body shape, and bad input
//! changes nothing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use common::*;
use http::Method;

const CHAT: &str = "/v1/chat/completions";
const GOOD: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

async fn gateway_with(
    mock: &MockUpstream,
    scenario: &str,
    key_extra: &str,
    models: &str,
) -> Gateway {
    Gateway::start(&one_deployment(
        &mock.scenario_url(scenario),
        key_extra,
        models,
    ))
    .await
}

#[tokio::test]
async fn malformed_bodies_are_400_and_never_reach_upstream() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = gateway_with(&mock, "", "", "").await;
    let cases: &[(&str, Option<&str>)] = &[
        ("{not json", None),
        ("", None),
        ("[]", None),
        (r#"{"messages":[]}"#, Some("model")),
        (r#"{"model":7,"messages":[]}"#, Some("model")),
        (r#"{"model":"m","stream":"yes"}"#, Some("stream")),
        (r#"{"model":"m","max_tokens":"ten"}"#, Some("max_tokens")),
    ];
    for (body, param) in cases {
        let reply = post(&gw.url(CHAT), body).await;
        let e = reply.openai_error(400);
        assert_eq!(e["type"], "invalid_request_error", "{body}");
        assert_eq!(e["param"].as_str(), *param, "{body}: {e}");
        assert!(reply.headers.contains_key("x-request-id"));
    }
    assert_eq!(mock.request_count(""), 0, "nothing malformed was forwarded");
}

#[tokio::test]
async fn authentication_failures_are_401() {
    let mock = MockUpstream::start().await.unwrap();
    let config = config_yaml(
        &format!(
            "revision: 1
tenants: [{{ id: t1 }}, {{ id: t2, status: suspended }}]
virtual_keys:
  - {{ id: ok, tenant_id: t1, key_hash: \"{}\" }}
  - {{ id: expired, tenant_id: t1, key_hash: \"{}\", expires_at: 2020-01-01T00:00:00Z }}
  - {{ id: revoked, tenant_id: t1, key_hash: \"{}\", status: revoked }}
  - {{ id: suspended, tenant_id: t2, key_hash: \"{}\" }}
providers: [{{ id: up, kind: openai, base_url: \"{}\" }}]
deployments: [{{ id: d1, model: m, provider: up, upstream_model: u }}]
",
            key_hash("sk-ok"),
            key_hash("sk-expired"),
            key_hash("sk-revoked"),
            key_hash("sk-suspended"),
            mock.base_url()
        ),
        "",
    );
    let gw = Gateway::start(&config).await;
    let url = gw.url(CHAT);
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (vec![], "missing"),
        (vec![("authorization", "Bearer sk-wrong".into())], "invalid"),
        (vec![("authorization", "Basic c2stb2s=".into())], "missing"),
        (
            vec![("authorization", "Bearer sk-expired".into())],
            "expired",
        ),
        (
            vec![("authorization", "Bearer sk-revoked".into())],
            "revoked",
        ),
        (vec![("x-api-key", "sk-suspended".into())], "suspended"),
    ];
    for (headers, why) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let reply = send(request(Method::POST, &url, &headers, GOOD)).await;
        let e = reply.openai_error(401);
        assert_eq!(e["type"], "authentication_error", "{why}");
        assert!(
            e["message"].as_str().unwrap().contains(why),
            "{why}: {}",
            e["message"]
        );
        assert!(
            !reply.text().contains("sk-"),
            "no key material echoed: {}",
            reply.text()
        );
    }
    // The good key passes, by either header.
    let ok = send(request(Method::POST, &url, &[("x-api-key", "sk-ok")], GOOD)).await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(mock.request_count(""), 1);
}

#[tokio::test]
async fn models_the_key_may_not_use_are_403_and_unknown_models_404() {
    let mock = MockUpstream::start().await.unwrap();
    let config = config_yaml(
        &snapshot(
            ", allowed_models: [m]",
            &format!(
                "providers: [{{ id: up, kind: openai, base_url: \"{}\" }}]
deployments:
  - {{ id: d1, model: m, provider: up, upstream_model: u }}
  - {{ id: d2, model: other, provider: up, upstream_model: u }}
",
                mock.base_url()
            ),
        ),
        "",
    );
    let gw = Gateway::start(&config).await;
    let e = post(&gw.url(CHAT), r#"{"model":"other","messages":[]}"#)
        .await
        .openai_error(403);
    assert_eq!(e["type"], "permission_error");
    assert_eq!(e["param"], "model");
    let e = post(&gw.url(CHAT), r#"{"model":"gpt-9","messages":[]}"#)
        .await
        .openai_error(404);
    assert_eq!(e["code"], "model_not_found");
    assert_eq!(mock.request_count(""), 0);

    // The model list shows only what the key may use; retrieving another is a 404.
    let list = send(request(
        Method::GET,
        &gw.url("/v1/models"),
        &[("authorization", &format!("Bearer {KEY}"))],
        "",
    ))
    .await;
    let ids: Vec<String> = list.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec!["m"]);
    let other = send(request(
        Method::GET,
        &gw.url("/v1/models/other"),
        &[("authorization", &format!("Bearer {KEY}"))],
        "",
    ))
    .await;
    other.openai_error(404);
    let mine = send(request(
        Method::GET,
        &gw.url("/v1/models/m"),
        &[("authorization", &format!("Bearer {KEY}"))],
        "",
    ))
    .await;
    assert_eq!(mine.json()["id"], "m");
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_openai_shape() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = gateway_with(&mock, "", "", "").await;
    post(&gw.url("/v1/nope"), GOOD).await.openai_error(404);
    let reply = send(request(Method::GET, &gw.url(CHAT), &[], "")).await;
    reply.openai_error(405);
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_declared_or_not() {
    let mock = MockUpstream::start().await.unwrap();
    let config = one_deployment(&mock.base_url(), "", "").replacen(
        "server:\n",
        "server:\n  max_body_bytes: 1000\n",
        1,
    );
    let gw = Gateway::start(&config).await;
    let big = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(2000)
    );
    let e = post(&gw.url(CHAT), &big).await.openai_error(413);
    assert_eq!(e["code"], "request_too_large");

    // Without Content-Length (chunked), the limit holds while reading.
    let chunks: Vec<Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>> = (0..20)
        .map(|_| Ok(http_body::Frame::data(bytes::Bytes::from(vec![b' '; 100]))))
        .collect();
    let body = http_body_util::StreamBody::new(futures_util::stream::iter(chunks));
    let req = http::Request::builder()
        .method(Method::POST)
        .uri(gw.url(CHAT))
        .header("authorization", format!("Bearer {KEY}"))
        .body(body)
        .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let response = client.request(req).await.unwrap();
    assert_eq!(response.status(), 413);
    assert_eq!(mock.request_count(""), 0);

    // Just under the limit is fine.
    assert_eq!(post(&gw.url(CHAT), GOOD).await.status, 200);
}

#[tokio::test]
async fn key_rate_limits_are_429_with_retry_after_and_headers() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = gateway_with(&mock, "", ", limits: { rpm: 2 }", "").await;
    for remaining in ["1", "0"] {
        let ok = post(&gw.url(CHAT), GOOD).await;
        assert_eq!(ok.status, 200);
        assert_eq!(ok.headers["x-ratelimit-limit-requests"], "2");
        assert_eq!(ok.headers["x-ratelimit-remaining-requests"], remaining);
        assert!(ok.headers.contains_key("x-ratelimit-reset-requests"));
    }
    let limited = post(&gw.url(CHAT), GOOD).await;
    let e = limited.openai_error(429);
    assert_eq!(e["type"], "rate_limit_error");
    assert_eq!(e["code"], "rate_limit_exceeded");
    let retry: u64 = limited.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry), "retry-after {retry}");
    // The refusal carries OpenAI's headers too, for clients that back off by them.
    assert_eq!(limited.headers["x-ratelimit-limit-requests"], "2");
    assert_eq!(limited.headers["x-ratelimit-remaining-requests"], "0");
    let reset = limited.headers["x-ratelimit-reset-requests"]
        .to_str()
        .unwrap();
    assert!(reset.ends_with('s'), "reset {reset}");
    assert_eq!(
        mock.request_count(""),
        2,
        "the refused request was not forwarded"
    );
}

#[tokio::test]
async fn tenant_token_limits_count_the_estimate_then_the_real_usage() {
    let mock = MockUpstream::start().await.unwrap();
    // 100 tokens a minute; each request is estimated at body/4 + max_tokens, and settles at the
    // mock's real usage (19 + 10 = 29 tokens).
    let config = one_deployment(&mock.base_url(), "", "").replace(
        "tenants: [{ id: t1 }]",
        "tenants: [{ id: t1, limits: { tpm: 100 } }]",
    );
    let gw = Gateway::start(&config).await;
    let body = r#"{"model":"m","max_tokens":40,"messages":[]}"#; // ~11 + 40 estimated
    assert_eq!(post(&gw.url(CHAT), body).await.status, 200);
    // After settling at 29, 71 remain: a second request estimated at ~51 fits.
    assert_eq!(post(&gw.url(CHAT), body).await.status, 200);
    // 100 - 58 = 42 remain: the third estimate (~51) does not fit.
    let limited = post(&gw.url(CHAT), body).await;
    let e = limited.openai_error(429);
    assert!(
        e["message"].as_str().unwrap().contains("tenant tokens"),
        "{e}"
    );
    assert_eq!(limited.headers["x-ratelimit-limit-tokens"], "100");
    assert_eq!(limited.headers["x-ratelimit-remaining-tokens"], "0");
    assert!(limited.headers.contains_key("x-ratelimit-reset-tokens"));
}

#[tokio::test]
async fn upstream_failures_map_to_502_503_504() {
    let mock = MockUpstream::start().await.unwrap();
    let fast =
        "models: [{ model: m, retries: 0, timeouts: { first_byte_ms: 300, total_ms: 1000 } }]\n";

    let gw = gateway_with(&mock, "fault=500", "", fast).await;
    let e = post(&gw.url(CHAT), GOOD).await.openai_error(502);
    assert_eq!(e["type"], "api_error");

    let gw = gateway_with(&mock, "fault=malformed", "", fast).await;
    post(&gw.url(CHAT), GOOD).await.openai_error(502);

    let gw = gateway_with(&mock, "fault=reset", "", fast).await;
    post(&gw.url(CHAT), GOOD).await.openai_error(502);

    let gw = gateway_with(&mock, "fault=hang", "", fast).await;
    let started = std::time::Instant::now();
    post(&gw.url(CHAT), GOOD).await.openai_error(504);
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));

    // Nothing listens on port 9 (discard): connection refused.
    let gw = Gateway::start(&one_deployment("http://127.0.0.1:9/v1", "", fast)).await;
    post(&gw.url(CHAT), GOOD).await.openai_error(502);

    // A credential the upstream rejects is the gateway's problem, not the client's: 502, and
    // the client never sees the upstream's 401.
    let gw = gateway_with(&mock, "fault=401", "", fast).await;
    let reply = post(&gw.url(CHAT), GOOD).await;
    reply.openai_error(502);
    // ...and the deployment is taken out: the next request is 503 without reaching upstream.
    let before = mock.request_count("fault=401");
    let reply = post(&gw.url(CHAT), GOOD).await;
    reply.openai_error(503);
    assert!(reply.headers.contains_key("retry-after"));
    assert_eq!(mock.request_count("fault=401"), before);
}

#[tokio::test]
async fn upstream_rate_limits_surface_as_429_with_retry_after() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = gateway_with(
        &mock,
        "fault=429,retry_after=7",
        "",
        "models: [{ model: m, retries: 0 }]\n",
    )
    .await;
    let reply = post(&gw.url(CHAT), GOOD).await;
    reply.openai_error(429);
    assert_eq!(reply.headers["retry-after"], "7");
}

#[tokio::test]
async fn request_errors_from_upstream_pass_through_unretried() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = gateway_with(&mock, "fault=400", "", "").await;
    let reply = post(&gw.url(CHAT), GOOD).await;
    let e = reply.openai_error(400);
    assert_eq!(
        e["code"], "context_length_exceeded",
        "the upstream's own error body"
    );
    assert_eq!(
        mock.request_count("fault=400"),
        1,
        "a request error is not retried"
    );
}

#[tokio::test]
async fn not_ready_gateways_answer_503() {
    let config = Config::parse(&one_deployment("http://127.0.0.1:9/v1", "", ""), &[]).unwrap();
    let state = dataplane::build_state(
        &config.server,
        None,
        std::sync::Arc::new(dataplane::accounting::LogSink),
    )
    .unwrap();
    // No snapshot installed.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, dataplane::router(state))
            .await
            .unwrap()
    });
    post(&format!("http://{addr}{CHAT}"), GOOD)
        .await
        .openai_error(503);
    let ready = send(request(
        Method::GET,
        &format!("http://{addr}/readyz"),
        &[],
        "",
    ))
    .await;
    assert_eq!(ready.status, 503);
    let health = send(request(
        Method::GET,
        &format!("http://{addr}/healthz"),
        &[],
        "",
    ))
    .await;
    assert_eq!(health.status, 200);
}

use dataplane::config::Config;
