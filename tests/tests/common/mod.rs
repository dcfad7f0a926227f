//! Shared harness for the in-process tests: a gateway on port 0 in front of the mock upstream,
//! a minimal HTTP client that can time each body frame, and config builders.
#![allow(dead_code)] // Each test binary uses its own part of the harness.
#![allow(clippy::unwrap_used, clippy::expect_used)] // A panic is how a test harness reports.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use dataplane::accounting::{LogSink, MemorySink, TeeSink};
use dataplane::config::Config;
use dataplane::state::AppState;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use switchboard_shared::keys::hash_key_hex;
use switchboard_shared::usage::UsageRecord;

pub mod cluster;

pub use switchboard_tests::MockUpstream;

pub const PEPPER: &str = "test-pepper";
pub const KEY: &str = "sk-test-key-1";

/// The HMAC of `secret` under the test pepper.
pub fn key_hash(secret: &str) -> String {
    hash_key_hex(PEPPER.as_bytes(), secret)
}

/// A config file around `snapshot_yaml` (the body of the `snapshot:` section, indented by two).
pub fn config_yaml(snapshot_yaml: &str, server_extra: &str) -> String {
    let indented: String = snapshot_yaml.lines().map(|l| format!("  {l}\n")).collect();
    format!("server:\n  key_pepper: {{ value: \"{PEPPER}\" }}\n{server_extra}snapshot:\n{indented}")
}

/// A snapshot with tenant `t1`, key [`KEY`] (extra key fields in `key_extra`), and the given
/// providers/deployments/models sections.
pub fn snapshot(key_extra: &str, rest: &str) -> String {
    format!(
        "revision: 1\ntenants: [{{ id: t1 }}]\nvirtual_keys:\n  - {{ id: k1, tenant_id: t1, key_hash: \"{}\"{key_extra} }}\n{rest}",
        key_hash(KEY)
    )
}

/// A gateway served in-process on a free port.
pub struct Gateway {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    pub usage: Arc<MemorySink>,
    task: tokio::task::JoinHandle<()>,
    shared_state: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.task.abort();
        if let Some(t) = &self.shared_state {
            t.abort();
        }
    }
}

impl Gateway {
    pub async fn start(config_text: &str) -> Gateway {
        Self::start_with_keys(config_text, None).await
    }

    /// Starts a gateway with master keys for sealed credentials. A config with a `cluster`
    /// section instead of a `snapshot` starts with nothing installed (not ready).
    pub async fn start_with_keys(
        config_text: &str,
        master_keys: Option<switchboard_shared::sealed::MasterKeys>,
    ) -> Gateway {
        let config = Config::parse(config_text, &[]).expect("config parses");
        config.validate().expect("config is valid");
        let usage = Arc::new(MemorySink::default());
        let sink = Arc::new(TeeSink(Arc::new(LogSink), usage.clone()));
        let state = dataplane::build_state_with_keys(
            &config.server,
            config.redis.as_ref(),
            config.webhooks.as_ref(),
            sink,
            master_keys,
        )
        .expect("state builds");
        if let Some(snapshot) = &config.snapshot {
            state.install(snapshot).expect("snapshot installs");
        }
        let shared_state = dataplane::server::start_shared_state(&state, config.redis.as_ref())
            .expect("shared state starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = dataplane::router(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Gateway {
            addr,
            state,
            usage,
            task,
            shared_state,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Usage records so far, waiting briefly for ones closed by a finishing stream.
    pub async fn usage_records(&self, at_least: usize) -> Vec<UsageRecord> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let records = self.usage.records();
            if records.len() >= at_least || Instant::now() > deadline {
                return records;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A response read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts an OpenAI-shape error with this status; returns the `error` object.
    pub fn openai_error(&self, status: u16) -> serde_json::Value {
        assert_eq!(self.status.as_u16(), status, "body: {}", self.text());
        let v = self.json();
        let e = v["error"].clone();
        assert!(
            e["message"].as_str().is_some_and(|m| !m.is_empty()),
            "error.message in {v}"
        );
        assert!(e["type"].as_str().is_some(), "error.type in {v}");
        assert!(
            e.get("param").is_some() && e.get("code").is_some(),
            "error.param/code in {v}"
        );
        e
    }
}

/// One body frame and when it arrived.
#[derive(Debug)]
pub struct TimedFrame {
    pub at: Instant,
    pub data: Bytes,
}

pub type TestClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

pub fn request(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Request<Full<Bytes>> {
    let mut builder = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        builder = builder.header(*k, *v);
    }
    builder.body(Full::new(body.into())).unwrap()
}

/// `GET /v1/key/info` with the test key: its settings, limits and budgets with their spend.
pub async fn key_info(gw: &Gateway) -> serde_json::Value {
    let reply = send(request(
        Method::GET,
        &gw.url("/v1/key/info"),
        &[("authorization", &format!("Bearer {KEY}"))],
        "",
    ))
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()
}

/// POSTs JSON with the test key and reads the whole answer.
pub async fn post(url: &str, body: &str) -> Reply {
    send(request(
        Method::POST,
        url,
        &[
            ("authorization", &format!("Bearer {KEY}")),
            ("content-type", "application/json"),
        ],
        body.to_owned(),
    ))
    .await
}

pub async fn send(req: Request<Full<Bytes>>) -> Reply {
    let response = client()
        .request(req)
        .await
        .expect("request reaches the gateway");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body reads").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

/// POSTs with the test key and returns the head and each body frame with its arrival time.
pub async fn post_timed(
    url: &str,
    body: &str,
) -> (StatusCode, HeaderMap, Vec<TimedFrame>, Result<(), String>) {
    let req = request(
        Method::POST,
        url,
        &[
            ("authorization", &format!("Bearer {KEY}")),
            ("content-type", "application/json"),
        ],
        body.to_owned(),
    );
    let response = client()
        .request(req)
        .await
        .expect("request reaches the gateway");
    let (parts, mut body) = response.into_parts();
    let mut frames = Vec::new();
    let mut ended = Ok(());
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Ok(data) = f.into_data() {
                    frames.push(TimedFrame {
                        at: Instant::now(),
                        data,
                    });
                }
            }
            Err(e) => {
                ended = Err(e.to_string());
                break;
            }
        }
    }
    (parts.status, parts.headers, frames, ended)
}

/// The SSE `data:` payloads in a byte stream, in order.
pub fn sse_data(bytes: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(bytes)
        .split("\n\n")
        .filter_map(|event| event.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(str::to_owned)
        .collect()
}

/// Concatenates frames.
pub fn joined(frames: &[TimedFrame]) -> Vec<u8> {
    frames.iter().flat_map(|f| f.data.iter().copied()).collect()
}

/// A config whose one model `m` has one OpenAI-kind deployment at `base_url`.
pub fn one_deployment(base_url: &str, key_extra: &str, models: &str) -> String {
    config_yaml(
        &snapshot(
            key_extra,
            &format!(
                "providers: [{{ id: up, kind: openai, base_url: \"{base_url}\" }}]\ndeployments:\n  - {{ id: d1, model: m, provider: up, upstream_model: up-model }}\n{models}"
            ),
        ),
        "",
    )
}

/// [`one_deployment`]'s config with more fields on its deployment (`price: {...}`, ...).
pub fn with_deployment_fields(config: &str, fields: &str) -> String {
    let edited = config.replacen(
        "upstream_model: up-model }",
        &format!("upstream_model: up-model, {fields} }}"),
        1,
    );
    assert_ne!(edited, config, "not a one_deployment config");
    edited
}
