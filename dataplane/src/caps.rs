//! Deployment caps: a deployment's own spend cap and request quota per UTC day and month.
//!
//! A prepaid or free-tier account behind a deployment must not be drained: once its `caps`
//! (`usd_per_day`, `usd_per_month`, `requests_per_day`, `requests_per_month`) is used up, the
//! deployment is out of rotation until the period ends and routing sends traffic elsewhere
//! ([`crate::proxy`] leaves it out and says so in the explain header).
//!
//! Each deployment's [`CapUsage`] (held by its [`crate::fleet::DeploymentState`], so a reload
//! keeps it) counts the requests it served and what they cost, for the current day and month.
//! The ledger's settlement adds each request ([`CapStore::record`]). With Redis the same
//! amounts are added to the cluster's counters (`<prefix>:dcap:{<id>}:<period>:{req,usd}`,
//! named by `switchboard_shared::fleet_keys`, where the control plane reads them for the
//! deployment's health; one pipeline off the request path) and the totals they answer raise the
//! local view, so a replica learns what the others spent with its next request there: the cap
//! is overrun by at most one request per replica. Routing reads only the local atomics.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Datelike, TimeZone, Utc};
use switchboard_shared::fleet_keys::{
    CapPeriod, CapUse, NANOS_PER_USD, cap_counters, cap_periods as periods, cap_used_up,
};
use switchboard_shared::snapshot::DeploymentCaps;

use crate::shared_redis::SharedRedis;

/// Where the cluster's totals live.
#[derive(Debug, Clone)]
pub enum CapStore {
    Local,
    Redis(SharedRedis),
}

/// A period's counts: which period, requests, and spend in nano-USD.
#[derive(Debug, Default)]
struct PeriodCount {
    /// Days (or months) since the epoch, plus one (0: never counted).
    period: AtomicU64,
    requests: AtomicU64,
    nanos: AtomicI64,
}

impl PeriodCount {
    /// Moves to `period`, forgetting an older period's counts.
    fn roll(&self, period: u64) {
        let seen = self.period.load(Ordering::Acquire);
        if seen < period
            && self
                .period
                .compare_exchange(seen, period, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.requests.store(0, Ordering::Release);
            self.nanos.store(0, Ordering::Release);
        }
    }

    fn add(&self, period: u64, requests: u64, nanos: i64) {
        self.roll(period);
        self.requests.fetch_add(requests, Ordering::AcqRel);
        self.nanos.fetch_add(nanos, Ordering::AcqRel);
    }

    /// Raises the counts to the cluster's totals.
    fn raise(&self, period: u64, requests: u64, nanos: i64) {
        self.roll(period);
        if self.period.load(Ordering::Acquire) == period {
            self.requests.fetch_max(requests, Ordering::AcqRel);
            self.nanos.fetch_max(nanos, Ordering::AcqRel);
        }
    }

    /// `(requests, usd)` in `period` (zero when the counts are of another period).
    fn used(&self, period: u64) -> (u64, f64) {
        if self.period.load(Ordering::Acquire) != period {
            return (0, 0.0);
        }
        let nanos = self.nanos.load(Ordering::Acquire);
        (
            self.requests.load(Ordering::Acquire),
            nanos as f64 / NANOS_PER_USD,
        )
    }
}

/// What one deployment used this day and this month.
#[derive(Debug, Default)]
pub struct CapUsage {
    day: PeriodCount,
    month: PeriodCount,
}

/// The cap a deployment has used up, and when its period ends.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exhausted {
    /// The field of `caps`, e.g. `usd_per_day`.
    pub cap: &'static str,
    pub resets_in: Duration,
}

/// Time until the next UTC midnight, and until the first of next month.
fn resets(now: DateTime<Utc>) -> (Duration, Duration) {
    let secs = now.timestamp();
    let to_midnight = 86_400 - secs.rem_euclid(86_400);
    let (y, m) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    let next_month = Utc
        .with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .single()
        .map_or(to_midnight, |t| t.timestamp() - secs);
    let s = |v: i64| Duration::from_secs(u64::try_from(v.max(1)).unwrap_or(1));
    (s(to_midnight), s(next_month))
}

