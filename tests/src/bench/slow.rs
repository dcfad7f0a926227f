//! The many-slow-streams mode: N streams held open at once through one proxy, the mock
//! pausing between chunks, to state what an open stream costs the proxy in memory and whether
//! it drops any. Steady-load cells cannot show this: their 32 connections never hold many
//! streams at once.
//!
//! The streams are opened over a ramp (a burst of thousands of connects would overflow the
//! listen backlog and measure SYN retries instead), then each is read to its end. A sampler
//! reads the proxy's resident memory and the number of open streams every few milliseconds;
//! the memory per stream is (RSS at the sample with the most open streams − RSS before the
//! first stream) ÷ that number.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt as _, Full};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::cli::Target;
use super::http::connect;
use super::procs::Proc;

/// How often the proxy's memory and the open streams are sampled.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// How many distinct error descriptions to keep.
const ERROR_SAMPLES: usize = 3;

/// What to open, where, and how fast.
#[derive(Debug, Clone)]
pub struct SlowSpec {
    pub addr: SocketAddr,
    pub path: String,
    pub body: Bytes,
    pub bearer: String,
    pub streams: usize,
    pub ramp: Duration,
    /// Longest one stream may take, from its connect to its last byte.
    pub stream_timeout: Duration,
    /// How long one stream lasts when nothing is slow: chunks × interval.
    pub nominal: Duration,
}

/// What one proxy did with the streams.
#[derive(Debug, Clone, Serialize)]
pub struct SlowResult {
    pub target: Target,
    /// Why there are no figures, if there are none.
    pub failed: Option<String>,
    pub streams: usize,
    /// Streams read to `data: [DONE]`.
    pub completed: usize,
    pub errors: usize,
    pub error_samples: Vec<String>,
    /// Most streams open at once (response head received, end not yet).
    pub peak_open: usize,
    pub idle_rss_mb: f64,
    pub peak_rss_mb: f64,
    /// (RSS at the most-open sample − idle RSS) ÷ the streams open then, KiB.
    pub kib_per_open_stream: Option<f64>,
    /// Seconds from the first connect until the last stream ended.
    pub wall_s: f64,
    /// One stream's length with no delay anywhere (chunks × interval), seconds.
    pub nominal_stream_s: f64,
    pub p50_stream_s: f64,
    pub p99_stream_s: f64,
    /// The proxy's CPU time over the whole run ÷ its wall time (1.0 = one core busy).
    pub proxy_cpu_share: f64,
}

impl SlowResult {
    pub fn failed(target: Target, streams: usize, reason: String) -> Self {
        Self {
            target,
            failed: Some(reason),
            streams,
            completed: 0,
            errors: 0,
            error_samples: Vec::new(),
            peak_open: 0,
            idle_rss_mb: 0.0,
            peak_rss_mb: 0.0,
            kib_per_open_stream: None,
            wall_s: 0.0,
            nominal_stream_s: 0.0,
            p50_stream_s: 0.0,
            p99_stream_s: 0.0,
            proxy_cpu_share: 0.0,
        }
    }
}

/// The memory samples of one run.
#[derive(Debug, Default)]
struct Samples {
    peak_rss: u64,
    /// (open streams, RSS) at the sample with the most open streams.
    most_open: (usize, u64),
}

impl Samples {
    fn add(&mut self, open: usize, rss: u64) {
        self.peak_rss = self.peak_rss.max(rss);
        if open > self.most_open.0 || (open == self.most_open.0 && rss > self.most_open.1) {
            self.most_open = (open, rss);
        }
    }
}

/// Opens `spec.streams` streams through `proxy` (listening at `spec.addr`) and reads them to
/// their end, sampling the proxy's memory meanwhile.
pub async fn run(
    spec: &SlowSpec,
    target: Target,
    proxy: &Proc,
    ticks_per_second: u64,
) -> SlowResult {
    let idle_rss = proxy.tree_rss_bytes();
    let cpu_start = proxy.tree_cpu_ticks();
    let open = Arc::new(AtomicUsize::new(0));
    let spec = Arc::new(spec.clone());
    let started = Instant::now();
    let mut streams = JoinSet::new();
    for i in 0..spec.streams {
        let at = started + spec.ramp.mul_f64(i as f64 / spec.streams.max(1) as f64);
        streams.spawn(one_stream(Arc::clone(&spec), Arc::clone(&open), at));
    }
    let mut samples = Samples::default();
    let mut outcomes = Vec::with_capacity(spec.streams);
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            joined = streams.join_next() => match joined {
                Some(joined) => outcomes.push(joined.unwrap_or_else(|e| Err(format!("task: {e}")))),
                None => break,
            },
            _ = tick.tick() => samples.add(open.load(Ordering::Relaxed), proxy.tree_rss_bytes()),
        }
    }
    let wall = started.elapsed();
    let cpu = proxy.tree_cpu_ticks().saturating_sub(cpu_start) as f64 / ticks_per_second as f64;
    summarize(target, &spec, idle_rss, &samples, outcomes, wall, cpu)
}

