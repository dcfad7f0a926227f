//! Budgets that hold across replicas: spend counters in Redis.
//!
//! A counter is a string key per subject and period
//! ([`switchboard_shared::budget::counter_key`]), holding nano-dollars. A key's and its
//! tenant's counters carry the tenant's hash tag, as their rate-limit cells do, so admission
//! checks and charges limits and budgets in one call of the admission script
//! (`limits/gcra.lua`, mode `b`; see [`crate::quota`]). [`RedisBudgets::reserve`] is the
//! same call without limits. A counter expires a day after its period ends, which leaves the
//! control plane time to reconcile it with Postgres.
//!
//! Settlement is one pipeline of `INCRBY`s, off the request path. A settlement that fails
//! leaves the reservation charged: spend is over-counted, never under-counted, until the
//! control plane reconciles the counter.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use redis::Script;
use switchboard_shared::budget::{MAX_CHARGE_NANOS, Period, counter_key, nanos_to_usd};

use super::{
    BudgetRefusal, BudgetSubject, Charge, Crossing, PeriodCounter, Reservation, Subjects,
    crossings_of,
};
use crate::limits::CounterCharge;
use crate::limits::redis::{admission_script, charge_counters};
use crate::shared_redis::{FailurePolicy, SharedRedis};

/// How long a counter outlives its period, for the control plane's reconciliation.
const KEPT_AFTER_PERIOD_SECONDS: i64 = 86_400;

/// Budget counters in the shared Redis.
#[derive(Debug, Clone)]
pub struct RedisBudgets {
    redis: SharedRedis,
    script: Arc<Script>,
}

/// A reservation about to be sent: the counters of the request's budgets for this period.
#[derive(Debug)]
pub struct Prepared {
    reservation: Reservation,
    ttl_seconds: [i64; 2],
    now: DateTime<Utc>,
}

impl Prepared {
    /// The counters to charge in the admission script, with their maxima and expiries (the
    /// first `n` of the array).
    pub fn counters(&self) -> ([CounterCharge<'_>; 2], usize) {
        let mut out = [CounterCharge {
            key: "",
            max: 0,
            ttl_seconds: 0,
        }; 2];
        let mut n = 0;
        for (c, ttl) in self.reservation.charges().zip(self.ttl_seconds) {
            out[n] = CounterCharge {
                key: &c.counter.redis_key,
                max: c.max_nanos,
                ttl_seconds: ttl,
            };
            n += 1;
        }
        (out, n)
    }

    /// The amount each counter is charged.
    pub fn amount(&self) -> i64 {
        self.reservation.reserved_nanos
    }

    /// The reservation, once the script has charged it.
    pub fn charged(self) -> Reservation {
        self.reservation
    }

    /// The refusal when the script found counter `index` full with `spent`.
    pub fn refusal(&self, index: usize, spent: i64) -> BudgetRefusal {
        match self.reservation.charges().nth(index) {
            Some(c) => c.refusal(spent, self.now),
            // The script only names counters it was given.
            None => BudgetRefusal::Unavailable,
        }
    }
}

impl RedisBudgets {
    pub fn new(redis: SharedRedis) -> Self {
        Self {
            redis,
            script: Arc::new(admission_script()),
        }
    }

    fn counter_of(&self, s: &BudgetSubject<'_>, now: DateTime<Utc>) -> Arc<PeriodCounter> {
        s.cell.counter(s.budget, now, |period: Period| {
            let key = counter_key(self.redis.prefix(), s.scope, s.id, s.tenant_id, &period);
            Arc::new(PeriodCounter::new(s.scope, s.id, period, key))
        })
    }

    /// The counters `subjects` charge for the period containing `now`, each `estimate_nanos`.
    pub fn prepare(
        &self,
        subjects: &Subjects<'_>,
        estimate_nanos: i64,
        now: DateTime<Utc>,
    ) -> Prepared {
        let mut prepared = Prepared {
            reservation: Reservation {
                charges: [None, None],
                reserved_nanos: estimate_nanos.clamp(0, MAX_CHARGE_NANOS),
            },
            ttl_seconds: [0; 2],
            now,
        };
        let slots = prepared
            .reservation
            .charges
            .iter_mut()
            .zip(&mut prepared.ttl_seconds);
        for ((slot, ttl), s) in slots.zip(subjects.as_slice()) {
            let counter = self.counter_of(s, now);
            *ttl = counter
                .period
                .seconds_left(now)
                .map_or(0, |left| left + KEPT_AFTER_PERIOD_SECONDS);
            *slot = Some(Charge::of(s, counter));
        }
        prepared
    }

    /// A reservation of the budgets alone (no limits) in one script call.
    pub async fn reserve(
        &self,
        subjects: &Subjects<'_>,
        estimate_nanos: i64,
        now: DateTime<Utc>,
    ) -> Result<Reservation, BudgetRefusal> {
        if !self.redis.is_up() {
            return self.degraded();
        }
        let prepared = self.prepare(subjects, estimate_nanos, now);
        let (counters, n) = prepared.counters();
        match charge_counters(&self.redis, &self.script, prepared.amount(), &counters[..n]).await {
            Ok(None) => Ok(prepared.charged()),
            Ok(Some((index, spent))) => Err(prepared.refusal(index, spent)),
            Err(failure) => {
                if self.redis.mark_down() {
                    crate::metrics::set_redis_up(false);
                    tracing::warn!(
                        reason = failure.reason(),
                        "Redis unreachable: budgets degraded"
                    );
                }
                self.degraded()
            }
        }
    }

    /// A budgeted admission while Redis is unreachable, per the failure policy: uncounted
    /// (`open`) or refused (`closed`).
    pub fn degraded(&self) -> Result<Reservation, BudgetRefusal> {
        crate::metrics::count_budget_degraded();
        match self.redis.policy() {
            FailurePolicy::Open => Ok(Reservation::default()),
            FailurePolicy::Closed => Err(BudgetRefusal::Unavailable),
        }
    }

    /// Replaces the reservation with the real cost: one pipelined round trip.
    pub async fn settle(&self, reservation: &Reservation, actual_nanos: i64) -> Vec<Crossing> {
        // Within the scripts' range whatever the caller passes (the ledger already charges
        // no more than `MAX_CHARGE_NANOS`): an `INCRBY` error would lose the settlement.
        let actual = actual_nanos.clamp(0, MAX_CHARGE_NANOS);
        let delta = actual.saturating_sub(reservation.reserved_nanos);
        let mut pipe = redis::pipe();
        for c in reservation.charges() {
            pipe.cmd("INCRBY").arg(&*c.counter.redis_key).arg(delta);
        }
        let mut conn = self.redis.conn();
        let totals: Vec<i64> = match pipe.query_async(&mut conn).await {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e.category(), "budget settlement failed");
                return Vec::new();
            }
        };
        let mut crossings = Vec::new();
        for (c, after) in reservation.charges().zip(totals) {
            crossings_of(c, actual, after, &mut crossings);
        }
        crossings
    }

    /// The spend counted this period for a subject, in USD; `None` when Redis is unreachable.
    pub async fn spent_usd(&self, subject: &BudgetSubject<'_>, now: DateTime<Utc>) -> Option<f64> {
        let counter = self.counter_of(subject, now);
        let mut conn = self.redis.conn();
        let spent: Option<i64> = tokio::time::timeout(
            self.redis.timeout(),
            redis::cmd("GET")
                .arg(&*counter.redis_key)
                .query_async(&mut conn),
        )
        .await
        .ok()?
        .ok()?;
        Some(nanos_to_usd(spent.unwrap_or(0)))
    }
}
