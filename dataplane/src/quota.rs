//! Quota: every rate limit and budget a request is subject to, held as one [`Ticket`].
//!
//! A request counts against the limits of its key, its tenant and the deployment that serves
//! it, and against its key's and tenant's budgets. The ticket is that whole charge, and this
//! module is the one place it is taken, given back and settled:
//!
//! 1. [`Ticket::admit`] — admission: the key's and tenant's limits (charged the request and its
//!    estimated tokens) and budgets (charged the most the request can cost), all or nothing.
//!    How depends on where the counters live:
//!    - **Redis** (a `redis:` section): one call of the admission script checks the limit
//!      cells and the budget counters and charges all or none
//!      ([`crate::limits::RedisLimiter::admit_charging`]) — one round trip, and a refusal by
//!      either side writes nothing. While Redis is down, the limits follow the failure policy
//!      as they do alone, then the budgets do (`open`: admitted uncounted; `closed`: 503).
//!    - **In process**: the limits' atomics, then the budgets' ([`crate::budget::local`]); a
//!      budget refusal gives the limits back what they took (the request and its tokens).
//!
//!    A request without a budget is admitted by the limits alone: it costs nothing more.
//! 2. [`Ticket::charge_deployment`] — per attempt, once routing has picked a deployment: its
//!    own limits, charged the same estimate; [`Ticket::release_deployment`] gives the tokens
//!    back when the attempt fails (nothing was generated; the request stays counted).
//!
//!    [`Ticket::take_slots`] then takes the key's and tenant's concurrency slots
//!    ([`crate::concurrency`]), and [`Ticket::take_deployment_slot`] an attempt's deployment
//!    slot; the ticket holds them until the attempt fails or the request settles.
//! 3. [`Ticket::settle`] — when the request's ledger closes: the token limits corrected to
//!    what was used, and the budget reservation replaced with the cost, off the request path
//!    (crossed thresholds go out as webhooks).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::budget::{BudgetRefusal, Budgets, Reservation, Threshold};
use crate::catalog::{DeploymentEntry, KeyEntry};
use crate::concurrency::{Lease, Slots};
use crate::error::ApiError;
use crate::limits::{Denial, Joint, LimitView, Limiter};
use crate::metrics;
use crate::webhooks::{Event, Webhooks};

/// The process's limit and budget stores, which tickets charge.
#[derive(Debug, Clone, Copy)]
pub struct Stores<'a> {
    pub limiter: &'a Limiter,
    /// Where deployments' spend caps and request quotas are counted.
    pub caps: &'a crate::caps::CapStore,
    pub budgets: &'a Budgets,
    /// Where crossed budget thresholds are announced.
    pub webhooks: &'a Webhooks,
}

/// What an admitted request holds against its limits and budgets, until it settles.
#[derive(Debug, Default)]
#[must_use = "a ticket is settled when its request ends"]
pub struct Ticket {
    /// The tokens every limit was charged: the prompt estimate plus `max_tokens`.
    tokens: u64,
    /// What the budgets reserved (empty without budgets).
    budget: Reservation,
    /// The key's and tenant's concurrency slots, held until the request settles.
    slots: Vec<Lease>,
    /// The current attempt's deployment slot, held until the attempt fails or the request
    /// settles.
    deployment_slot: Option<Lease>,
}