fn summarize(
    target: Target,
    spec: &SlowSpec,
    idle_rss: u64,
    samples: &Samples,
    outcomes: Vec<Result<Duration, String>>,
    wall: Duration,
    cpu_s: f64,
) -> SlowResult {
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    let mut lengths: Vec<Duration> = Vec::with_capacity(outcomes.len());
    let mut errors = 0;
    let mut error_samples = Vec::new();
    for outcome in outcomes {
        match outcome {
            Ok(length) => lengths.push(length),
            Err(description) => {
                errors += 1;
                if error_samples.len() < ERROR_SAMPLES && !error_samples.contains(&description) {
                    error_samples.push(description);
                }
            }
        }
    }
    lengths.sort_unstable();
    let quantile = |q: f64| {
        let rank = ((q * lengths.len() as f64).ceil() as usize).clamp(1, lengths.len().max(1)) - 1;
        lengths.get(rank).map_or(0.0, Duration::as_secs_f64)
    };
    let (open, rss_then) = samples.most_open;
    SlowResult {
        target,
        failed: None,
        streams: spec.streams,
        completed: lengths.len(),
        errors,
        error_samples,
        peak_open: open,
        idle_rss_mb: mib(idle_rss),
        peak_rss_mb: mib(samples.peak_rss.max(idle_rss)),
        kib_per_open_stream: (open > 0)
            .then(|| rss_then.saturating_sub(idle_rss) as f64 / 1024.0 / open as f64),
        wall_s: wall.as_secs_f64(),
        nominal_stream_s: spec.nominal.as_secs_f64(),
        p50_stream_s: quantile(0.5),
        p99_stream_s: quantile(0.99),
        proxy_cpu_share: cpu_s / wall.as_secs_f64().max(1e-9),
    }
}

/// Keeps the open-stream count right however a stream ends.
struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One stream, started at `at`: its length (connect to last byte), or why it failed.
async fn one_stream(
    spec: Arc<SlowSpec>,
    open: Arc<AtomicUsize>,
    at: Instant,
) -> Result<Duration, String> {
    tokio::time::sleep_until(at).await;
    let started = Instant::now();
    let read = async {
        let mut sender = connect(spec.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let request = Request::post(spec.path.as_str())
            .header(http::header::HOST, spec.addr.to_string())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::AUTHORIZATION, spec.bearer.as_str())
            .body(Full::new(spec.body.clone()))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("request: {e}"))?;
        open.fetch_add(1, Ordering::Relaxed);
        let _open = OpenGuard(Arc::clone(&open));
        let status = response.status();
        let mut body = response.into_body();
        let mut tail: Vec<u8> = Vec::with_capacity(64);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| format!("body: {e}"))?;
            if let Some(data) = frame.data_ref() {
                tail.extend_from_slice(&data[data.len().saturating_sub(32)..]);
                let excess = tail.len().saturating_sub(32);
                tail.drain(..excess);
            }
        }
        if !status.is_success() {
            return Err(format!("status {status}"));
        }
        let text = String::from_utf8_lossy(&tail);
        if !text.trim_end().ends_with("data: [DONE]") {
            return Err("stream did not end with [DONE]".to_owned());
        }
        Ok(started.elapsed())
    };
    match tokio::time::timeout(spec.stream_timeout, read).await {
        Ok(outcome) => outcome,
        Err(_) => Err(format!("not finished within {:?}", spec.stream_timeout)),
    }
}

