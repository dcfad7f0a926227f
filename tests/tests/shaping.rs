//! Request shaping through the whole gateway, observed at the mock upstream (which records
//! every request): transforms edit the body a deployment receives, content rules pick the
//! model that serves an alias, derived tags select deployments by the words of their model
//! names and are listed in `/v1/models`. Each shows its choice in `x-switchboard-route`.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use common::*;
use http::Method;
use serde_json::{Value, json};

const CHAT: &str = "/v1/chat/completions";

async fn chat(gw: &Gateway, body: &Value, headers: &[(&str, &str)]) -> Reply {
    let auth = format!("Bearer {KEY}");
    let mut all = vec![
        ("authorization", auth.as_str()),
        ("content-type", "application/json"),
        ("x-switchboard-explain", "1"),
    ];
    all.extend_from_slice(headers);
    let reply = send(request(Method::POST, &gw.url(CHAT), &all, body.to_string())).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply
}

fn route(reply: &Reply) -> String {
    reply.headers["x-switchboard-route"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// Every upstream the tests name, each its own mock scenario (a harmless knob with a value of
/// its own, so the mock records each apart).
const UPSTREAMS: &[&str] = &[
    "shaped", "plain", "s", "vision", "tooling", "long", "code", "search", "small", "a", "b",
];

fn scenario(name: &str) -> String {
    let i = UPSTREAMS.iter().position(|n| *n == name).unwrap();
    format!("latency_ms={i}")
}

/// One OpenAI-compatible provider `p-<name>` per upstream name, each its own scenario.
fn providers(mock: &MockUpstream, scenarios: &[&str]) -> String {
    let mut yaml = String::from("providers:\n");
    for s in scenarios {
        let url = mock.scenario_url(&scenario(s));
        yaml.push_str(&format!(
            "  - {{ id: p-{s}, kind: openai, base_url: \"{url}\" }}\n"
        ));
    }
    yaml
}

#[tokio::test]
async fn transforms_edit_what_the_upstream_receives() {
    let mock = MockUpstream::start().await.unwrap();
    let rest = format!(
        "{}deployments:\n\
         \x20 - {{ id: d, model: m, provider: p-shaped, upstream_model: u, transforms: {{ rename: {{ max_tokens: max_completion_tokens }}, drop: [seed], strip_cache_control: true }} }}\n\
         \x20 - {{ id: e, model: plain, provider: p-plain, upstream_model: u }}\n\
         models:\n\
         \x20 - {{ model: m, transforms: {{ max_tokens: 50, defaults: {{ temperature: 0.2 }} }} }}\n",
        providers(&mock, &["shaped", "plain"])
    );
    let gw = Gateway::start(&config_yaml(&snapshot("", &rest), "")).await;
    let body = |model: &str| {
        json!({"model": model, "max_tokens": 4000, "seed": 7, "messages": [{"role": "user",
            "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}]})
    };
    let reply = chat(&gw, &body("m"), &[]).await;
    let sent = mock.requests(&scenario("shaped"))[0].json();
    assert_eq!(sent["model"], "u", "{sent}");
    assert_eq!(
        sent["max_completion_tokens"], 50,
        "capped by the policy, renamed by the deployment: {sent}"
    );
    assert!(
        sent.get("max_tokens").is_none() && sent.get("seed").is_none(),
        "{sent}"
    );
    assert_eq!(sent["temperature"], 0.2, "the policy's default: {sent}");
    assert!(!sent.to_string().contains("cache_control"), "{sent}");
    assert_eq!(sent["messages"][0]["content"][0]["text"], "hi", "{sent}");
    let explain = route(&reply);
    assert!(
        explain.contains("transform:d=defaults+max_tokens+rename+drop+strip_cache_control"),
        "{explain}"
    );

    // A client's own temperature stays; a smaller max_tokens is not raised.
    let mut own = body("m");
    own["temperature"] = json!(1.0);
    own["max_tokens"] = json!(10);
    chat(&gw, &own, &[]).await;
    let sent = mock.requests(&scenario("shaped"))[1].json();
    assert_eq!(
        (
            sent["temperature"].clone(),
            sent["max_completion_tokens"].clone()
        ),
        (json!(1.0), json!(10))
    );

    // Another model's deployment gets the body as the client sent it.
    let reply = chat(&gw, &body("plain"), &[]).await;
    let sent = mock.requests(&scenario("plain"))[0].json();
    assert_eq!(
        (sent["max_tokens"].clone(), sent["seed"].clone()),
        (json!(4000), json!(7))
    );
    assert!(sent.to_string().contains("cache_control"), "{sent}");
    assert!(!route(&reply).contains("transform:"), "{}", route(&reply));
}

#[tokio::test]
async fn transforms_apply_to_streams_too() {
    let mock = MockUpstream::start().await.unwrap();
    let rest = format!(
        "{}deployments:\n\
         \x20 - {{ id: d, model: m, provider: p-s, upstream_model: u, transforms: {{ max_tokens: 5 }} }}\n",
        providers(&mock, &["s"])
    );
    let gw = Gateway::start(&config_yaml(&snapshot("", &rest), "")).await;
    let body = json!({"model": "m", "stream": true, "max_tokens": 99,
        "messages": [{"role": "user", "content": "hi"}]});
    let reply = chat(&gw, &body, &[]).await;
    assert!(reply.text().contains("[DONE]"), "{}", reply.text());
    let sent = mock.requests(&scenario("s"))[0].json();
    assert_eq!(sent["max_tokens"], 5, "{sent}");
    assert_eq!(
        sent["stream_options"]["include_usage"], true,
        "usage still asked for: {sent}"
    );
}

/// An alias whose rules send each kind of request to its own model, one scenario each.
fn rules_gateway_yaml(mock: &MockUpstream) -> String {
    let scenarios = ["vision", "tooling", "long", "code", "search", "small"];
    let mut rest = providers(mock, &scenarios);
    rest.push_str("deployments:\n");
    for s in scenarios {
        rest.push_str(&format!(
            "  - {{ id: d-{s}, model: {s}, provider: p-{s}, upstream_model: u-{s} }}\n"
        ));
    }
    rest.push_str(
        "models:\n\
         \x20 - model: auto\n\
         \x20   rules:\n\
         \x20     - { when: { images: true }, model: vision }\n\
         \x20     - { when: { tools: true }, model: tooling }\n\
         \x20     - { when: { min_prompt_tokens: 2000 }, model: long }\n\
         \x20     - { when: { regex: \"(?i)\\\\bselect\\\\b.+\\\\bfrom\\\\b\" }, model: code }\n\
         \x20     - { when: { keywords: [rust, python] }, model: code }\n\
         \x20     - { when: { headers: { x-team: search } }, model: search }\n\
         \x20     - { model: small }\n",
    );
    config_yaml(&snapshot(", allowed_models: [auto]", &rest), "")
}

fn user(content: Value) -> Value {
    json!({"model": "auto", "messages": [
        {"role": "user", "content": "an earlier question about python"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": content}]})
}

/// A request body, its extra headers, the upstream that must serve it, the rule shown.
type Case = (
    Value,
    Vec<(&'static str, &'static str)>,
    &'static str,
    &'static str,
);

#[tokio::test]
async fn content_rules_pick_the_model_by_what_the_request_holds() {
    let mock = MockUpstream::start().await.unwrap();
    let gw = Gateway::start(&rules_gateway_yaml(&mock)).await;
    let image = json!([{"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]);
    let mut tools = user(json!("weather?"));
    tools["tools"] =
        json!([{"type": "function", "function": {"name": "weather", "parameters": {}}}]);
    let cases: Vec<Case> = vec![
        (user(image), vec![], "vision", "rules[0](images) -> vision"),
        (tools, vec![], "tooling", "rules[1](tools) -> tooling"),
        (
            user(json!("x ".repeat(5000))),
            vec![],
            "long",
            "rules[2](min_prompt_tokens) -> long",
        ),
        (
            user(json!("SELECT id FROM users, why slow?")),
            vec![],
            "code",
            "rules[3](regex) -> code",
        ),
        (
            user(json!("help me with Rust")),
            vec![],
            "code",
            "rules[4](keywords) -> code",
        ),
        (
            user(json!("hi")),
            vec![("x-team", "Search")],
            "search",
            "rules[5](headers) -> search",
        ),
        // The earlier message says python; only the last user message counts.
        (user(json!("hi")), vec![], "small", "rules[6]() -> small"),
    ];
    for (body, headers, name, rule) in cases {
        let before = mock.request_count(&scenario(name));
        let reply = chat(&gw, &body, &headers).await;
        assert_eq!(mock.request_count(&scenario(name)), before + 1, "{rule}");
        let explain = route(&reply);
        assert!(
            explain.starts_with(&format!("auto: {rule}; {name}: ")),
            "{explain}"
        );
        let sent = mock.requests(&scenario(name)).last().unwrap().json();
        assert_eq!(sent["model"], format!("u-{name}"), "{sent}");
    }

    // The alias is listed for the key; the models behind it are not the key's to name.
    let auth = format!("Bearer {KEY}");
    let listed = send(request(
        Method::GET,
        &gw.url("/v1/models"),
        &[("authorization", &auth)],
        "",
    ))
    .await;
    let data = listed.json()["data"].clone();
    let ids: Vec<&str> = data
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["auto"], "{}", listed.text());
    let direct = send(request(
        Method::POST,
        &gw.url(CHAT),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        json!({"model": "small", "messages": [{"role": "user", "content": "hi"}]}).to_string(),
    ))
    .await;
    assert_eq!(direct.status, 403, "{}", direct.text());
}

#[tokio::test]
async fn derived_tags_select_by_model_name_words_and_are_listed() {
    let mock = MockUpstream::start().await.unwrap();
    let rest = format!(
        "{}deployments:\n\
         \x20 - {{ id: a, model: gpt-4o-mini, provider: p-a, upstream_model: gpt-4o-mini-2024-07-18, tags: [Fast] }}\n\
         \x20 - {{ id: b, model: llama-3.1-70b, provider: p-b, upstream_model: meta/llama-3.1-70b }}\n\
         models:\n\
         \x20 - {{ model: gpt-4o-mini, derive_tags: true }}\n",
        providers(&mock, &["a", "b"])
    );
    let gw = Gateway::start(&config_yaml(&snapshot("", &rest), "")).await;
    let ask =
        |model: &str| json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    chat(&gw, &ask("tag:MINI"), &[]).await;
    assert_eq!(
        mock.request_count(&scenario("a")),
        1,
        "`mini` comes from the model name, any case"
    );
    let unknown = send(request(
        Method::POST,
        &gw.url(CHAT),
        &[
            ("authorization", &format!("Bearer {KEY}")),
            ("content-type", "application/json"),
        ],
        ask("tag:llama").to_string(),
    ))
    .await;
    assert_eq!(
        unknown.status,
        404,
        "llama's policy does not derive tags: {}",
        unknown.text()
    );

    let listed = send(request(
        Method::GET,
        &gw.url("/v1/models"),
        &[("authorization", &format!("Bearer {KEY}"))],
        "",
    ))
    .await
    .json();
    let tags = |id: &str| {
        listed["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == id)
            .unwrap()["tags"]
            .clone()
    };
    assert_eq!(
        tags("gpt-4o-mini"),
        json!(["4o", "fast", "gpt", "mini"]),
        "{listed}"
    );
    assert_eq!(tags("llama-3.1-70b"), json!([]), "{listed}");
}
