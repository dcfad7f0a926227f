//! What the mock remembers: requests per scenario, stream outcomes, the response counter.
//!
//! Tests read this through [`super::MockUpstream`] in-process, or through `GET /mock/stats`
//! from another process. With recording off (the benchmark) only counts are kept, so the cost
//! per request is one uncontended lock and a counter increment.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use bytes::Bytes;

use super::render::Templates;

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    /// The path without the `/s/<scenario>` prefix, e.g. `/v1/chat/completions`.
    pub path: String,
    /// The query string, if any (Azure's `api-version`).
    pub query: Option<String>,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    pub received_at: Instant,
}

impl RecordedRequest {
    /// The body parsed as JSON (`Value::Null` if it is not JSON), for assertions.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// A header's value as text, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

#[derive(Debug, Default)]
struct ScenarioLog {
    count: u64,
    requests: Vec<RecordedRequest>,
}

/// The shared state of one mock instance.
#[derive(Debug)]
pub struct State {
    record: bool,
    scenarios: Mutex<HashMap<String, ScenarioLog>>,
    pub cancelled_streams: AtomicUsize,
    pub completed_streams: AtomicUsize,
    /// TCP connections accepted, to tell keep-alive reuse from reconnecting.
    pub connections_accepted: AtomicUsize,
    /// Requests being answered now: from arrival until the last byte of the answer is sent
    /// (or the client goes away).
    pub in_flight: AtomicUsize,
    /// The most `in_flight` has been since the start (or the last reset).
    pub max_in_flight: AtomicUsize,
    next_id: AtomicU64,
    pub templates: Templates,
    /// Vertex AI access tokens issued by the token endpoint, with their expiry
    /// ([`super::vertex`]).
    pub vertex_tokens: Mutex<HashMap<String, Instant>>,
    /// How many tokens the token endpoint has issued.
    pub tokens_issued: AtomicUsize,
}

impl State {
    pub fn new(record: bool) -> anyhow::Result<Self> {
        Ok(Self {
            record,
            scenarios: Mutex::default(),
            cancelled_streams: AtomicUsize::new(0),
            completed_streams: AtomicUsize::new(0),
            connections_accepted: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            next_id: AtomicU64::new(1),
            templates: Templates::build()?,
            vertex_tokens: Mutex::default(),
            tokens_issued: AtomicUsize::new(0),
        })
    }

    fn scenarios(&self) -> MutexGuard<'_, HashMap<String, ScenarioLog>> {
        // The map stays consistent even if a holder panicked: every update is one statement.
        self.scenarios
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts (and, when recording, keeps) a request; returns how many requests this scenario
    /// string had received before it.
    pub fn record(&self, scenario: &str, request: impl FnOnce() -> RecordedRequest) -> u64 {
        let mut scenarios = self.scenarios();
        let log = match scenarios.get_mut(scenario) {
            Some(log) => log,
            None => scenarios.entry(scenario.to_owned()).or_default(),
        };
        let index = log.count;
        log.count += 1;
        if self.record {
            log.requests.push(request());
        }
        index
    }

    pub fn requests(&self, scenario: &str) -> Vec<RecordedRequest> {
        self.scenarios()
            .get(scenario)
            .map(|log| log.requests.clone())
            .unwrap_or_default()
    }

    pub fn request_count(&self, scenario: &str) -> usize {
        self.scenarios()
            .get(scenario)
            .map_or(0, |log| usize::try_from(log.count).unwrap_or(usize::MAX))
    }

    /// A request arrives: in flight until the returned guard is dropped.
    pub fn enter(self: &std::sync::Arc<Self>) -> InFlightGuard {
        let now = self.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        self.max_in_flight.fetch_max(now, Ordering::AcqRel);
        InFlightGuard(std::sync::Arc::clone(self))
    }

    /// A fresh response number.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// The `/mock/stats` document.
    pub fn stats_json(&self) -> Bytes {
        let requests: BTreeMap<String, u64> = self
            .scenarios()
            .iter()
            .map(|(name, log)| (name.clone(), log.count))
            .collect();
        let doc = serde_json::json!({
            "requests": requests,
            "cancelled_streams": self.cancelled_streams.load(Ordering::Relaxed),
            "completed_streams": self.completed_streams.load(Ordering::Relaxed),
            "in_flight": self.in_flight.load(Ordering::Relaxed),
            "max_in_flight": self.max_in_flight.load(Ordering::Relaxed),
            "tokens_issued": self.tokens_issued.load(Ordering::Relaxed),
        });
        Bytes::from(doc.to_string())
    }
}

/// Marks one request in flight at the mock until dropped.
#[derive(Debug)]
pub struct InFlightGuard(std::sync::Arc<State>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}
