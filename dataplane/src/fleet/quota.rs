//! What the upstream says is left of its own rate limits for our account.
//!
//! OpenAI (and most OpenAI-compatible APIs) answer with `x-ratelimit-{limit,remaining,reset}-
//! {requests,tokens}`; Anthropic with `anthropic-ratelimit-*`. A provider adaptor turns its
//! headers into an [`UpstreamRateLimits`] ([`super::ratelimit`]) and the proxy stores it in the deployment's [`UpstreamQuota`], which the
//! `lowest_usage` and `weighted_score` strategies read as used share of the quota.
//!
//! Every replica sees the upstream's own account-wide counters in its answers, so this needs
//! no sharing through Redis: each replica's latest reading is already the cluster's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use switchboard_shared::fleet_keys::QuotaReading;

use super::ratelimit::UpstreamRateLimits;

const UNKNOWN: u64 = u64::MAX;

/// The latest reading, in atomics (`u64::MAX`: unknown).
#[derive(Debug)]
pub struct UpstreamQuota {
    limit_requests: AtomicU64,
    remaining_requests: AtomicU64,
    requests_reset_at_ms: AtomicU64,
    limit_tokens: AtomicU64,
    remaining_tokens: AtomicU64,
    tokens_reset_at_ms: AtomicU64,
    /// When the latest reading arrived (0: never).
    read_at_ms: AtomicU64,
}

impl Default for UpstreamQuota {
    fn default() -> Self {
        Self {
            limit_requests: AtomicU64::new(UNKNOWN),
            remaining_requests: AtomicU64::new(UNKNOWN),
            requests_reset_at_ms: AtomicU64::new(0),
            limit_tokens: AtomicU64::new(UNKNOWN),
            remaining_tokens: AtomicU64::new(UNKNOWN),
            tokens_reset_at_ms: AtomicU64::new(0),
            read_at_ms: AtomicU64::new(0),
        }
    }
}

fn store(cell: &AtomicU64, value: Option<u64>) {
    if let Some(v) = value {
        cell.store(v.min(UNKNOWN - 1), Ordering::Relaxed);
    }
}

/// Without a reported limit, the largest remaining count seen stands in for it.
fn store_limit(cell: &AtomicU64, limit: Option<u64>, remaining: Option<u64>) {
    match (limit, remaining) {
        (Some(l), _) => store(cell, Some(l)),
        (None, Some(r)) => {
            let current = cell.load(Ordering::Relaxed);
            if current == UNKNOWN || r > current {
                store(cell, Some(r));
            }
        }
        (None, None) => {}
    }
}

impl UpstreamQuota {
    pub fn record(&self, r: &UpstreamRateLimits, now_ms: u64) {
        store_limit(&self.limit_requests, r.limit_requests, r.remaining_requests);
        store(&self.remaining_requests, r.remaining_requests);
        store_limit(&self.limit_tokens, r.limit_tokens, r.remaining_tokens);
        store(&self.remaining_tokens, r.remaining_tokens);
        let at = |d: Duration| now_ms.saturating_add(u64::try_from(d.as_millis()).unwrap_or(0));
        store(&self.requests_reset_at_ms, r.reset_requests.map(at));
        store(&self.tokens_reset_at_ms, r.reset_tokens.map(at));
        store(&self.read_at_ms, Some(now_ms));
    }

    /// The latest reading, for the health API (through the shared hash); `None` before any.
    pub fn reading(&self) -> Option<QuotaReading> {
        let at_ms = self.read_at_ms.load(Ordering::Relaxed);
        let known = |cell: &AtomicU64| {
            let v = cell.load(Ordering::Relaxed);
            (v != UNKNOWN).then_some(v)
        };
        (at_ms != 0).then(|| QuotaReading {
            at_ms,
            remaining_requests: known(&self.remaining_requests),
            limit_requests: known(&self.limit_requests),
            remaining_tokens: known(&self.remaining_tokens),
            limit_tokens: known(&self.limit_tokens),
        })
    }

    /// The larger used share (0..1) of the request and token quotas, if the upstream reported
    /// one whose window has not reset since.
    pub fn used_share(&self, now_ms: u64) -> Option<f64> {
        let share = |limit: &AtomicU64, remaining: &AtomicU64, reset_at: &AtomicU64| {
            let (limit, remaining) = (
                limit.load(Ordering::Relaxed),
                remaining.load(Ordering::Relaxed),
            );
            let reset_at = reset_at.load(Ordering::Relaxed);
            if limit == UNKNOWN || remaining == UNKNOWN || limit == 0 {
                return None;
            }
            if reset_at != 0 && now_ms >= reset_at {
                return Some(0.0); // the window has reset since the reading
            }
            Some(1.0 - (remaining.min(limit) as f64 / limit as f64))
        };
        let r = share(
            &self.limit_requests,
            &self.remaining_requests,
            &self.requests_reset_at_ms,
        );
        let t = share(
            &self.limit_tokens,
            &self.remaining_tokens,
            &self.tokens_reset_at_ms,
        );
        match (r, t) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    #[test]
    fn headers_give_the_used_share_until_the_window_resets() {
        let mut h = HeaderMap::new();
        assert_eq!(UpstreamRateLimits::from_openai_headers(&h), None);
        h.insert("x-ratelimit-limit-requests", "100".parse().unwrap());
        h.insert("x-ratelimit-remaining-requests", "75".parse().unwrap());
        h.insert("x-ratelimit-reset-requests", "30s".parse().unwrap());
        h.insert("x-ratelimit-limit-tokens", "1000".parse().unwrap());
        h.insert("x-ratelimit-remaining-tokens", "100".parse().unwrap());
        let reading = UpstreamRateLimits::from_openai_headers(&h).unwrap();
        assert_eq!(reading.remaining_requests, Some(75));
        let q = UpstreamQuota::default();
        assert_eq!(q.used_share(0), None);
        q.record(&reading, 1_000);
        assert!(
            (q.used_share(1_000).unwrap() - 0.9).abs() < 1e-9,
            "tokens 90% used"
        );
        h.remove("x-ratelimit-limit-tokens");
        let q = UpstreamQuota::default();
        q.record(&UpstreamRateLimits::from_openai_headers(&h).unwrap(), 1_000);
        assert!((q.used_share(1_000).unwrap() - 0.25).abs() < 1e-9);
        assert_eq!(q.used_share(31_001), Some(0.0), "after the reset");
    }

    #[test]
    fn without_limits_the_largest_remaining_seen_stands_in() {
        let q = UpstreamQuota::default();
        let reading = |remaining| UpstreamRateLimits {
            remaining_requests: Some(remaining),
            ..UpstreamRateLimits::default()
        };
        q.record(&reading(200), 0);
        assert_eq!(q.used_share(0), Some(0.0));
        q.record(&reading(50), 0);
        assert!((q.used_share(0).unwrap() - 0.75).abs() < 1e-9);
    }
}
