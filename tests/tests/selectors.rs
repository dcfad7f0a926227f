//! Selectors that narrow a model's deployments before the strategy orders them: tags, model
//! groups, capability filters, session affinity; and the explain header.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use common::*;
use http::Method;

const CHAT: &str = "/v1/chat/completions";

fn chat(model: &str) -> String {
    format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"hi"}}]}}"#)
}

/// Deployments (id, model, extra fields), each with its own scenario so the mock tells them
/// apart (`cached=<n>` for the n-th), plus `models` policies.
fn config(
    mock: &MockUpstream,
    key_extra: &str,
    deployments: &[(&str, &str, &str)],
    models: &str,
) -> String {
    let mut providers = String::new();
    let mut deps = String::new();
    for (n, (id, model, extra)) in deployments.iter().enumerate() {
        providers.push_str(&format!(
            "  - {{ id: p{id}, kind: openai, base_url: \"{}\" }}\n",
            mock.scenario_url(&format!("cached={}", n + 1))
        ));
        deps.push_str(&format!(
            "  - {{ id: {id}, model: {model}, provider: p{id}, upstream_model: u{id}{extra} }}\n"
        ));
    }
    config_yaml(
        &snapshot(
            key_extra,
            &format!("providers:\n{providers}deployments:\n{deps}{models}"),
        ),
        "",
    )
}

/// Requests served per deployment, by the order given to [`config`].
fn served(mock: &MockUpstream, n: usize) -> Vec<usize> {
    (1..=n)
        .map(|i| mock.request_count(&format!("cached={i}")))
        .collect()
}

async fn post_with(url: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
    let auth = format!("Bearer {KEY}");
    let mut all = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
    ];
    all.extend_from_slice(headers);
    send(request(Method::POST, url, &all, body.to_owned())).await
}

#[tokio::test]
async fn tag_names_and_the_tags_header_select_by_tag() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(
        &mock,
        "",
        &[
            ("a", "m", ", tags: [fast]"),
            ("b", "m", ", tags: [fast, eu]"),
            ("c", "other", ", tags: [eu]"),
        ],
        "",
    ))
    .await;
    for _ in 0..5 {
        assert_eq!(post(&gw.url(CHAT), &chat("tag:fast,eu")).await.status, 200);
    }
    assert_eq!(served(&mock, 3), vec![0, 5, 0], "only b has both tags");
    for _ in 0..20 {
        assert_eq!(post(&gw.url(CHAT), &chat("tag:eu")).await.status, 200);
    }
    let s = served(&mock, 3);
    assert!(s[0] == 0 && s[1] > 5 && s[2] > 0, "eu spans models: {s:?}");
    // The header narrows an ordinary model.
    for _ in 0..5 {
        let r = post_with(&gw.url(CHAT), &chat("m"), &[("x-switchboard-tags", "eu")]).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(served(&mock, 3)[0], 0, "a has no eu tag");
    // No such tag: 404; an empty list: 400.
    post(&gw.url(CHAT), &chat("tag:nope"))
        .await
        .openai_error(404);
    post(&gw.url(CHAT), &chat("tag:")).await.openai_error(400);
    // A tag that exists, but not on this model: 400 naming why.
    let r = post_with(&gw.url(CHAT), &chat("m"), &[("x-switchboard-tags", "gpu")]).await;
    let e = r.openai_error(400);
    assert!(e["message"].as_str().unwrap().contains("tags"), "{e}");
}

#[tokio::test]
async fn a_tag_name_does_not_cross_into_models_the_key_may_not_use() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(
        &mock,
        ", allowed_models: [m]",
        &[("a", "m", ", tags: [eu]"), ("c", "other", ", tags: [eu]")],
        "",
    ))
    .await;
    for _ in 0..10 {
        assert_eq!(post(&gw.url(CHAT), &chat("tag:eu")).await.status, 200);
    }
    assert_eq!(served(&mock, 2), vec![10, 0]);
}

