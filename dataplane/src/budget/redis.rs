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
//! Settlement is off the request path and coalesced: the settlements that queue while one
//! pipeline is in flight go as the next, one `INCRBY` per counter carrying their sum (see
//! [`settle_worker`] for how each still learns its own total). A settlement that fails
//! leaves the reservation charged: spend is over-counted, never under-counted, until the
//! control plane reconciles the counter.

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, Utc};
use redis::Script;
use switchboard_shared::budget::{MAX_CHARGE_NANOS, Period, counter_key, nanos_to_usd};
use tokio::sync::{mpsc, oneshot};

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
    /// The queue to the settlement task, started by the first settlement.
    settlements: Arc<OnceLock<mpsc::UnboundedSender<Settlement>>>,
}

/// What a settlement calls with the thresholds it crossed.
pub type Then = Box<dyn FnOnce(Vec<Crossing>) + Send>;

/// One request's settlement: its reservation, the real cost, the signed amount to add to
/// each counter, and what to call with the crossings.
struct Settlement {
    reservation: Reservation,
    actual: i64,
    delta: i64,
    then: Then,
}

/// Most settlements summed into one pipeline.
const SETTLE_BATCH: usize = 512;

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
            settlements: Arc::new(OnceLock::new()),
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

    /// Replaces the reservation with the real cost. The settlements that arrive while one is
    /// in flight are sent together (see [`settle_worker`]).
    pub async fn settle(&self, reservation: Reservation, actual_nanos: i64) -> Vec<Crossing> {
        let (tx, rx) = oneshot::channel();
        let then = move |crossings| {
            let _ = tx.send(crossings);
        };
        self.settle_then(reservation, actual_nanos, Box::new(then));
        rx.await.unwrap_or_default()
    }

    /// [`RedisBudgets::settle`] without a task waiting for it: `then` gets the crossings
    /// (none if the settlement failed), called by the settlement task.
    pub fn settle_then(&self, reservation: Reservation, actual_nanos: i64, then: Then) {
        // Within the scripts' range whatever the caller passes (the ledger already charges
        // no more than `MAX_CHARGE_NANOS`): an `INCRBY` error would lose the settlement.
        let actual = actual_nanos.clamp(0, MAX_CHARGE_NANOS);
        let delta = actual.saturating_sub(reservation.reserved_nanos);
        let queue = match self.settlements.get() {
            Some(queue) => queue,
            None => {
                // Outside a runtime (nothing to run the task): lost, as a failed one is.
                let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                    return;
                };
                self.settlements.get_or_init(|| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    runtime.spawn(settle_worker(self.redis.clone(), rx));
                    tx
                })
            }
        };
        // If the task has ended (the runtime is shutting down) the settlement is lost, as
        // a failed one is: spend stays over-counted by the reservation.
        let _ = queue.send(Settlement {
            reservation,
            actual,
            delta,
            then,
        });
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

/// Sends settlements until the budgets are dropped: what queued while one pipeline was in
/// flight goes as the next, with one `INCRBY` per counter carrying the sum of its settlements.
/// Each settlement's total is then worked out in order: the `INCRBY` moved the counter from
/// `total - sum` to `total` atomically, so the settlements of the batch take that range in
/// turn, and a threshold inside it is reported by exactly one of them, as before.
async fn settle_worker(redis: SharedRedis, mut queue: mpsc::UnboundedReceiver<Settlement>) {
    let mut batch = Vec::with_capacity(SETTLE_BATCH);
    while queue.recv_many(&mut batch, SETTLE_BATCH).await > 0 {
        let mut sums: Vec<(&str, i64)> = Vec::new();
        for s in &batch {
            for c in s.reservation.charges() {
                let key = &*c.counter.redis_key;
                match sums.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, sum)) => *sum = sum.saturating_add(s.delta),
                    None => sums.push((key, s.delta)),
                }
            }
        }
        let mut pipe = redis::pipe();
        for (key, sum) in &sums {
            pipe.cmd("INCRBY").arg(*key).arg(*sum);
        }
        let mut conn = redis.conn();
        let sent = tokio::time::timeout(redis.timeout(), pipe.query_async::<Vec<i64>>(&mut conn));
        // Per counter: its total before this batch, then after each settlement in turn.
        let mut running: Vec<(String, i64)> = match sent.await {
            Ok(Ok(totals)) if totals.len() == sums.len() => sums
                .iter()
                .zip(totals)
                .map(|((key, sum), total)| ((*key).to_owned(), total.saturating_sub(*sum)))
                .collect(),
            Ok(Err(e)) => {
                tracing::warn!(error = %e.category(), "budget settlement failed");
                Vec::new()
            }
            _ => {
                tracing::warn!("budget settlement failed: timeout or unexpected reply");
                Vec::new()
            }
        };
        for s in batch.drain(..) {
            let mut crossings = Vec::new();
            for c in s.reservation.charges() {
                let Some((_, total)) = running
                    .iter_mut()
                    .find(|(k, _)| **k == *c.counter.redis_key)
                else {
                    continue;
                };
                *total = total.saturating_add(s.delta);
                crossings_of(c, s.actual, *total, &mut crossings);
            }
            (s.then)(crossings);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{BudgetCell, BudgetScope, BudgetSubject, Threshold};
    use crate::shared_redis::RedisConfig;
    use switchboard_shared::budget::usd_to_nanos;
    use switchboard_shared::snapshot::{Budget, BudgetPeriod};

    /// Budgets against the real Redis (`REDIS_URL`, default the local one), under a key prefix
    /// of their own.
    fn budgets() -> RedisBudgets {
        let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let config: RedisConfig = serde_yaml_ng::from_str(&format!(
            "url: {{ value: '{url}' }}\nkey_prefix: 'test-bs-{}-{nanos}'\ntimeout_ms: 2000",
            std::process::id()
        ))
        .unwrap();
        RedisBudgets::new(SharedRedis::connect(&config).unwrap())
    }

    #[tokio::test]
    async fn settlements_sent_together_each_learn_their_own_total() {
        let budgets = budgets();
        let b = Budget {
            max_usd: 1.0,
            soft_usd: Some(0.5),
            period: BudgetPeriod::Monthly,
            time_zone: None,
        };
        let cell = BudgetCell::default();
        let subject = BudgetSubject {
            scope: BudgetScope::Key,
            id: "k",
            tenant_id: "t",
            budget: &b,
            cell: &cell,
        };
        let now = Utc::now();
        let subjects = Subjects::one(subject);
        // Four reservations of nothing, settled at 0.3 each all at once (one pipeline, one
        // INCRBY of 1.2): the totals are handed out in turn, 0.3, 0.6, 0.9, 1.2, so the soft
        // threshold is crossed by exactly one settlement and the hard one by exactly one.
        let reservations: Vec<_> = (0..4)
            .map(|_| budgets.prepare(&subjects, 0, now).charged())
            .collect();
        let settled = reservations
            .into_iter()
            .map(|r| budgets.settle(r, usd_to_nanos(0.3)));
        let crossings: Vec<Threshold> = futures_util::future::join_all(settled)
            .await
            .into_iter()
            .flatten()
            .map(|c| c.threshold)
            .collect();
        assert_eq!(crossings, [Threshold::Soft, Threshold::Hard]);
        let spent = budgets.spent_usd(&subject, now).await.unwrap();
        assert!((spent - 1.2).abs() < 1e-9, "{spent}");
    }
}
