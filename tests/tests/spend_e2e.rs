//! Every token and cent, end to end: clients → two cluster-mode data planes (the real server
//! entry point, with their own usage publishers) → JetStream → the control plane's ingestion →
//! Postgres, with prices synced from LiteLLM's price file.
//!
//! - N requests of every kind (streamed and not, cached prompts, a prompt past a long-context
//!   tier, cache writes, streams the client cuts off) become exactly N spend rows, one per
//!   request id the clients were given, each costing what the price file's rates say — the
//!   rates are written out here by hand and checked against the file.
//! - The control plane killed and restarted, and NATS killed and restarted, while load runs:
//!   still exactly one row per request.
//! - Redis restarted empty under an exhausted budget: the control plane restores the counters
//!   from Postgres, and the budget keeps refusing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // Test helpers report failure by panicking.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{ControlPlane, MASTER_KEYS, unique_namespace};
use common::*;
use controlplane::config::RedisSettings;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;
use sqlx::PgPool;
use switchboard_shared::budget::{BudgetScope, counter_key, period_of, usd_to_nanos};
use switchboard_shared::cluster::NatsNames;
use switchboard_shared::snapshot::{Budget, BudgetPeriod};
use switchboard_tests::services::{ThrowawayNats, ThrowawayRedis, nats_url};

const PRICE_FILE: &str = "../shared/data/model_prices_and_context_window.json";

/// The kinds of request the clients send. Each model sits on its own mock scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// `gpt-4o`; the upstream reports 19 prompt tokens (7 cached) and 10 completion tokens.
    Cached,
    /// The same, streamed: 8 content chunks, so 8 completion tokens.
    CachedStream,
    /// `gemini/gemini-2.5-pro`; a 250,000-token prompt (1,000 cached): the `_above_200k` rates.
    LongContext,
    LongContextStream,
    /// `claude-sonnet-4-5` (Anthropic wire format, translated): 25 uncached, 10 cache-write,
    /// 40 cache-read prompt tokens, 15 completion tokens.
    CacheWrite,
    CacheWriteStream,
    /// A slow `gpt-4o` stream the client drops after its first bytes.
    CutOff,
}

impl Kind {
    const ALL: [Kind; 7] = [
        Kind::Cached,
        Kind::CachedStream,
        Kind::LongContext,
        Kind::LongContextStream,
        Kind::CacheWrite,
        Kind::CacheWriteStream,
        Kind::CutOff,
    ];

    fn model(self) -> &'static str {
        match self {
            Kind::Cached | Kind::CachedStream => "m-4o",
            Kind::LongContext | Kind::LongContextStream => "m-long",
            Kind::CacheWrite | Kind::CacheWriteStream => "m-claude",
            Kind::CutOff => "m-slow",
        }
    }

    fn stream(self) -> bool {
        matches!(
            self,
            Kind::CachedStream | Kind::LongContextStream | Kind::CacheWriteStream | Kind::CutOff
        )
    }

    /// (prompt, cached read, cache creation, completion) the upstream reports.
    fn usage(self) -> Option<(i64, i64, i64, i64)> {
        match self {
            Kind::Cached => Some((19, 7, 0, 10)),
            Kind::CachedStream => Some((19, 7, 0, 8)),
            Kind::LongContext => Some((250_000, 1_000, 0, 10)),
            Kind::LongContextStream => Some((250_000, 1_000, 0, 8)),
            Kind::CacheWrite | Kind::CacheWriteStream => Some((75, 40, 10, 15)),
            Kind::CutOff => None,
        }
    }
}

