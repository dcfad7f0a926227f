//! Retries, fallbacks, cooldowns, deployment limits, and what reaches the upstream.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use common::*;
use switchboard_shared::usage::Outcome;

const CHAT: &str = "/v1/chat/completions";
const GOOD: &str =
    r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0.25,"n":1}"#;

/// Two providers for model `m` (weights 1:1) and a `backup` model.
fn two_deployments(mock: &MockUpstream, a: &str, b: &str, policy: &str) -> String {
    config_yaml(
        &snapshot(
            "",
            &format!(
                "providers:
  - {{ id: pa, kind: openai, base_url: \"{}\" }}
  - {{ id: pb, kind: openai, base_url: \"{}\" }}
  - {{ id: pc, kind: openai, base_url: \"{}\" }}
deployments:
  - {{ id: da, model: m, provider: pa, upstream_model: ua }}
  - {{ id: db, model: m, provider: pb, upstream_model: ub }}
  - {{ id: dc, model: backup, provider: pc, upstream_model: uc }}
models:
  - {{ model: m, {policy} }}
",
                mock.scenario_url(a),
                mock.scenario_url(b),
                mock.scenario_url("cached=3")
            ),
        ),
        "",
    )
}

#[tokio::test]
async fn the_body_reaches_upstream_untouched_but_for_the_model() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&one_deployment(&mock.base_url(), "", "")).await;
    let reply = post(&gw.url(CHAT), GOOD).await;
    assert_eq!(reply.status, 200);
    let sent = &mock.requests("")[0];
    assert_eq!(
        std::str::from_utf8(&sent.body).unwrap(),
        GOOD.replacen(r#""model":"m""#, r#""model":"up-model""#, 1)
    );
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(
        sent.headers["x-request-id"], reply.headers["x-request-id"],
        "the request id travels upstream"
    );
    // The client's own request id is kept.
    let mine = send(request(
        http::Method::POST,
        &gw.url(CHAT),
        &[
            ("authorization", &format!("Bearer {KEY}")),
            ("x-request-id", "client-id-42"),
        ],
        GOOD,
    ))
    .await;
    assert_eq!(mine.headers["x-request-id"], "client-id-42");
    let record = &gw.usage_records(2).await[1];
    assert_eq!(record.client_request_id.as_deref(), Some("client-id-42"));
    assert_eq!(
        record.request_id, mine.headers["x-switchboard-request-id"],
        "the record's id is the gateway's"
    );
}

#[tokio::test]
async fn repeated_client_request_ids_never_merge_usage_records() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&one_deployment(&mock.base_url(), "", "")).await;
    let mut gateway_ids = std::collections::HashSet::new();
    for _ in 0..5 {
        let reply = send(request(
            http::Method::POST,
            &gw.url(CHAT),
            &[
                ("authorization", &format!("Bearer {KEY}")),
                ("x-request-id", "same-every-time"),
            ],
            GOOD,
        ))
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.headers["x-request-id"], "same-every-time");
        let gateway_id = reply.headers["x-switchboard-request-id"].to_str().unwrap();
        gateway_ids.insert(gateway_id.to_owned());
    }
    let records = gw.usage_records(5).await;
    assert_eq!(records.len(), 5);
    // Five records with five ids (the idempotency key: the JetStream `Nats-Msg-Id`), each with
    // the client's id beside it.
    let ids: std::collections::HashSet<_> = records.iter().map(|r| r.request_id.clone()).collect();
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert_eq!(ids, gateway_ids, "the answers name the records");
    assert!(ids.iter().all(|id| id != "same-every-time"));
    for r in &records {
        assert_eq!(r.client_request_id.as_deref(), Some("same-every-time"));
    }
    // Upstream sees the gateway's id, never the client's.
    for sent in mock.requests("") {
        let upstream_id = sent.headers["x-request-id"].to_str().unwrap();
        assert!(ids.contains(upstream_id), "{upstream_id}");
    }
}

#[tokio::test]
async fn usage_and_cost_are_recorded_from_the_answer() {
    let mock = MockUpstream::start().await.unwrap();
    let config = with_deployment_fields(
        &one_deployment(&mock.scenario_url("cached=4"), "", ""),
        "price: { input_cost_per_token: 2.5e-06, output_cost_per_token: 1.0e-05, cache_read_input_token_cost: 1.25e-06 }",
    );
    let gw = Gateway::start(&config).await;
    let reply = post(&gw.url(CHAT), GOOD).await;
    assert_eq!(reply.status, 200);
    let r = &gw.usage_records(1).await[0];
    assert_eq!(r.outcome, Outcome::Success);
    assert_eq!(r.usage.prompt_tokens, 19);
    assert_eq!(r.usage.completion_tokens, 10);
    assert_eq!(r.usage.cached_read_tokens, 4);
    // 15 uncached × 2.5e-6 + 4 cached × 1.25e-6 + 10 × 1e-5
    let expected = 15.0 * 2.5e-6 + 4.0 * 1.25e-6 + 10.0 * 1e-5;
    assert!(
        (r.cost_usd - expected).abs() < 1e-15,
        "{} vs {expected}",
        r.cost_usd
    );
    assert_eq!((r.tenant_id.as_str(), r.key_id.as_str()), ("t1", "k1"));
    assert_eq!(r.deployment_id.as_deref(), Some("d1"));
}

#[tokio::test]
async fn a_failing_deployment_is_retried_on_the_other() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&two_deployments(
        &mock,
        "fault=500",
        "cached=1",
        "retries: 1",
    ))
    .await;
    for _ in 0..6 {
        let reply = post(&gw.url(CHAT), GOOD).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(
        mock.request_count("cached=1"),
        6,
        "every request ended on the healthy one"
    );
    assert_eq!(mock.request_count("cached=3"), 0);
}

#[tokio::test]
async fn when_every_deployment_fails_the_fallback_model_answers() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&two_deployments(
        &mock,
        "fault=500",
        "fault=503",
        "retries: 1, fallbacks: [backup]",
    ))
    .await;
    let reply = post(&gw.url(CHAT), GOOD).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        mock.request_count("fault=500") + mock.request_count("fault=503"),
        2
    );
    assert_eq!(mock.request_count("cached=3"), 1);
    let sent: serde_json::Value =
        serde_json::from_slice(&mock.requests("cached=3")[0].body).unwrap();
    assert_eq!(
        sent["model"], "uc",
        "the fallback deployment's upstream name"
    );
    let r = &gw.usage_records(1).await[0];
    assert_eq!((r.attempts, r.deployment_id.as_deref()), (3, Some("dc")));
}

