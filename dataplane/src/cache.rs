//! The exact response cache: an identical request answered again from a stored answer.
//!
//! Why: evals, agents' retries and CI send the same request many times, and each upstream
//! call is paid again. A model policy (or a key) opts in with a `cache` section
//! ([`switchboard_shared::snapshot::ResponseCache`]); `docs/response-cache.md` is the
//! operator's view.
//!
//! **The entry key** is a SHA-256 over the scope (the tenant, or one shared scope when the
//! policy says `shared_across_tenants`), the endpoint, the public model, the client's
//! `anthropic-version`/`anthropic-beta` headers and the body in canonical JSON: object keys
//! sorted at every depth, no insignificant whitespace, and without the top-level fields that
//! do not change the answer ([`IGNORED_FIELDS`]). `stream` and `stream_options` are part of
//! it, so a streamed request is answered from a stored stream and a plain one from a stored
//! JSON answer.
//!
//! **What is stored** is the successful answer exactly as the client got it (the relayed SSE
//! events, already in the client's protocol: OpenAI chunks, or Anthropic events on
//! `/v1/messages`), with what it cost. The body is copied as it passes, never held back: the
//! client's stream is not delayed; the copy is dropped as soon as it passes the policy's
//! `max_entry_bytes`. It is stored only once the request's ledger has closed as a success
//! with usage reported by the provider ([`Settled`]).
//!
//! **The client's say:** `Cache-Control: no-store` or `x-switchboard-cache: bypass` — neither
//! read nor written; `Cache-Control: no-cache` or `x-switchboard-cache: refresh` — not read,
//! the fresh answer stored. Every answer of a caching model says `x-switchboard-cache: hit`,
//! `miss` or `bypass`; a hit also carries `age` (seconds since it was stored).
//!
//! **Where entries live:** in Redis when the data plane has a `redis:` section (shared by
//! every replica; `<prefix>:rcache:<scope>:<hash>`, expiring with the TTL), else in this
//! process (at most [`LOCAL_CAPACITY_BYTES`] of answers, the oldest dropped first). A Redis
//! failure is a miss, never an error.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use http::header::{AGE, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use switchboard_shared::snapshot::ResponseCache;

use crate::catalog::{KeyEntry, ModelEntry};
use crate::observed::{Observer, observed};
use crate::providers::Endpoint;
use crate::request::RequestView;
use crate::shared_redis::SharedRedis;

/// The request header that steers the cache, and the answer header that reports it.
pub const CACHE_HEADER: &str = "x-switchboard-cache";

/// Top-level body fields left out of the entry key: they label a request (an end user's id,
/// tags, whether the provider keeps a copy) without changing the answer.
pub const IGNORED_FIELDS: [&str; 3] = ["user", "metadata", "store"];

/// The most answer bytes one process keeps without Redis.
pub const LOCAL_CAPACITY_BYTES: usize = 64 << 20;

/// Where cached answers are kept.
#[derive(Debug)]
pub struct CacheStore {
    backend: Backend,
}

#[derive(Debug)]
enum Backend {
    Local(Mutex<Local>),
    Redis(SharedRedis),
}

#[derive(Debug, Default)]
struct Local {
    entries: HashMap<String, (Instant, Arc<Entry>)>,
    order: VecDeque<String>,
    bytes: usize,
}

/// One stored answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// The answer body as the client got it (UTF-8: JSON, or SSE events).
    pub body: String,
    pub content_type: String,
    /// What the answer cost when it was generated (USD).
    pub cost_usd: f64,
    /// When it was stored, in Unix milliseconds.
    pub stored_at_ms: i64,
}

impl Default for CacheStore {
    fn default() -> Self {
        Self::new(None)
    }
}

impl CacheStore {
    /// In Redis when there is one, else in this process.
    pub fn new(redis: Option<SharedRedis>) -> Self {
        Self {
            backend: match redis {
                Some(redis) => Backend::Redis(redis),
                None => Backend::Local(Mutex::new(Local::default())),
            },
        }
    }

