//! The load generator: N keep-alive connections, each sending one request after another for
//! a fixed time, recording every latency.
//!
//! It runs in the benchmark process on a current-thread runtime, pinned to the mock's core (as
//! wrk was for the reference figures), so the proxy under test has the other core alone. Each
//! response body is read to its end; a stream counts as an error unless it ends with
//! `data: [DONE]`, so a proxy that cuts streams cannot look fast.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Full};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::http::{Connection, connect};

/// Longest a single request may take before it counts as an error.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How many distinct error descriptions to keep for the report.
const ERROR_SAMPLES: usize = 3;

/// What to send, where, and for how long.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub addr: SocketAddr,
    pub path: String,
    pub body: Bytes,
    pub bearer: String,
    pub stream: bool,
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// What the measured window saw.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    /// Successful requests completed in the window.
    pub requests: u64,
    /// Failed requests (non-2xx, transport error, timeout, stream without `[DONE]`).
    pub errors: u64,
    /// A few distinct error descriptions.
    pub error_samples: Vec<String>,
    /// Latencies of the successful requests, microseconds, sorted.
    pub latencies_us: Vec<u32>,
}

impl LoadResult {
    /// The `q`-quantile latency in milliseconds (nearest rank), 0 with no samples.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        if self.latencies_us.is_empty() {
            return 0.0;
        }
        let last = self.latencies_us.len() - 1;
        let rank = ((q * self.latencies_us.len() as f64).ceil() as usize).clamp(1, last + 1) - 1;
        f64::from(self.latencies_us[rank]) / 1000.0
    }

    fn merge(&mut self, other: WorkerResult) {
        self.requests += other.latencies_us.len() as u64;
        self.errors += other.errors;
        self.latencies_us.extend(other.latencies_us);
        for sample in other.error_samples {
            if self.error_samples.len() < ERROR_SAMPLES && !self.error_samples.contains(&sample) {
                self.error_samples.push(sample);
            }
        }
    }
}

#[derive(Debug, Default)]
struct WorkerResult {
    errors: u64,
    error_samples: Vec<String>,
    latencies_us: Vec<u32>,
}

impl WorkerResult {
    fn error(&mut self, counted: bool, description: String) {
        if counted {
            self.errors += 1;
        }
        if self.error_samples.len() < ERROR_SAMPLES && !self.error_samples.contains(&description) {
            self.error_samples.push(description);
        }
    }
}

/// Runs the load; `at_window_start` and `at_window_end` are called at the edges of the
/// measured window (to sample a proxy's CPU time).
pub async fn run(
    spec: &LoadSpec,
    mut at_window_start: impl FnMut(),
    mut at_window_end: impl FnMut(),
) -> LoadResult {
    let window_start = Instant::now() + spec.warmup;
    let window_end = window_start + spec.duration;
    let spec = Arc::new(spec.clone());
    let mut workers = JoinSet::new();
    for _ in 0..spec.concurrency {
        workers.spawn(worker(Arc::clone(&spec), window_start, window_end));
    }
    tokio::time::sleep_until(window_start).await;
    at_window_start();
    tokio::time::sleep_until(window_end).await;
    at_window_end();
    let mut result = LoadResult::default();
    // Every worker stops by itself within REQUEST_TIMEOUT after the window; this bounds it
    // again in case one is stuck somewhere unexpected.
    let collect = async {
        while let Some(joined) = workers.join_next().await {
            if let Ok(worker) = joined {
                result.merge(worker);
            }
        }
    };
    if tokio::time::timeout(REQUEST_TIMEOUT + Duration::from_secs(2), collect)
        .await
        .is_err()
    {
        workers.abort_all();
    }
    result.latencies_us.sort_unstable();
    result
}