/// Raises this process's soft open-file limit to its hard limit when it is below `needed`
/// (children started later inherit it), with util-linux's `prlimit` (this crate forbids the
/// `unsafe` a direct `setrlimit` needs). Returns a note for the report, if anything is said.
pub fn ensure_open_files(needed: u64) -> Option<String> {
    let (soft, hard) = open_file_limits()?;
    if soft >= needed {
        return None;
    }
    let pid = std::process::id().to_string();
    let raised = std::process::Command::new("prlimit")
        .args(["--pid", &pid, &format!("--nofile={hard}:{hard}")])
        .status()
        .is_ok_and(|s| s.success());
    let now = open_file_limits().map_or(soft, |(soft, _)| soft);
    Some(if raised && now >= needed {
        format!("open-file limit raised from {soft} to {now} for the slow streams (prlimit)")
    } else {
        format!(
            "open-file limit {now} is below the {needed} the slow streams need (hard limit {hard}): expect connect errors"
        )
    })
}

/// This process's (soft, hard) open-file limits, from `/proc/self/limits`.
fn open_file_limits() -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut numbers = line
        .split_whitespace()
        .filter_map(|w| w.parse::<u64>().ok());
    Some((numbers.next()?, numbers.next()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_per_stream_is_taken_at_the_most_open_sample() {
        let mut samples = Samples::default();
        samples.add(10, 110 << 20);
        samples.add(100, 200 << 20);
        samples.add(50, 250 << 20);
        let spec = SlowSpec {
            addr: "127.0.0.1:1".parse().unwrap(),
            path: String::new(),
            body: Bytes::new(),
            bearer: String::new(),
            streams: 100,
            ramp: Duration::ZERO,
            stream_timeout: Duration::from_secs(1),
            nominal: Duration::from_secs(3),
        };
        let outcomes = vec![
            Ok(Duration::from_secs(3)),
            Ok(Duration::from_secs(4)),
            Err("status 502 Bad Gateway".to_owned()),
        ];
        let result = summarize(
            Target::Gateway,
            &spec,
            100 << 20,
            &samples,
            outcomes,
            Duration::from_secs(10),
            5.0,
        );
        assert_eq!(result.peak_open, 100);
        assert_eq!(result.kib_per_open_stream, Some(1024.0));
        assert_eq!(result.peak_rss_mb, 250.0);
        assert_eq!(result.idle_rss_mb, 100.0);
        assert_eq!((result.completed, result.errors), (2, 1));
        assert_eq!(result.p99_stream_s, 4.0);
        assert_eq!(result.proxy_cpu_share, 0.5);
    }

    #[tokio::test]
    async fn reads_paced_streams_to_their_end_and_counts_them_open_meanwhile() {
        let mock = crate::mock::MockUpstream::start().await.unwrap();
        let spec = |scenario: &str| {
            Arc::new(SlowSpec {
                addr: mock.addr(),
                path: format!("/s/{scenario}/v1/chat/completions"),
                body: Bytes::from_static(br#"{"model":"m","stream":true}"#),
                bearer: "Bearer x".to_owned(),
                streams: 1,
                ramp: Duration::ZERO,
                stream_timeout: Duration::from_secs(30),
                nominal: Duration::from_secs(1),
            })
        };
        let open = Arc::new(AtomicUsize::new(0));
        // 50 chunks 20 ms apart: open for about a second.
        let stream = tokio::spawn(one_stream(
            spec("chunks=50,interval_ms=20"),
            Arc::clone(&open),
            Instant::now(),
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        while open.load(Ordering::Relaxed) == 0 {
            assert!(
                Instant::now() < deadline,
                "the stream never counted as open"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(stream.await.unwrap().is_ok());
        assert_eq!(open.load(Ordering::Relaxed), 0);
        assert!(
            mock.wait_for_completed_streams(1, Duration::from_secs(5))
                .await
        );

        let failed = one_stream(spec("fault=500"), Arc::clone(&open), Instant::now()).await;
        assert_eq!(failed, Err("status 500 Internal Server Error".to_owned()));
        let cut = one_stream(
            spec("chunks=5,fault=reset_mid_stream"),
            Arc::clone(&open),
            Instant::now(),
        )
        .await;
        assert!(cut.is_err(), "{cut:?}");
        assert_eq!(open.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn reads_the_open_file_limits() {
        let (soft, hard) = open_file_limits().unwrap();
        assert!(soft > 0 && soft <= hard);
        assert_eq!(ensure_open_files(1), None);
    }
}