    /// The live entry under `key`, if any (a Redis failure is a miss).
    pub async fn get(&self, key: &str) -> Option<Entry> {
        match &self.backend {
            Backend::Local(local) => {
                let local = local.lock().ok()?;
                let (expires, entry) = local.entries.get(key)?;
                (*expires > Instant::now()).then(|| Entry::clone(entry))
            }
            Backend::Redis(redis) => {
                let mut conn = redis.conn();
                let text: Option<String> = redis::cmd("GET")
                    .arg(format!("{}:rcache:{key}", redis.prefix()))
                    .query_async(&mut conn)
                    .await
                    .inspect_err(|e| tracing::warn!(error = %e, "response cache read failed"))
                    .ok()?;
                serde_json::from_str(&text?).ok()
            }
        }
    }

    /// Keeps `entry` under `key` for `ttl`.
    pub async fn put(&self, key: &str, entry: Entry, ttl: Duration) {
        match &self.backend {
            Backend::Local(local) => {
                if let Ok(mut local) = local.lock() {
                    local.insert(key.to_owned(), entry, ttl);
                }
            }
            Backend::Redis(redis) => {
                let Ok(text) = serde_json::to_string(&entry) else {
                    return;
                };
                let mut conn = redis.conn();
                let stored = redis::cmd("SET")
                    .arg(format!("{}:rcache:{key}", redis.prefix()))
                    .arg(text)
                    .arg("PX")
                    .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
                    .query_async::<()>(&mut conn)
                    .await;
                if let Err(e) = stored {
                    tracing::warn!(error = %e, "response cache write failed");
                }
            }
        }
    }
}

impl Local {
    fn insert(&mut self, key: String, entry: Entry, ttl: Duration) {
        let size = entry.body.len();
        let now = Instant::now();
        if let Some((_, old)) = self.entries.remove(&key) {
            self.bytes -= old.body.len();
            self.order.retain(|k| *k != key);
        }
        while self.bytes + size > LOCAL_CAPACITY_BYTES
            || self.order.front().is_some_and(|k| {
                self.entries
                    .get(k)
                    .is_none_or(|(expires, _)| *expires <= now)
            })
        {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some((_, gone)) = self.entries.remove(&old) {
                self.bytes -= gone.body.len();
            }
        }
        if size <= LOCAL_CAPACITY_BYTES {
            self.bytes += size;
            self.entries
                .insert(key.clone(), (now + ttl, Arc::new(entry)));
            self.order.push_back(key);
        }
    }
}

/// What the client asked of the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Directive {
    /// Read and write.
    Use,
    /// Not read; the fresh answer is stored (`no-cache`, `refresh`).
    Refresh,
    /// Neither read nor written (`no-store`, `bypass`).
    Bypass,
}

/// The client's [`Directive`] from `Cache-Control` and [`CACHE_HEADER`].
pub fn directive(headers: &HeaderMap) -> Directive {
    let mut directive = Directive::Use;
    let cache_control = headers.get_all(CACHE_CONTROL).iter();
    let ours = headers.get_all(CACHE_HEADER).iter();
    for value in cache_control.chain(ours).filter_map(|v| v.to_str().ok()) {
        for token in value.split(',').map(str::trim) {
            if token.eq_ignore_ascii_case("no-store") || token.eq_ignore_ascii_case("bypass") {
                return Directive::Bypass;
            }
            if token.eq_ignore_ascii_case("no-cache") || token.eq_ignore_ascii_case("refresh") {
                directive = Directive::Refresh;
            }
        }
    }
    directive
}

