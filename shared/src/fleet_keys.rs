//! Names of the Redis keys that hold the deployment state replicas share.
//!
//! Every key starts with the data plane's `redis.key_prefix` and carries its subject in a hash
//! tag (`{...}`), so each script touches one key and one slot on Redis Cluster.
//!
//! The data planes write a deployment's hash (`dataplane/src/fleet/sync.rs`) and its caps
//! counters (`dataplane/src/caps.rs`); the control plane reads both for
//! `GET /admin/v1/deployments/{id}/health` through [`HealthFields::read`], [`cap_counters`] and
//! [`cap_used_up`], so the names, periods and encodings below are the contract between them.

use chrono::{DateTime, Datelike, Utc};

use crate::snapshot::DeploymentCaps;

/// The hash with one deployment's shared state: minute counts (`m`, `rq`, `tk`, `fl`), breaker
/// (`until`, `probe`), per replica in-flight counts (`if:<replica>` = `n:at_ms`) and latency
/// averages (`lat:<replica>` = `latency:at_ms:ttft:at_ms`), the last permanent error an
/// upstream answered ([`ERROR_FIELD`]) and its latest quota reading ([`QUOTA_FIELD`]).
pub fn deployment_state(prefix: &str, deployment_id: &str) -> String {
    format!("{prefix}:fleet:{{{deployment_id}}}")
}

/// The capped stream of one `prefix_affinity` model's prefix-index entries.
pub fn prefix_index(prefix: &str, model: &str) -> String {
    format!("{prefix}:pfx:{{{model}}}")
}

/// Nano-USD in one USD: a caps spend counter holds whole nano-USD.
pub const NANOS_PER_USD: f64 = 1e9;

/// The period a deployment's caps counter covers: a UTC day or calendar month, numbered from
/// the epoch plus one (so 0 means "never counted"), as [`cap_periods`] gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CapPeriod {
    Day(u64),
    Month(u64),
}

impl CapPeriod {
    /// How long Redis keeps a period's counters: a day past a day, a day past a month.
    pub fn ttl_seconds(self) -> u64 {
        match self {
            Self::Day(_) => 2 * 86_400,
            Self::Month(_) => 32 * 86_400,
        }
    }
}

/// The numbers of the UTC day and month of `now`, for [`CapPeriod`].
pub fn cap_periods(now: DateTime<Utc>) -> (u64, u64) {
    let day = u64::try_from(now.timestamp().div_euclid(86_400)).unwrap_or(0) + 1;
    let month = u64::try_from(i64::from(now.year()) * 12 + i64::from(now.month0())).unwrap_or(0);
    (day, month + 1)
}

/// The counters of one deployment's caps in `period`: `(requests, nano-USD)`, i.e.
/// `<prefix>:dcap:{<id>}:d<day>:req` and `...:usd` (`m<month>` for a month). Both share the
/// deployment's hash tag, so one `MGET` reads a period's pair on Redis Cluster too.
pub fn cap_counters(prefix: &str, deployment_id: &str, period: CapPeriod) -> (String, String) {
    let base = match period {
        CapPeriod::Day(n) => format!("{prefix}:dcap:{{{deployment_id}}}:d{n}"),
        CapPeriod::Month(n) => format!("{prefix}:dcap:{{{deployment_id}}}:m{n}"),
    };
    (format!("{base}:req"), format!("{base}:usd"))
}

/// What a deployment used of its caps in one period.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CapUse {
    pub requests: u64,
    pub usd: f64,
}

/// The first of `caps` that `today` and `this_month` have used up (reached or passed), by its
/// field name: `usd_per_day`, `requests_per_day`, `usd_per_month` or `requests_per_month`.
/// Routing leaves the deployment out while one is; health shows the same name.
pub fn cap_used_up(
    caps: &DeploymentCaps,
    today: CapUse,
    this_month: CapUse,
) -> Option<&'static str> {
    let usd = |cap: Option<f64>, used: f64| cap.is_some_and(|c| used >= c);
    let req = |cap: Option<u64>, used: u64| cap.is_some_and(|c| used >= c);
    [
        (usd(caps.usd_per_day, today.usd), "usd_per_day"),
        (
            req(caps.requests_per_day, today.requests),
            "requests_per_day",
        ),
        (usd(caps.usd_per_month, this_month.usd), "usd_per_month"),
        (
            req(caps.requests_per_month, this_month.requests),
            "requests_per_month",
        ),
    ]
    .into_iter()
    .find_map(|(over, name)| over.then_some(name))
}

