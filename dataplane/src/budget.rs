//! Budgets that hold across replicas: spend per key and per tenant, counted in Redis.
//!
//! Every budgeted key and tenant has one counter per budget period
//! ([`switchboard_shared::budget::counter_key`]; a key's and its tenant's counters share one
//! Redis Cluster slot, so one script touches both). The period in the name is what resets a
//! budget: when a period ends, requests charge a new counter, and the old one expires a day
//! after its period did.
//!
//! Admission ([`Budgets::reserve`]) is one script call: if every counter is below its hard
//! limit, each is charged the request's estimated maximum cost (prompt plus `max_tokens` at
//! the deployment's price) at once; otherwise nothing is charged and the request is refused.
//! Because reservations are atomic, concurrent requests through any number of replicas
//! overrun a budget by at most the cost of the one request that was admitted last (its
//! estimate), never by the number of replicas. When the request ends, [`Budgets::settle`]
//! replaces the estimate with the real cost (in the background) and reports thresholds the
//! settlement crossed, for alerts.
//!
//! While Redis is unreachable, budgeted requests follow the Redis failure policy: `open`
//! admits them uncounted (logged and counted in metrics), `closed` refuses them.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use redis::Script;
pub use switchboard_shared::budget::BudgetScope;
use switchboard_shared::budget::{Period, counter_key, nanos_to_usd, period_of};
use switchboard_shared::snapshot::Budget;

use crate::shared_redis::{FailurePolicy, SharedRedis};

/// One budget a request charges.
#[derive(Debug, Clone, Copy)]
pub struct BudgetSubject<'a> {
    pub scope: BudgetScope,
    pub id: &'a str,
    /// The tenant the subject belongs to (itself, for a tenant): the counters' hash tag.
    pub tenant_id: &'a str,
    pub budget: &'a Budget,
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
    counters: Vec<Counter>,
    reserved_nanos: i64,
}

#[derive(Debug, Clone)]
struct Counter {
    key: String,
    scope: BudgetScope,
    id: String,
    max_nanos: i64,
    soft_nanos: Option<i64>,
}

