//! The circuit breaker of one deployment: closed → open → half-open with a single probe.
//!
//! A deployment that keeps failing (or that the upstream rate limits, or whose credential is
//! refused) is *opened*: no request reaches it until a moment stored as Unix milliseconds, so
//! that the moment means the same on every replica and can be shared through Redis. Once that
//! moment passes the breaker is *half-open*: exactly one request — the probe — may try. Its
//! success closes the breaker; its failure opens it again for twice as long (up to 16× the
//! configured cooldown).
//!
//! With shared state ([`super::sync`]) the opening and closing travel to Redis in the
//! background, the cluster's verdict comes back every refresh, and the probe is granted to one
//! replica of the whole cluster at a time. Without it, everything here is this process's own.
//! All state is atomics; nothing here takes a lock or waits.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use switchboard_shared::snapshot::Cooldown;

/// How long a probe may stay unanswered before another request may probe instead (the probe's
/// client may have gone away, or its attempt ended in a way that reports nothing).
const PROBE_TIMEOUT_MS: u64 = 30_000;

/// How much a cooldown grows over repeated trips: 2^this at most.
const MAX_DOUBLINGS: u32 = 4;

/// What the breaker says about sending a request now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Closed: go ahead.
    Closed,
    /// Half-open and this request is the probe: go ahead and report the outcome.
    Probe,
    /// Open (or half-open with the probe taken): skip; it may be back in this long.
    Open { back_in: Duration },
}

/// The breaker state of one deployment.
#[derive(Debug, Default)]
pub struct Breaker {
    /// Unix ms until which the breaker is open; 0 when closed.
    open_until_ms: AtomicU64,
    /// Trips since the breaker last closed, for the growing cooldown.
    trips: AtomicU32,
    consecutive_failures: AtomicU32,
    /// Unix ms at which the probe was handed out; 0 when none is out.
    probe_taken_ms: AtomicU64,
    /// Whether the cluster view is live (Redis reachable): the probe then needs a grant.
    shared: AtomicBool,
    /// The `open_until_ms` episode for which the cluster granted this replica the probe.
    probe_granted_for: AtomicU64,
    /// A request found the breaker half-open without the probe: ask the cluster for it.
    wants_probe: AtomicBool,
    /// Set once a credential rejection has been alerted in this episode.
    alerted: AtomicBool,
    /// An opening not yet written to Redis (its `open_until_ms`; 0: none).
    pending_open_ms: AtomicU64,
    /// A closing not yet written to Redis (the episode it closes; 0: none).
    pending_close_ms: AtomicU64,
}