/// `at_ms:status:kind:message` — the last permanent error read from an upstream's body.
pub const ERROR_FIELD: &str = "err";
/// `at_ms:remaining_requests:limit_requests:remaining_tokens:limit_tokens` (empty: unknown) —
/// the upstream's latest `x-ratelimit-*` reading.
pub const QUOTA_FIELD: &str = "q";

/// A replica's in-flight count or latency older than this no longer counts (ms).
pub const REPLICA_STALE_MS: u64 = 60_000;

/// A permanent error an upstream answered (invalid key, unknown model, exhausted quota), as a
/// data plane recorded it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PermanentError {
    /// Unix milliseconds of the answer.
    pub at_ms: u64,
    /// The upstream's HTTP status.
    pub status: u16,
    /// `credential_invalid`, `model_not_found`, `quota_exhausted` or `permission_denied`.
    pub kind: String,
    /// The upstream's own message (at most 200 characters).
    pub message: String,
}

impl PermanentError {
    /// Reads an upstream's refusal for a failure that lasts: an invalid key (any 401, Gemini's
    /// 400 `API_KEY_INVALID`), a refused permission (403, Anthropic's `permission_error`), a
    /// model the upstream does not know (a 404 naming a model, OpenAI's `model_not_found`), an
    /// exhausted account (OpenAI's 429 `insufficient_quota`). `None` for anything passing.
    pub fn from_answer(status: u16, body: &[u8], at_ms: u64) -> Option<Self> {
        let text = String::from_utf8_lossy(body);
        let kind = match status {
            401 => "credential_invalid",
            403 => "permission_denied",
            400 if text.contains("API_KEY_INVALID") => "credential_invalid",
            404 if text.to_ascii_lowercase().contains("model") => "model_not_found",
            429 if text.contains("insufficient_quota") => "quota_exhausted",
            _ => return None,
        };
        Some(Self {
            at_ms,
            status,
            kind: kind.to_owned(),
            message: error_message(&text),
        })
    }

    /// The hash field's value.
    pub fn encode(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.at_ms, self.status, self.kind, self.message
        )
    }

    fn decode(value: &str) -> Option<Self> {
        let mut parts = value.splitn(4, ':');
        Some(Self {
            at_ms: parts.next()?.parse().ok()?,
            status: parts.next()?.parse().ok()?,
            kind: parts.next()?.to_owned(),
            message: parts.next().unwrap_or_default().to_owned(),
        })
    }
}

/// An upstream error body's `error.message` (OpenAI, Anthropic, Gemini) or `message`, else its
/// text: one line, key-like words masked, at most 200 characters. Safe to store and show.
pub fn error_message(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| {
            v.pointer("/error/message")
                .or_else(|| v.get("message"))
                .or_else(|| v.pointer("/0/error/message"))
        })
        .and_then(serde_json::Value::as_str)
        .unwrap_or(body);
    let masked: Vec<&str> = message
        .split_whitespace()
        .map(|w| {
            let keyish = w.len() >= 24 && w.chars().any(|c| c.is_ascii_digit());
            if keyish || w.contains("sk-") || w.starts_with("AIza") {
                "[masked]"
            } else {
                w
            }
        })
        .collect();
    masked.join(" ").chars().take(200).collect()
}

/// What the upstream said is left of its own rate limits for the gateway's account.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaReading {
    /// Unix milliseconds of the reading.
    pub at_ms: u64,
    pub remaining_requests: Option<u64>,
    pub limit_requests: Option<u64>,
    pub remaining_tokens: Option<u64>,
    pub limit_tokens: Option<u64>,
}

impl QuotaReading {
    /// The hash field's value.
    pub fn encode(&self) -> String {
        let n = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_default();
        format!(
            "{}:{}:{}:{}:{}",
            self.at_ms,
            n(self.remaining_requests),
            n(self.limit_requests),
            n(self.remaining_tokens),
            n(self.limit_tokens)
        )
    }

