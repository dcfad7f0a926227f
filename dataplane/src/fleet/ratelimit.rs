//! The upstream's own rate-limit headers, read per provider into one small struct.
//!
//! The router can steer away from a deployment whose upstream says it is nearly out of
//! requests or tokens before the upstream starts answering 429. Adaptors only read the
//! headers ([`crate::providers::ProviderAdaptor::rate_limits`]); the reading is deployment
//! state, so its type lives here with the quota it feeds, and `fleet` needs nothing from
//! `providers`.
//!
//! - OpenAI and Azure: `x-ratelimit-{limit,remaining,reset}-{requests,tokens}`, resets as
//!   durations like `1s`, `6m0s`, `20ms` (or a bare number of seconds).
//! - Anthropic: `anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}`, resets as
//!   RFC 3339 instants.
//!
//! Every header is untrusted input: a value that does not parse is ignored, and a reset is
//! clamped to [`MAX_RESET`] (an upstream saying `1e30` seconds must neither panic nor park a
//! deployment for ever).
//!
//! The deployment's state stores each reading in its [`super::UpstreamQuota`] when the
//! attempt's outcome is recorded; the key ring reads the reset of an exhausted allowance
//! from it.

use std::time::Duration;

use http::HeaderMap;

/// The longest reset an upstream's header can announce; longer values are clamped to it.
pub const MAX_RESET: Duration = Duration::from_secs(3600);

/// Seconds as a duration, clamped to [`MAX_RESET`]; `None` for negative or non-finite values.
fn reset_secs(secs: f64) -> Option<Duration> {
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some(Duration::try_from_secs_f64(secs).map_or(MAX_RESET, |d| d.min(MAX_RESET)))
}

/// What the upstream said about its limits for this account.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpstreamRateLimits {
    /// The allowance itself, when the upstream says (OpenAI and Anthropic do).
    pub limit_requests: Option<u64>,
    pub limit_tokens: Option<u64>,
    pub remaining_requests: Option<u64>,
    pub remaining_tokens: Option<u64>,
    /// Time until the request allowance is fully restored.
    pub reset_requests: Option<Duration>,
    /// Time until the token allowance is fully restored.
    pub reset_tokens: Option<Duration>,
}

impl UpstreamRateLimits {
    fn nonempty(self) -> Option<Self> {
        (self != Self::default()).then_some(self)
    }

    /// When the exhausted allowance comes back: the reset of whichever is at zero, else the
    /// later of the two.
    pub fn exhausted_reset(&self) -> Option<Duration> {
        match (self.remaining_requests, self.remaining_tokens) {
            (Some(0), _) => self.reset_requests,
            (_, Some(0)) => self.reset_tokens,
            _ => self.reset_requests.max(self.reset_tokens),
        }
    }

    /// OpenAI's (and Azure OpenAI's) headers.
    ///
    /// One pass over the answer's headers: six hashed lookups of these long names cost more
    /// (about 1,500 instructions an answer) than comparing the few headers an answer carries.
    /// The first value of a name counts, as `HeaderMap::get` reads it.
    pub fn from_openai_headers(headers: &HeaderMap) -> Option<Self> {
        use crate::limits::names::*;
        let names = [
            &LIMIT_REQUESTS,
            &LIMIT_TOKENS,
            &REMAINING_REQUESTS,
            &REMAINING_TOKENS,
            &RESET_REQUESTS,
            &RESET_TOKENS,
        ];
        let mut values: [Option<&str>; 6] = [None; 6];
        let mut seen = [false; 6];
        for (name, value) in headers {
            if !name.as_str().starts_with("x-ratelimit-") {
                continue;
            }
            if let Some(i) = names.iter().position(|n| *n == name)
                && !std::mem::replace(&mut seen[i], true)
            {
                values[i] = value.to_str().ok().map(str::trim);
            }
        }
        let number = |i: usize| values[i].and_then(|v| v.parse().ok());
        Self {
            limit_requests: number(0),
            limit_tokens: number(1),
            remaining_requests: number(2),
            remaining_tokens: number(3),
            reset_requests: values[4].and_then(go_duration),
            reset_tokens: values[5].and_then(go_duration),
        }
        .nonempty()
    }