#[tokio::test]
async fn a_failing_deployment_cools_down_and_is_skipped() {
    let mock = MockUpstream::start().await.unwrap();
    let policy = "retries: 1, cooldown: { allowed_failures: 2, seconds: 60 }";
    let gw = Gateway::start(&two_deployments(&mock, "fault=500", "cached=1", policy)).await;
    for _ in 0..20 {
        assert_eq!(post(&gw.url(CHAT), GOOD).await.status, 200);
    }
    // Two consecutive failures put it in cooldown; after that no request reaches it.
    assert_eq!(mock.request_count("fault=500"), 2);
    assert_eq!(mock.request_count("cached=1"), 20);
}

#[tokio::test]
async fn an_upstream_429_cools_the_deployment_at_once() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&two_deployments(
        &mock,
        "fault=429,retry_after=30",
        "cached=1",
        "retries: 1",
    ))
    .await;
    for _ in 0..10 {
        assert_eq!(post(&gw.url(CHAT), GOOD).await.status, 200);
    }
    assert!(mock.request_count("fault=429,retry_after=30") <= 1);
}

#[tokio::test]
async fn a_deployment_over_its_own_rpm_is_skipped() {
    let mock = MockUpstream::start().await.unwrap();
    let config = two_deployments(
        &mock,
        "cached=1",
        "cached=2",
        "strategy: priority, retries: 0",
    )
    .replace(
        "upstream_model: ua }",
        "upstream_model: ua, priority: 0, limits: { rpm: 3 } }",
    )
    .replace("upstream_model: ub }", "upstream_model: ub, priority: 1 }");
    let gw = Gateway::start(&config).await;
    for _ in 0..5 {
        assert_eq!(post(&gw.url(CHAT), GOOD).await.status, 200);
    }
    assert_eq!(
        mock.request_count("cached=1"),
        3,
        "priority 0 until its limit"
    );
    assert_eq!(mock.request_count("cached=2"), 2);
}