/// The rates of the price file's entries, written out by hand (USD per token); checked
/// against the file by [`the_hand_written_rates_are_the_files`].
mod rates {
    pub const GPT_4O_INPUT: f64 = 2.5e-6;
    pub const GPT_4O_OUTPUT: f64 = 1e-5;
    pub const GPT_4O_CACHE_READ: f64 = 1.25e-6;
    pub const GEMINI_PRO_INPUT_ABOVE_200K: f64 = 2.5e-6;
    pub const GEMINI_PRO_OUTPUT_ABOVE_200K: f64 = 1.5e-5;
    pub const GEMINI_PRO_CACHE_READ_ABOVE_200K: f64 = 2.5e-7;
    pub const SONNET_45_INPUT: f64 = 3e-6;
    pub const SONNET_45_OUTPUT: f64 = 1.5e-5;
    pub const SONNET_45_CACHE_READ: f64 = 3e-7;
    pub const SONNET_45_CACHE_WRITE: f64 = 3.75e-6;
}

/// What a request of `kind` with these token counts costs, by hand.
fn hand_cost(kind: Kind, prompt: i64, cached: i64, created: i64, completion: i64) -> f64 {
    use rates::*;
    let uncached = (prompt - cached - created) as f64;
    match kind {
        Kind::Cached | Kind::CachedStream | Kind::CutOff => {
            uncached * GPT_4O_INPUT
                + cached as f64 * GPT_4O_CACHE_READ
                + completion as f64 * GPT_4O_OUTPUT
        }
        Kind::LongContext | Kind::LongContextStream => {
            uncached * GEMINI_PRO_INPUT_ABOVE_200K
                + cached as f64 * GEMINI_PRO_CACHE_READ_ABOVE_200K
                + completion as f64 * GEMINI_PRO_OUTPUT_ABOVE_200K
        }
        Kind::CacheWrite | Kind::CacheWriteStream => {
            uncached * SONNET_45_INPUT
                + cached as f64 * SONNET_45_CACHE_READ
                + created as f64 * SONNET_45_CACHE_WRITE
                + completion as f64 * SONNET_45_OUTPUT
        }
    }
}

#[test]
fn the_hand_written_rates_are_the_files() {
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(PRICE_FILE).unwrap()).unwrap();
    let rate = |model: &str, field: &str| file[model][field].as_f64().unwrap();
    use rates::*;
    assert_eq!(rate("gpt-4o", "input_cost_per_token"), GPT_4O_INPUT);
    assert_eq!(rate("gpt-4o", "output_cost_per_token"), GPT_4O_OUTPUT);
    assert_eq!(
        rate("gpt-4o", "cache_read_input_token_cost"),
        GPT_4O_CACHE_READ
    );
    let gemini = "gemini/gemini-2.5-pro";
    assert_eq!(
        rate(gemini, "input_cost_per_token_above_200k_tokens"),
        GEMINI_PRO_INPUT_ABOVE_200K
    );
    assert_eq!(
        rate(gemini, "output_cost_per_token_above_200k_tokens"),
        GEMINI_PRO_OUTPUT_ABOVE_200K
    );
    assert_eq!(
        rate(gemini, "cache_read_input_token_cost_above_200k_tokens"),
        GEMINI_PRO_CACHE_READ_ABOVE_200K
    );
    let sonnet = "claude-sonnet-4-5";
    assert_eq!(rate(sonnet, "input_cost_per_token"), SONNET_45_INPUT);
    assert_eq!(rate(sonnet, "output_cost_per_token"), SONNET_45_OUTPUT);
    assert_eq!(
        rate(sonnet, "cache_read_input_token_cost"),
        SONNET_45_CACHE_READ
    );
    assert_eq!(
        rate(sonnet, "cache_creation_input_token_cost"),
        SONNET_45_CACHE_WRITE
    );
}

/// A control plane, two data planes and the mock upstream, on one NATS.
struct Cluster {
    pool: PgPool,
    /// The price-file version the sync made, which every row must name.
    price_version: i64,
    namespace: String,
    nats: String,
    cp: ControlPlane,
    mock: MockUpstream,
    secret: String,
    key_id: String,
    /// The data planes' `redis:` section, if they share one.
    redis_yaml: String,
    planes: Vec<DataPlane>,
    _dir: tempfile::TempDir,
}

