//! Budget periods: which calendar period an instant falls in, for a budget's period and time
//! zone, and the money unit budgets are counted in.
//!
//! Both planes need the same answer — the data plane to pick the spend counter a request
//! charges, the control plane to reconcile counters with Postgres — so the
//! arithmetic lives here. Periods are calendar-aligned in the budget's IANA time zone: a daily
//! budget in `America/New_York` resets at local midnight, whatever the UTC offset that day
//! (DST included); weeks start on Monday; months on the 1st. A budget with period `none` has
//! one period for all time.
//!
//! Money is counted in nano-dollars (`i64`): a cheap request costs a few thousand of them,
//! and the range covers over nine billion dollars, so integer counters in Redis never round a
//! request to zero.
//!
//! The name of each spend counter in Redis ([`counter_key`]) lives here too: the data planes
//! charge it, the control plane reconciles it with Postgres.

use std::borrow::Cow;

use chrono::{DateTime, Datelike, Days, LocalResult, Months, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

use crate::snapshot::{Budget, BudgetPeriod};

/// Whose budget it is: a virtual key's own, or its tenant's (shared by all its keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BudgetScope {
    Key,
    Tenant,
}

impl BudgetScope {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetScope::Key => "key",
            BudgetScope::Tenant => "tenant",
        }
    }
}

/// The Redis key of one subject's spend counter (nano-dollars) for one period:
/// `<prefix>:budget:{t:<tenant>}:<scope>:<id>:<period id>`. The hash tag is the one the data
/// plane's rate-limit cells of the key and its tenant carry (`<prefix>:rl:{t:<tenant>}:...`,
/// the tenant escaped by [`escape_tag`] in both), so a key's and its tenant's counters and
/// limits sit on one Redis Cluster slot and one script call checks and charges them all; the
/// period in the name is what resets a budget when the period ends.
pub fn counter_key(
    prefix: &str,
    scope: BudgetScope,
    id: &str,
    tenant_id: &str,
    period: &Period,
) -> String {
    format!(
        "{prefix}:budget:{{t:{}}}:{}:{id}:{}",
        escape_tag(tenant_id),
        scope.as_str(),
        period.id()
    )
}