#[tokio::test]
async fn embeddings_and_completions_are_forwarded() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&one_deployment(&mock.base_url(), "", "")).await;
    let e = post(
        &gw.url("/v1/embeddings"),
        r#"{"model":"m","input":"hello"}"#,
    )
    .await;
    assert_eq!(e.status, 200);
    assert_eq!(e.json()["data"][0]["object"], "embedding");
    let c = post(
        &gw.url("/v1/completions"),
        r#"{"model":"m","prompt":"hello"}"#,
    )
    .await;
    assert_eq!(c.status, 200);
    assert_eq!(c.json()["object"], "text_completion");
    let paths: Vec<String> = mock.requests("").iter().map(|r| r.path.clone()).collect();
    assert_eq!(paths, vec!["/v1/embeddings", "/v1/completions"]);
    let records = gw.usage_records(2).await;
    assert_eq!(records[0].usage.prompt_tokens, 8);
    assert_eq!(records[0].endpoint, "embeddings");
}

#[tokio::test]
async fn pooled_connections_survive_an_upstream_restart() {
    let mock = MockUpstream::start().await.unwrap();
    let addr = mock.addr();
    let gw = Gateway::start(&one_deployment(
        &mock.base_url(),
        "",
        "models: [{ model: m, retries: 0 }]\n",
    ))
    .await;
    assert_eq!(post(&gw.url(CHAT), GOOD).await.status, 200);
    assert_eq!(post(&gw.url(CHAT), GOOD).await.status, 200);
    // The upstream goes away with the gateway's idle connections, and comes back on the same
    // port: the next request must not fail on a dead pooled connection.
    drop(mock);
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let mock = MockUpstream::start_on(addr).await.unwrap();
    for _ in 0..3 {
        let reply = post(&gw.url(CHAT), GOOD).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
    }
    assert_eq!(mock.request_count(""), 3);
}

#[tokio::test]
async fn connections_are_reused() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&one_deployment(&mock.base_url(), "", "")).await;
    for _ in 0..5 {
        assert_eq!(post(&gw.url(CHAT), GOOD).await.status, 200);
    }
    let (_, _, frames, _) = post_timed(&gw.url(CHAT), r#"{"model":"m","stream":true}"#).await;
    assert!(!frames.is_empty());
    assert_eq!(post(&gw.url(CHAT), GOOD).await.status, 200);
    assert_eq!(
        mock.connections_accepted(),
        1,
        "one keep-alive connection for sequential requests"
    );
}

#[tokio::test]
async fn when_every_deployment_cools_down_the_request_waits_for_the_first_back() {
    let mock = MockUpstream::start().await.unwrap();
    let scenario = "fault=429,retry_after=1,fail_first=1";
    let policy = |wait_ms: u64| {
        format!("models: [{{ model: m, retries: 1, wait_for_cooldown_ms: {wait_ms} }}]\n")
    };
    // Its 429 opens the only deployment for 1 s; the retry waits for it and succeeds.
    let gw = Gateway::start(&one_deployment(
        &mock.scenario_url(scenario),
        "",
        &policy(2000),
    ))
    .await;
    let started = std::time::Instant::now();
    let reply = post(&gw.url(CHAT), GOOD).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
    assert_eq!(mock.request_count(scenario), 2);

    // Not allowed to wait that long: the 429 reaches the client at once.
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&one_deployment(
        &mock.scenario_url(scenario),
        "",
        &policy(500),
    ))
    .await;
    let reply = post(&gw.url(CHAT), GOOD).await;
    assert_eq!(reply.status, 429, "{}", reply.text());
    assert_eq!(mock.request_count(scenario), 1);
}

