//! Budgets: spend per key and per tenant per calendar period, reserved at admission and settled
//! when the request ends.
//!
//! Every budgeted key and tenant has one spend counter per budget period (periods from
//! [`switchboard_shared::budget::period_of`], on the clock of [`crate::clock`]). Where the
//! counters live depends on the deployment:
//!
//! - With a `redis:` section ([`redis`]): in Redis, shared by every replica, named by
//!   [`switchboard_shared::budget::counter_key`]. Admission charges them in the same script call
//!   as the rate limits ([`crate::quota`]), so a budgeted request costs one round trip.
//! - Without one ([`local`]): in this process, each replica counting on its own.
//!
//! Admission ([`Budgets::reserve`], or the joint call) works the same in both: if every
//! counter is below its hard limit, each is charged the request's estimated maximum cost
//! (prompt plus `max_tokens` at the dearest deployment's price) at once; otherwise nothing is
//! charged and the request is refused. So concurrent requests overrun a budget by at most the
//! estimate of the one admitted last — through any number of replicas with Redis, through this
//! replica without. When the request ends, [`Budgets::settle`] replaces the estimate with the
//! real cost (in the background) and reports thresholds the settlement crossed, for alerts.
//!
//! The period in a counter's identity is what resets a budget: when a period ends, requests
//! charge a new counter. Each catalog entry with a budget holds a [`BudgetCell`] that caches
//! its current period's counter — the Redis key, formatted once per period rather than per
//! request, or the in-process counter itself — so admission normally costs an atomic load and
//! a reference count here; the period is worked out again only when the cached one has ended.
//!
//! While Redis is unreachable, budgeted requests follow the Redis failure policy: `open`
//! admits them uncounted (logged and counted in metrics), `closed` refuses them.

pub mod local;
pub mod redis;

use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use arc_swap::ArcSwapOption;
use chrono::{DateTime, Utc};
pub use switchboard_shared::budget::BudgetScope;
use switchboard_shared::budget::{Period, nanos_to_usd, period_of, usd_to_nanos};
use switchboard_shared::snapshot::Budget;

use crate::shared_redis::SharedRedis;

/// One budget a request charges.
#[derive(Debug, Clone, Copy)]
pub struct BudgetSubject<'a> {
    pub scope: BudgetScope,
    pub id: &'a str,
    /// The tenant the subject belongs to (itself, for a tenant): the counters' hash tag.
    pub tenant_id: &'a str,
    pub budget: &'a Budget,
    /// The subject's cached counter of the current period (kept in its catalog entry).
    pub cell: &'a BudgetCell,
}

impl BudgetSubject<'_> {
    fn max_nanos(&self) -> i64 {
        usd_to_nanos(self.budget.max_usd)
    }

    fn soft_nanos(&self) -> Option<i64> {
        self.budget.soft_usd.map(usd_to_nanos)
    }
}

/// The budgets one request charges — its key's, its tenant's or both — held without
/// allocating.
#[derive(Debug, Clone, Copy)]
pub struct Subjects<'a> {
    items: [BudgetSubject<'a>; 2],
    len: usize,
}

impl<'a> Subjects<'a> {
    /// The key's and the tenant's budgets, whichever exist; `None` when neither does.
    pub fn of(key: Option<BudgetSubject<'a>>, tenant: Option<BudgetSubject<'a>>) -> Option<Self> {
        match (key, tenant) {
            (Some(k), Some(t)) => Some(Self::two(k, t)),
            (Some(one), None) | (None, Some(one)) => Some(Self::one(one)),
            (None, None) => None,
        }
    }

    pub fn one(subject: BudgetSubject<'a>) -> Self {
        Self {
            items: [subject, subject],
            len: 1,
        }
    }

    pub fn two(first: BudgetSubject<'a>, second: BudgetSubject<'a>) -> Self {
        Self {
            items: [first, second],
            len: 2,
        }
    }

    pub fn as_slice(&self) -> &[BudgetSubject<'a>] {
        &self.items[..self.len]
    }
}

/// One subject's spend counter for one period.
#[derive(Debug)]
pub struct PeriodCounter {
    period: Period,
    scope: BudgetScope,
    id: Box<str>,
    /// Its Redis key (Redis mode; empty in process).
    redis_key: Box<str>,
    /// Its spend in nano-dollars, reservations included (in-process mode).
    spent: AtomicI64,
}

impl PeriodCounter {
    fn new(scope: BudgetScope, id: &str, period: Period, redis_key: String) -> Self {
        Self {
            period,
            scope,
            id: id.into(),
            redis_key: redis_key.into_boxed_str(),
            spent: AtomicI64::new(0),
        }
    }

