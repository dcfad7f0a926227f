//! Routing refinements through the whole gateway: tags that no deployment carries fall back
//! to the deployments tagged `default`, and tags compare without regard to case.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use common::*;
use http::Method;

const CHAT: &str = "/v1/chat/completions";
const GOOD: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

async fn with_tags(gw: &Gateway, tags: &str) -> Reply {
    send(request(
        Method::POST,
        &gw.url(CHAT),
        &[
            ("authorization", &format!("Bearer {KEY}")),
            ("content-type", "application/json"),
            ("x-switchboard-tags", tags),
            ("x-switchboard-explain", "1"),
        ],
        GOOD,
    ))
    .await
}

#[tokio::test]
async fn unknown_tags_go_to_the_default_deployment_and_case_is_ignored() {
    let mock = MockUpstream::start().await.unwrap();
    let snapshot = snapshot(
        "",
        &format!(
            "providers:\n  - {{ id: pa, kind: openai, base_url: \"{}\" }}\n  - {{ id: pb, kind: openai, base_url: \"{}\" }}\n\
             deployments:\n  - {{ id: a, model: m, provider: pa, upstream_model: ua, tags: [GPU] }}\n  - {{ id: b, model: m, provider: pb, upstream_model: ub, tags: [default] }}\n\
             models: [{{ model: m }}]\n",
            mock.scenario_url("cached=1"),
            mock.scenario_url("cached=2"),
        ),
    );
    let gw = Gateway::start(&config_yaml(&snapshot, "")).await;
    for _ in 0..5 {
        assert_eq!(with_tags(&gw, "gpu").await.status, 200);
    }
    assert_eq!(mock.request_count("cached=1"), 5, "`gpu` matches `GPU`");
    let reply = with_tags(&gw, "tpu").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(mock.request_count("cached=2"), 1, "`default` served `tpu`");
    let route = reply.headers["x-switchboard-route"].to_str().unwrap();
    assert!(route.contains("tags:default"), "{route}");
}
