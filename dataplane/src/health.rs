//! In-process health of each deployment: consecutive failures and cooldown.
//!
//! A deployment that keeps failing is taken out of rotation for a while, so that requests stop
//! paying for its timeouts. The state is two atomics per deployment and survives snapshot
//! reloads (the catalog hands it over by deployment id). It is this replica's view only; the
//! shared, Redis-backed view of the whole cluster is a later layer on top of the same calls.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use switchboard_shared::snapshot::Cooldown;

/// Failure bookkeeping of one deployment.
#[derive(Debug)]
pub struct DeploymentHealth {
    epoch: Instant,
    consecutive_failures: AtomicU32,
    /// Milliseconds since `epoch` until which the deployment is cooling down (0: not).
    cooldown_until_ms: AtomicU64,
}

impl Default for DeploymentHealth {
    fn default() -> Self {
        Self::new()
    }
}

impl DeploymentHealth {
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            consecutive_failures: AtomicU32::new(0),
            cooldown_until_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// How long the deployment still cools down, if it does.
    pub fn cooling_for(&self) -> Option<Duration> {
        let until = self.cooldown_until_ms.load(Ordering::Relaxed);
        let now = self.now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }

    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a failure; starts a cooldown once `policy.allowed_failures` follow each other.
    /// Returns whether this failure started a cooldown.
    pub fn record_failure(&self, policy: &Cooldown) -> bool {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= policy.allowed_failures {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.cool_down(Duration::from_secs(policy.seconds));
            true
        } else {
            false
        }
    }

    /// Takes the deployment out of rotation for `period` (e.g. an upstream's `Retry-After`).
    pub fn cool_down(&self, period: Duration) {
        let until = self
            .now_ms()
            .saturating_add(u64::try_from(period.as_millis()).unwrap_or(u64::MAX));
        self.cooldown_until_ms.fetch_max(until, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cools_down_after_the_allowed_consecutive_failures() {
        let h = DeploymentHealth::new();
        let policy = Cooldown {
            allowed_failures: 3,
            seconds: 30,
        };
        assert!(!h.record_failure(&policy));
        assert!(!h.record_failure(&policy));
        assert!(h.cooling_for().is_none());
        assert!(h.record_failure(&policy));
        let left = h.cooling_for().unwrap();
        assert!(left > Duration::from_secs(29) && left <= Duration::from_secs(30));
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let h = DeploymentHealth::new();
        let policy = Cooldown {
            allowed_failures: 2,
            seconds: 30,
        };
        h.record_failure(&policy);
        h.record_success();
        assert!(!h.record_failure(&policy));
        assert!(h.cooling_for().is_none());
    }

    #[test]
    fn a_shorter_cooldown_never_shortens_a_longer_one() {
        let h = DeploymentHealth::new();
        h.cool_down(Duration::from_secs(60));
        h.cool_down(Duration::from_secs(1));
        assert!(h.cooling_for().unwrap() > Duration::from_secs(50));
    }
}
