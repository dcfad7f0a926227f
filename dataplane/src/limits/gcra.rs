//! A lock-free GCRA cell: one `AtomicU64` per limit.
//!
//! The generic cell rate algorithm keeps a single number, the *theoretical arrival time* (TAT).
//! Each unit admitted pushes the TAT forward by `period / limit`; a request is refused when that
//! would put the TAT more than one whole period ahead of now. It allows a full window's burst,
//! refills smoothly (no cliff at a window boundary), needs no background sweeping, and is a
//! single compare-and-swap per admission — so no lock on the request path. Weighted
//! admissions (tokens) and after-the-fact corrections (real token counts) are the same
//! arithmetic with a different weight.

use std::sync::atomic::{AtomicU64, Ordering};

/// The window every limit here is expressed over: a minute.
pub const WINDOW_NANOS: u64 = 60_000_000_000;

/// The outcome of one take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// Admitted; the state afterwards.
    Admitted(CellState),
    /// Refused; retry after this many nanoseconds.
    Refused { retry_after_nanos: u64 },
}

/// What a cell looks like right after an admission, for `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CellState {
    pub limit: u64,
    /// Units that could still be taken now.
    pub remaining: u64,
    /// Nanoseconds until the cell is back to its full allowance.
    pub reset_nanos: u64,
}

/// One limit of `limit` units per minute.
#[derive(Debug, Default)]
pub struct GcraCell {
    tat: AtomicU64,
}

impl GcraCell {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes `units` at time `now` (nanoseconds on a monotonic clock) from a limit of `limit`
    /// per minute. A take larger than the whole limit is capped at the limit, so it is admitted
    /// when the cell is fully idle rather than never.
    pub fn take(&self, limit: u64, units: u64, now: u64) -> Take {
        let limit = limit.max(1);
        let increment = units.min(limit) * (WINDOW_NANOS / limit);
        let mut current = self.tat.load(Ordering::Relaxed);
        loop {
            let new_tat = current.max(now) + increment;
            let ahead = new_tat - now;
            if ahead > WINDOW_NANOS {
                return Take::Refused {
                    retry_after_nanos: ahead - WINDOW_NANOS,
                };
            }
            match self.tat.compare_exchange_weak(
                current,
                new_tat,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    let per_unit = WINDOW_NANOS / limit;
                    return Take::Admitted(CellState {
                        limit,
                        remaining: (WINDOW_NANOS - ahead) / per_unit,
                        reset_nanos: ahead,
                    });
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Gives back `units` (a refund after a refused sibling limit, or an over-estimate), or
    /// charges `-units` more (an under-estimate), at `limit` per minute.
    pub fn adjust(&self, limit: u64, delta_units: i64, now: u64) {
        let per_unit = WINDOW_NANOS / limit.max(1);
        let delta = delta_units.unsigned_abs().saturating_mul(per_unit);
        let _ = self
            .tat
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |tat| {
                Some(if delta_units >= 0 {
                    // Charging more: never past one window ahead, which would lock the
                    // subject out for longer than a minute for a single request.
                    (tat.max(now) + delta).min(now + WINDOW_NANOS)
                } else {
                    // Refunding: the TAT never needs to go below now.
                    tat.saturating_sub(delta).max(now.min(tat))
                })
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SEC: u64 = 1_000_000_000;

    /// Whether `cell` admits `units` under `limit` at `now` (charging them if so).
    fn admits(cell: &GcraCell, limit: u64, units: u64, now: u64) -> bool {
        matches!(cell.take(limit, units, now), Take::Admitted(_))
    }

    #[test]
    fn admits_a_full_burst_then_refuses_with_a_retry_time() {
        let cell = GcraCell::new();
        let now = 1000 * SEC;
        for i in 0..10 {
            match cell.take(10, 1, now) {
                Take::Admitted(s) => assert_eq!(s.remaining, 9 - i),
                Take::Refused { .. } => panic!("request {i} refused inside the burst"),
            }
        }
        match cell.take(10, 1, now) {
            Take::Refused { retry_after_nanos } => assert_eq!(retry_after_nanos, 6 * SEC),
            Take::Admitted(_) => panic!("11th request admitted at 10 rpm"),
        }
        // One period later exactly one more fits.
        assert!(matches!(cell.take(10, 1, now + 6 * SEC), Take::Admitted(_)));
        assert!(matches!(
            cell.take(10, 1, now + 6 * SEC),
            Take::Refused { .. }
        ));
    }

    #[test]
    fn refunds_and_corrections_move_the_allowance() {
        let (cell, now) = (GcraCell::new(), 1000 * SEC);
        assert!(admits(&cell, 1000, 900, now) && !admits(&cell, 1000, 200, now));
        // The request really used 100 tokens: 800 come back.
        cell.adjust(1000, -800, now);
        assert!(admits(&cell, 1000, 200, now));
        // An under-estimate charges more, capped at one window.
        cell.adjust(1000, 10_000, now);
        match cell.take(1000, 1, now) {
            Take::Refused { retry_after_nanos } => assert!(retry_after_nanos <= 60 * SEC),
            Take::Admitted(_) => panic!("admitted after a full-window charge"),
        }
    }

    #[test]
    fn a_take_larger_than_the_limit_passes_only_when_idle() {
        let (cell, now) = (GcraCell::new(), 1000 * SEC);
        assert!(admits(&cell, 100, 5000, now), "alone, it passes");
        assert!(!admits(&cell, 100, 1, now), "then nothing does");
    }

    proptest! {
        /// Over any sequence of takes at one instant, no more than `limit` units are admitted.
        #[test]
        fn never_admits_more_than_the_limit_at_once(limit in 1u64..500, takes in proptest::collection::vec(1u64..50, 1..200)) {
            let cell = GcraCell::new();
            let now = 10_000 * SEC;
            let admitted: u64 = takes.iter().map(|&u| match cell.take(limit, u, now) {
                Take::Admitted(_) => u.min(limit),
                Take::Refused { .. } => 0,
            }).sum();
            prop_assert!(admitted <= limit, "admitted {admitted} of {limit}");
        }

        /// Over a long run of single requests, the admitted rate converges to the limit.
        #[test]
        fn steady_rate_matches_the_limit(limit in 1u64..600, step_ms in 1u64..500) {
            let cell = GcraCell::new();
            let start = 10_000 * SEC;
            let minutes = 3;
            let mut admitted = 0u64;
            let mut t = start;
            while t < start + minutes * 60 * SEC {
                if matches!(cell.take(limit, 1, t), Take::Admitted(_)) { admitted += 1; }
                t += step_ms * 1_000_000;
            }
            let offered = (minutes * 60 * 1000).div_ceil(step_ms);
            // At most one burst plus the steady rate; never more than offered.
            prop_assert!(admitted <= limit * (minutes + 1));
            prop_assert!(admitted <= offered);
            // When offered well above the limit, at least the steady rate is admitted.
            if offered > 2 * limit * minutes {
                prop_assert!(admitted >= limit * minutes, "admitted {admitted} of {limit}/min");
            }
        }
    }
}