/// An id with `{`, `}` and `%` percent-escaped, so that it can never open or close a Redis hash
/// tag early. Ids without them (all ordinary ones) come back borrowed and unchanged.
pub fn escape_tag(id: &str) -> Cow<'_, str> {
    if !id.contains(['{', '}', '%']) {
        return Cow::Borrowed(id);
    }
    let mut out = String::with_capacity(id.len() + 6);
    for c in id.chars() {
        match c {
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            '%' => out.push_str("%25"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Nano-dollars per dollar.
pub const NANOS_PER_USD: f64 = 1e9;

/// Dollars to nano-dollars, rounded up (a reservation must never be smaller than its cost),
/// saturating; negative or non-finite amounts count as zero.
pub fn usd_to_nanos(usd: f64) -> i64 {
    if !usd.is_finite() || usd <= 0.0 {
        return 0;
    }
    let nanos = (usd * NANOS_PER_USD).ceil();
    if nanos >= i64::MAX as f64 {
        i64::MAX
    } else {
        nanos as i64
    }
}

/// The most one request may reserve or be charged, in nano-dollars (about $9 million):
/// 2^53 − 1, the largest integer that Redis's Lua numbers (doubles) hold exactly, so no
/// amount the budget scripts are handed leaves their range, and sums of such amounts stay far
/// from `i64`'s limits.
pub const MAX_CHARGE_NANOS: i64 = (1 << 53) - 1;

/// Dollars to nano-dollars, rounded up, when the amount is one request may be charged:
/// `None` above [`MAX_CHARGE_NANOS`] or when not a number; negative amounts count as zero.
pub fn charge_nanos(usd: f64) -> Option<i64> {
    if usd.is_nan() {
        return None;
    }
    if usd <= 0.0 {
        return Some(0);
    }
    let nanos = (usd * NANOS_PER_USD).ceil();
    (nanos <= MAX_CHARGE_NANOS as f64).then_some(nanos as i64)
}

/// Nano-dollars to dollars.
pub fn nanos_to_usd(nanos: i64) -> f64 {
    nanos as f64 / NANOS_PER_USD
}

/// One budget period: `[start, end)`; `end` is `None` for period `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub start: DateTime<Utc>,
    pub end: Option<DateTime<Utc>>,
}

impl Period {
    /// A stable id for counter keys: the start as Unix seconds (0 for period `none`).
    pub fn id(&self) -> i64 {
        self.start.timestamp()
    }

    /// Seconds from `now` until the period ends (`None`: it never does).
    pub fn seconds_left(&self, now: DateTime<Utc>) -> Option<i64> {
        self.end.map(|end| (end - now).num_seconds().max(0))
    }

    /// Whether `now` falls in this period.
    pub fn contains(&self, now: DateTime<Utc>) -> bool {
        self.start <= now && self.end.is_none_or(|end| now < end)
    }

    /// Whether this period lies wholly after `other` (it starts where `other` ends or later).
    pub fn is_after(&self, other: &Period) -> bool {
        other.end.is_some_and(|end| self.start >= end)
    }
}

/// Parses a budget's time zone; `None` means UTC.
pub fn parse_time_zone(name: Option<&str>) -> Result<Tz, String> {
    match name {
        None => Ok(Tz::UTC),
        Some(n) => n.parse::<Tz>().map_err(|_| {
            format!("unknown time zone {n:?} (use an IANA name such as Europe/Berlin)")
        }),
    }
}

/// The period of `budget` that contains `now`. An unknown time zone counts as UTC (validation
/// rejects it before a snapshot is served).
pub fn period_of(budget: &Budget, now: DateTime<Utc>) -> Period {
    let tz = parse_time_zone(budget.time_zone.as_deref()).unwrap_or(Tz::UTC);
    period_in(budget.period, tz, now)
}

/// The period of kind `period` in `tz` that contains `now`.
pub fn period_in(period: BudgetPeriod, tz: Tz, now: DateTime<Utc>) -> Period {
    let local = now.with_timezone(&tz).date_naive();
    let (first, next) = match period {
        BudgetPeriod::None => {
            return Period {
                start: DateTime::<Utc>::UNIX_EPOCH,
                end: None,
            };
        }
        BudgetPeriod::Daily => (local, local.checked_add_days(Days::new(1))),
        BudgetPeriod::Weekly => {
            let monday = local
                .checked_sub_days(Days::new(u64::from(local.weekday().num_days_from_monday())))
                .unwrap_or(local);
            (monday, monday.checked_add_days(Days::new(7)))
        }
        BudgetPeriod::Monthly => {
            let first = local.with_day(1).unwrap_or(local);
            (first, first.checked_add_months(Months::new(1)))
        }
    };
    Period {
        start: local_midnight(tz, first),
        end: next.map(|d| local_midnight(tz, d)),
    }
}

/// The instant a local date begins in `tz`. Where midnight does not exist (a DST jump at
/// midnight), the first instant of the day that does.
fn local_midnight(tz: Tz, date: NaiveDate) -> DateTime<Utc> {
    let mut t = date.and_hms_opt(0, 0, 0).unwrap_or_default();
    for _ in 0..4 {
        match tz.from_local_datetime(&t) {
            LocalResult::Single(d) => return d.with_timezone(&Utc),
            LocalResult::Ambiguous(earliest, _) => return earliest.with_timezone(&Utc),
            LocalResult::None => t += chrono::Duration::minutes(30),
        }
    }
    Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn budget(period: BudgetPeriod, tz: Option<&str>) -> Budget {
        Budget {
            max_usd: 10.0,
            soft_usd: None,
            period,
            time_zone: tz.map(str::to_owned),
        }
    }

    /// The period of a `period` budget in `tz` that holds the instant `t`.
    fn period_at(period: BudgetPeriod, tz: Option<&str>, t: &str) -> Period {
        period_of(&budget(period, tz), at(t))
    }

    /// Where a period starts and ends.
    fn bounds(p: &Period) -> (DateTime<Utc>, Option<DateTime<Utc>>) {
        (p.start, p.end)
    }

    /// A bounded period from `start` to `end`.
    fn span(start: &str, end: &str) -> (DateTime<Utc>, Option<DateTime<Utc>>) {
        (at(start), Some(at(end)))
    }

    #[test]
    fn daily_periods_follow_local_midnight() {
        let b = budget(BudgetPeriod::Daily, Some("America/New_York"));
        // 03:00 UTC on the 23rd is still the 22nd in New York (UTC-5 in November).
        let p = period_of(&b, at("2026-11-23T03:00:00Z"));
        assert_eq!(
            bounds(&p),
            span("2026-11-22T05:00:00Z", "2026-11-23T05:00:00Z")
        );
        // The boundary itself belongs to the next period.
        let next = period_of(&b, at("2026-11-23T05:00:00Z"));
        assert_eq!(next.start, at("2026-11-23T05:00:00Z"));
        assert_ne!(next.id(), p.id());
        assert_eq!(p.seconds_left(at("2026-11-23T04:59:00Z")), Some(60));
    }

    #[test]
    fn a_dst_day_is_23_hours_long() {
        // Europe/Berlin springs forward on 2026-03-29.
        let p = period_at(
            BudgetPeriod::Daily,
            Some("Europe/Berlin"),
            "2026-03-29T12:00:00Z",
        );
        assert_eq!(
            bounds(&p),
            span("2026-03-28T23:00:00Z", "2026-03-29T22:00:00Z")
        );
    }

    #[test]
    fn weeks_start_on_monday_and_months_on_the_first() {
        // 2026-11-23 is a Monday.
        let w = period_at(BudgetPeriod::Weekly, None, "2026-11-29T23:59:59Z");
        assert_eq!(
            bounds(&w),
            span("2026-11-23T00:00:00Z", "2026-11-30T00:00:00Z")
        );
        let m = period_at(
            BudgetPeriod::Monthly,
            Some("Asia/Tokyo"),
            "2026-11-30T15:00:00Z",
        );
        // 15:00 UTC on the 30th is already December 1st in Tokyo.
        assert_eq!(
            bounds(&m),
            span("2026-11-30T15:00:00Z", "2026-12-31T15:00:00Z")
        );
        let none = period_at(BudgetPeriod::None, None, "2026-11-30T15:00:00Z");
        assert_eq!((none.id(), none.end), (0, None));
    }

    #[test]
    fn counter_keys_name_the_period_and_share_the_tenant_slot() {
        let b = budget(BudgetPeriod::Daily, None);
        let p = period_of(&b, at("2026-11-23T12:00:00Z"));
        assert_eq!(
            counter_key("sb", BudgetScope::Key, "k1", "acme", &p),
            "sb:budget:{t:acme}:key:k1:1795392000"
        );
        assert_eq!(
            counter_key("sb", BudgetScope::Tenant, "acme", "acme", &p),
            "sb:budget:{t:acme}:tenant:acme:1795392000"
        );
        // A brace in a tenant id cannot end the tag early (and split key from tenant).
        assert_eq!(
            counter_key("sb", BudgetScope::Key, "k1", "a}c{%", &p),
            "sb:budget:{t:a%7Dc%7B%25}:key:k1:1795392000"
        );
    }

    #[test]
    fn periods_know_what_they_contain_and_what_follows_them() {
        let b = budget(BudgetPeriod::Daily, None);
        let today = period_of(&b, at("2026-11-23T12:00:00Z"));
        let tomorrow = period_of(&b, at("2026-11-24T12:00:00Z"));
        assert!(today.contains(at("2026-11-23T00:00:00Z")));
        assert!(!today.contains(at("2026-11-24T00:00:00Z")));
        assert!(tomorrow.is_after(&today));
        assert!(!today.is_after(&tomorrow));
        assert!(!today.is_after(&today));
        let forever = period_at(BudgetPeriod::None, None, "2026-11-23T12:00:00Z");
        assert!(forever.contains(at("2100-01-01T00:00:00Z")));
        assert!(!today.is_after(&forever));
    }

    #[test]
    fn money_rounds_up_to_whole_nanodollars() {
        assert_eq!(usd_to_nanos(0.000_000_000_1), 1);
        assert_eq!(usd_to_nanos(1.5), 1_500_000_000);
        assert_eq!(usd_to_nanos(-1.0), 0);
        assert_eq!(usd_to_nanos(f64::NAN), 0);
        assert_eq!(usd_to_nanos(1e300), i64::MAX);
        assert_eq!(charge_nanos(1.5), Some(1_500_000_000));
        assert_eq!(charge_nanos(-1.0), Some(0));
        assert_eq!(charge_nanos(f64::NAN), None);
        assert_eq!(charge_nanos(f64::INFINITY), None);
        assert_eq!(charge_nanos(1e300), None);
        assert_eq!(charge_nanos(9_000_000.0), Some(9_000_000_000_000_000));
        assert_eq!(charge_nanos(9_100_000.0), None);
        assert_eq!(nanos_to_usd(2_500_000_000), 2.5);
        assert!(parse_time_zone(Some("Mars/Olympus")).is_err());
        assert_eq!(parse_time_zone(None), Ok(Tz::UTC));
    }
}
