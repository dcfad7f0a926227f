//! Budgets without Redis: spend counted in this process, per replica.
//!
//! Each budgeted key and tenant has one [`PeriodCounter`] per period, an `AtomicI64` of
//! nano-dollars. Counters are found by scope, id and period in [`LocalBudgets`] — not by
//! catalog entry — so a snapshot reload keeps what was spent; the catalog entries' cells cache
//! them, so the map (behind a mutex) is consulted once per subject per period and per catalog,
//! never per request. Only the latest period of each subject is kept, and a snapshot install
//! drops those whose period has ended ([`LocalBudgets::prune`]): memory is bounded by the
//! number of budgeted subjects.
//!
//! A reservation checks and charges the key's counter, then the tenant's, each with a
//! compare-and-swap loop; when the second is full, the first is given back. That is as close to
//! all-or-nothing as two atomics get: a concurrent request may see the first counter charged
//! for the moment before it is given back, and be refused for it near the limit. Settlement is
//! one `fetch_add` per counter.
//!
//! Each replica counts only what it admits: with N replicas and no Redis, a budget admits up to
//! N times its amount. Deployments with more than one replica configure `redis:`.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use switchboard_shared::budget::{BudgetScope, MAX_CHARGE_NANOS, Period};

use super::{
    BudgetRefusal, BudgetSubject, Charge, Crossing, PeriodCounter, Reservation, Subjects,
    crossings_of,
};

/// Every subject's counter of its latest period, by scope and id.
#[derive(Debug, Default)]
pub struct LocalBudgets {
    /// Keys' counters, then tenants'.
    counters: Mutex<[HashMap<Box<str>, Arc<PeriodCounter>>; 2]>,
}

fn slot(scope: BudgetScope) -> usize {
    match scope {
        BudgetScope::Key => 0,
        BudgetScope::Tenant => 1,
    }
}

impl LocalBudgets {
    /// The counter of `period` for a subject: the one kept if it is that period's (or a later
    /// one: a late request charges the current period), else a new one that replaces it.
    fn counter(&self, scope: BudgetScope, id: &str, period: Period) -> Arc<PeriodCounter> {
        let Ok(mut maps) = self.counters.lock() else {
            // A panic while holding the lock: count on a counter of its own rather than fail.
            return Arc::new(PeriodCounter::new(scope, id, period, String::new()));
        };
        let map = &mut maps[slot(scope)];
        if let Some(kept) = map.get(id)
            && (kept.period == period || kept.period.is_after(&period))
        {
            return Arc::clone(kept);
        }
        let counter = Arc::new(PeriodCounter::new(scope, id, period, String::new()));
        map.insert(id.into(), Arc::clone(&counter));
        counter
    }

    fn counter_of(&self, s: &BudgetSubject<'_>, now: DateTime<Utc>) -> Arc<PeriodCounter> {
        s.cell
            .counter(s.budget, now, |period| self.counter(s.scope, s.id, period))
    }

    /// Charges `estimate_nanos` to every subject's counter if each is below its maximum.
    pub fn reserve(
        &self,
        subjects: &Subjects<'_>,
        estimate_nanos: i64,
        now: DateTime<Utc>,
    ) -> Result<Reservation, BudgetRefusal> {
        let estimate = estimate_nanos.clamp(0, MAX_CHARGE_NANOS);
        let mut reservation = Reservation {
            charges: [None, None],
            reserved_nanos: estimate,
        };
        for (slot, s) in reservation.charges.iter_mut().zip(subjects.as_slice()) {
            let charge = Charge::of(s, self.counter_of(s, now));
            let spent = &charge.counter.spent;
            let mut seen = spent.load(Ordering::Relaxed);
            loop {
                if seen >= charge.max_nanos {
                    let refusal = charge.refusal(seen, now);
                    release(&reservation);
                    return Err(refusal);
                }
                match spent.compare_exchange_weak(
                    seen,
                    seen.saturating_add(estimate),
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => break,
                    Err(now_seen) => seen = now_seen,
                }
            }
            *slot = Some(charge);
        }
        Ok(reservation)
    }