    /// Anthropic's headers; `now` is the current time (resets are absolute instants).
    pub fn from_anthropic_headers(
        headers: &HeaderMap,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Option<Self> {
        let until = |name: &str| {
            let at = chrono::DateTime::parse_from_rfc3339(text(headers, name)?).ok()?;
            let until = at.with_timezone(&chrono::Utc).signed_duration_since(now);
            until.to_std().ok().map(|d| d.min(MAX_RESET))
        };
        Self {
            limit_requests: number(headers, "anthropic-ratelimit-requests-limit"),
            limit_tokens: number(headers, "anthropic-ratelimit-tokens-limit"),
            remaining_requests: number(headers, "anthropic-ratelimit-requests-remaining"),
            remaining_tokens: number(headers, "anthropic-ratelimit-tokens-remaining"),
            reset_requests: until("anthropic-ratelimit-requests-reset"),
            reset_tokens: until("anthropic-ratelimit-tokens-reset"),
        }
        .nonempty()
    }
}

fn text(headers: &HeaderMap, name: impl http::header::AsHeaderName) -> Option<&str> {
    headers.get(name)?.to_str().ok().map(str::trim)
}

fn number(headers: &HeaderMap, name: impl http::header::AsHeaderName) -> Option<u64> {
    text(headers, name)?.parse().ok()
}

/// A Go-style duration (`1s`, `6m0s`, `1h2m3.5s`, `20ms`) as OpenAI sends them, or a bare
/// number of seconds.
fn go_duration(s: &str) -> Option<Duration> {
    if let Ok(secs) = s.parse::<f64>() {
        return reset_secs(secs);
    }
    let mut total = 0.0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 0.001,
            "us" | "µs" => 0.000_001,
            "ns" => 0.000_000_001,
            _ => return None,
        };
        total += value * factor;
        rest = &rest[unit_len..];
    }
    reset_secs(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let header = |(k, v): &(&'static str, &str)| (k.parse().unwrap(), v.parse().unwrap());
        pairs.iter().map(header).collect()
    }

    #[test]
    fn openai_headers_with_go_durations() {
        let h = headers(&[
            ("x-ratelimit-remaining-requests", "59"),
            ("x-ratelimit-remaining-tokens", "149984"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-reset-tokens", "6m0.5s"),
        ]);
        let r = UpstreamRateLimits::from_openai_headers(&h).unwrap();
        assert_eq!(r.remaining_requests, Some(59));
        assert_eq!(r.remaining_tokens, Some(149_984));
        assert_eq!(r.reset_requests, Some(Duration::from_secs(1)));
        assert_eq!(r.reset_tokens, Some(Duration::from_millis(360_500)));
        assert_eq!(go_duration("20ms"), Some(Duration::from_millis(20)));
        assert_eq!(go_duration("5x"), None);
        assert_eq!(
            UpstreamRateLimits::from_openai_headers(&HeaderMap::new()),
            None
        );
    }

    #[test]
    fn the_first_value_of_a_name_counts_as_get_reads_it() {
        let mut h = headers(&[
            ("content-type", "application/json"),
            ("x-ratelimit-limit-requests", "10"),
            ("x-ratelimit-remaining-requests", "x"),
            ("x-ratelimit-limit-tokens", " 900 "),
        ]);
        h.append("x-ratelimit-limit-requests", "20".parse().unwrap());
        h.append("x-ratelimit-remaining-requests", "5".parse().unwrap());
        h.append("x-ratelimit-other", "7".parse().unwrap());
        let r = UpstreamRateLimits::from_openai_headers(&h).unwrap();
        assert_eq!(r.limit_requests, Some(10));
        assert_eq!(
            r.remaining_requests, None,
            "an unreadable first value is not skipped"
        );
        assert_eq!(r.limit_tokens, Some(900));
        assert_eq!((r.remaining_tokens, r.reset_requests), (None, None));
    }

    #[test]
    fn absurd_resets_are_clamped_not_panics() {
        for value in [
            "1e30",
            "1e300",
            "inf",
            "NaN",
            "-1",
            "99999999999999h",
            "1e308h",
            "1.5.5s",
        ] {
            let h = headers(&[("x-ratelimit-reset-requests", value)]);
            let r = UpstreamRateLimits::from_openai_headers(&h);
            let reset = r.and_then(|r| r.reset_requests);
            assert!(reset.is_none_or(|d| d <= MAX_RESET), "{value}: {reset:?}");
        }
        assert_eq!(go_duration("1e30"), Some(MAX_RESET));
        assert_eq!(go_duration("-1"), None);
        let now = chrono::Utc::now();
        let h = headers(&[(
            "anthropic-ratelimit-requests-reset",
            "+262000-01-01T00:00:00Z",
        )]);
        let r = UpstreamRateLimits::from_anthropic_headers(&h, now);
        assert!(r.is_none_or(|r| r.reset_requests.is_none_or(|d| d <= MAX_RESET)));
    }

    #[test]
    fn anthropic_headers_with_instants() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-23T04:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        let h = headers(&[
            ("anthropic-ratelimit-requests-remaining", "49"),
            ("anthropic-ratelimit-requests-reset", "2026-11-23T04:00:30Z"),
            ("anthropic-ratelimit-tokens-remaining", "79000"),
            ("anthropic-ratelimit-tokens-reset", "2026-11-23T04:01:00Z"),
        ]);
        let r = UpstreamRateLimits::from_anthropic_headers(&h, now).unwrap();
        assert_eq!(r.remaining_requests, Some(49));
        assert_eq!(r.reset_requests, Some(Duration::from_secs(30)));
        assert_eq!(r.remaining_tokens, Some(79_000));
        assert_eq!(r.reset_tokens, Some(Duration::from_secs(60)));
    }
}
