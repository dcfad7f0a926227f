//! Shared set-up of the control plane's in-process tests: a running control plane on a fresh
//! database (from `#[sqlx::test]`), a unique NATS namespace, admins with tokens, and a helper
//! that calls the admin router.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use chrono::{DateTime, Utc};
use controlplane::Running;
use controlplane::config::Settings;
use controlplane::service::Ctx;
use controlplane::service::admins::{self, CreateAdmin};
use controlplane::service::auth::{Actor, Role};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sqlx::PgPool;
use switchboard_shared::sealed::MasterKeys;
use switchboard_shared::usage::{Outcome, Usage, UsageRecord};
use tokio::sync::oneshot;
use tower::ServiceExt;

pub const PEPPER: &[u8] = b"test-pepper";
pub const MASTER_KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
pub const PASSWORD: &str = "correct horse battery staple";

pub fn nats_url() -> String {
    std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A namespace no other test or helper uses (`cpt` + random hex: these tests' own prefix).
pub fn unique_namespace() -> String {
    format!("cpt{}", uuid::Uuid::now_v7().simple())
        .chars()
        .take(32)
        .collect()
}

pub fn settings(namespace: &str) -> Settings {
    Settings {
        listen: "127.0.0.1:0".parse().unwrap(),
        grpc_listen: "127.0.0.1:0".parse().unwrap(),
        max_body_bytes: 64 * 1024,
        nats_url: nats_url(),
        nats_replicas: 1,
        namespace: namespace.to_owned(),
        heartbeat_interval: Duration::from_millis(500),
        reconcile_interval: Duration::from_millis(500),
        full_snapshots: Default::default(),
        pepper: PEPPER.to_vec(),
        jwt_secret: b"test-jwt-secret-that-is-long-enough-0123".to_vec(),
        token_ttl: Duration::from_secs(900),
        admin_auth: controlplane::config::AdminAuthSettings::default(),
        providers: controlplane::config::ProvidersConfig::default(),
        master_keys: MasterKeys::parse(MASTER_KEYS).unwrap(),
        spend: controlplane::config::SpendConfig::default(),
        prices: controlplane::config::PricesConfig::default(),
        redis: None,
        // These tests are about the admin API, not the cluster channels (those are in
        // tests/tests/cluster_*.rs, with keys): development mode.
        trust: controlplane::config::ClusterTrust::development(),
        ui: Default::default(),
    }
}

/// A running control plane and a way to stop it.
pub struct Cp {
    pub running: Running,
    pub router: Router,
    pub namespace: String,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Cp {
    /// Stops the control plane and deletes its JetStream stream and bucket from the shared
    /// NATS server (on a thread of its own: `Drop` cannot await).
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let names = switchboard_shared::cluster::NatsNames::new(&self.namespace);
        let url = self.running.state.settings.nats_url.clone();
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                let fut = async {
                    let client = async_nats::connect(url).await.ok()?;
                    let js = async_nats::jetstream::new(client);
                    let _ = js.delete_stream(&names.config_stream).await;
                    let _ = js.delete_object_store(&names.snapshot_bucket).await;
                    Some(())
                };
                let _ = tokio::time::timeout(Duration::from_secs(5), fut).await;
            });
        });
        let _ = cleanup.join();
    }
}

pub async fn start(pool: PgPool) -> Cp {
    start_in(pool, &unique_namespace()).await
}

/// A control plane in a given namespace (a second replica shares the first's).
pub async fn start_in(pool: PgPool, namespace: &str) -> Cp {
    start_with(pool, settings(namespace)).await
}