    /// This period's spend of a subject, in USD (0 before its first request).
    pub fn spent_usd(&self, subject: &BudgetSubject<'_>, now: DateTime<Utc>) -> f64 {
        let counter = self.counter_of(subject, now);
        switchboard_shared::budget::nanos_to_usd(counter.spent.load(Ordering::Relaxed))
    }

    /// Drops the counters whose period has ended.
    pub fn prune(&self, now: DateTime<Utc>) {
        if let Ok(mut maps) = self.counters.lock() {
            for map in maps.iter_mut() {
                map.retain(|_, c| c.period.end.is_none_or(|end| now < end));
            }
        }
    }

    /// How many counters are kept (for tests).
    pub fn len(&self) -> usize {
        self.counters
            .lock()
            .map_or(0, |maps| maps.iter().map(HashMap::len).sum())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Gives back what `reservation` charged.
fn release(reservation: &Reservation) {
    for c in reservation.charges() {
        c.counter
            .spent
            .fetch_sub(reservation.reserved_nanos, Ordering::AcqRel);
    }
}

/// Replaces the reservation with `actual_nanos` on each counter it charged.
pub fn settle(reservation: &Reservation, actual_nanos: i64) -> Vec<Crossing> {
    // Both are in `0..=MAX_CHARGE_NANOS` (admission refuses dearer requests, the ledger
    // charges no more), so the difference cannot overflow; the counter itself stops at
    // `i64`'s ends rather than wrapping to the other sign.
    let actual = actual_nanos.clamp(0, MAX_CHARGE_NANOS);
    let delta = actual.saturating_sub(reservation.reserved_nanos);
    let mut crossings = Vec::new();
    for c in reservation.charges() {
        let add = |spent: i64| Some(spent.saturating_add(delta));
        let before = c
            .counter
            .spent
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, add)
            .unwrap_or_else(|spent| spent);
        let after = before.saturating_add(delta);
        crossings_of(c, actual, after, &mut crossings);
    }
    crossings
}

#[cfg(test)]
mod tests {
    use super::super::{BudgetCell, Threshold};
    use super::*;
    use switchboard_shared::budget::usd_to_nanos;
    use switchboard_shared::snapshot::{Budget, BudgetPeriod};

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn budget(max_usd: f64, soft_usd: Option<f64>, period: BudgetPeriod) -> Budget {
        Budget {
            max_usd,
            soft_usd,
            period,
            time_zone: None,
        }
    }