impl Ticket {
    /// Admits a request made with `key`: its limits, charged one request and `tokens`, and
    /// its budgets, charged `max_cost_nanos()` (worked out only when there is a budget; its
    /// error refuses the request before anything is charged), for the period containing `now`. Returns the ticket and the first limited subject's state,
    /// for the `x-ratelimit-*` headers.
    pub async fn admit(
        stores: Stores<'_>,
        key: &KeyEntry,
        tokens: u64,
        max_cost_nanos: impl FnOnce() -> Result<i64, ApiError>,
        now: DateTime<Utc>,
    ) -> Result<(Self, LimitView), ApiError> {
        let limits = key.subjects();
        let admitted = |budget| Self {
            tokens,
            budget,
            ..Self::default()
        };
        let Some(budgets) = key.budget_subjects() else {
            let view = stores.limiter.admit(&limits, tokens).await;
            return Ok((
                admitted(Reservation::default()),
                view.map_err(rate_limited)?,
            ));
        };
        let estimate = max_cost_nanos()?;
        if let (Limiter::Redis(limiter), Some(redis_budgets)) =
            (stores.limiter, stores.budgets.redis())
        {
            let prepared = redis_budgets.prepare(&budgets, estimate, now);
            let (counters, n) = prepared.counters();
            let joint = limiter
                .admit_charging(&limits, tokens, prepared.amount(), &counters[..n])
                .await;
            let (view, budget) = match joint {
                Joint::Admitted(view) => (view, Ok(prepared.charged())),
                Joint::Limited(denial) => return Err(rate_limited(denial)),
                Joint::CounterFull { index, spent } => {
                    return Err(budget_refused(prepared.refusal(index, spent)));
                }
                Joint::Unreachable(decided) => {
                    (decided.map_err(rate_limited)?, redis_budgets.degraded())
                }
            };
            return Self::reserved(stores, key, admitted, view, budget);
        }
        let view = stores
            .limiter
            .admit(&limits, tokens)
            .await
            .map_err(rate_limited)?;
        let budget = stores.budgets.reserve(&budgets, estimate, now).await;
        Self::reserved(stores, key, admitted, view, budget)
    }

    /// The limits admitted the request; the budgets answered `budget`. A refusal gives the
    /// limits back what they took: the request never runs.
    fn reserved(
        stores: Stores<'_>,
        key: &KeyEntry,
        admitted: impl FnOnce(Reservation) -> Self,
        view: LimitView,
        budget: Result<Reservation, BudgetRefusal>,
    ) -> Result<(Self, LimitView), ApiError> {
        match budget {
            Ok(budget) => Ok((admitted(budget), view)),
            Err(refusal) => {
                let ticket = admitted(Reservation::default());
                stores.limiter.release(&key.subjects(), ticket.tokens);
                Err(budget_refused(refusal))
            }
        }
    }

    /// Takes a concurrency slot of the key and of the tenant (those with a `concurrency`
    /// limit), waiting up to `wait` for them; the ticket holds them until it settles. Says
    /// which limit is full when the wait runs out.
    pub async fn take_slots(
        &mut self,
        slots: &Slots,
        key: &KeyEntry,
        wait: Duration,
    ) -> Result<(), ApiError> {
        let deadline = tokio::time::Instant::now() + wait;
        for subject in key.subjects() {
            let Some(limit) = subject.limits.concurrency else {
                continue;
            };
            let scope = subject.scope.as_str();
            let lease = acquire_within(slots, scope, subject.id, limit, deadline).await;
            match lease {
                Some(lease) => self.slots.push(lease),
                None => {
                    self.slots.clear();
                    return Err(concurrency_limited(scope, subject.id, limit));
                }
            }
        }
        Ok(())
    }

    /// Takes a slot of `deployment` for an attempt, if it has a `concurrency` limit and one is
    /// free now; `false` when it is full.
    pub async fn take_deployment_slot(
        &mut self,
        slots: &Slots,
        deployment: &DeploymentEntry,
    ) -> bool {
        let Some(limit) = deployment.limits.concurrency else {
            return true;
        };
        match slots.try_acquire("deployment", &deployment.id, limit).await {
            Some(lease) => {
                self.deployment_slot = Some(lease);
                true
            }
            None => false,
        }
    }

    /// Whether the ticket holds a budget reservation.
    pub fn has_budget(&self) -> bool {
        !self.budget.is_empty()
    }

    /// Charges an attempt on `deployment` to its own limits (one request and the estimate),
    /// or says why it does not fit. Unlimited deployments cost nothing.
    pub async fn charge_deployment(
        &self,
        limiter: &Limiter,
        deployment: &DeploymentEntry,
    ) -> Result<(), Denial> {
        if deployment.limits.is_unlimited() {
            return Ok(());
        }
        limiter
            .admit(&[deployment.subject()], self.tokens)
            .await
            .map(drop)
    }