pub async fn start_with(pool: PgPool, settings: Settings) -> Cp {
    let namespace = settings.namespace.clone();
    let (stop, stopped) = oneshot::channel::<()>();
    let running = controlplane::serve(settings, pool, async move {
        let _ = stopped.await;
    })
    .await
    .unwrap();
    let router = controlplane::routes::router(running.state.clone());
    Cp {
        running,
        router,
        namespace,
        stop: Some(stop),
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// Asserts a problem-JSON answer with `status` (in its body too) and, when `path` is
    /// given, a field error at that path. `context` names the request in failure messages.
    pub fn assert_problem(&self, status: StatusCode, path: Option<&str>, context: &str) {
        assert_eq!(self.status, status, "{context}: {}", self.body);
        assert_eq!(
            self.headers["content-type"], "application/problem+json",
            "{context}"
        );
        assert_eq!(
            self.body["status"],
            status.as_u16(),
            "{context}: {}",
            self.body
        );
        if let Some(path) = path {
            let paths: Vec<&Value> = self.body["errors"]
                .as_array()
                .unwrap_or_else(|| panic!("{context}: {}", self.body))
                .iter()
                .map(|e| &e["path"])
                .collect();
            assert!(
                paths.iter().any(|p| *p == path),
                "{context}: want {path:?}, got {}",
                self.body
            );
        }
    }

    pub fn revision(&self) -> u64 {
        self.headers
            .get("x-switchboard-config-revision")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no revision header: {} {}", self.status, self.body))
    }
}

impl Cp {
    /// Calls the admin API with a raw body.
    pub async fn raw(
        &self,
        method: Method,
        uri: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> Reply {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json");
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        let response = self
            .router
            .clone()
            .oneshot(req.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn call(&self, method: Method, uri: &str, token: &str, body: Option<Value>) -> Reply {
        let bytes = body
            .map(|b| serde_json::to_vec(&b).unwrap())
            .unwrap_or_default();
        self.raw(method, uri, Some(token), bytes).await
    }

    pub async fn get(&self, uri: &str, token: &str) -> Reply {
        self.call(Method::GET, uri, token, None).await
    }

    pub async fn post(&self, uri: &str, token: &str, body: Value) -> Reply {
        self.call(Method::POST, uri, token, Some(body)).await
    }

    pub fn pool(&self) -> &PgPool {
        &self.running.state.pool
    }

    /// Creates an admin directly and logs in through the API; returns the token.
    pub async fn admin(&self, email: &str, role: Role, tenant: Option<&str>) -> String {
        admins::create(
            Ctx {
                pool: self.pool(),
                publisher: None,
            },
            &Actor::system(),
            CreateAdmin {
                email: email.into(),
                password: PASSWORD.into(),
                role,
                tenant_id: tenant.map(str::to_owned),
            },
        )
        .await
        .unwrap();
        let reply = self
            .raw(
                Method::POST,
                "/admin/v1/auth/login",
                None,
                serde_json::to_vec(&json!({"email": email, "password": PASSWORD})).unwrap(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        assert_eq!(reply.body["token_type"], "Bearer");
        reply.body["access_token"].as_str().unwrap().to_owned()
    }

    /// Row counts of every table, the revision and the audit length: "the database".
    pub async fn fingerprint(&self) -> Vec<i64> {
        let mut out = Vec::new();
        for table in [
            "tenants",
            "admin_users",
            "virtual_keys",
            "providers",
            "deployments",
            "model_policies",
            "audit_log",
        ] {
            let (n,): (i64,) =
                sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
                    .fetch_one(self.pool())
                    .await
                    .unwrap();
            out.push(n);
        }
        let (rev,): (i64,) = sqlx::query_as("SELECT revision FROM config_revision")
            .fetch_one(self.pool())
            .await
            .unwrap();
        out.push(rev);
        let (h,): (String,) = sqlx::query_as(
            "SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t.id), '')) FROM \
             (SELECT id, name, status, rpm, tpm, budget::text, updated_at FROM tenants) t",
        )
        .fetch_one(self.pool())
        .await
        .unwrap();
        out.push(i64::from_str_radix(&h[..12], 16).unwrap());
        let (h,): (String,) = sqlx::query_as(
            "SELECT md5(coalesce(string_agg(k::text, ',' ORDER BY k.id), '')) FROM \
             (SELECT id, name, status, key_hash, rpm, tpm, allowed_models, metadata::text, \
              expires_at, updated_at FROM virtual_keys) k",
        )
        .fetch_one(self.pool())
        .await
        .unwrap();
        out.push(i64::from_str_radix(&h[..12], 16).unwrap());
        out
    }
}

/// A successful request's usage as a data plane reports it: `cost` USD for 10 prompt and 5
/// completion tokens of `gpt-4o` on deployment `d1`.
pub fn usage_record(
    id: &str,
    tenant: &str,
    key: &str,
    started_at: DateTime<Utc>,
    cost: f64,
) -> UsageRecord {
    UsageRecord {
        request_id: id.into(),
        client_request_id: None,
        tenant_id: tenant.into(),
        key_id: key.into(),
        model: "gpt-4o".into(),
        deployment_id: Some("d1".into()),
        provider_id: Some("p1".into()),
        endpoint: "chat_completions".into(),
        stream: false,
        outcome: Outcome::Success,
        status: 200,
        attempts: 1,
        usage: Usage {
            prompt_tokens: 10,
            completion_tokens: 5,
            ..Usage::default()
        },
        usage_reported: true,
        cost_usd: cost,
        price_revision: 1,
        price_version: None,
        started_at,
        latency_ms: 3,
        ttft_ms: None,
        error_kind: None,
        attempt_log: Vec::new(),
        content: None,
        cached_response: false,
        saved_usd: 0.0,
    }
}

/// Serves `body` as a price file at `/prices.json` on a free port; returns
/// `http://127.0.0.1:PORT`.
pub async fn serve_prices(body: Vec<u8>) -> String {
    let app = axum::Router::new().route(
        "/prices.json",
        axum::routing::get(move || {
            let body = body.clone();
            async move { body }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}