/// A data plane run through the real server entry point (`dataplane::serve_until`).
struct DataPlane {
    base: String,
    /// Dropping it would shut the data plane down.
    _stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for DataPlane {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Cluster {
    async fn start(pool: PgPool, nats: &str) -> Cluster {
        Self::start_with(pool, nats, None).await
    }

    /// With `redis` (URL, key prefix), shared by the data planes and reconciled by the control
    /// plane every 200 ms; data planes fail closed while it is down.
    async fn start_with(pool: PgPool, nats: &str, redis: Option<(String, String)>) -> Cluster {
        let synced =
            controlplane::service::prices::sync_from_file(&pool, std::path::Path::new(PRICE_FILE))
                .await
                .unwrap();
        let namespace = unique_namespace();
        let mock = MockUpstream::start().await.unwrap();
        let reconcile = redis.as_ref().map(|(url, prefix)| RedisSettings {
            url: url.clone(),
            key_prefix: prefix.clone(),
            reconcile_interval: Duration::from_millis(200),
        });
        let redis_yaml = redis.map_or_else(String::new, |(url, prefix)| {
            format!(
                "redis:\n  url: {{ value: \"{url}\" }}\n  key_prefix: {prefix}\n  failure_policy: closed\n"
            )
        });
        let cp = ControlPlane::start_with(pool.clone(), &namespace, nats, reconcile).await;
        cp.write(Method::POST, "/admin/v1/tenants", json!({"id": "acme"}))
            .await;
        let providers = [
            ("p-4o", "openai", mock.scenario_url("cached=7,chunks=8")),
            (
                "p-long",
                "openai",
                mock.scenario_url("prompt=250000,cached=1000,chunks=8"),
            ),
            ("p-claude", "anthropic", mock.base_url()),
            (
                "p-slow",
                "openai",
                mock.scenario_url("chunks=40,interval_ms=25"),
            ),
        ];
        for (id, kind, url) in providers {
            cp.write(
                Method::POST,
                "/admin/v1/providers",
                json!({"id": id, "kind": kind, "base_url": url, "api_key": "sk-upstream-e2e"}),
            )
            .await;
        }
        // No `price` of their own: each deployment is priced by its upstream model's entry
        // in the synced file.
        for (id, model, provider, upstream) in [
            ("d-4o", "m-4o", "p-4o", "gpt-4o"),
            ("d-long", "m-long", "p-long", "gemini/gemini-2.5-pro"),
            ("d-claude", "m-claude", "p-claude", "claude-sonnet-4-5"),
            ("d-slow", "m-slow", "p-slow", "gpt-4o"),
        ] {
            cp.write(
                Method::POST,
                "/admin/v1/deployments",
                json!({"id": id, "model": model, "provider": provider, "upstream_model": upstream}),
            )
            .await;
        }
        let created = cp
            .write(Method::POST, "/admin/v1/keys", json!({"tenant_id": "acme"}))
            .await;
        let secret = created.json()["key"].as_str().unwrap().to_owned();
        let key_id = created.json()["id"].as_str().unwrap().to_owned();
        let mut cluster = Cluster {
            pool,
            price_version: synced.version_id,
            namespace,
            nats: nats.to_owned(),
            cp,
            mock,
            secret,
            key_id,
            redis_yaml,
            planes: Vec::new(),
            _dir: tempfile::tempdir().unwrap(),
        };
        for name in ["a", "b"] {
            let plane = cluster.data_plane(name).await;
            cluster.planes.push(plane);
        }
        cluster
    }

    /// Starts a data plane following the control plane, and waits until it serves the key.
    async fn data_plane(&self, name: &str) -> DataPlane {
        let dir = self._dir.path();
        let config = format!(
            "server:\n  key_pepper: {{ value: \"{PEPPER}\" }}\n  shutdown_grace_seconds: 1\n\
             cluster:\n  namespace: {ns}\n  nats_url: \"{nats}\"\n  controlplane_grpc: \"{grpc}\"\n  \
             heartbeat_interval_ms: 500\n  snapshot_cache: \"{cache}\"\n  usage_spill_path: \"{spill}\"\n{trust}{redis}",
            ns = self.namespace,
            nats = self.nats,
            grpc = self.cp.grpc,
            cache = dir.join(format!("{name}.snapshot.json")).display(),
            spill = dir.join(format!("{name}.usage.jsonl")).display(),
            redis = self.redis_yaml,
            trust = common::cluster::trust_yaml(),
        );
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, config).unwrap();
        let (addr_tx, addr_rx) = tokio::sync::oneshot::channel();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(dataplane::serve_until(
            dataplane::Options {
                config_path: path,
                listen: Some("127.0.0.1:0".parse().unwrap()),
                master_keys: Some(MASTER_KEYS.to_owned()),
                ..Default::default()
            },
            async move {
                let _ = stop_rx.await;
            },
            move |addr| {
                let _ = addr_tx.send(addr);
            },
        ));
        let base = format!("http://{}", addr_rx.await.unwrap());
        let plane = DataPlane {
            base,
            _stop: stop_tx,
            task,
        };
        // Ready when it answers a request with the key (that request is sent and counted
        // like any other by the callers, so use a model-listing call instead).
        let started = Instant::now();
        loop {
            let reply = send(request(
                Method::GET,
                &format!("{}/v1/models", plane.base),
                &[("authorization", &format!("Bearer {}", self.secret))],
                "",
            ))
            .await;
            if reply.status == StatusCode::OK && reply.text().contains("m-slow") {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "data plane {name} never served the key"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        plane
    }

    /// Sends one request of `kind` to data plane `plane`; returns the request id it was given
    /// and its status. A cut-off stream is dropped after its first body bytes.
    async fn send(&self, plane: usize, kind: Kind) -> (String, StatusCode) {
        let body = json!({
            "model": kind.model(),
            "stream": kind.stream(),
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "How much does this cost?"}],
        })
        .to_string();
        let auth = format!("Bearer {}", self.secret);
        let req = request(
            Method::POST,
            &format!("{}/v1/chat/completions", self.planes[plane].base),
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body,
        );
        let response = client().request(req).await.expect("the data plane answers");
        let status = response.status();
        let id = response
            .headers()
            .get("x-request-id")
            .expect("every answer names its request id")
            .to_str()
            .unwrap()
            .to_owned();
        let mut body = response.into_body();
        if kind == Kind::CutOff {
            let first = body.frame().await.unwrap().unwrap();
            assert!(first.is_data());
            drop(body);
        } else {
            while let Some(frame) = body.frame().await {
                frame.expect("the answer completes");
            }
        }
        (id, status)
    }

    /// A small non-streamed `m-4o` chat through the data plane at `base`, read whole.
    async fn chat_4o(&self, base: &str) -> Reply {
        send(request(
            Method::POST,
            &format!("{base}/v1/chat/completions"),
            &[
                ("authorization", &format!("Bearer {}", self.secret)),
                ("content-type", "application/json"),
            ],
            json!({"model": "m-4o", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
        ))
        .await
    }

    /// Waits until `spend_events` holds at least `n` rows (or `within` passes); returns them.
    async fn spend_rows(&self, n: usize, within: Duration) -> BTreeMap<String, SpendRow> {
        let deadline = Instant::now() + within;
        loop {
            let rows: Vec<SpendRow> = sqlx::query_as(
                "SELECT request_id, model, outcome, stream, usage_reported, prompt_tokens, \
                 cached_read_tokens, cache_creation_tokens, completion_tokens, cost_usd, \
                 price_version FROM spend_events",
            )
            .fetch_all(&self.pool)
            .await
            .unwrap();
            if rows.len() >= n || Instant::now() > deadline {
                let count = rows.len();
                let by_id: BTreeMap<String, SpendRow> = rows
                    .into_iter()
                    .map(|r| (r.request_id.clone(), r))
                    .collect();
                assert_eq!(by_id.len(), count, "a request id has two rows");
                return by_id;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn drop_usage_stream(&self) {
        let js = async_nats::jetstream::new(async_nats::connect(&self.nats).await.unwrap());
        let names = NatsNames::new(&self.namespace);
        let _ = js.delete_stream(&names.usage_stream).await;
        let _ = js.delete_stream(&names.config_stream).await;
        let _ = js.delete_object_store(&names.snapshot_bucket).await;
    }
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct SpendRow {
    request_id: String,
    model: String,
    outcome: String,
    stream: bool,
    usage_reported: bool,
    prompt_tokens: i64,
    cached_read_tokens: i64,
    cache_creation_tokens: i64,
    completion_tokens: i64,
    cost_usd: f64,
    price_version: Option<i64>,
}

/// Checks one row against the request that made it and the price version that priced it.
fn check_row(kind: Kind, row: &SpendRow, price_version: i64) {
    assert_eq!(row.model, kind.model(), "{row:?}");
    assert_eq!(row.price_version, Some(price_version), "{row:?}");
    assert_eq!(row.stream, kind.stream(), "{row:?}");
    match kind.usage() {
        Some((prompt, cached, created, completion)) => {
            assert_eq!(row.outcome, "success", "{row:?}");
            assert!(row.usage_reported, "{row:?}");
            assert_eq!(
                (
                    row.prompt_tokens,
                    row.cached_read_tokens,
                    row.cache_creation_tokens,
                    row.completion_tokens
                ),
                (prompt, cached, created, completion),
                "{kind:?}"
            );
        }
        None => {
            // Cut off: charged what was generated, never $0 — the prompt (estimated, no
            // report arrived) and one token per event relayed, at most the whole stream.
            assert_eq!(row.outcome, "client_disconnected", "{row:?}");
            assert!(!row.usage_reported, "{row:?}");
            assert!(row.prompt_tokens > 0, "{row:?}");
            assert!(
                (1..=42).contains(&row.completion_tokens),
                "{row:?}: 40 content chunks plus role and finish at most"
            );
            assert_eq!(row.cached_read_tokens + row.cache_creation_tokens, 0);
        }
    }
    let want = hand_cost(
        kind,
        row.prompt_tokens,
        row.cached_read_tokens,
        row.cache_creation_tokens,
        row.completion_tokens,
    );
    assert!(want > 0.0);
    assert!(
        (row.cost_usd - want).abs() <= want * 1e-12,
        "{kind:?}: recorded {} but the price file says {want}",
        row.cost_usd
    );
}

#[sqlx::test(migrations = "../migrations")]
async fn every_request_through_two_data_planes_is_one_row_at_the_files_prices(pool: PgPool) {
    let cluster = Cluster::start(pool.clone(), &nats_url()).await;

    // 8 of each kind, alternating between the data planes, some at the same time.
    let mut sent: Vec<(String, Kind)> = Vec::new();
    for round in 0..8 {
        let batch = Kind::ALL.iter().enumerate().map(|(i, &kind)| {
            let cluster = &cluster;
            async move {
                let (id, status) = cluster.send((round + i) % 2, kind).await;
                assert_eq!(status, StatusCode::OK, "{kind:?}");
                (id, kind)
            }
        });
        sent.extend(futures_util::future::join_all(batch).await);
    }
    let n = sent.len();
    assert_eq!(n, 56);
    let ids: BTreeSet<&str> = sent.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), n, "request ids are unique");

    let rows = cluster.spend_rows(n, Duration::from_secs(30)).await;
    assert_eq!(rows.len(), n, "exactly one spend row per request");
    for (id, kind) in &sent {
        let row = rows
            .get(id)
            .unwrap_or_else(|| panic!("no row for {kind:?} {id}"));
        check_row(*kind, row, cluster.price_version);
    }
    // The daily rollups agree with the rows.
    let (requests, cost): (i64, f64) =
        sqlx::query_as("SELECT sum(requests)::bigint, sum(cost_usd) FROM spend_daily")
            .fetch_one(&pool)
            .await
            .unwrap();
    let row_cost: f64 = rows.values().map(|r| r.cost_usd).sum();
    assert_eq!(requests as usize, n);
    assert!((cost - row_cost).abs() < 1e-9, "{cost} vs {row_cost}");
    // The cut-off streams really were cut off upstream.
    assert!(cluster.mock.cancelled_streams() >= 8);
    cluster.drop_usage_stream().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn no_row_is_lost_or_doubled_when_the_control_plane_and_nats_restart(pool: PgPool) {
    let mut nats = ThrowawayNats::start().await;
    let cluster = Arc::new(tokio::sync::RwLock::new(
        Cluster::start(pool.clone(), &nats.url()).await,
    ));

    // Four clients send requests of every kind but the cut-off one, paced, round robin over
    // both data planes, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for c in 0..4usize {
        let cluster = Arc::clone(&cluster);
        let stop = Arc::clone(&stop);
        clients.push(tokio::spawn(async move {
            let mut sent = Vec::new();
            let mut i = c;
            while !stop.load(Ordering::Relaxed) {
                let kind = Kind::ALL[i % 6];
                let (id, status) = cluster.read().await.send(i % 2, kind).await;
                assert_eq!(status, StatusCode::OK, "{kind:?} {id}");
                sent.push((id, kind));
                i += 1;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            sent
        }));
    }

    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The control plane dies mid-load and comes back a second later.
    {
        let mut guard = cluster.write().await;
        guard.cp.kill();
    }
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (pool, namespace) = {
        let guard = cluster.read().await;
        (guard.pool.clone(), guard.namespace.clone())
    };
    let restarted = ControlPlane::start_on(pool, &namespace, &nats.url()).await;
    cluster.write().await.cp = restarted;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // NATS dies mid-load and comes back (its file store survives, as in production).
    nats.stop().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    nats.restart().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);

    let mut sent: Vec<(String, Kind)> = Vec::new();
    for client in clients {
        sent.extend(client.await.unwrap());
    }
    let n = sent.len();
    assert!(n > 100, "only {n} requests were sent");
    eprintln!("{n} requests sent across a control-plane kill and a NATS restart");

    let cluster = cluster.read().await;
    // A batch the killed control plane had fetched but not acknowledged is redelivered after
    // the consumer's ack wait (30 s): allow for it.
    let waited = Instant::now();
    let rows = cluster.spend_rows(n, Duration::from_secs(90)).await;
    eprintln!(
        "all rows in Postgres {:?} after the load ended",
        waited.elapsed()
    );
    let missing: Vec<&str> = sent
        .iter()
        .map(|(id, _)| id.as_str())
        .filter(|id| !rows.contains_key(*id))
        .collect();
    assert!(missing.is_empty(), "{} requests have no row", missing.len());
    assert_eq!(rows.len(), n, "exactly one spend row per request");
    for (id, kind) in &sent {
        check_row(*kind, &rows[id], cluster.price_version);
    }
    cluster.drop_usage_stream().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn an_exhausted_budget_holds_when_redis_restarts_empty(pool: PgPool) {
    let mut redis = ThrowawayRedis::start().await;
    let prefix = format!("sb{}", uuid::Uuid::now_v7().simple());
    let cluster = Cluster::start_with(
        pool.clone(),
        &nats_url(),
        Some((redis.url(), prefix.clone())),
    )
    .await;
    let budget = Budget {
        max_usd: 0.002,
        soft_usd: None,
        period: BudgetPeriod::Daily,
        time_zone: None,
    };
    cluster
        .cp
        .write(
            Method::PUT,
            &format!("/admin/v1/keys/{}/budget?wait_ms=5000", cluster.key_id),
            serde_json::to_value(&budget).unwrap(),
        )
        .await;

    // Spend it: each answer costs $0.00013875, each admission reserves its maximum first.
    let mut admitted = Vec::new();
    let refusal = loop {
        let reply = cluster
            .chat_4o(&cluster.planes[admitted.len() % 2].base)
            .await;
        if reply.status != StatusCode::OK {
            break reply;
        }
        admitted.push(reply.headers["x-request-id"].to_str().unwrap().to_owned());
        assert!(admitted.len() < 100, "the budget never ran out");
    };
    let error = refusal.openai_error(429);
    assert_eq!(error["code"], "budget_exceeded", "{error}");
    let rows = cluster
        .spend_rows(admitted.len(), Duration::from_secs(30))
        .await;
    assert_eq!(rows.len(), admitted.len());
    let spent: i64 = rows.values().map(|r| usd_to_nanos(r.cost_usd)).sum();

    // Redis restarts with nothing in it (no persistence): the counter is gone.
    let key = counter_key(
        &prefix,
        BudgetScope::Key,
        &cluster.key_id,
        "acme",
        &period_of(&budget, chrono::Utc::now()),
    );
    let port = redis.port;
    redis.stop().await;
    let redis = ThrowawayRedis::start_on(port).await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();

    // The control plane puts back what Postgres says was spent this period.
    let started = Instant::now();
    let restored: i64 = loop {
        let value: Option<i64> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if let Some(value) = value.filter(|v| *v >= spent) {
            break value;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the counter was never restored (now {value:?}, Postgres says {spent})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(restored, spent, "restored to exactly the spend in Postgres");

    // So both data planes, once they reach Redis again, still refuse the key.
    for plane in &cluster.planes {
        let started = Instant::now();
        let reply = loop {
            let reply = cluster.chat_4o(&plane.base).await;
            // 503 while this replica still counts Redis as down (failure_policy: closed).
            if reply.status != StatusCode::SERVICE_UNAVAILABLE {
                break reply;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "Redis never came back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let error = reply.openai_error(429);
        assert_eq!(error["code"], "budget_exceeded", "{error}");
    }
    cluster.drop_usage_stream().await;
}

#[sqlx::test(migrations = "../migrations")]
async fn one_client_request_id_five_times_is_five_spend_rows(pool: PgPool) {
    let cluster = Cluster::start(pool.clone(), &nats_url()).await;
    let mut gateway_ids = BTreeSet::new();
    for i in 0..5 {
        let reply = send(request(
            Method::POST,
            &format!("{}/v1/chat/completions", cluster.planes[i % 2].base),
            &[
                ("authorization", &format!("Bearer {}", cluster.secret)),
                ("content-type", "application/json"),
                ("x-request-id", "the-same-every-time"),
            ],
            json!({"model": "m-4o", "max_tokens": 64, "messages": [{"role": "user", "content": "hi"}]})
                .to_string(),
        ))
        .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert_eq!(reply.headers["x-request-id"], "the-same-every-time");
        let id = reply.headers["x-switchboard-request-id"].to_str().unwrap();
        gateway_ids.insert(id.to_owned());
    }
    assert_eq!(gateway_ids.len(), 5);
    let rows = cluster.spend_rows(5, Duration::from_secs(30)).await;
    let row_ids: BTreeSet<String> = rows.keys().cloned().collect();
    assert_eq!(
        row_ids, gateway_ids,
        "one spend row per request, under the gateway's id"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let logged = loop {
        let logged: Vec<(String, Option<String>)> =
            sqlx::query_as("SELECT request_id, client_request_id FROM request_log")
                .fetch_all(&pool)
                .await
                .unwrap();
        if logged.len() >= 5 || Instant::now() > deadline {
            break logged;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(logged.len(), 5, "{logged:?}");
    for (id, client_id) in &logged {
        assert!(gateway_ids.contains(id), "{id}");
        assert_eq!(client_id.as_deref(), Some("the-same-every-time"));
    }
    cluster.drop_usage_stream().await;
}