/// Milliseconds since the Unix epoch: the clock every replica shares.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Breaker {
    pub fn new() -> Self {
        Self::default()
    }

    /// May a request go to this deployment at `now_ms`? Hands out the probe when half-open.
    pub fn gate(&self, now_ms: u64) -> Gate {
        let until = self.open_until_ms.load(Ordering::Relaxed);
        if until == 0 {
            return Gate::Closed;
        }
        if now_ms < until {
            return Gate::Open {
                back_in: Duration::from_millis(until - now_ms),
            };
        }
        // Half-open.
        let busy = Gate::Open {
            back_in: Duration::from_millis(100),
        };
        if self.shared.load(Ordering::Relaxed)
            && self.probe_granted_for.load(Ordering::Relaxed) != until
        {
            // The cluster grants one probe; the next sync asks for it on our behalf.
            if !self.wants_probe.load(Ordering::Relaxed) {
                self.wants_probe.store(true, Ordering::Relaxed);
            }
            return busy;
        }
        let taken = self.probe_taken_ms.load(Ordering::Relaxed);
        let free = taken == 0 || now_ms.saturating_sub(taken) > PROBE_TIMEOUT_MS;
        if free
            && self
                .probe_taken_ms
                .compare_exchange(taken, now_ms.max(1), Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            Gate::Probe
        } else {
            busy
        }
    }

    /// Gives the probe back unused (its request went elsewhere, or proved nothing).
    pub fn release_probe(&self) {
        if self.probe_taken_ms.load(Ordering::Relaxed) != 0 {
            self.probe_taken_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Whether the breaker is open or half-open (not serving normally).
    pub fn is_open(&self) -> bool {
        self.open_until_ms.load(Ordering::Relaxed) != 0
    }

    /// A success: closes the breaker if it was half-open, resets the failure count.
    pub fn record_success(&self) {
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
        let until = self.open_until_ms.load(Ordering::Relaxed);
        if until != 0
            && unix_ms() >= until
            && self
                .open_until_ms
                .compare_exchange(until, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            self.trips.store(0, Ordering::Relaxed);
            self.probe_taken_ms.store(0, Ordering::Relaxed);
            self.alerted.store(false, Ordering::Relaxed);
            self.pending_close_ms.store(until, Ordering::Relaxed);
            tracing::info!("deployment breaker closed after a successful probe");
        }
    }

    /// A failure that counts against the deployment (5xx, connect error, timeout, broken
    /// body). Opens the breaker after `policy.allowed_failures` in a row, or at once when the
    /// failure was the half-open probe's. Returns whether it opened.
    pub fn record_failure(&self, policy: &Cooldown) -> bool {
        let now = unix_ms();
        let until = self.open_until_ms.load(Ordering::Relaxed);
        let probing = until != 0 && now >= until;
        let failures = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if probing || failures >= policy.allowed_failures {
            self.consecutive_failures.store(0, Ordering::Relaxed);
            let trips = self.trips.fetch_add(1, Ordering::Relaxed);
            let base = Duration::from_secs(policy.seconds);
            self.open_for(base.saturating_mul(1 << trips.min(MAX_DOUBLINGS)), now);
            true
        } else {
            false
        }
    }

    /// Opens the breaker for exactly `period` (an upstream's `Retry-After`, a credential
    /// rejection). A shorter opening never shortens a longer one.
    pub fn open(&self, period: Duration) {
        self.open_for(period, unix_ms());
    }

    fn open_for(&self, period: Duration, now_ms: u64) {
        let until = now_ms.saturating_add(ms(period)).max(1);
        let previous = self.open_until_ms.fetch_max(until, Ordering::AcqRel);
        if until > previous {
            self.probe_taken_ms.store(0, Ordering::Relaxed);
            self.pending_open_ms.fetch_max(until, Ordering::Relaxed);
        }
    }

    /// How long the breaker stays fully open, if it is.
    pub fn open_for_now(&self) -> Option<Duration> {
        let until = self.open_until_ms.load(Ordering::Relaxed);
        let now = unix_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }

    /// True the first time it is called in an open episode: alert once, not per request.
    pub fn first_alert(&self) -> bool {
        !self.alerted.swap(true, Ordering::Relaxed)
    }

    // --- The shared view, driven by `super::sync`. ---

    /// The local changes to write to Redis: `(open_until_ms, closed_episode_ms)`, 0 for none.
    pub(super) fn take_pending(&self) -> (u64, u64) {
        (
            self.pending_open_ms.swap(0, Ordering::Relaxed),
            self.pending_close_ms.swap(0, Ordering::Relaxed),
        )
    }

    /// Whether a request here wanted the probe since the last sync (and forgets it).
    pub(super) fn take_probe_wish(&self) -> bool {
        self.wants_probe.swap(false, Ordering::Relaxed)
    }

    /// Keeps the wish for the next sync.
    pub(super) fn wish_probe(&self) {
        self.wants_probe.store(true, Ordering::Relaxed);
    }

    /// Puts back changes whose write failed, so the next flush tries again.
    pub(super) fn restore_pending(&self, open_ms: u64, close_ms: u64) {
        if open_ms != 0 {
            self.pending_open_ms.fetch_max(open_ms, Ordering::Relaxed);
        }
        if close_ms != 0 {
            self.pending_close_ms
                .compare_exchange(0, close_ms, Ordering::Relaxed, Ordering::Relaxed)
                .ok();
        }
    }

    /// Adopts the cluster's verdict: the breaker's `open_until_ms` in Redis and whether this
    /// replica holds the probe of that episode. Local changes not yet written win until they
    /// are.
    pub(super) fn apply_cluster(&self, open_until_ms: u64, probe_is_ours: bool) {
        self.shared.store(true, Ordering::Relaxed);
        if self.pending_open_ms.load(Ordering::Relaxed) != 0
            || self.pending_close_ms.load(Ordering::Relaxed) != 0
        {
            return;
        }
        let previous = self.open_until_ms.swap(open_until_ms, Ordering::AcqRel);
        if previous != open_until_ms {
            self.probe_taken_ms.store(0, Ordering::Relaxed);
            if open_until_ms == 0 {
                self.trips.store(0, Ordering::Relaxed);
                self.alerted.store(false, Ordering::Relaxed);
            }
        }
        self.probe_granted_for.store(
            if probe_is_ours { open_until_ms } else { 0 },
            Ordering::Relaxed,
        );
    }

    /// The cluster view is gone (Redis unreachable): decide locally again.
    pub(super) fn go_local(&self) {
        self.shared.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allowed_failures: u32, seconds: u64) -> Cooldown {
        Cooldown {
            allowed_failures,
            seconds,
        }
    }

    #[test]
    fn opens_after_the_allowed_consecutive_failures() {
        let b = Breaker::new();
        let p = policy(3, 30);
        assert!(!b.record_failure(&p));
        assert!(!b.record_failure(&p));
        assert_eq!(b.gate(unix_ms()), Gate::Closed);
        assert!(b.record_failure(&p));
        let left = b.open_for_now().unwrap();
        assert!(left > Duration::from_secs(29) && left <= Duration::from_secs(30));
        assert!(matches!(b.gate(unix_ms()), Gate::Open { .. }));
    }

    #[test]
    fn a_success_resets_the_failure_count() {
        let b = Breaker::new();
        let p = policy(2, 30);
        b.record_failure(&p);
        b.record_success();
        assert!(!b.record_failure(&p));
        assert!(b.open_for_now().is_none());
    }

    #[test]
    fn a_shorter_opening_never_shortens_a_longer_one() {
        let b = Breaker::new();
        b.open(Duration::from_secs(60));
        b.open(Duration::from_secs(1));
        assert!(b.open_for_now().unwrap() > Duration::from_secs(50));
    }

    #[test]
    fn half_open_lets_exactly_one_probe_through_and_its_success_closes() {
        let b = Breaker::new();
        b.open(Duration::from_millis(1));
        let later = unix_ms() + 10;
        assert_eq!(b.gate(later), Gate::Probe);
        assert!(
            matches!(b.gate(later), Gate::Open { .. }),
            "only one probe at a time"
        );
        std::thread::yield_now();
        // The probe succeeds (after the opening has passed on the real clock).
        while unix_ms() < later {
            std::hint::spin_loop();
        }
        b.record_success();
        assert_eq!(b.gate(unix_ms()), Gate::Closed);
        assert!(!b.is_open());
    }

    #[test]
    fn a_failed_probe_reopens_for_twice_as_long() {
        let b = Breaker::new();
        let p = policy(1, 10);
        assert!(b.record_failure(&p));
        // Pretend the 10 s passed: force the breaker to half-open.
        b.open_until_ms.store(unix_ms() - 1, Ordering::Relaxed);
        assert_eq!(b.gate(unix_ms()), Gate::Probe);
        assert!(b.record_failure(&p), "a failed probe opens at once");
        let left = b.open_for_now().unwrap();
        assert!(left > Duration::from_secs(19), "{left:?}");
    }

    #[test]
    fn with_a_shared_view_only_the_granted_replica_probes() {
        let b = Breaker::new();
        let until = unix_ms() - 1;
        b.apply_cluster(until, false);
        assert!(matches!(b.gate(unix_ms()), Gate::Open { .. }));
        b.apply_cluster(until, true);
        assert_eq!(b.gate(unix_ms()), Gate::Probe);
        // Redis gone: local decisions again.
        b.go_local();
        b.apply_cluster(until, false);
        b.go_local();
        b.probe_taken_ms.store(0, Ordering::Relaxed);
        assert_eq!(b.gate(unix_ms()), Gate::Probe);
    }

    #[test]
    fn local_changes_win_until_written() {
        let b = Breaker::new();
        b.open(Duration::from_secs(60));
        b.apply_cluster(0, false);
        assert!(b.open_for_now().is_some(), "the pending opening stays");
        let (open, close) = b.take_pending();
        assert!(open > 0 && close == 0);
        b.apply_cluster(open, false);
        assert!(b.open_for_now().is_some());
        b.apply_cluster(0, false);
        assert!(b.open_for_now().is_none(), "the cluster closed it");
    }
}
