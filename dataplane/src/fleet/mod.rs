//! The state of each deployment that routing reads: load, latency, usage, breaker, quota.
//!
//! One [`DeploymentState`] per deployment, held in an `Arc` by the catalog and handed from
//! one catalog to the next by deployment id (a reload neither resets a latency nor forgets a
//! cooldown). Every part is atomics, written on the request path without locks, and one owner
//! writes them: the forward loop reports how each attempt ended ([`DeploymentState::record`])
//! and the state updates its breaker, load, latency and quota behind that call. `fleet` stands
//! below the catalog and the providers (it imports neither), so both can hold and feed it.
//!
//!
//! - [`breaker`]: closed → open → half-open with one probe; cooldowns and their timing.
//! - [`load`]: in flight, latency and TTFT averages, requests/tokens/failures this minute.
//! - [`quota`]: the upstream's own `x-ratelimit-remaining-*` for our account, as read from its
//!   headers by [`ratelimit`] (each provider adaptor picks its header family).
//! - [`prefix`]: which deployment last served a prompt prefix (the `prefix_affinity` strategy).
//! - [`sync`]: with Redis, a background task that publishes this replica's part in pipelined
//!   batches and reads back the cluster's every `redis.refresh_ms`. Requests never wait on it.

pub mod breaker;
pub mod load;
pub mod prefix;
pub mod quota;
pub mod ratelimit;
pub mod sync;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use switchboard_shared::fleet_keys::PermanentError;
use switchboard_shared::snapshot::Cooldown;

pub use breaker::{Breaker, Gate, unix_ms};
pub use load::{InFlight, Load};
pub use quota::UpstreamQuota;
pub use ratelimit::UpstreamRateLimits;

/// Everything known about one deployment's condition.
#[derive(Debug, Default)]
pub struct DeploymentState {
    pub breaker: Breaker,
    pub load: Load,
    pub quota: UpstreamQuota,
    /// What its own spend caps and request quotas have used ([`crate::caps`]).
    pub caps: Arc<crate::caps::CapUsage>,
    /// The last permanent error an upstream answered, for the health API; [`sync`] writes it
    /// to the shared hash once (`error_unsent`).
    pub last_error: ArcSwapOption<PermanentError>,
    error_unsent: std::sync::atomic::AtomicBool,
}

/// How one attempt on a deployment ended, as the forward loop reports it to
/// [`DeploymentState::record`].
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// It answered: a whole answer after `ms`, or a stream's first bytes after `ms`.
    Answered { ms: f64, streamed: bool },
    /// A failure that counts against the breaker (connect error, reset, timeout, 5xx, broken
    /// body), opening it per `cooldown`.
    Failed { cooldown: &'a Cooldown },
    /// The upstream said 429: out for `period` at once.
    RateLimited { period: Duration },
    /// The upstream's body says the failure lasts (invalid key, unknown model, exhausted
    /// quota): out for `period` at once, alerted once per episode, kept for the health API.
    Permanent {
        period: Duration,
        error: &'a PermanentError,
    },
    /// The request's own fault (relayed to the client): says nothing about the deployment,
    /// so a probe it held goes back.
    Refused,
}

/// What recording an outcome changed, for the caller's metrics, log and alerts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Recorded {
    /// The deployment started cooling down (its breaker opened).
    pub cooled: bool,
    /// The first credential rejection of this open episode: alert once, not per request.
    pub first_alert: bool,
}

