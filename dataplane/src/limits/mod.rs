//! Rate limits: requests and tokens per minute, per virtual key, tenant and deployment.
//!
//! [`RateLimiter`] is the contract every implementation meets: this process's in-memory one
//! ([`local::LocalLimiter`]) and the Redis-backed one that all replicas share
//! ([`redis::RedisLimiter`], which falls back to the in-process counters while Redis is
//! unreachable). Callers hold a [`Limiter`], an enum over the implementations, so dispatch
//! costs a `match` rather than a boxed future per request.
//!
//! In Redis mode, large limits and budgets are leased: each replica holds a slice of them,
//! charged in Redis ahead of use, and admits from it without waiting (`lease`, `slices`).
//!
//! Token limits are charged twice: an estimate at admission (prompt size plus `max_tokens`),
//! then a correction once the real usage is known ([`RateLimiter::settle`]).

mod batch;
pub mod gcra;
mod lease;
pub mod local;
pub mod redis;
mod slices;

use std::future::Future;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use switchboard_shared::snapshot::RateLimits;

pub use local::{LocalLimitState, LocalLimiter};
pub use redis::{CounterCharge, Joint, RedisLimiter};

/// Who a limit belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Key,
    Tenant,
    Deployment,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::Tenant => "tenant",
            Scope::Deployment => "deployment",
        }
    }
}

/// One party whose limits a request counts against.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub scope: Scope,
    pub id: &'a str,
    pub limits: RateLimits,
    /// The in-process counters of this subject. The local limiter uses them; a shared limiter
    /// may fall back to them when its store is unreachable.
    pub local: &'a LocalLimitState,
}

#[cfg(test)]
impl<'a> Subject<'a> {
    /// A subject with these limits, for tests.
    pub(crate) fn limited(
        scope: Scope,
        id: &'a str,
        local: &'a LocalLimitState,
        rpm: Option<u32>,
        tpm: Option<u32>,
    ) -> Self {
        let limits = RateLimits {
            rpm,
            tpm,
            concurrency: None,
        };
        Self {
            scope,
            id,
            limits,
            local,
        }
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub scope: Scope,
    pub what: Resource,
    pub retry_after: Duration,
    /// The refusing limit (`rpm` or `tpm`).
    pub limit: u64,
}

impl Refusal {
    /// The refused subject's state for the `x-ratelimit-*` headers of the 429: the refusing
    /// limit with nothing remaining, reset once the request could be admitted.
    pub fn view(&self) -> LimitView {
        let state = Some(gcra::CellState {
            limit: self.limit,
            remaining: 0,
            reset_nanos: u64::try_from(self.retry_after.as_nanos()).unwrap_or(u64::MAX),
        });
        match self.what {
            Resource::Requests => LimitView {
                requests: state,
                tokens: None,
            },
            Resource::Tokens => LimitView {
                requests: None,
                tokens: state,
            },
        }
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// A limit is exhausted (429).
    Limited(Refusal),
    /// The shared limit store is unreachable and the policy is to refuse limited requests
    /// rather than guess (503).
    Unavailable,
}

impl Denial {
    /// How long the client should wait before trying again.
    pub fn retry_after(&self) -> Duration {
        match self {
            Denial::Limited(r) => r.retry_after,
            Denial::Unavailable => Duration::from_secs(1),
        }
    }
}

impl From<Refusal> for Denial {
    fn from(r: Refusal) -> Self {
        Denial::Limited(r)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Requests,
    Tokens,
}

impl Resource {
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Requests => "requests",
            Resource::Tokens => "tokens",
        }
    }
}

/// The state of the first limited subject after admission, for OpenAI-style headers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitView {
    pub requests: Option<gcra::CellState>,
    pub tokens: Option<gcra::CellState>,
}

impl LimitView {
    /// Writes `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` as OpenAI does.
    pub fn write_headers(&self, headers: &mut HeaderMap) {
        use names::*;
        let pairs = [
            (
                self.requests,
                [&LIMIT_REQUESTS, &REMAINING_REQUESTS, &RESET_REQUESTS],
            ),
            (
                self.tokens,
                [&LIMIT_TOKENS, &REMAINING_TOKENS, &RESET_TOKENS],
            ),
        ];
        for (state, [limit, remaining, reset]) in pairs {
            if let Some(s) = state {
                headers.insert(limit, HeaderValue::from(s.limit));
                headers.insert(remaining, HeaderValue::from(s.remaining));
                // The formatted string becomes the value's buffer: no second copy.
                if let Ok(v) = HeaderValue::try_from(format_reset(s.reset_nanos)) {
                    headers.insert(reset, v);
                }
            }
        }
    }
}

/// OpenAI's rate-limit header names, made once: a name given as a string is parsed and
/// validated again on every insert or lookup, six times per answer.
pub mod names {
    use http::HeaderName;

    pub const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
    pub const REMAINING_REQUESTS: HeaderName =
        HeaderName::from_static("x-ratelimit-remaining-requests");
    pub const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
    pub const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
    pub const REMAINING_TOKENS: HeaderName =
        HeaderName::from_static("x-ratelimit-remaining-tokens");
    pub const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");
}

