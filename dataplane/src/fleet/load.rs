//! Load and performance of one deployment: requests in flight, latency and time to first
//! token (EWMA), and requests, tokens and failures this minute.
//!
//! Each number exists twice: this replica's own, always exact and updated on the request path
//! with a relaxed atomic, and the rest of the cluster's, copied from Redis by
//! [`super::sync`] every refresh. Readers combine the two, so routing sees the whole cluster
//! without a Redis round trip, and sees its own requests the moment they happen. Without
//! Redis the cluster part stays empty and everything is local.

use std::sync::atomic::{AtomicU64, Ordering};

/// Weight of a new sample in the moving averages.
const EWMA_ALPHA: f64 = 0.3;
/// A latency not refreshed for this long is forgotten, so a deployment that was slow once is
/// measured again rather than avoided for ever.
pub const LATENCY_STALE_MS: u64 = 60_000;

/// An exponentially weighted moving average of milliseconds, with the time of its last sample.
#[derive(Debug, Default)]
pub struct Ewma {
    /// `f64` bits; 0 means no sample yet.
    value: AtomicU64,
    last_ms: AtomicU64,
}

impl Ewma {
    pub fn record(&self, sample_ms: f64, now_ms: u64) {
        let sample = sample_ms.max(0.001);
        let mut current = self.value.load(Ordering::Relaxed);
        loop {
            let old = f64::from_bits(current);
            let stale =
                now_ms.saturating_sub(self.last_ms.load(Ordering::Relaxed)) > LATENCY_STALE_MS;
            let next = if current == 0 || stale {
                sample
            } else {
                old + EWMA_ALPHA * (sample - old)
            };
            match self.value.compare_exchange_weak(
                current,
                next.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(seen) => current = seen,
            }
        }
        self.last_ms.store(now_ms, Ordering::Relaxed);
    }

    /// The average, unless it has no sample or a stale one.
    pub fn get(&self, now_ms: u64) -> Option<f64> {
        let bits = self.value.load(Ordering::Relaxed);
        let fresh = now_ms.saturating_sub(self.last_ms.load(Ordering::Relaxed)) <= LATENCY_STALE_MS;
        (bits != 0 && fresh).then(|| f64::from_bits(bits))
    }

    /// The raw value and sample time, for publishing.
    pub fn raw(&self) -> (f64, u64) {
        (
            f64::from_bits(self.value.load(Ordering::Relaxed)),
            self.last_ms.load(Ordering::Relaxed),
        )
    }
}

/// Other replicas' averages: sum and count of the fresh ones.
#[derive(Debug, Default)]
struct Others {
    sum_bits: AtomicU64,
    count: AtomicU64,
}

impl Others {
    fn set(&self, sum: f64, count: u64) {
        self.sum_bits.store(sum.to_bits(), Ordering::Relaxed);
        self.count.store(count, Ordering::Relaxed);
    }

    /// The mean of this replica's value (if any) and the others'.
    fn combine(&self, own: Option<f64>) -> Option<f64> {
        let n = self.count.load(Ordering::Relaxed);
        let sum = f64::from_bits(self.sum_bits.load(Ordering::Relaxed));
        match (own, n) {
            (own, 0) => own,
            (None, n) => Some(sum / n as f64),
            (Some(v), n) => Some((sum + v) / (n + 1) as f64),
        }
    }
}

/// Counters of the current minute.
#[derive(Debug, Default)]
pub struct MinuteCounts {
    pub requests: u64,
    pub tokens: u64,
    pub failures: u64,
}

/// The load of one deployment.
#[derive(Debug, Default)]
pub struct Load {
    inflight: AtomicU64,
    others_inflight: AtomicU64,
    latency: Ewma,
    ttft: Ewma,
    others_latency: Others,
    others_ttft: Others,
    /// The minute (Unix ms / 60000) the local counters below belong to.
    minute: AtomicU64,
    requests: AtomicU64,
    tokens: AtomicU64,
    failures: AtomicU64,
    /// Counts not yet added to Redis.
    unflushed_requests: AtomicU64,
    unflushed_tokens: AtomicU64,
    unflushed_failures: AtomicU64,
    /// The cluster's counts for `cluster_minute`, as of the last refresh.
    cluster_minute: AtomicU64,
    cluster_requests: AtomicU64,
    cluster_tokens: AtomicU64,
    cluster_failures: AtomicU64,
}