impl Reservation {
    /// True when nothing was charged (no budgets, or Redis was skipped).
    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }

    /// The amount reserved, in nano-dollars.
    pub fn reserved_nanos(&self) -> i64 {
        self.reserved_nanos
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

/// Checks every counter, then charges all or none. Returns 0 when admitted, else the
/// 1-based index of the first counter at its limit followed by that counter's spend.
const RESERVE: &str = r"
local estimate = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  local spent = tonumber(redis.call('GET', key) or '0')
  if spent >= tonumber(ARGV[2 + 2 * (i - 1)]) then
    return {i, spent}
  end
end
for i, key in ipairs(KEYS) do
  redis.call('INCRBY', key, estimate)
  local ttl = tonumber(ARGV[3 + 2 * (i - 1)])
  if ttl > 0 then redis.call('EXPIRE', key, ttl) end
end
return {0, 0}
";

/// Budget enforcement for this process.
#[derive(Debug, Clone)]
pub struct Budgets {
    redis: Option<SharedRedis>,
    reserve: Arc<Script>,
}

impl Budgets {
    /// Budgets counted in `redis`; `None`: no shared store, budgets are not enforced.
    pub fn new(redis: Option<SharedRedis>) -> Self {
        Self {
            redis,
            reserve: Arc::new(Script::new(RESERVE)),
        }
    }

    fn counter_key(redis: &SharedRedis, s: &BudgetSubject<'_>, period: &Period) -> String {
        counter_key(redis.prefix(), s.scope, s.id, s.tenant_id, period)
    }

    /// Charges `estimate_nanos` to every subject's counter for the period containing `now`,
    /// or refuses. Subjects without a budget should not be passed.
    pub async fn reserve(
        &self,
        subjects: &[BudgetSubject<'_>],
        estimate_nanos: i64,
        now: DateTime<Utc>,
    ) -> Result<Reservation, BudgetRefusal> {
        let Some(redis) = &self.redis else {
            return Ok(Reservation::default());
        };
        if subjects.is_empty() {
            return Ok(Reservation::default());
        }
        if !redis.is_up() {
            return self.degraded(redis);
        }
        let mut invocation = self.reserve.prepare_invoke();
        invocation.arg(estimate_nanos.max(0));
        let mut counters = Vec::with_capacity(subjects.len());
        let mut periods = Vec::with_capacity(subjects.len());
        for s in subjects {
            let period = period_of(s.budget, now);
            let key = Self::counter_key(redis, s, &period);
            let max_nanos = switchboard_shared::budget::usd_to_nanos(s.budget.max_usd);
            // Keep a counter a day past its period, for the control plane's reconciliation.
            let ttl = period.seconds_left(now).map_or(0, |left| left + 86_400);
            invocation.key(&key).arg(max_nanos).arg(ttl);
            counters.push(Counter {
                key,
                scope: s.scope,
                id: s.id.to_owned(),
                max_nanos,
                soft_nanos: s
                    .budget
                    .soft_usd
                    .map(switchboard_shared::budget::usd_to_nanos),
            });
            periods.push(period);
        }
        let mut conn = redis.conn();
        let result: redis::RedisResult<(usize, i64)> =
            tokio::time::timeout(redis.timeout(), invocation.invoke_async(&mut conn))
                .await
                .unwrap_or_else(|_| {
                    Err(redis::RedisError::from(std::io::Error::from(
                        std::io::ErrorKind::TimedOut,
                    )))
                });
        match result {
            Ok((0, _)) => {
                redis.mark_up();
                Ok(Reservation {
                    counters,
                    reserved_nanos: estimate_nanos.max(0),
                })
            }
            Ok((i, spent)) => {
                redis.mark_up();
                let c = &counters[(i - 1).min(counters.len() - 1)];
                let period = periods[(i - 1).min(periods.len() - 1)];
                Err(BudgetRefusal::Exhausted {
                    scope: c.scope,
                    id: c.id.clone(),
                    max_usd: nanos_to_usd(c.max_nanos),
                    spent_usd: nanos_to_usd(spent),
                    resets_in_seconds: period.seconds_left(now),
                })
            }
            Err(e) => {
                if redis.mark_down() {
                    tracing::warn!(error = %e.category(), "Redis unreachable: budgets degraded");
                }
                self.degraded(redis)
            }
        }
    }

    fn degraded(&self, redis: &SharedRedis) -> Result<Reservation, BudgetRefusal> {
        crate::metrics::count_budget_degraded();
        match redis.policy() {
            FailurePolicy::Open => Ok(Reservation::default()),
            FailurePolicy::Closed => Err(BudgetRefusal::Unavailable),
        }
    }

    /// Replaces the reservation with the real cost and returns the thresholds this crossed.
    /// One pipelined round trip; call it off the request path.
    pub async fn settle(&self, reservation: Reservation, actual_nanos: i64) -> Vec<Crossing> {
        let Some(redis) = &self.redis else {
            return Vec::new();
        };
        if reservation.is_empty() {
            return Vec::new();
        }
        let delta = actual_nanos.max(0) - reservation.reserved_nanos;
        let mut pipe = redis::pipe();
        for c in &reservation.counters {
            pipe.cmd("INCRBY").arg(&c.key).arg(delta);
        }
        let mut conn = redis.conn();
        let totals: Vec<i64> = match pipe.query_async(&mut conn).await {
            Ok(t) => t,
            Err(e) => {
                // The reservation stays charged: spend is over-counted, never under-counted,
                // until the control plane reconciles the counter with Postgres.
                tracing::warn!(error = %e.category(), "budget settlement failed");
                return Vec::new();
            }
        };
        // The spend before this request's reservation, and after its settlement.
        let mut crossings = Vec::new();
        for (c, after) in reservation.counters.iter().zip(totals) {
            let before = after - actual_nanos.max(0);
            let mut crossed = |threshold: Threshold, limit: i64| {
                if before < limit && after >= limit {
                    crossings.push(Crossing {
                        scope: c.scope,
                        id: c.id.clone(),
                        threshold,
                        spent_usd: nanos_to_usd(after),
                        limit_usd: nanos_to_usd(limit),
                    });
                }
            };
            if let Some(soft) = c.soft_nanos {
                crossed(Threshold::Soft, soft);
            }
            crossed(Threshold::Hard, c.max_nanos);
        }
        crossings
    }

    /// The spend counted this period for a subject (for `/v1/key/info`), in USD; `None`
    /// without Redis or when it is unreachable.
    pub async fn spent_usd(&self, subject: &BudgetSubject<'_>, now: DateTime<Utc>) -> Option<f64> {
        let redis = self.redis.as_ref()?;
        let key = Self::counter_key(redis, subject, &period_of(subject.budget, now));
        let mut conn = redis.conn();
        let spent: Option<i64> = tokio::time::timeout(
            redis.timeout(),
            redis::cmd("GET").arg(&key).query_async(&mut conn),
        )
        .await
        .ok()?
        .ok()?;
        Some(nanos_to_usd(spent.unwrap_or(0)))
    }
}