#[tokio::test]
async fn a_model_group_serves_one_name_from_several_models() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(
        &mock,
        ", allowed_models: [both]",
        &[("a", "m", ", priority: 1"), ("c", "other", ", priority: 0")],
        "models:\n  - { model: both, members: [m, other], strategy: priority }\n",
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(post(&gw.url(CHAT), &chat("both")).await.status, 200);
    }
    assert_eq!(
        served(&mock, 2),
        vec![0, 3],
        "the group's own policy: priority"
    );
    post(&gw.url(CHAT), &chat("m")).await.openai_error(403);
    let models = send(request(
        Method::GET,
        &gw.url("/v1/models"),
        &[("authorization", &format!("Bearer {KEY}"))],
        "",
    ))
    .await
    .json();
    assert_eq!(models["data"][0]["id"], "both");
    assert_eq!(models["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn capability_filters_follow_the_price_entries() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(
        &mock,
        "",
        &[
            (
                "plain",
                "m",
                ", price: { input_cost_per_token: 1.0e-06, supports_vision: false, supports_function_calling: false, max_input_tokens: 1000 }",
            ),
            (
                "rich",
                "m",
                ", price: { input_cost_per_token: 1.0e-06, supports_vision: true, supports_function_calling: true, max_input_tokens: 100000 }",
            ),
        ],
        "",
    ))
    .await;
    let image = r#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:,"}}]}]}"#;
    let tools =
        r#"{"model":"m","messages":[],"tools":[{"type":"function","function":{"name":"f"}}]}"#;
    let long = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(8000)
    );
    for body in [image, tools, long.as_str()] {
        for _ in 0..5 {
            assert_eq!(post(&gw.url(CHAT), body).await.status, 200);
        }
    }
    assert_eq!(served(&mock, 2), vec![0, 15], "only the capable one");
    // Plain requests use both.
    for _ in 0..30 {
        assert_eq!(post(&gw.url(CHAT), &chat("m")).await.status, 200);
    }
    assert!(served(&mock, 2)[0] > 0);
    // Nobody can: 400 with the reason, nothing sent upstream.
    let huge = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(500_000)
    );
    let before = served(&mock, 2);
    let e = post(&gw.url(CHAT), &huge).await.openai_error(400);
    assert!(e["message"].as_str().unwrap().contains("longer"), "{e}");
    assert_eq!(served(&mock, 2), before);
}

#[tokio::test]
async fn a_session_stays_on_its_deployment_and_the_explain_header_says_so() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(
        &mock,
        "",
        &[("a", "m", ""), ("b", "m", ""), ("c", "m", "")],
        "",
    ))
    .await;
    for session in ["conv-1", "conv-2", "conv-3"] {
        let first = post_with(&gw.url(CHAT), &chat("m"), &[("x-session-id", session)]).await;
        assert_eq!(first.status, 200);
        let before = served(&mock, 3);
        for _ in 0..10 {
            let r = post_with(
                &gw.url(CHAT),
                &chat("m"),
                &[("x-session-id", session), ("x-switchboard-explain", "1")],
            )
            .await;
            assert_eq!(r.status, 200);
            let route = r.headers["x-switchboard-route"].to_str().unwrap();
            assert!(route.starts_with("m: weighted_random ["), "{route}");
            assert!(route.ends_with(" session"), "{route}");
        }
        let after = served(&mock, 3);
        let moved: Vec<usize> = (0..3).map(|i| after[i] - before[i]).collect();
        assert!(
            moved.contains(&10) && moved.iter().sum::<usize>() == 10,
            "all ten on one deployment: {moved:?}"
        );
    }
    // Without a session, requests spread.
    let before = served(&mock, 3);
    for _ in 0..60 {
        post(&gw.url(CHAT), &chat("m")).await;
    }
    let after = served(&mock, 3);
    assert!(
        (0..3).all(|i| after[i] > before[i]),
        "{before:?} → {after:?}"
    );
}