    fn decode(value: &str) -> Option<Self> {
        let parts: Vec<Option<u64>> = value.split(':').map(|p| p.parse().ok()).collect();
        match parts[..] {
            [Some(at_ms), rr, lr, rt, lt] => Some(Self {
                at_ms,
                remaining_requests: rr,
                limit_requests: lr,
                remaining_tokens: rt,
                limit_tokens: lt,
            }),
            _ => None,
        }
    }
}

/// A deployment's hash summed over the cluster's replicas, as an operator reads it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HealthFields {
    /// Requests, tokens and failures counted in the current minute (0 when the stored minute
    /// is over).
    pub requests_this_minute: u64,
    pub tokens_this_minute: u64,
    pub failures_this_minute: u64,
    /// Unix ms until which the breaker is open; 0 when closed.
    pub open_until_ms: u64,
    /// Replicas that reported within [`REPLICA_STALE_MS`].
    pub replicas: u32,
    /// Requests in flight across those replicas.
    pub inflight: u64,
    /// The mean of the replicas' latency (whole answers) and TTFT (streams) averages, in ms.
    pub latency_ms: Option<f64>,
    pub ttft_ms: Option<f64>,
    pub last_error: Option<PermanentError>,
    pub quota: Option<QuotaReading>,
}

impl HealthFields {
    /// Reads a flat `HGETALL` answer at `now_ms`.
    pub fn read(fields: &[String], now_ms: u64) -> Self {
        let mut h = Self::default();
        let num = |s: &str| s.parse::<u64>().unwrap_or(0);
        let fresh = |at: &str| now_ms.saturating_sub(num(at)) <= REPLICA_STALE_MS;
        let (mut minute, mut lat, mut ttft) = (0, (0.0, 0u32), (0.0, 0u32));
        let mut counts = (0, 0, 0);
        for pair in fields.chunks_exact(2) {
            let (name, value) = (pair[0].as_str(), pair[1].as_str());
            match name {
                "m" => minute = num(value),
                "rq" => counts.0 = num(value),
                "tk" => counts.1 = num(value),
                "fl" => counts.2 = num(value),
                "until" => h.open_until_ms = num(value),
                ERROR_FIELD => h.last_error = PermanentError::decode(value),
                QUOTA_FIELD => h.quota = QuotaReading::decode(value),
                _ if name.starts_with("if:") => {
                    if let Some((n, at)) = value.split_once(':')
                        && fresh(at)
                    {
                        h.replicas += 1;
                        h.inflight += num(n);
                    }
                }
                _ if name.starts_with("lat:") => {
                    if let [l, l_at, t, t_at] = value.split(':').collect::<Vec<_>>()[..] {
                        for (sum, v, at) in [(&mut lat, l, l_at), (&mut ttft, t, t_at)] {
                            if let Ok(x) = v.parse::<f64>()
                                && x > 0.0
                                && fresh(at)
                            {
                                sum.0 += x;
                                sum.1 += 1;
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        if minute == now_ms / 60_000 {
            (
                h.requests_this_minute,
                h.tokens_this_minute,
                h.failures_this_minute,
            ) = counts;
        }
        let mean = |(sum, n): (f64, u32)| (n > 0).then(|| sum / f64::from(n));
        (h.latency_ms, h.ttft_ms) = (mean(lat), mean(ttft));
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_errors_are_read_from_bodies() {
        let kind = |status: u16, body: &str| {
            PermanentError::from_answer(status, body.as_bytes(), 1).map(|e| e.kind)
        };
        let quota = r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        assert_eq!(kind(429, quota).as_deref(), Some("quota_exhausted"));
        assert_eq!(
            kind(429, r#"{"error":{"type":"rate_limit_exceeded"}}"#),
            None
        );
        let gemini = r#"{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT","details":[{"reason":"API_KEY_INVALID"}]}}"#;
        assert_eq!(kind(400, gemini).as_deref(), Some("credential_invalid"));
        assert_eq!(
            kind(400, r#"{"error":{"message":"context too long"}}"#),
            None
        );
        let missing =
            r#"{"error":{"message":"The model `gpt-9` does not exist","code":"model_not_found"}}"#;
        assert_eq!(kind(404, missing).as_deref(), Some("model_not_found"));
        assert_eq!(kind(404, r#"{"error":{"message":"Invalid URL"}}"#), None);
        let anthropic =
            r#"{"type":"error","error":{"type":"permission_error","message":"no access"}}"#;
        assert_eq!(kind(403, anthropic).as_deref(), Some("permission_denied"));
        let e = PermanentError::from_answer(
            401,
            br#"{"error":{"message":"Incorrect API key provided: sk-abc123****wxyz. See the docs."}}"#,
            7,
        )
        .unwrap();
        assert_eq!(
            e.message,
            "Incorrect API key provided: [masked] See the docs."
        );
        assert_eq!(PermanentError::decode(&e.encode()), Some(e));
    }

    #[test]
    fn health_fields_sum_fresh_replicas_and_decode_errors_and_quota() {
        let now = 10 * 60_000 + 5_000;
        let fields: Vec<String> = [
            "m",
            "10",
            "rq",
            "40",
            "tk",
            "900",
            "fl",
            "4",
            "until",
            "700000",
            "if:a",
            "2:604000",
            "if:b",
            "3:604000",
            "if:gone",
            "9:1000",
            "lat:a",
            "100:604000:0:0",
            "lat:b",
            "300:604000:50:604000",
            "err",
            "604000:401:credential_invalid:Incorrect API key: sk-...: check it",
            "q",
            "604000:10::500:1000",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let h = HealthFields::read(&fields, now);
        assert_eq!((h.requests_this_minute, h.failures_this_minute), (40, 4));
        assert_eq!(
            (h.replicas, h.inflight),
            (2, 5),
            "the stale replica left out"
        );
        assert_eq!((h.latency_ms, h.ttft_ms), (Some(200.0), Some(50.0)));
        assert_eq!(h.open_until_ms, 700_000);
        let e = h.last_error.unwrap();
        assert_eq!((e.status, e.kind.as_str()), (401, "credential_invalid"));
        assert_eq!(e.message, "Incorrect API key: sk-...: check it");
        let q = h.quota.unwrap();
        assert_eq!((q.remaining_requests, q.limit_requests), (Some(10), None));
        assert_eq!(QuotaReading::decode(&q.encode()), Some(q));
        let later = HealthFields::read(&fields, now + 60_000);
        assert_eq!(
            later.requests_this_minute, 0,
            "an old minute counts nothing"
        );
    }

    #[test]
    fn keys_carry_their_subject_as_a_hash_tag() {
        assert_eq!(deployment_state("sb", "d1"), "sb:fleet:{d1}");
        assert_eq!(prefix_index("sb", "llama"), "sb:pfx:{llama}");
        let (req, usd) = cap_counters("sb", "d1", CapPeriod::Day(20_428));
        assert_eq!(
            (req.as_str(), usd.as_str()),
            ("sb:dcap:{d1}:d20428:req", "sb:dcap:{d1}:d20428:usd")
        );
        assert_eq!(
            cap_counters("sb", "d1", CapPeriod::Month(7)).0,
            "sb:dcap:{d1}:m7:req"
        );
    }

    #[test]
    fn cap_periods_are_utc_days_and_months_and_caps_are_used_up_when_reached() {
        let at = |t: &str| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc);
        let (d1, m1) = cap_periods(at("2026-12-31T23:59:59Z"));
        let (d2, m2) = cap_periods(at("2027-01-01T00:00:00Z"));
        assert_eq!((d2, m2), (d1 + 1, m1 + 1));
        assert_eq!(cap_periods(at("1970-01-01T00:00:00Z")), (1, 1970 * 12 + 1));
        let caps = DeploymentCaps {
            usd_per_day: Some(0.01),
            requests_per_month: Some(5),
            ..DeploymentCaps::default()
        };
        let used = |requests, usd| CapUse { requests, usd };
        assert_eq!(cap_used_up(&caps, used(4, 0.009), used(4, 0.009)), None);
        assert_eq!(
            cap_used_up(&caps, used(4, 0.01), used(4, 0.01)),
            Some("usd_per_day")
        );
        assert_eq!(
            cap_used_up(&caps, used(0, 0.0), used(5, 0.02)),
            Some("requests_per_month")
        );
        assert_eq!(
            cap_used_up(&DeploymentCaps::default(), used(9, 9.0), used(9, 9.0)),
            None
        );
    }
}