impl DeploymentState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether a request may go to this deployment now (hands out the half-open probe).
    pub fn gate(&self, now_ms: u64) -> Gate {
        self.breaker.gate(now_ms)
    }

    /// Gives back a probe that [`Self::gate`] handed out to a request that went elsewhere.
    pub fn release_probe(&self) {
        self.breaker.release_probe();
    }

    /// Whether the breaker is open or half-open (not serving normally).
    pub fn is_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// An attempt starts: counts the request this minute and marks it in flight until the
    /// returned guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.load.record_request(unix_ms());
        InFlight::new(Arc::clone(self))
    }

    /// The one place an attempt's outcome changes the deployment's health: breaker, load,
    /// latency averages, and the upstream's own quota as its answer's headers reported it
    /// (`reading`, taken from a success or a 429).
    pub fn record(&self, outcome: Outcome<'_>, reading: Option<&UpstreamRateLimits>) -> Recorded {
        let now = unix_ms();
        if let Some(reading) = reading {
            self.quota.record(reading, now);
        }
        let mut recorded = Recorded::default();
        match outcome {
            Outcome::Answered { ms, streamed } => {
                self.breaker.record_success();
                if streamed {
                    self.load.record_ttft(ms, now);
                } else {
                    self.load.record_latency(ms, now);
                }
            }
            Outcome::Failed { cooldown } => {
                self.load.record_failure(now);
                recorded.cooled = self.breaker.record_failure(cooldown);
            }
            Outcome::RateLimited { period } => {
                self.load.record_failure(now);
                self.breaker.open(period);
                recorded.cooled = true;
            }
            Outcome::Permanent { period, error } => {
                self.breaker.open(period);
                recorded.first_alert = self.breaker.first_alert();
                recorded.cooled = recorded.first_alert;
                self.last_error.store(Some(Arc::new(error.clone())));
                self.error_unsent
                    .store(true, std::sync::atomic::Ordering::Relaxed);
            }
            Outcome::Refused => self.breaker.release_probe(),
        }
        recorded
    }

    /// The last permanent error's hash value, once after each new error (for [`sync`]).
    pub fn take_unsent_error(&self) -> Option<String> {
        if !self
            .error_unsent
            .swap(false, std::sync::atomic::Ordering::Relaxed)
        {
            return None;
        }
        self.last_error.load().as_ref().map(|e| e.encode())
    }

    /// Tokens a finished request used, for this minute's totals.
    pub fn record_tokens(&self, tokens: u64) {
        self.load.record_tokens(tokens, unix_ms());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_record_call_updates_breaker_load_latency_and_quota() {
        let state = Arc::new(DeploymentState::new());
        let inflight = state.begin();
        assert_eq!(state.load.inflight(), 1);
        let reading = UpstreamRateLimits {
            limit_requests: Some(100),
            remaining_requests: Some(75),
            ..UpstreamRateLimits::default()
        };
        let answered = Outcome::Answered {
            ms: 120.0,
            streamed: false,
        };
        assert_eq!(state.record(answered, Some(&reading)), Recorded::default());
        drop(inflight);
        let now = unix_ms();
        assert_eq!(state.load.inflight(), 0);
        assert_eq!(state.load.latency_ms(now), Some(120.0));
        assert!(
            state.quota.used_share(now).is_some(),
            "the reading was kept"
        );
        assert_eq!(state.load.this_minute(now).requests, 1);

        let cooldown = Cooldown {
            allowed_failures: 2,
            seconds: 30,
        };
        let failed = Outcome::Failed {
            cooldown: &cooldown,
        };
        assert!(
            !state.record(failed, None).cooled,
            "one failure of two allowed"
        );
        assert!(state.record(failed, None).cooled, "the second opens it");
        assert!(state.is_open());
        assert_eq!(state.load.this_minute(now).failures, 2);
    }

    #[test]
    fn a_permanent_error_takes_it_out_alerts_once_and_is_sent_once() {
        let state = DeploymentState::new();
        let error = PermanentError {
            at_ms: 5,
            status: 429,
            kind: "quota_exhausted".into(),
            message: "You exceeded your current quota".into(),
        };
        let out = Outcome::Permanent {
            period: Duration::from_secs(300),
            error: &error,
        };
        assert!(state.record(out, None).first_alert);
        assert!(!state.record(out, None).first_alert, "once per episode");
        assert!(state.is_open());
        assert_eq!(state.take_unsent_error(), Some(error.encode()));
        assert_eq!(state.take_unsent_error(), None, "sent once");
        assert!(matches!(state.gate(unix_ms()), Gate::Open { .. }));
    }

    #[test]
    fn a_rate_limit_opens_at_once_and_a_refusal_gives_the_probe_back() {
        let state = DeploymentState::new();
        let limited = Outcome::RateLimited {
            period: Duration::from_millis(1),
        };
        assert!(state.record(limited, None).cooled);
        let later = unix_ms() + 10;
        assert_eq!(state.gate(later), Gate::Probe, "half-open: one probe");
        assert_ne!(state.gate(later), Gate::Probe, "the probe is taken");
        state.record(Outcome::Refused, None);
        assert_eq!(state.gate(later), Gate::Probe, "given back by the refusal");
    }
}