    pub fn period(&self) -> Period {
        self.period
    }
}

/// A catalog entry's cache of its budget's current [`PeriodCounter`]. A new catalog starts
/// with empty cells; the counters themselves (in Redis, or in [`local::LocalBudgets`]) are
/// found again by scope, id and period, so a reload changes nothing that was counted.
#[derive(Debug, Default)]
pub struct BudgetCell {
    current: ArcSwapOption<PeriodCounter>,
}

impl BudgetCell {
    /// The counter of the period containing `now`: the cached one while it lasts, else one
    /// from `find` (which is given the period), cached unless a later one already is (a
    /// request that read the clock just before another crossed the boundary).
    fn counter(
        &self,
        budget: &Budget,
        now: DateTime<Utc>,
        find: impl FnOnce(Period) -> Arc<PeriodCounter>,
    ) -> Arc<PeriodCounter> {
        let cached = self.current.load();
        if let Some(counter) = cached.as_ref()
            && counter.period.contains(now)
        {
            return Arc::clone(counter);
        }
        let found = find(period_of(budget, now));
        if cached
            .as_ref()
            .is_none_or(|c| !c.period.is_after(&found.period))
        {
            self.current.store(Some(Arc::clone(&found)));
        }
        found
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum BudgetRefusal {
    /// The subject's spend this period reached its hard limit.
    Exhausted {
        scope: BudgetScope,
        id: String,
        max_usd: f64,
        spent_usd: f64,
        /// Seconds until the period resets (`None`: the budget never resets).
        resets_in_seconds: Option<i64>,
    },
    /// Redis is unreachable and the policy is fail-closed.
    Unavailable,
}

/// What admission charged, to be corrected by [`Budgets::settle`].
#[derive(Debug, Clone, Default)]
pub struct Reservation {
    charges: [Option<Charge>; 2],
    reserved_nanos: i64,
}

/// One counter a reservation charged, with the thresholds to report crossings of.
#[derive(Debug, Clone)]
struct Charge {
    counter: Arc<PeriodCounter>,
    max_nanos: i64,
    soft_nanos: Option<i64>,
}

impl Charge {
    fn of(subject: &BudgetSubject<'_>, counter: Arc<PeriodCounter>) -> Self {
        Self {
            counter,
            max_nanos: subject.max_nanos(),
            soft_nanos: subject.soft_nanos(),
        }
    }

    /// The refusal when this counter is full with `spent`.
    fn refusal(&self, spent: i64, now: DateTime<Utc>) -> BudgetRefusal {
        BudgetRefusal::Exhausted {
            scope: self.counter.scope,
            id: self.counter.id.to_string(),
            max_usd: nanos_to_usd(self.max_nanos),
            spent_usd: nanos_to_usd(spent),
            resets_in_seconds: self.counter.period.seconds_left(now),
        }
    }
}

impl Reservation {
    /// True when nothing was charged (no budgets, or Redis was skipped).
    pub fn is_empty(&self) -> bool {
        self.charges.iter().all(Option::is_none)
    }

    /// The amount reserved, in nano-dollars.
    pub fn reserved_nanos(&self) -> i64 {
        self.reserved_nanos
    }

    fn charges(&self) -> impl Iterator<Item = &Charge> {
        self.charges.iter().flatten()
    }
}

/// A threshold that a settlement crossed.
#[derive(Debug, Clone, PartialEq)]
pub struct Crossing {
    pub scope: BudgetScope,
    pub id: String,
    pub threshold: Threshold,
    pub spent_usd: f64,
    /// The threshold's amount.
    pub limit_usd: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threshold {
    Soft,
    Hard,
}

/// The thresholds crossed by settling `actual` on `charge`'s counter, now at `after`: those
/// between the spend before the request's charge and after its settlement.
fn crossings_of(charge: &Charge, actual: i64, after: i64, out: &mut Vec<Crossing>) {
    let before = after - actual;
    let mut crossed = |threshold: Threshold, limit: i64| {
        if before < limit && after >= limit {
            out.push(Crossing {
                scope: charge.counter.scope,
                id: charge.counter.id.to_string(),
                threshold,
                spent_usd: nanos_to_usd(after),
                limit_usd: nanos_to_usd(limit),
            });
        }
    };
    if let Some(soft) = charge.soft_nanos {
        crossed(Threshold::Soft, soft);
    }
    crossed(Threshold::Hard, charge.max_nanos);
}

/// Budget enforcement for this process: in Redis, or in process when there is none.
#[derive(Debug, Clone)]
pub struct Budgets {
    store: Store,
}

#[derive(Debug, Clone)]
enum Store {
    Redis(redis::RedisBudgets),
    Local(Arc<local::LocalBudgets>),
}

impl Budgets {
    /// Budgets counted in `redis`; `None`: counted in this process.
    pub fn new(redis: Option<SharedRedis>) -> Self {
        let store = match redis {
            Some(redis) => Store::Redis(redis::RedisBudgets::new(redis)),
            None => Store::Local(Arc::new(local::LocalBudgets::default())),
        };
        Self { store }
    }

    /// The Redis store, which [`crate::quota`] charges in the limits' script call.
    pub fn redis(&self) -> Option<&redis::RedisBudgets> {
        match &self.store {
            Store::Redis(r) => Some(r),
            Store::Local(_) => None,
        }
    }

    /// Charges `estimate_nanos` to every subject's counter for the period containing `now`,
    /// or refuses and charges none.
    pub async fn reserve(
        &self,
        subjects: &Subjects<'_>,
        estimate_nanos: i64,
        now: DateTime<Utc>,
    ) -> Result<Reservation, BudgetRefusal> {
        match &self.store {
            Store::Redis(r) => r.reserve(subjects, estimate_nanos, now).await,
            Store::Local(l) => l.reserve(subjects, estimate_nanos, now),
        }
    }

    /// Replaces the reservation with the real cost and returns the thresholds this crossed.
    /// In Redis, one pipelined round trip: call it off the request path.
    pub async fn settle(&self, reservation: Reservation, actual_nanos: i64) -> Vec<Crossing> {
        if reservation.is_empty() {
            return Vec::new();
        }
        match &self.store {
            Store::Redis(r) => r.settle(reservation, actual_nanos).await,
            Store::Local(_) => local::settle(&reservation, actual_nanos),
        }
    }

    /// [`Budgets::settle`] without a task waiting for it: `then` is called with the crossings
    /// once the settlement is done (at once in process; by the settlement task in Redis).
    pub fn settle_then(
        &self,
        reservation: Reservation,
        actual_nanos: i64,
        then: impl FnOnce(Vec<Crossing>) + Send + 'static,
    ) {
        if reservation.is_empty() {
            return;
        }
        match &self.store {
            Store::Redis(r) => r.settle_then(reservation, actual_nanos, Box::new(then)),
            Store::Local(_) => then(local::settle(&reservation, actual_nanos)),
        }
    }

    /// The spend counted this period for a subject (for `/v1/key/info`), in USD; `None` when
    /// Redis is unreachable.
    pub async fn spent_usd(&self, subject: &BudgetSubject<'_>, now: DateTime<Utc>) -> Option<f64> {
        match &self.store {
            Store::Redis(r) => r.spent_usd(subject, now).await,
            Store::Local(l) => Some(l.spent_usd(subject, now)),
        }
    }

    /// Forgets in-process counters of periods that have ended (a snapshot install calls it;
    /// nothing to do in Redis, where counters expire).
    pub fn prune(&self, now: DateTime<Utc>) {
        if let Store::Local(l) = &self.store {
            l.prune(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_shared::snapshot::BudgetPeriod;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_cell_keeps_its_counter_for_the_period_and_never_goes_back() {
        let daily = Budget {
            max_usd: 1.0,
            soft_usd: None,
            period: BudgetPeriod::Daily,
            time_zone: None,
        };
        let cell = BudgetCell::default();
        let make = |period| {
            Arc::new(PeriodCounter::new(
                BudgetScope::Key,
                "k",
                period,
                String::new(),
            ))
        };
        let mut found = 0;
        let mut count = |period| {
            found += 1;
            make(period)
        };
        let first = cell.counter(&daily, at("2026-11-23T10:00:00Z"), &mut count);
        let again = cell.counter(&daily, at("2026-11-23T23:59:59Z"), &mut count);
        assert!(Arc::ptr_eq(&first, &again), "one counter per period");
        let next = cell.counter(&daily, at("2026-11-24T00:00:00Z"), &mut count);
        assert!(next.period.is_after(&first.period));
        // A late request of the day before gets that day's counter, but the cell keeps today's.
        let late = cell.counter(&daily, at("2026-11-23T23:59:59Z"), &mut count);
        assert_eq!(late.period, first.period);
        let today = cell.counter(&daily, at("2026-11-24T08:00:00Z"), &mut count);
        assert!(Arc::ptr_eq(&today, &next));
        assert_eq!(found, 3);
    }
}