    /// Gives a failed attempt's deployment back its token estimate: nothing was generated.
    pub fn release_deployment(&mut self, limiter: &Limiter, deployment: &DeploymentEntry) {
        self.deployment_slot = None;
        limiter.settle(&[deployment.subject()], self.tokens, 0);
    }

    /// Gives back a deployment slot taken for an attempt that did not start.
    pub fn drop_deployment_slot(&mut self) {
        self.deployment_slot = None;
    }

    /// Settles the ticket once the request is over: the key's, tenant's and (when one was
    /// tried) the last deployment's token limits are corrected from the estimate to
    /// `actual_tokens`, and the budget reservation is replaced with `cost_nanos`.
    pub fn settle(
        &mut self,
        stores: Stores<'_>,
        key: &KeyEntry,
        deployment: Option<&DeploymentEntry>,
        actual_tokens: u64,
        cost_nanos: i64,
    ) {
        stores
            .limiter
            .settle(&key.subjects(), self.tokens, actual_tokens);
        if let Some(d) = deployment {
            stores
                .limiter
                .settle(&[d.subject()], self.tokens, actual_tokens);
            if d.caps.is_some() {
                stores.caps.record(&d.id, &d.state.caps, cost_nanos);
            }
        }
        settle_budget(stores, std::mem::take(&mut self.budget), cost_nanos);
        self.deployment_slot = None;
        self.slots.clear();
    }
}

/// A slot of `scope` `id`, trying until `deadline` (every 10–30 ms) while it is full.
pub async fn acquire_within(
    slots: &Slots,
    scope: &str,
    id: &str,
    limit: u32,
    deadline: tokio::time::Instant,
) -> Option<Lease> {
    loop {
        if let Some(lease) = slots.try_acquire(scope, id, limit).await {
            return Some(lease);
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return None;
        }
        let pause = Duration::from_millis(10 + fastrand::u64(0..20));
        tokio::time::sleep(pause.min(deadline - now)).await;
    }
}

/// The 429 of a full concurrency limit.
pub fn concurrency_limited(scope: &'static str, id: &str, limit: u32) -> ApiError {
    metrics::count_rate_limited(scope, "concurrency");
    ApiError::ConcurrencyLimited {
        scope,
        id: id.to_owned(),
        limit,
    }
}

/// Replaces a budget reservation with what the request is charged, off the request path,
/// and announces the thresholds that crossed.
fn settle_budget(stores: Stores<'_>, reservation: Reservation, actual: i64) {
    if reservation.is_empty() {
        return;
    }
    let webhooks = stores.webhooks.clone();
    stores
        .budgets
        .settle_then(reservation, actual, move |crossings| {
            for crossing in crossings {
                announce(&webhooks, crossing);
            }
        });
}

/// Logs a crossed budget threshold and sends its webhook.
fn announce(webhooks: &Webhooks, crossing: crate::budget::Crossing) {
    tracing::warn!(
        scope = crossing.scope.as_str(),
        id = %crossing.id,
        threshold = ?crossing.threshold,
        spent_usd = crossing.spent_usd,
        "budget threshold crossed"
    );
    webhooks.send(Event {
        kind: match crossing.threshold {
            Threshold::Soft => "budget.soft_threshold",
            Threshold::Hard => "budget.exhausted",
        },
        at: chrono::Utc::now(),
        scope: crossing.scope.as_str(),
        id: crossing.id,
        spent_usd: Some(crossing.spent_usd),
        limit_usd: Some(crossing.limit_usd),
        provider: None,
        status: None,
    });
}

fn rate_limited(denial: Denial) -> ApiError {
    match denial {
        Denial::Limited(refusal) => {
            metrics::count_rate_limited(refusal.scope.as_str(), refusal.what.as_str());
            ApiError::RateLimited {
                scope: refusal.scope.as_str(),
                what: refusal.what.as_str(),
                retry_after: refusal.retry_after,
                limits: refusal.view(),
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