/// OpenAI's reset format: `20ms`, `1.5s`, `6m0s`. Written digit by digit into one string
/// (which becomes the header value's buffer): `format!` cost more than the rest of a header.
pub fn format_reset(nanos: u64) -> String {
    let ms = nanos.div_ceil(1_000_000);
    let mut out = String::with_capacity(16);
    if ms < 1000 {
        push_number(&mut out, ms);
        out.push_str("ms");
    } else if ms < 60_000 {
        let tenths = ms.div_ceil(100);
        push_number(&mut out, tenths / 10);
        if !tenths.is_multiple_of(10) {
            out.push('.');
            push_number(&mut out, tenths % 10);
        }
        out.push('s');
    } else {
        let secs = ms.div_ceil(1000);
        push_number(&mut out, secs / 60);
        out.push('m');
        push_number(&mut out, secs % 60);
        out.push('s');
    }
    out
}

/// Appends `n` in decimal.
fn push_number(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[start..].iter().map(|&d| char::from(d)));
}

/// What admitting a request to its limits answers: the first limited subject's state, or
/// why not.
pub type Admission = Result<LimitView, Denial>;

/// The limiter contract.
pub trait RateLimiter: Send + Sync {
    /// Counts one request and `estimated_tokens` against every subject, all or nothing: when
    /// one refuses, what the others took is given back.
    fn admit(
        &self,
        subjects: &[Subject<'_>],
        estimated_tokens: u64,
    ) -> impl Future<Output = Admission> + Send;

    /// Corrects the token charge of an admitted request once its real usage is known.
    fn settle(&self, subjects: &[Subject<'_>], estimated_tokens: u64, actual_tokens: u64);
}

/// The limiter this process runs with.
#[derive(Debug)]
pub enum Limiter {
    Local(LocalLimiter),
    Redis(RedisLimiter),
}

impl Limiter {
    pub async fn admit(&self, subjects: &[Subject<'_>], estimated_tokens: u64) -> Admission {
        match self {
            Limiter::Local(l) => l.admit(subjects, estimated_tokens).await,
            Limiter::Redis(l) => l.admit(subjects, estimated_tokens).await,
        }
    }

    pub fn settle(&self, subjects: &[Subject<'_>], estimated_tokens: u64, actual_tokens: u64) {
        match self {
            Limiter::Local(l) => l.settle(subjects, estimated_tokens, actual_tokens),
            Limiter::Redis(l) => l.settle(subjects, estimated_tokens, actual_tokens),
        }
    }

    /// Gives this replica's unused slices of leased limits and budgets back to Redis (at
    /// shutdown; nothing to do in process).
    pub async fn give_back_leases(&self) {
        if let Limiter::Redis(l) = self {
            l.give_back_leases().await;
        }
    }

    /// Gives back all that an admission took (its request and its estimated tokens), for a
    /// request that was admitted and then not run.
    pub fn release(&self, subjects: &[Subject<'_>], estimated_tokens: u64) {
        match self {
            Limiter::Local(l) => l.release_at(subjects, estimated_tokens, l.now()),
            Limiter::Redis(l) => l.release(subjects, estimated_tokens),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_format_follows_openai() {
        assert_eq!(format_reset(20_000_000), "20ms");
        assert_eq!(format_reset(1_000_000_000), "1s");
        assert_eq!(format_reset(1_450_000_000), "1.5s");
        assert_eq!(format_reset(360_000_000_000), "6m0s");
        assert_eq!(format_reset(1), "1ms");
        // As `format!` writes it, across every branch and digit count.
        let reference = |nanos: u64| {
            let ms = nanos.div_ceil(1_000_000);
            let tenths = ms.div_ceil(100);
            let secs = ms.div_ceil(1000);
            match ms {
                0..1000 => format!("{ms}ms"),
                1000..60_000 if tenths.is_multiple_of(10) => format!("{}s", tenths / 10),
                1000..60_000 => format!("{}.{}s", tenths / 10, tenths % 10),
                _ => format!("{}m{}s", secs / 60, secs % 60),
            }
        };
        let mut nanos = 0u64;
        while nanos < u64::MAX / 3 {
            for n in [nanos, nanos + 1, nanos + 999_999, nanos.wrapping_mul(7)] {
                assert_eq!(format_reset(n), reference(n), "{n}");
            }
            nanos = nanos * 3 + 1;
        }
        assert_eq!(format_reset(u64::MAX), reference(u64::MAX));
    }

    #[test]
    fn headers_carry_each_limits_figures() {
        let state = |limit, remaining, reset_nanos| gcra::CellState {
            limit,
            remaining,
            reset_nanos,
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-limit-requests", HeaderValue::from_static("7"));
        LimitView {
            requests: Some(state(600, 599, 100_000_000)),
            tokens: Some(state(90_000, 1_234, 1_450_000_000)),
        }
        .write_headers(&mut headers);
        let got = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(got("x-ratelimit-limit-requests").as_deref(), Some("600"));
        assert_eq!(
            got("x-ratelimit-remaining-requests").as_deref(),
            Some("599")
        );
        assert_eq!(got("x-ratelimit-reset-requests").as_deref(), Some("100ms"));
        assert_eq!(got("x-ratelimit-limit-tokens").as_deref(), Some("90000"));
        assert_eq!(got("x-ratelimit-remaining-tokens").as_deref(), Some("1234"));
        assert_eq!(got("x-ratelimit-reset-tokens").as_deref(), Some("1.5s"));
        assert_eq!(
            headers.len(),
            6,
            "an upstream's value is replaced, not kept beside"
        );
        let mut only_tokens = HeaderMap::new();
        LimitView {
            requests: None,
            tokens: Some(state(10, 0, 6_000_000_000)),
        }
        .write_headers(&mut only_tokens);
        assert_eq!(only_tokens.len(), 3);
        assert_eq!(only_tokens["x-ratelimit-reset-tokens"], "6s");
        assert_eq!(only_tokens["x-ratelimit-remaining-tokens"], "0");
    }
}