/// Marks one request in flight on a deployment until dropped.
#[derive(Debug)]
pub struct InFlight(std::sync::Arc<super::DeploymentState>);

impl InFlight {
    pub fn new(state: std::sync::Arc<super::DeploymentState>) -> Self {
        state.load.inflight.fetch_add(1, Ordering::Relaxed);
        Self(state)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.load.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

pub fn minute_of(now_ms: u64) -> u64 {
    now_ms / 60_000
}

impl Load {
    /// Requests in flight on this deployment across the cluster.
    pub fn inflight(&self) -> u64 {
        self.inflight.load(Ordering::Relaxed) + self.others_inflight.load(Ordering::Relaxed)
    }

    /// This replica's own requests in flight.
    pub fn local_inflight(&self) -> u64 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Recent latency to the last byte, in ms (cluster mean).
    pub fn latency_ms(&self, now_ms: u64) -> Option<f64> {
        self.others_latency.combine(self.latency.get(now_ms))
    }

    /// Recent time to first token of streams, in ms (cluster mean).
    pub fn ttft_ms(&self, now_ms: u64) -> Option<f64> {
        self.others_ttft.combine(self.ttft.get(now_ms))
    }

    /// Counts a request sent to the deployment.
    pub fn record_request(&self, now_ms: u64) {
        self.roll(now_ms);
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.unflushed_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts tokens a finished request used.
    pub fn record_tokens(&self, tokens: u64, now_ms: u64) {
        self.roll(now_ms);
        self.tokens.fetch_add(tokens, Ordering::Relaxed);
        self.unflushed_tokens.fetch_add(tokens, Ordering::Relaxed);
    }

    /// Counts a failed attempt.
    pub fn record_failure(&self, now_ms: u64) {
        self.roll(now_ms);
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.unflushed_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a complete answer's latency, in ms.
    pub fn record_latency(&self, ms: f64, now_ms: u64) {
        self.latency.record(ms, now_ms);
    }

    /// Records a stream's time to first token, in ms.
    pub fn record_ttft(&self, ms: f64, now_ms: u64) {
        self.ttft.record(ms, now_ms);
    }

    /// Starts new local counters when the minute changes. Racing requests at the boundary
    /// may lose a count or two; these are routing signals, not limits.
    fn roll(&self, now_ms: u64) {
        let minute = minute_of(now_ms);
        if self.minute.load(Ordering::Relaxed) != minute
            && self.minute.swap(minute, Ordering::Relaxed) != minute
        {
            self.requests.store(0, Ordering::Relaxed);
            self.tokens.store(0, Ordering::Relaxed);
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Requests, tokens and failures this minute across the cluster.
    pub fn this_minute(&self, now_ms: u64) -> MinuteCounts {
        let minute = minute_of(now_ms);
        if self.cluster_minute.load(Ordering::Relaxed) == minute {
            MinuteCounts {
                requests: self.cluster_requests.load(Ordering::Relaxed)
                    + self.unflushed_requests.load(Ordering::Relaxed),
                tokens: self.cluster_tokens.load(Ordering::Relaxed)
                    + self.unflushed_tokens.load(Ordering::Relaxed),
                failures: self.cluster_failures.load(Ordering::Relaxed)
                    + self.unflushed_failures.load(Ordering::Relaxed),
            }
        } else if self.minute.load(Ordering::Relaxed) == minute {
            MinuteCounts {
                requests: self.requests.load(Ordering::Relaxed),
                tokens: self.tokens.load(Ordering::Relaxed),
                failures: self.failures.load(Ordering::Relaxed),
            }
        } else {
            MinuteCounts::default()
        }
    }

    // --- The shared view, driven by `super::sync`. ---

    /// What to publish: counts since the last flush (taken), and this replica's in-flight
    /// count and averages.
    pub(super) fn take_flush(&self) -> Flush {
        let (latency, latency_ms) = self.latency.raw();
        let (ttft, ttft_ms) = self.ttft.raw();
        Flush {
            requests: self.unflushed_requests.swap(0, Ordering::Relaxed),
            tokens: self.unflushed_tokens.swap(0, Ordering::Relaxed),
            failures: self.unflushed_failures.swap(0, Ordering::Relaxed),
            inflight: self.local_inflight(),
            latency,
            latency_at_ms: latency_ms,
            ttft,
            ttft_at_ms: ttft_ms,
        }
    }

    /// Adopts the cluster's numbers.
    pub(super) fn apply_cluster(&self, view: &ClusterLoad) {
        self.others_inflight
            .store(view.others_inflight, Ordering::Relaxed);
        self.others_latency
            .set(view.others_latency_sum, view.others_latency_n);
        self.others_ttft
            .set(view.others_ttft_sum, view.others_ttft_n);
        self.cluster_requests
            .store(view.requests, Ordering::Relaxed);
        self.cluster_tokens.store(view.tokens, Ordering::Relaxed);
        self.cluster_failures
            .store(view.failures, Ordering::Relaxed);
        self.cluster_minute.store(view.minute, Ordering::Relaxed);
    }

    /// Forgets the cluster's numbers (Redis unreachable).
    pub(super) fn go_local(&self) {
        self.apply_cluster(&ClusterLoad {
            minute: u64::MAX,
            ..ClusterLoad::default()
        });
    }
}

/// One replica's contribution, for Redis.
#[derive(Debug, Clone, Copy, Default)]
pub struct Flush {
    pub requests: u64,
    pub tokens: u64,
    pub failures: u64,
    pub inflight: u64,
    pub latency: f64,
    pub latency_at_ms: u64,
    pub ttft: f64,
    pub ttft_at_ms: u64,
}

/// The cluster's numbers as read from Redis (other replicas' parts, and minute totals that
/// include this replica's flushed counts).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClusterLoad {
    pub minute: u64,
    pub requests: u64,
    pub tokens: u64,
    pub failures: u64,
    pub others_inflight: u64,
    pub others_latency_sum: f64,
    pub others_latency_n: u64,
    pub others_ttft_sum: f64,
    pub others_ttft_n: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ewma_follows_samples_and_forgets_stale_ones() {
        let e = Ewma::default();
        assert_eq!(e.get(1000), None);
        e.record(100.0, 1000);
        assert_eq!(e.get(1000), Some(100.0));
        e.record(200.0, 1001);
        assert!((e.get(1001).unwrap() - 130.0).abs() < 1e-9);
        assert_eq!(e.get(1001 + LATENCY_STALE_MS + 1), None);
        e.record(10.0, 1002 + LATENCY_STALE_MS * 2);
        assert_eq!(e.get(1002 + LATENCY_STALE_MS * 2), Some(10.0), "restarted");
    }

    #[test]
    fn cluster_view_adds_others_to_own_numbers() {
        let l = Load::default();
        let now = 10 * 60_000 + 5;
        l.record_request(now);
        l.record_tokens(30, now);
        l.record_latency(100.0, now);
        assert_eq!(l.this_minute(now).requests, 1);
        let flush = l.take_flush();
        assert_eq!((flush.requests, flush.tokens), (1, 30));
        l.apply_cluster(&ClusterLoad {
            minute: 10,
            requests: 5,
            tokens: 300,
            failures: 1,
            others_inflight: 4,
            others_latency_sum: 500.0,
            others_latency_n: 2,
            ..ClusterLoad::default()
        });
        l.record_request(now);
        assert_eq!(l.this_minute(now).requests, 6, "cluster 5 + 1 unflushed");
        assert_eq!(l.this_minute(now).tokens, 300);
        assert_eq!(l.latency_ms(now), Some(200.0), "(100 + 500) / 3");
        assert_eq!(l.inflight(), 4);
        // Next minute: the cluster's numbers are of the previous one.
        assert_eq!(l.this_minute(now + 60_000).requests, 0);
        l.go_local();
        assert_eq!(l.inflight(), 0);
        assert_eq!(l.latency_ms(now), Some(100.0));
    }
}