#[tokio::test]
async fn a_rejected_credential_takes_the_deployment_out_without_retrying_it() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(
        &two_deployments(
            &mock,
            "fault=401",
            "cached=1",
            "strategy: priority, retries: 2",
        )
        .replace("upstream_model: ua }", "upstream_model: ua, priority: 0 }")
        .replace("upstream_model: ub }", "upstream_model: ub, priority: 1 }"),
    )
    .await;
    for _ in 0..5 {
        assert_eq!(post(&gw.url(CHAT), GOOD).await.status, 200);
    }
    assert_eq!(
        mock.request_count("fault=401"),
        1,
        "tried once, then out (not retried, not tried again)"
    );
    assert_eq!(mock.request_count("cached=1"), 5);
}

#[tokio::test]
async fn a_provider_with_several_keys_spreads_requests_by_weight() {
    let mock = MockUpstream::start().await.unwrap();
    let config = one_deployment(&mock.base_url(), "", "").replacen(
        "kind: openai, base_url",
        "kind: openai, api_keys: [{ key: { value: sk-up-a } }, { key: { value: sk-up-b }, weight: 3 }], base_url",
        1,
    );
    let gw = Gateway::start(&config).await;
    for _ in 0..400 {
        assert_eq!(post(&gw.url(CHAT), GOOD).await.status, 200);
    }
    let used = |key: &str| {
        mock.requests("")
            .iter()
            .filter(|r| r.header("authorization") == Some(&format!("Bearer {key}")))
            .count()
    };
    assert_eq!(used("sk-up-a") + used("sk-up-b"), 400);
    let share = used("sk-up-b") as f64 / 400.0;
    assert!(
        (share - 0.75).abs() < 0.08,
        "share of the weight-3 key: {share}"
    );
}

/// Model `m` (two failing deployments, cheap) falls back to `backup` (dear); key `k1` has a
/// budget and `key_fields`.
fn fallback_outside_the_key(mock: &MockUpstream, key_fields: &str) -> String {
    config_yaml(
        &snapshot(
            &format!(", budget: {{ max_usd: 100, period: monthly }}{key_fields}"),
            &format!(
                "providers:
  - {{ id: pa, kind: openai, base_url: \"{}\" }}
  - {{ id: pc, kind: openai, base_url: \"{}\" }}
deployments:
  - {{ id: da, model: m, provider: pa, upstream_model: ua, price: {{ input_cost_per_token: 0.000001, output_cost_per_token: 0.000001 }} }}
  - {{ id: dc, model: backup, provider: pc, upstream_model: uc, price: {{ input_cost_per_token: 100.0, output_cost_per_token: 100.0 }} }}
models:
  - {{ model: m, retries: 0, fallbacks: [backup] }}
",
                mock.scenario_url("fault=500"),
                mock.scenario_url("cached=3"),
            ),
        ),
        "",
    )
}

#[tokio::test]
async fn a_fallback_outside_allowed_models_is_never_used_nor_priced() {
    let mock = MockUpstream::start().await.unwrap();
    // 200,000 tokens at the fallback's price is beyond what one request may reserve.
    let dear = r#"{"model":"m","max_tokens":200000,"messages":[{"role":"user","content":"hi"}]}"#;

    let gw = Gateway::start(&fallback_outside_the_key(&mock, ", allowed_models: [m]")).await;
    for _ in 0..3 {
        let reply = post(&gw.url(CHAT), GOOD).await;
        reply.openai_error(502);
    }
    assert_eq!(mock.request_count("fault=500"), 3);
    assert_eq!(
        mock.request_count("cached=3"),
        0,
        "the key may not use `backup`"
    );
    // The reservation is priced on `m` alone: the dear fallback cannot serve this key.
    // (`da` has failed three times in a row by now, so it may be cooling down: 502 or 503.)
    let reply = post(&gw.url(CHAT), dear).await;
    assert!(
        [502, 503].contains(&reply.status.as_u16()),
        "{}",
        reply.text()
    );
    assert_eq!(mock.request_count("cached=3"), 0);

    // A key that may use it falls back, and is priced on the dearest candidate: `backup`.
    let gw = Gateway::start(&fallback_outside_the_key(&mock, "")).await;
    let reply = post(&gw.url(CHAT), GOOD).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(mock.request_count("cached=3"), 1);
    let e = post(&gw.url(CHAT), dear).await.openai_error(400);
    assert_eq!(e["param"], "max_tokens", "{e}");
    assert_eq!(mock.request_count("cached=3"), 1);
}
