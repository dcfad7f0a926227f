//! Admission: a request's rate limits (key and tenant) and its budgets, decided together.
//!
//! Both must admit a request, and a request refused by one must leave nothing charged on the
//! other. How that is done depends on where the counters live:
//!
//! - **Redis** (a `redis:` section): one call of the admission script checks the limit cells
//!   and the budget counters and charges all or none
//!   ([`crate::limits::RedisLimiter::admit_charging`]) — one round trip, and a refusal by either
//!   side writes nothing. While Redis is down, the limits follow the failure policy as they do
//!   alone, then the budgets do (`open`: admitted uncounted; `closed`: 503).
//! - **In process**: the limits' atomics, then the budgets' ([`crate::budget::local`]); a
//!   budget refusal gives the limits back what they took (the request and its tokens).
//!
//! A request without a budget is admitted by the limits alone, exactly as before budgets
//! existed: it costs nothing more.

use chrono::{DateTime, Utc};

use crate::accounting::Books;
use crate::budget::{BudgetRefusal, Reservation};
use crate::catalog::KeyEntry;
use crate::error::ApiError;
use crate::limits::{Denial, Joint, LimitView, Limiter};
use crate::metrics;

/// What an admitted request was charged.
#[derive(Debug)]
pub struct Admitted {
    /// The first limited subject's state, for the `x-ratelimit-*` headers.
    pub limits: LimitView,
    /// What its budgets reserved (empty without budgets), settled by the request's ledger.
    pub budget: Reservation,
}

/// Admits a request made with `key`: its limits, charged `estimated_tokens`, and its budgets,
/// charged `max_cost_nanos()` (worked out only when there is a budget), for the period
/// containing `now`.
pub async fn admit(
    books: &Books,
    key: &KeyEntry,
    estimated_tokens: u64,
    max_cost_nanos: impl FnOnce() -> i64,
    now: DateTime<Utc>,
) -> Result<Admitted, ApiError> {
    let limits = key.subjects();
    let Some(budgets) = key.budget_subjects() else {
        let view = books
            .limiter
            .admit(&limits, estimated_tokens)
            .await
            .map_err(rate_limited)?;
        return Ok(Admitted {
            limits: view,
            budget: Reservation::default(),
        });
    };
    let estimate = max_cost_nanos();
    if let (Limiter::Redis(limiter), Some(redis_budgets)) = (&*books.limiter, books.budgets.redis())
    {
        let prepared = redis_budgets.prepare(&budgets, estimate, now);
        let (counters, n) = prepared.counters();
        let joint = limiter
            .admit_charging(&limits, estimated_tokens, prepared.amount(), &counters[..n])
            .await;
        return match joint {
            Joint::Admitted(view) => Ok(Admitted {
                limits: view,
                budget: prepared.charged(),
            }),
            Joint::Limited(denial) => Err(rate_limited(denial)),
            Joint::CounterFull { index, spent } => {
                Err(budget_refused(prepared.refusal(index, spent)))
            }
            Joint::Unreachable(decided) => {
                let view = decided.map_err(rate_limited)?;
                match redis_budgets.degraded() {
                    Ok(budget) => Ok(Admitted {
                        limits: view,
                        budget,
                    }),
                    Err(refusal) => {
                        books.limiter.release(&limits, estimated_tokens);
                        Err(budget_refused(refusal))
                    }
                }
            }
        };
    }
    let view = books
        .limiter
        .admit(&limits, estimated_tokens)
        .await
        .map_err(rate_limited)?;
    match books.budgets.reserve(&budgets, estimate, now).await {
        Ok(budget) => Ok(Admitted {
            limits: view,
            budget,
        }),
        Err(refusal) => {
            // The request never runs: the limits get back what they took for it.
            books.limiter.release(&limits, estimated_tokens);
            Err(budget_refused(refusal))
        }
    }
}

fn rate_limited(denial: Denial) -> ApiError {
    match denial {
        Denial::Limited(refusal) => {
            metrics::count_rate_limited(refusal.scope.as_str(), refusal.what.as_str());
            ApiError::RateLimited {
                scope: refusal.scope.as_str(),
                what: refusal.what.as_str(),
                retry_after: refusal.retry_after,
            }
        }
        Denial::Unavailable => ApiError::LimitsUnavailable,
    }
}

fn budget_refused(refusal: BudgetRefusal) -> ApiError {
    match refusal {
        BudgetRefusal::Exhausted {
            scope,
            id,
            max_usd,
            spent_usd,
            resets_in_seconds,
        } => ApiError::BudgetExceeded {
            scope: scope.as_str(),
            id,
            max_usd,
            spent_usd,
            resets_in_seconds,
        },
        BudgetRefusal::Unavailable => ApiError::BudgetsUnavailable,
    }
}
