//! [`MockUpstream`]: one running mock, its addresses and what it has seen.
//!
//! Tests start one in-process per test (port 0, so tests run in parallel); the
//! `mock-upstream` binary starts one for other processes. Dropping it stops the server.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::server::serve;
use super::state::{RecordedRequest, State};

/// Start-up options of a mock.
#[derive(Debug, Clone, Copy)]
pub struct MockOptions {
    /// Keep every request for [`MockUpstream::requests`]; when off (the benchmark), only
    /// counts are kept.
    pub record: bool,
}

impl Default for MockOptions {
    fn default() -> Self {
        Self { record: true }
    }
}

/// A running mock OpenAI upstream. Stops when dropped.
#[derive(Debug)]
pub struct MockUpstream {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

impl MockUpstream {
    /// Starts a recording mock on `127.0.0.1` at a free port.
    pub async fn start() -> anyhow::Result<MockUpstream> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts a recording mock on `addr`.
    pub async fn start_on(addr: SocketAddr) -> anyhow::Result<MockUpstream> {
        Self::start_with(addr, MockOptions::default()).await
    }

    /// Starts a mock on `addr` with `options`, serving in a task of the current runtime.
    pub async fn start_with(
        addr: SocketAddr,
        options: MockOptions,
    ) -> anyhow::Result<MockUpstream> {
        let state = Arc::new(State::new(options.record)?);
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("mock upstream: binding {addr}"))?;
        let mut addr = listener.local_addr()?;
        if addr.ip().is_unspecified() {
            addr.set_ip(Ipv4Addr::LOCALHOST.into());
        }
        let task = tokio::spawn(serve(listener, Arc::clone(&state)));
        Ok(MockUpstream { addr, state, task })
    }

    /// How many access tokens the Vertex AI token endpoint (`POST /token`) has issued.
    pub fn tokens_issued(&self) -> usize {
        self.state.tokens_issued.load(Ordering::Relaxed)
    }

    /// Revokes every access token issued so far: Vertex AI answers them with a 401.
    pub fn revoke_tokens(&self) {
        self.state
            .vertex_tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    /// The address the mock listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/v1`: the base URL of the default scenario.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://ADDR/s/<scenario>/v1`: the base URL of a scenario.
    pub fn scenario_url(&self, scenario: &str) -> String {
        format!("http://{}/s/{scenario}/v1", self.addr)
    }

    /// Every request received under `scenario` (`""`: no prefix), in arrival order. Empty when
    /// recording is off.
    pub fn requests(&self, scenario: &str) -> Vec<RecordedRequest> {
        self.state.requests(scenario)
    }

    /// How many requests `scenario` has received.
    pub fn request_count(&self, scenario: &str) -> usize {
        self.state.request_count(scenario)
    }

    /// Streams whose client went away before their end.
    pub fn cancelled_streams(&self) -> usize {
        self.state.cancelled_streams.load(Ordering::Relaxed)
    }

    /// Requests being answered now (arrived, last byte not yet sent).
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(Ordering::Relaxed)
    }

    /// The most requests that were ever in flight at once: the concurrency the upstream saw.
    pub fn max_in_flight(&self) -> usize {
        self.state.max_in_flight.load(Ordering::Relaxed)
    }

    /// TCP connections accepted so far.
    pub fn connections_accepted(&self) -> usize {
        self.state.connections_accepted.load(Ordering::Relaxed)
    }

    /// Streams sent to their end.
    pub fn completed_streams(&self) -> usize {
        self.state.completed_streams.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` streams were cancelled; false on timeout. The mock learns of a
    /// cancellation only when its next write fails or it reads EOF, so tests poll.
    pub async fn wait_for_cancelled_streams(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, || self.cancelled_streams() >= n)
            .await
    }

    /// Waits until at least `n` streams completed; false on timeout.
    pub async fn wait_for_completed_streams(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, || self.completed_streams() >= n)
            .await
    }

    async fn wait_until(&self, timeout: Duration, done: impl Fn() -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if done() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
