//! The server's life: config reload (file change, SIGHUP-equivalent), graceful drain, metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use http::Method;

const CHAT: &str = "/v1/chat/completions";
const GOOD: &str = r#"{"model":"m","messages":[]}"#;

struct Running {
    addr: std::net::SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
    _dir: TempDir,
    path: PathBuf,
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "switchboard-test-{}-{}",
            std::process::id(),
            uuid_like()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Runs the real server entry point on a config file, as the binary does.
async fn run(config: &str) -> Running {
    let dir = TempDir::new();
    let path = dir.0.join("config.yaml");
    std::fs::write(&path, config).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
    let options = dataplane::Options {
        config_path: path.clone(),
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Default::default()
    };
    let done = tokio::spawn(dataplane::serve_until(
        options,
        async move {
            let _ = stop_rx.await;
        },
        move |addr| {
            let _ = addr_tx.send(addr);
        },
    ));
    let addr = addr_rx.await.expect("server starts");
    Running {
        addr,
        stop: Some(stop_tx),
        done,
        _dir: dir,
        path,
    }
}

fn watched(snapshot_yaml: &str) -> String {
    config_yaml(
        snapshot_yaml,
        "  watch_interval_ms: 50\n  shutdown_grace_seconds: 10\n",
    )
}

async fn post_with(addr: std::net::SocketAddr, key: &str) -> Reply {
    send(request(
        Method::POST,
        &format!("http://{addr}{CHAT}"),
        &[("authorization", &format!("Bearer {key}"))],
        GOOD,
    ))
    .await
}

/// The revision `/readyz` reports.
async fn served_revision(addr: std::net::SocketAddr) -> serde_json::Value {
    let ready = send(request(
        Method::GET,
        &format!("http://{addr}/readyz"),
        &[],
        "",
    ))
    .await;
    ready.json()["revision"].clone()
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting until {what}");
}

#[tokio::test]
async fn a_changed_file_is_swapped_in_and_a_broken_one_is_refused() {
    let mock = MockUpstream::start().await.unwrap();
    let base = |revision: u32, key_status: &str| {
        snapshot(
            &format!(", status: {key_status}"),
            &format!(
                "providers: [{{ id: up, kind: openai, base_url: \"{}\" }}]\ndeployments: [{{ id: d1, model: m, provider: up, upstream_model: u }}]\n",
                mock.base_url()
            ),
        )
        .replacen("revision: 1", &format!("revision: {revision}"), 1)
    };
    let server = run(&watched(&base(1, "active"))).await;
    assert_eq!(post_with(server.addr, KEY).await.status, 200);

    // Revoke the key in the file: within moments every request with it is refused.
    std::fs::write(&server.path, watched(&base(2, "revoked"))).unwrap();
    eventually("the revocation applies", async || {
        post_with(server.addr, KEY).await.status == 401
    })
    .await;
    assert_eq!(served_revision(server.addr).await, 2);

    // A broken file changes nothing: the previous snapshot keeps serving.
    std::fs::write(
        &server.path,
        watched(&base(3, "active")).replace("provider: up", "provider: nowhere"),
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        post_with(server.addr, KEY).await.status,
        401,
        "still revision 2"
    );
    assert_eq!(served_revision(server.addr).await, 2);

    // Fixed again, it applies.
    std::fs::write(&server.path, watched(&base(4, "active"))).unwrap();
    eventually("the fixed file applies", async || {
        post_with(server.addr, KEY).await.status == 200
    })
    .await;
}

#[tokio::test]
async fn a_reload_keeps_rate_limit_counters() {
    let mock = MockUpstream::start().await.unwrap();
    let snapshot_at = |revision: u32| {
        snapshot(
            ", limits: { rpm: 2 }",
            &format!(
                "providers: [{{ id: up, kind: openai, base_url: \"{}\" }}]\ndeployments: [{{ id: d1, model: m, provider: up, upstream_model: u }}]\n",
                mock.base_url()
            ),
        )
        .replacen("revision: 1", &format!("revision: {revision}"), 1)
    };
    let server = run(&watched(&snapshot_at(1))).await;
    assert_eq!(post_with(server.addr, KEY).await.status, 200);
    assert_eq!(post_with(server.addr, KEY).await.status, 200);
    std::fs::write(&server.path, watched(&snapshot_at(2))).unwrap();
    eventually("revision 2 serves", async || {
        served_revision(server.addr).await == 2
    })
    .await;
    assert_eq!(
        post_with(server.addr, KEY).await.status,
        429,
        "the reload did not reset the limit"
    );
}

#[tokio::test]
async fn shutdown_lets_in_flight_streams_finish() {
    let mock = MockUpstream::start().await.unwrap();
    let mut server = run(&watched(&snapshot(
        "",
        &format!(
            "providers: [{{ id: up, kind: openai, base_url: \"{}\" }}]\ndeployments: [{{ id: d1, model: m, provider: up, upstream_model: u }}]\n",
            mock.scenario_url("chunks=10,interval_ms=100")
        ),
    )))
    .await;
    let url = format!("http://{}{CHAT}", server.addr);
    let stream =
        tokio::spawn(async move { post_timed(&url, r#"{"model":"m","stream":true}"#).await });
    tokio::time::sleep(Duration::from_millis(250)).await;

    // Drain begins mid-stream.
    server.stop.take().unwrap().send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ready = tokio::time::timeout(
        Duration::from_secs(1),
        client().request(request(
            Method::GET,
            &format!("http://{}/readyz", server.addr),
            &[],
            "",
        )),
    )
    .await;
    // Either refused outright (listener closed) or answered 503: never "ready".
    if let Ok(Ok(response)) = ready {
        assert_ne!(response.status(), 200);
    }

    let (status, _, frames, ended) = stream.await.unwrap();
    assert_eq!(status, 200);
    assert!(ended.is_ok(), "the stream ended cleanly");
    assert_eq!(
        sse_data(&joined(&frames)).last().map(String::as_str),
        Some("[DONE]")
    );
    let result = tokio::time::timeout(Duration::from_secs(5), server.done).await;
    assert!(
        matches!(result, Ok(Ok(Ok(())))),
        "the server stopped after the drain: {result:?}"
    );
    assert_eq!(mock.completed_streams(), 1);
}

#[tokio::test]
async fn metrics_are_exported_under_their_documented_names() {
    let mock = MockUpstream::start().await.unwrap();
    let config = with_deployment_fields(
        &one_deployment(&mock.base_url(), ", limits: { rpm: 1 }", ""),
        "price: { input_cost_per_token: 1.0e-06, output_cost_per_token: 2.0e-06 }",
    );
    let gw = Gateway::start(&config).await;
    assert_eq!(post(&gw.url(CHAT), GOOD).await.status, 200);
    assert_eq!(post(&gw.url(CHAT), GOOD).await.status, 429);
    let (_, _, _, _) = post_timed(&gw.url(CHAT), r#"{"model":"nope","stream":true}"#).await;
    let text = send(request(Method::GET, &gw.url("/metrics"), &[], ""))
        .await
        .text();
    for name in [
        dataplane::metrics::REQUESTS_TOTAL,
        dataplane::metrics::REQUEST_DURATION_SECONDS,
        dataplane::metrics::UPSTREAM_ATTEMPTS_TOTAL,
        dataplane::metrics::TOKENS_TOTAL,
        dataplane::metrics::COST_NANODOLLARS_TOTAL,
        dataplane::metrics::ERRORS_TOTAL,
        dataplane::metrics::RATE_LIMITED_TOTAL,
        dataplane::metrics::SNAPSHOT_REVISION,
        dataplane::metrics::ROUTING_DECISION_SECONDS,
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
    assert!(
        text.contains(r#"switchboard_routing_decision_seconds_bucket{le="0.00001"}"#),
        "routing decisions are measured in microseconds: {text}"
    );
    assert!(
        text.contains(r#"switchboard_rate_limited_total{scope="key",resource="requests"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"switchboard_errors_total{kind="rate_limited"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"switchboard_errors_total{kind="model_not_found"}"#),
        "{text}"
    );
    // Labels never carry a key or a client-supplied model name.
    assert!(!text.contains(KEY));
    assert!(!text.contains("\"nope\""));
    // Every exported switchboard metric is one of the documented names.
    for line in text.lines().filter(|l| l.starts_with("switchboard_")) {
        let name = line.split(['{', ' ']).next().unwrap();
        let base = name
            .trim_end_matches("_bucket")
            .trim_end_matches("_sum")
            .trim_end_matches("_count");
        assert!(
            dataplane::metrics::ALL.contains(&base) || dataplane::metrics::ALL.contains(&name),
            "undocumented metric {name}"
        );
    }
}

#[tokio::test]
async fn sighup_reloads_when_watching_is_off() {
    let mock = MockUpstream::start().await.unwrap();
    let at = |revision: u32| {
        let body = snapshot(
            "",
            &format!(
                "providers: [{{ id: up, kind: openai, base_url: \"{}\" }}]\ndeployments: [{{ id: d1, model: m, provider: up, upstream_model: u }}]\n",
                mock.base_url()
            ),
        )
        .replacen("revision: 1", &format!("revision: {revision}"), 1);
        config_yaml(&body, "  watch_interval_ms: 0\n")
    };
    let server = run(&at(1)).await;
    std::fs::write(&server.path, at(2)).unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        served_revision(server.addr).await,
        1,
        "no watching: the edit waits for SIGHUP"
    );
    let status = std::process::Command::new("kill")
        .args(["-HUP", &std::process::id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    eventually("SIGHUP reloads", async || {
        served_revision(server.addr).await == 2
    })
    .await;
}