#[tokio::test]
async fn the_explain_header_lists_exclusions() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(
        &mock,
        "",
        &[("a", "m", ", tags: [x]"), ("b", "m", "")],
        "models: [{ model: m, strategy: least_busy }]\n",
    ))
    .await;
    let r = post_with(
        &gw.url(CHAT),
        &chat("m"),
        &[("x-switchboard-tags", "x"), ("x-switchboard-explain", "1")],
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers["x-switchboard-route"],
        "m: least_busy [a{if=0,lat=-,use=0%,fail=0%}] -b:tags"
    );
    // Once measured, the latency shows.
    let r = post_with(
        &gw.url(CHAT),
        &chat("m"),
        &[("x-switchboard-tags", "x"), ("x-switchboard-explain", "1")],
    )
    .await;
    let route = r.headers["x-switchboard-route"].to_str().unwrap();
    assert!(
        route.contains("a{if=0,lat=") && !route.contains("a{if=0,lat=-"),
        "{route}"
    );
    let r = post(&gw.url(CHAT), &chat("m")).await;
    assert!(
        !r.headers.contains_key("x-switchboard-route"),
        "only on request"
    );
}

#[tokio::test]
async fn the_explain_header_shows_only_models_the_key_may_use() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&config(
        &mock,
        ", allowed_models: [m]",
        &[
            ("a", "m", ", tags: [eu]"),
            ("c", "other", ", tags: [eu]"),
            ("f", "secret", ""),
        ],
        "models: [{ model: m, fallbacks: [secret] }]\n",
    ))
    .await;
    for model in ["tag:eu", "m"] {
        let r = post_with(
            &gw.url(CHAT),
            &chat(model),
            &[("x-switchboard-explain", "1")],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let route = r.headers["x-switchboard-route"].to_str().unwrap();
        assert!(route.contains("[a{"), "{route}");
        for hidden in ["c{", "-c:", "other", "secret", "f{"] {
            assert!(!route.contains(hidden), "{model}: `{hidden}` in {route}");
        }
    }
}

#[tokio::test]
async fn the_prefix_index_is_partitioned_by_tenant() {
    let mock = MockUpstream::start().await.unwrap();
    let second_key = "sk-other-tenant";
    let text = config(
        &mock,
        "",
        &[("a", "m", ""), ("b", "m", ""), ("c", "m", "")],
        "models: [{ model: m, strategy: prefix_affinity, prefix_affinity: { block_bytes: 64 } }]\n",
    )
    .replacen(
        "tenants: [{ id: t1 }]",
        "tenants: [{ id: t1 }, { id: t2 }]",
        1,
    )
    .replacen(
        "  virtual_keys:\n",
        &format!(
            "  virtual_keys:\n    - {{ id: k2, tenant_id: t2, key_hash: \"{}\" }}\n",
            key_hash(second_key)
        ),
        1,
    );
    let gw = Gateway::start(&text).await;
    let counts = || served(&mock, 3);
    let send_as = |secret: &'static str, body: String| {
        let url = gw.url(CHAT);
        async move {
            let auth = format!("Bearer {secret}");
            let headers = [("authorization", auth.as_str())];
            send(request(Method::POST, &url, &headers, body)).await
        }
    };
    let (mut same, mut prompts) = (0, 0);
    for i in 0..12 {
        let system = format!("prompt {i}: ").repeat(40); // several blocks
        let body = format!(
            r#"{{"model":"m","messages":[{{"role":"system","content":"{system}"}},{{"role":"user","content":"q"}}]}}"#
        );
        let before = counts();
        assert_eq!(send_as(KEY, body.clone()).await.status, 200);
        let holder = (0..3).find(|&d| counts()[d] > before[d]).unwrap();
        // The same tenant finds its prefix again.
        let before = counts();
        assert_eq!(send_as(KEY, body.clone()).await.status, 200);
        assert!(
            counts()[holder] > before[holder],
            "the tenant's own prefix is found"
        );
        // Another tenant's identical prompt learns nothing from it.
        let before = counts();
        assert_eq!(send_as(second_key, body).await.status, 200);
        same += usize::from(counts()[holder] > before[holder]);
        prompts += 1;
    }
    // Tied to the holder, all 12 would land there; spread at random, about a third do (all 12
    // by chance: 1 in 3^12).
    assert!(
        same < prompts,
        "{same} of {prompts} followed the other tenant's prefix"
    );
}