    fn subject<'a>(
        scope: BudgetScope,
        id: &'a str,
        budget: &'a Budget,
        cell: &'a BudgetCell,
    ) -> BudgetSubject<'a> {
        BudgetSubject {
            scope,
            id,
            tenant_id: "t",
            budget,
            cell,
        }
    }

    #[test]
    fn a_full_tenant_refuses_and_gives_the_key_its_charge_back() {
        let budgets = LocalBudgets::default();
        let (kb, tb) = (
            budget(10.0, None, BudgetPeriod::Monthly),
            budget(1.0, None, BudgetPeriod::Monthly),
        );
        let (kc, tc) = (BudgetCell::default(), BudgetCell::default());
        let both = Subjects::two(
            subject(BudgetScope::Key, "k", &kb, &kc),
            subject(BudgetScope::Tenant, "t", &tb, &tc),
        );
        let now = at("2026-11-23T12:00:00Z");
        let r = budgets.reserve(&both, usd_to_nanos(1.0), now).unwrap();
        let crossed: Vec<_> = settle(&r, usd_to_nanos(1.0))
            .into_iter()
            .map(|c| (c.scope, c.threshold))
            .collect();
        assert_eq!(crossed, [(BudgetScope::Tenant, Threshold::Hard)]);
        match budgets.reserve(&both, usd_to_nanos(1.0), now) {
            Err(BudgetRefusal::Exhausted { scope, id, .. }) => {
                assert_eq!((scope, id.as_str()), (BudgetScope::Tenant, "t"));
            }
            other => panic!("{other:?}"),
        }
        let key = subject(BudgetScope::Key, "k", &kb, &kc);
        assert_eq!(
            budgets.spent_usd(&key, now),
            1.0,
            "the key keeps only the settled cost"
        );
    }

    #[test]
    fn settlement_reports_crossings_and_the_next_period_starts_at_zero() {
        let budgets = LocalBudgets::default();
        let b = budget(1.0, Some(0.5), BudgetPeriod::Daily);
        let cell = BudgetCell::default();
        let s = subject(BudgetScope::Key, "k", &b, &cell);
        let now = at("2026-11-23T12:00:00Z");
        let mut seen = Vec::new();
        for _ in 0..4 {
            let r = budgets
                .reserve(&Subjects::one(s), usd_to_nanos(0.3), now)
                .unwrap();
            seen.push(
                settle(&r, usd_to_nanos(0.3))
                    .into_iter()
                    .map(|c| c.threshold)
                    .collect::<Vec<_>>(),
            );
        }
        assert_eq!(
            seen,
            [vec![], vec![Threshold::Soft], vec![], vec![Threshold::Hard]]
        );
        assert!(budgets.reserve(&Subjects::one(s), 1, now).is_err());
        let tomorrow = at("2026-11-24T00:00:01Z");
        budgets
            .reserve(&Subjects::one(s), usd_to_nanos(0.3), tomorrow)
            .unwrap();
        assert!((budgets.spent_usd(&s, tomorrow) - 0.3).abs() < 1e-12);
        // Only the latest period is kept, and pruning drops it once it has ended.
        assert_eq!(budgets.len(), 1);
        budgets.prune(tomorrow);
        assert_eq!(budgets.len(), 1);
        budgets.prune(at("2026-11-25T00:00:00Z"));
        assert!(budgets.is_empty());
    }

    #[test]
    fn a_new_cell_finds_the_counter_of_the_same_subject_and_period() {
        // A snapshot reload builds new catalog entries, with new cells.
        let budgets = LocalBudgets::default();
        let b = budget(1.0, None, BudgetPeriod::Monthly);
        let (old, new) = (BudgetCell::default(), BudgetCell::default());
        let now = at("2026-11-23T12:00:00Z");
        let r = budgets
            .reserve(
                &Subjects::one(subject(BudgetScope::Key, "k", &b, &old)),
                usd_to_nanos(0.25),
                now,
            )
            .unwrap();
        settle(&r, usd_to_nanos(0.25));
        let reloaded = subject(BudgetScope::Key, "k", &b, &new);
        assert_eq!(budgets.spent_usd(&reloaded, now), 0.25);
        // Another subject with the same id in the other scope is another counter.
        let tenant_cell = BudgetCell::default();
        let tenant = subject(BudgetScope::Tenant, "k", &b, &tenant_cell);
        assert_eq!(budgets.spent_usd(&tenant, now), 0.0);
    }

    #[test]
    fn concurrent_reservations_overrun_by_at_most_one_estimate() {
        let budgets = Arc::new(LocalBudgets::default());
        let b = Arc::new(budget(1.0, None, BudgetPeriod::None));
        let cell = Arc::new(BudgetCell::default());
        let estimate = usd_to_nanos(0.03);
        let now = at("2026-11-23T12:00:00Z");
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (budgets, b, cell) = (budgets.clone(), b.clone(), cell.clone());
                std::thread::spawn(move || {
                    let s = subject(BudgetScope::Key, "k", &b, &cell);
                    let mut admitted = 0i64;
                    while budgets.reserve(&Subjects::one(s), estimate, now).is_ok() {
                        admitted += estimate;
                    }
                    admitted
                })
            })
            .collect();
        let total: i64 = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(total >= usd_to_nanos(1.0), "{total}");
        assert!(total < usd_to_nanos(1.0) + estimate, "{total}");
    }
}