impl CapUsage {
    /// The first of `caps` used up at `now`, if any.
    pub fn exhausted(&self, caps: &DeploymentCaps, now: DateTime<Utc>) -> Option<Exhausted> {
        let ((day_requests, day_usd), (month_requests, month_usd)) = self.used(now);
        let today = CapUse {
            requests: day_requests,
            usd: day_usd,
        };
        let this_month = CapUse {
            requests: month_requests,
            usd: month_usd,
        };
        let cap = cap_used_up(caps, today, this_month)?;
        let (day_reset, month_reset) = resets(now);
        let resets_in = if cap.ends_with("_per_day") {
            day_reset
        } else {
            month_reset
        };
        Some(Exhausted { cap, resets_in })
    }

    /// `(requests, usd)` used today and this month, for the explain header and tests.
    pub fn used(&self, now: DateTime<Utc>) -> ((u64, f64), (u64, f64)) {
        let (day, month) = periods(now);
        (self.day.used(day), self.month.used(month))
    }
}

impl CapStore {
    /// Counts one request of deployment `id` that cost `nanos`, locally at once and (with
    /// Redis) in the cluster's counters off the request path, whose totals raise the local
    /// view.
    pub fn record(&self, id: &str, usage: &std::sync::Arc<CapUsage>, nanos: i64) {
        let now = Utc::now();
        let (day, month) = periods(now);
        usage.day.add(day, 1, nanos);
        usage.month.add(month, 1, nanos);
        let CapStore::Redis(redis) = self else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let id = id.to_owned();
        let redis = redis.clone();
        let usage = std::sync::Arc::clone(usage);
        runtime.spawn(async move {
            let day_totals = add_in_redis(&redis, &id, CapPeriod::Day(day), nanos).await;
            if let Some((r, n)) = day_totals {
                usage.day.raise(day, r, n);
            }
            let month_totals = add_in_redis(&redis, &id, CapPeriod::Month(month), nanos).await;
            if let Some((r, n)) = month_totals {
                usage.month.raise(month, r, n);
            }
        });
    }
}

/// Adds one request and `nanos` to deployment `id`'s counters of `period`; the totals.
async fn add_in_redis(
    redis: &SharedRedis,
    id: &str,
    period: CapPeriod,
    nanos: i64,
) -> Option<(u64, i64)> {
    let (req, usd) = cap_counters(redis.prefix(), id, period);
    let ttl = period.ttl_seconds();
    let mut pipe = redis::pipe();
    pipe.incr(&req, 1)
        .incr(&usd, nanos)
        .expire(&req, ttl as i64)
        .ignore()
        .expire(&usd, ttl as i64)
        .ignore();
    let mut conn = redis.conn();
    let timeout = redis.timeout().max(Duration::from_millis(250));
    match tokio::time::timeout(timeout, pipe.query_async::<(u64, i64)>(&mut conn)).await {
        Ok(Ok(totals)) => Some(totals),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn a_cap_is_used_up_and_comes_back_with_the_next_period() {
        let usage = CapUsage::default();
        let caps = DeploymentCaps {
            usd_per_day: Some(0.01),
            requests_per_month: Some(5),
            ..DeploymentCaps::default()
        };
        let day1 = at("2026-12-05T10:00:00Z");
        let (d, m) = periods(day1);
        for _ in 0..2 {
            usage.day.add(d, 1, 4_000_000);
            usage.month.add(m, 1, 4_000_000);
        }
        assert_eq!(usage.exhausted(&caps, day1), None, "$0.008 of $0.01");
        usage.day.add(d, 1, 4_000_000);
        usage.month.add(m, 1, 4_000_000);
        let out = usage.exhausted(&caps, day1).unwrap();
        assert_eq!(out.cap, "usd_per_day");
        assert_eq!(out.resets_in, Duration::from_secs(14 * 3600));
        // The next day the spend cap is fresh; 3 of 5 requests this month.
        let day2 = at("2026-12-06T00:00:01Z");
        assert_eq!(usage.exhausted(&caps, day2), None);
        let (d2, _) = periods(day2);
        for _ in 0..2 {
            usage.day.add(d2, 1, 0);
            usage.month.add(m, 1, 0);
        }
        let out = usage.exhausted(&caps, day2).unwrap();
        assert_eq!(out.cap, "requests_per_month");
        assert_eq!(out.resets_in, Duration::from_secs(26 * 86_400 - 1));
    }

    #[test]
    fn the_cluster_totals_raise_the_local_view() {
        let usage = CapUsage::default();
        let now = at("2026-12-05T10:00:00Z");
        let (d, _) = periods(now);
        usage.day.add(d, 1, 10);
        usage.day.raise(d, 7, 70);
        usage.day.raise(d, 3, 30);
        assert_eq!(usage.used(now).0, (7, 70.0 / NANOS_PER_USD));
    }
}
