//! The in-process limiter: each subject's counters live beside it in the compiled snapshot
//! ([`LocalLimitState`]), so admission is a few atomic operations with no map lookup, no lock
//! and no I/O. Correct for one replica; with several, each enforces the limit on its own share
//! of traffic — the Redis-backed limiter exists to close that gap.

use std::time::Instant;

use super::gcra::{GcraCell, Take};
use super::{Admission, Denial, LimitView, RateLimiter, Refusal, Resource, Subject};

/// The counters of one subject: one GCRA cell per resource.
#[derive(Debug, Default)]
pub struct LocalLimitState {
    requests: GcraCell,
    tokens: GcraCell,
}

impl LocalLimitState {
    pub fn new() -> Self {
        Self::default()
    }
}

/// Enforces limits with each subject's [`LocalLimitState`].
#[derive(Debug)]
pub struct LocalLimiter {
    epoch: Instant,
}

impl Default for LocalLimiter {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalLimiter {
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds on this limiter's clock.
    pub fn now(&self) -> u64 {
        // Start at one window past zero so that a fresh cell (TAT 0) is fully idle.
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
            + super::gcra::WINDOW_NANOS
    }

    /// Admission at an explicit time, for tests.
    pub fn admit_at(
        &self,
        subjects: &[Subject<'_>],
        estimated_tokens: u64,
        now: u64,
    ) -> Result<LimitView, Refusal> {
        let mut view = LimitView::default();
        let mut view_taken = false;
        for (i, s) in subjects.iter().enumerate() {
            let mut this = LimitView::default();
            if let Some(rpm) = s.limits.rpm {
                match s.local.requests.take(u64::from(rpm), 1, now) {
                    Take::Admitted(state) => this.requests = Some(state),
                    Take::Refused { retry_after_nanos } => {
                        self.release_at(&subjects[..i], estimated_tokens, now);
                        return Err(refusal(s, Resource::Requests, retry_after_nanos));
                    }
                }
            }
            if let Some(tpm) = s.limits.tpm {
                match s.local.tokens.take(u64::from(tpm), estimated_tokens, now) {
                    Take::Admitted(state) => this.tokens = Some(state),
                    Take::Refused { retry_after_nanos } => {
                        if let Some(rpm) = s.limits.rpm {
                            s.local.requests.adjust(u64::from(rpm), -1, now);
                        }
                        self.release_at(&subjects[..i], estimated_tokens, now);
                        return Err(refusal(s, Resource::Tokens, retry_after_nanos));
                    }
                }
            }
            if !view_taken && !s.limits.is_unlimited() {
                view = this;
                view_taken = true;
            }
        }
        Ok(view)
    }

    /// Gives back what an admission of `subjects` took: one request and `estimated_tokens`.
    pub fn release_at(&self, subjects: &[Subject<'_>], estimated_tokens: u64, now: u64) {
        for s in subjects {
            if let Some(rpm) = s.limits.rpm {
                s.local.requests.adjust(u64::from(rpm), -1, now);
            }
            if let Some(tpm) = s.limits.tpm {
                s.local
                    .tokens
                    .adjust(u64::from(tpm), -signed(estimated_tokens), now);
            }
        }
    }
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn refusal(s: &Subject<'_>, what: Resource, retry_after_nanos: u64) -> Refusal {
    Refusal {
        scope: s.scope,
        what,
        retry_after: std::time::Duration::from_nanos(retry_after_nanos),
        limit: u64::from(
            match what {
                Resource::Requests => s.limits.rpm,
                Resource::Tokens => s.limits.tpm,
            }
            .unwrap_or(0),
        ),
    }
}

impl RateLimiter for LocalLimiter {
    async fn admit(&self, subjects: &[Subject<'_>], estimated_tokens: u64) -> Admission {
        self.admit_at(subjects, estimated_tokens, self.now())
            .map_err(Denial::Limited)
    }

    fn settle(&self, subjects: &[Subject<'_>], estimated_tokens: u64, actual_tokens: u64) {
        self.settle_at(subjects, estimated_tokens, actual_tokens, self.now());
    }
}

impl LocalLimiter {
    /// Settlement at an explicit time.
    pub fn settle_at(
        &self,
        subjects: &[Subject<'_>],
        estimated_tokens: u64,
        actual_tokens: u64,
        now: u64,
    ) {
        let delta = signed(actual_tokens) - signed(estimated_tokens);
        if delta == 0 {
            return;
        }
        for s in subjects {
            if let Some(tpm) = s.limits.tpm {
                s.local.tokens.adjust(u64::from(tpm), delta, now);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Scope;
    use super::*;

    const SEC: u64 = 1_000_000_000;

    fn subject(
        scope: Scope,
        state: &LocalLimitState,
        rpm: Option<u32>,
        tpm: Option<u32>,
    ) -> Subject<'_> {
        Subject::limited(scope, "x", state, rpm, tpm)
    }

    #[test]
    fn a_refusal_by_the_tenant_gives_the_key_its_request_back() {
        let limiter = LocalLimiter::new();
        let key = LocalLimitState::new();
        let tenant = LocalLimitState::new();
        let now = 100 * SEC;
        let subjects = [
            subject(Scope::Key, &key, Some(2), None),
            subject(Scope::Tenant, &tenant, Some(1), None),
        ];
        assert!(limiter.admit_at(&subjects, 0, now).is_ok());
        let refused = limiter.admit_at(&subjects, 0, now).unwrap_err();
        assert_eq!(
            (refused.scope, refused.what),
            (Scope::Tenant, Resource::Requests)
        );
        // The key alone still has its second request: the refused attempt was refunded.
        assert!(limiter.admit_at(&subjects[..1], 0, now).is_ok());
        assert!(limiter.admit_at(&subjects[..1], 0, now).is_err());
    }

    #[test]
    fn a_released_admission_gives_back_its_request_and_tokens() {
        let limiter = LocalLimiter::new();
        let key = LocalLimitState::new();
        let subjects = [subject(Scope::Key, &key, Some(1), Some(100))];
        let now = 100 * SEC;
        limiter.admit_at(&subjects, 100, now).unwrap();
        assert!(limiter.admit_at(&subjects, 1, now).is_err());
        limiter.release_at(&subjects, 100, now);
        let view = limiter.admit_at(&subjects, 100, now).unwrap();
        assert_eq!(view.tokens.unwrap().remaining, 0);
    }

    #[test]
    fn tokens_are_estimated_then_settled() {
        let limiter = LocalLimiter::new();
        let key = LocalLimitState::new();
        let subjects = [subject(Scope::Key, &key, None, Some(1000))];
        let now = 100 * SEC;
        let view = limiter.admit_at(&subjects, 600, now).unwrap();
        assert_eq!(view.tokens.unwrap().remaining, 400);
        let refused = limiter.admit_at(&subjects, 600, now).unwrap_err();
        assert_eq!(refused.what, Resource::Tokens);
        // Settling at the real usage (100) frees 500 of the 600 estimated.
        key.tokens.adjust(1000, 100 - 600, now);
        assert!(limiter.admit_at(&subjects, 600, now).is_ok());
    }

    #[test]
    fn the_view_reports_the_first_limited_subject() {
        let limiter = LocalLimiter::new();
        let key = LocalLimitState::new();
        let tenant = LocalLimitState::new();
        let subjects = [
            subject(Scope::Key, &key, None, None),
            subject(Scope::Tenant, &tenant, Some(60), None),
        ];
        let view = limiter.admit_at(&subjects, 0, 100 * SEC).unwrap();
        assert_eq!(view.requests.unwrap().limit, 60);
        assert_eq!(view.requests.unwrap().remaining, 59);
    }
}