/// The body in canonical JSON (keys sorted at every depth, no whitespace) without the
/// [`IGNORED_FIELDS`]; `None` if it is not a JSON object.
pub fn canonical_body(body: &[u8]) -> Option<Vec<u8>> {
    let Value::Object(mut fields) = serde_json::from_slice::<Value>(body).ok()? else {
        return None;
    };
    for name in IGNORED_FIELDS {
        fields.remove(name);
    }
    let mut out = Vec::with_capacity(body.len());
    write_canonical(&Value::Object(fields), &mut out);
    Some(out)
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(fields) => {
            let mut sorted: Vec<_> = fields.iter().collect();
            sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
            out.push(b'{');
            for (i, (name, value)) in sorted.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let _ = serde_json::to_writer(&mut *out, name);
                out.push(b':');
                write_canonical(value, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => {
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

/// The cache's part in one request whose model (or key) caches: where its entry is, what the
/// client asked, and the policy.
#[derive(Debug)]
pub struct Plan {
    store: Arc<CacheStore>,
    key: String,
    directive: Directive,
    policy: ResponseCache,
    /// Shared with the request's ledger once [`Plan::settled`] has been asked.
    settled: Option<Arc<Settled>>,
}

impl Plan {
    /// The plan of a request, or `None` when nothing is cached for it: the key's `cache`
    /// setting, else the model's, is absent or off; the endpoint is not chat completions or
    /// messages; or the body is not a JSON object.
    pub fn new(
        store: &Arc<CacheStore>,
        (model, key): (&ModelEntry, &KeyEntry),
        endpoint: Endpoint,
        headers: &HeaderMap,
        view: &RequestView,
    ) -> Option<Self> {
        let policy = key
            .key
            .cache()
            .or(model.policy.cache)
            .filter(|p| p.enabled)?;
        if !matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Messages)
            || view.passthrough.is_some()
        {
            return None;
        }
        let directive = directive(headers);
        let mut hash = Sha256::new();
        for part in [endpoint.as_str().as_bytes(), model.name.as_bytes()] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part);
        }
        for (name, value) in &view.anthropic_headers {
            hash.update(name.as_str().as_bytes());
            hash.update(b"\0");
            hash.update(value.as_bytes());
            hash.update(b"\0");
        }
        hash.update(canonical_body(&view.body)?);
        let digest = hex::encode(hash.finalize());
        let key = if policy.shared_across_tenants {
            format!("shared:{digest}")
        } else {
            format!("t:{}:{digest}", key.tenant.tenant.id)
        };
        Some(Self {
            store: Arc::clone(store),
            key,
            directive,
            policy,
            settled: None,
        })
    }

    /// The stored answer, unless the client said not to read one; counts the lookup.
    pub async fn lookup(&self, model: &ModelEntry) -> Option<Entry> {
        if self.directive != Directive::Use {
            model.metrics.record_cache_lookup("bypass");
            return None;
        }
        let found = self.store.get(&self.key).await;
        model
            .metrics
            .record_cache_lookup(if found.is_some() { "hit" } else { "miss" });
        found
    }

    /// Where the request's ledger reports its cost, when the answer is to be stored.
    pub fn settled(&mut self) -> Option<Arc<Settled>> {
        if self.directive == Directive::Bypass {
            return None;
        }
        Some(Arc::clone(self.settled.get_or_insert_with(Arc::default)))
    }

    /// Marks `response` as a miss (or bypass) and, when the answer is to be stored and
    /// succeeded, copies its body as it passes to store it once it is complete.
    fn fill(mut self, mut response: Response) -> Response {
        let label = match self.directive {
            Directive::Use => "miss",
            Directive::Refresh | Directive::Bypass => "bypass",
        };
        response
            .headers_mut()
            .insert(CACHE_HEADER, HeaderValue::from_static(label));
        let Some(settled) = self
            .settled
            .take()
            .filter(|_| response.status() == StatusCode::OK)
        else {
            return response;
        };
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/json")
            .to_owned();
        let limit = usize::try_from(self.policy.max_entry_bytes).unwrap_or(usize::MAX);
        response.map(|inner| {
            observed(
                inner,
                Copying {
                    copy: Some(BytesMut::new()),
                    limit,
                    finish: Some((self, settled, content_type)),
                },
            )
        })
    }
}

/// `response` as [`Plan::fill`] leaves it, for a request with a `plan`; else as it is.
pub fn fill(plan: Option<Plan>, response: Response) -> Response {
    match plan {
        Some(plan) => plan.fill(response),
        None => response,
    }
}

/// Where a request's ledger leaves the cost of a successful answer with reported usage; an
/// answer is stored only when it is set.
#[derive(Debug, Default)]
pub struct Settled(OnceLock<f64>);

impl Settled {
    /// The answer succeeded, with usage reported, at `cost_usd`.
    pub fn succeeded(&self, cost_usd: f64) {
        let _ = self.0.set(cost_usd);
    }
}

/// The answer to a request found in the cache: the stored body, `x-switchboard-cache: hit`
/// and its `age`.
pub fn hit_response(entry: Entry, now_ms: i64) -> Response {
    let sse = entry.content_type.starts_with("text/event-stream");
    let mut response = Response::new(Body::from(entry.body));
    let headers = response.headers_mut();
    let content_type = HeaderValue::from_str(&entry.content_type)
        .unwrap_or(HeaderValue::from_static("application/json"));
    headers.insert(CONTENT_TYPE, content_type);
    if sse {
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    headers.insert(CACHE_HEADER, HeaderValue::from_static("hit"));
    let age = (now_ms - entry.stored_at_ms).max(0) / 1000;
    headers.insert(AGE, HeaderValue::from(age));
    response
}

/// Keeps a copy of an answer as it passes (up to a limit) and stores it when it is complete.
struct Copying {
    copy: Option<BytesMut>,
    limit: usize,
    finish: Option<(Plan, Arc<Settled>, String)>,
}

impl Observer for Copying {
    fn data(&mut self, data: &Bytes) {
        let over = match &mut self.copy {
            Some(copy) if copy.len() + data.len() <= self.limit => {
                copy.extend_from_slice(data);
                false
            }
            Some(_) => true,
            None => false,
        };
        if over {
            self.copy = None;
            self.finish = None;
        }
    }

    /// The body is complete: stored in the background if the ledger said it succeeded.
    fn end(&mut self) {
        let (Some(copy), Some((plan, settled, content_type))) =
            (self.copy.take(), self.finish.take())
        else {
            return;
        };
        let (Some(&cost_usd), Ok(body)) = (settled.0.get(), String::from_utf8(copy.to_vec()))
        else {
            return;
        };
        let entry = Entry {
            body,
            content_type,
            cost_usd,
            stored_at_ms: chrono::Utc::now().timestamp_millis(),
        };
        let ttl = Duration::from_secs(plan.policy.ttl_seconds);
        tokio::spawn(async move { plan.store.put(&plan.key, entry, ttl).await });
    }

    fn failed(&mut self) {
        self.finish = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_bodies_ignore_order_whitespace_and_labels() {
        let a = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"user":"u1"}"#;
        let b = br#"{ "temperature": 0, "user": "u2", "messages": [ {"content": "hi", "role": "user"} ], "model": "m", "metadata": {"x": 1} }"#;
        assert_eq!(canonical_body(a), canonical_body(b));
        let c = br#"{"model":"m","messages":[{"role":"user","content":"hi!"}],"temperature":0}"#;
        assert_ne!(canonical_body(a), canonical_body(c));
        let streamed = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"temperature":0,"stream":true}"#;
        assert_ne!(canonical_body(a), canonical_body(streamed));
        assert_eq!(canonical_body(b"[1]"), None);
        assert_eq!(
            String::from_utf8(
                canonical_body(br#"{"b":{"y":1,"x":[2,{"d":1,"c":"\u00e9"}]},"a":1.5}"#).unwrap()
            )
            .unwrap(),
            r#"{"a":1.5,"b":{"x":[2,{"c":"é","d":1}],"y":1}}"#
        );
    }

    #[test]
    fn directives_come_from_cache_control_and_our_header() {
        let with = |name: &'static str, value: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(name, HeaderValue::from_static(value));
            directive(&h)
        };
        assert_eq!(directive(&HeaderMap::new()), Directive::Use);
        assert_eq!(
            with("cache-control", "max-age=0, No-Store"),
            Directive::Bypass
        );
        assert_eq!(with("cache-control", "no-cache"), Directive::Refresh);
        assert_eq!(with(CACHE_HEADER, "bypass"), Directive::Bypass);
        assert_eq!(with(CACHE_HEADER, "refresh"), Directive::Refresh);
    }

    #[tokio::test]
    async fn the_local_store_expires_and_stays_within_its_bytes() {
        let store = CacheStore::default();
        let entry = |n: usize| Entry {
            body: "x".repeat(n),
            content_type: "application/json".into(),
            cost_usd: 0.5,
            stored_at_ms: 0,
        };
        store.put("a", entry(10), Duration::from_secs(60)).await;
        assert_eq!(store.get("a").await.unwrap().cost_usd, 0.5);
        store.put("gone", entry(10), Duration::ZERO).await;
        assert!(store.get("gone").await.is_none());
        let half = LOCAL_CAPACITY_BYTES / 2 + 1;
        store.put("b", entry(half), Duration::from_secs(60)).await;
        store.put("c", entry(half), Duration::from_secs(60)).await;
        assert!(store.get("a").await.is_none() && store.get("b").await.is_none());
        assert!(store.get("c").await.is_some());
        let Backend::Local(local) = &store.backend else {
            unreachable!()
        };
        assert_eq!(local.lock().unwrap().bytes, half);
    }
}