async fn worker(spec: Arc<LoadSpec>, window_start: Instant, window_end: Instant) -> WorkerResult {
    let mut result = WorkerResult {
        latencies_us: Vec::with_capacity(4096),
        ..WorkerResult::default()
    };
    let mut connection: Option<Connection> = None;
    while Instant::now() < window_end {
        let sender = match connection.as_mut() {
            Some(sender) => sender,
            None => match connect(spec.addr).await {
                Ok(sender) => connection.insert(sender),
                Err(error) => {
                    let counted = Instant::now() >= window_start;
                    result.error(counted, format!("connect: {error}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let started = Instant::now();
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, one_request(sender, &spec)).await;
        let finished = Instant::now();
        let counted = finished >= window_start && finished <= window_end;
        match outcome {
            Ok(Ok(())) => {
                if counted {
                    let micros = (finished - started).as_micros();
                    result
                        .latencies_us
                        .push(u32::try_from(micros).unwrap_or(u32::MAX));
                }
            }
            Ok(Err(Failure::Answer(description))) => result.error(counted, description),
            Ok(Err(Failure::Transport(description))) => {
                result.error(counted, description);
                connection = None;
            }
            Err(_) => {
                result.error(counted, format!("no answer within {REQUEST_TIMEOUT:?}"));
                connection = None;
            }
        }
    }
    result
}

/// Why a request failed: a bad answer keeps the connection, a transport failure does not.
enum Failure {
    Answer(String),
    Transport(String),
}

async fn one_request(sender: &mut Connection, spec: &LoadSpec) -> Result<(), Failure> {
    let transport = |e: &dyn std::fmt::Display| Failure::Transport(e.to_string());
    sender.ready().await.map_err(|e| transport(&e))?;
    let request = Request::post(spec.path.as_str())
        .header(http::header::HOST, spec.addr.to_string())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::AUTHORIZATION, spec.bearer.as_str())
        .body(Full::new(spec.body.clone()))
        .map_err(|e| transport(&e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| transport(&e))?;
    let status = response.status();
    let mut body = response.into_body();
    // Only the end of the body matters: keep a short tail to look for [DONE].
    let mut tail: Vec<u8> = Vec::with_capacity(64);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| transport(&e))?;
        if let Some(data) = frame.data_ref() {
            tail.extend_from_slice(&data[data.len().saturating_sub(32)..]);
            let excess = tail.len().saturating_sub(32);
            tail.drain(..excess);
        }
    }
    if !status.is_success() {
        return Err(Failure::Answer(format!("status {status}")));
    }
    if spec.stream && !trimmed(&tail).ends_with(b"data: [DONE]") {
        return Err(Failure::Answer("stream did not end with [DONE]".to_owned()));
    }
    Ok(())
}

fn trimmed(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mock::MockUpstream;

    #[tokio::test]
    async fn drives_the_mock_and_checks_streams() {
        let mock = MockUpstream::start().await.unwrap();
        let spec = LoadSpec {
            addr: mock.addr(),
            path: "/s/chunks=3/v1/chat/completions".to_owned(),
            body: Bytes::from_static(br#"{"model":"m","stream":true}"#),
            bearer: "Bearer x".to_owned(),
            stream: true,
            concurrency: 2,
            warmup: Duration::from_millis(50),
            duration: Duration::from_millis(200),
        };
        let edges = std::cell::Cell::new(0);
        let result = run(
            &spec,
            || edges.set(edges.get() + 1),
            || edges.set(edges.get() + 1),
        )
        .await;
        assert_eq!(edges.get(), 2);
        assert!(result.requests > 10, "{result:?}");
        assert_eq!(result.errors, 0, "{:?}", result.error_samples);
        assert!(result.quantile_ms(0.5) <= result.quantile_ms(0.99));

        let missing = LoadSpec {
            path: "/v1/missing".to_owned(),
            ..spec
        };
        let result = run(&missing, || {}, || {}).await;
        assert_eq!(result.requests, 0);
        assert!(result.errors > 0);
        assert_eq!(result.error_samples, ["status 404 Not Found"]);
    }

    #[test]
    fn quantiles_use_nearest_rank() {
        let result = LoadResult {
            latencies_us: (1..=100).map(|i| i * 1000).collect(),
            ..LoadResult::default()
        };
        assert_eq!(result.quantile_ms(0.5), 50.0);
        assert_eq!(result.quantile_ms(0.99), 99.0);
        assert_eq!(LoadResult::default().quantile_ms(0.5), 0.0);
    }
}
