//! The slices of large rate limits and budgets that this replica holds (`redis.lease`), so
//! that their requests are admitted here without waiting for Redis.
//!
//! A slice is quota charged in Redis before it is used: for a GCRA cell, an admission of the
//! slice's units; for a budget counter, a charge of its nano-dollars that must fit under the
//! maximum whole. What is left of it (the *remainder*) is this table's to hand out. This
//! module is only the table — which entry may be leased, taking from and giving back to the
//! remainders, which slices to fetch or give back — and does no I/O; [`super::slices`] talks
//! to Redis for it.
//!
//! **Sizing and the bound.** An entry (a cell or counter) of limit or maximum `L` has slices
//! of `S = floor(L × fraction)`, and is leased for a request only when `S` covers at least
//! `min_requests` of that request's units; otherwise the request takes the exact path. A
//! refill tops the remainder up to `S` (never beyond), and a refund settled locally may not
//! take it past `S` either, so a replica holds at most `S` unused units of an entry at any
//! moment. Therefore, across `R` replicas, a limit admits at most `R × S` more than the exact
//! algorithm would in any window (units charged to Redis earlier and used later), and refuses
//! early by at most the `(R − 1) × S` held elsewhere; a budget's slices are charged before use
//! and only when they fit under the maximum, so its spend overruns the maximum by no more than
//! the exact path's in-flight estimates.
//!
//! **Time.** A slice is used for at most `max_age` after its last refill, and one unused for
//! `idle` is given back, so quota is displaced by at most that long. A refill starts early —
//! when the remainder is below half a slice or half its age is gone — so that under steady
//! load requests find a live slice and never wait.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::batch;
use crate::shared_redis::LeaseConfig;

/// What a leased entry is in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A GCRA cell with this limit per minute.
    Cell { limit: u64 },
    /// A budget counter with this maximum (nano-dollars) and the expiry (seconds) to give it.
    Counter { max: i64, ttl: i64 },
}

impl Kind {
    fn capacity(self) -> i64 {
        match self {
            Kind::Cell { limit } => i64::try_from(limit).unwrap_or(i64::MAX),
            Kind::Counter { max, .. } => max,
        }
    }
}

/// One entry of an admission: its Redis key, what it is, and the units the request takes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry<'a> {
    pub key: &'a str,
    pub kind: Kind,
    pub units: i64,
}

/// Units of an entry moving between this table and Redis: a slice to fetch, or a remainder
/// to give back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Units {
    pub key: String,
    pub kind: Kind,
    pub units: i64,
}

impl Units {
    /// The script admission that fetches these units as one slice, all or nothing: for a
    /// counter, only if they fit under the maximum whole.
    pub fn admission(&self) -> batch::Admission {
        let units = self.units.max(0);
        let keys = vec![self.key.clone()];
        match self.kind {
            Kind::Cell { limit } => batch::Admission {
                keys,
                cells: 1,
                cell_args: vec![limit, units.unsigned_abs()],
                ..batch::Admission::default()
            },
            Kind::Counter { max, ttl } => batch::Admission {
                keys,
                // The script refuses at `spent >= max`: this admits `spent + units <= max`.
                counter_args: vec![(max.saturating_sub(units).saturating_add(1), ttl)],
                amount: units,
                ..batch::Admission::default()
            },
        }
    }
}

/// What admission takes from the table: which entries were taken here, the slices to fetch
/// and the remainders to give back (of slices that expired or whose limit changed).
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub local: Vec<bool>,
    /// Per entry, for a cell taken here: microseconds its Redis TAT was ahead (for headers).
    pub aheads: Vec<i64>,
    pub refills: Vec<Units>,
    pub returns: Vec<Units>,
}

impl Plan {
    pub fn all_local(&self) -> bool {
        self.local.iter().all(|l| *l)
    }

    pub fn any_local(&self) -> bool {
        self.local.iter().any(|l| *l)
    }
}

#[derive(Debug)]
struct Lease {
    kind: Kind,
    slice: i64,
    remainder: i64,
    /// Units of a refill in flight.
    pending: i64,
    expires: Instant,
    used: Instant,
    refilling: bool,
    /// No refill before this (the last was refused or failed).
    quiet_until: Instant,
    /// Where the cell's TAT in Redis was after the last refill.
    tat: Instant,
}

impl Lease {
    fn empty(kind: Kind, slice: i64, now: Instant) -> Self {
        Self {
            kind,
            slice,
            remainder: 0,
            pending: 0,
            expires: now,
            used: now,
            refilling: false,
            quiet_until: now,
            tat: now,
        }
    }

    fn live(&self, now: Instant) -> bool {
        now < self.expires
    }

    /// Starts a refill topping the remainder up to a slice, if one is due and none runs.
    fn refill(&mut self, key: &str, now: Instant, half_age: Duration) -> Option<Units> {
        let low = self.remainder < self.slice / 2 || self.expires <= now + half_age;
        if !low || self.refilling || now < self.quiet_until || self.remainder >= self.slice {
            return None;
        }
        self.refilling = true;
        self.pending = self.slice - self.remainder;
        Some(Units {
            key: key.to_owned(),
            kind: self.kind,
            units: self.pending,
        })
    }
}

/// The lease table's map. Its keys are Redis keys made from catalog ids (never a client's
/// bytes), looked up three times per entry of every leased admission: foldhash (seeded per
/// process) instead of SipHash, which cost 5,900 instructions a request.
type Table = HashMap<String, Lease, foldhash::fast::RandomState>;

/// This replica's slices, by Redis key.
#[derive(Debug)]
pub(crate) struct Leases {
    config: LeaseConfig,
    table: Mutex<Table>,
}

impl Leases {
    pub fn new(config: LeaseConfig) -> Self {
        Self {
            config,
            table: Mutex::new(Table::default()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    fn max_age(&self) -> Duration {
        Duration::from_millis(self.config.max_age_ms)
    }

    /// The slice of `kind` when it may be leased for a request taking `units`; `None`: the
    /// exact path.
    pub fn slice(&self, kind: Kind, units: i64) -> Option<i64> {
        if !self.config.enabled {
            return None;
        }
        let slice = (kind.capacity() as f64 * self.config.fraction).floor() as i64;
        let needed = units
            .max(1)
            .saturating_mul(i64::from(self.config.min_requests));
        (slice >= needed).then_some(slice)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes every leasable entry's units from its slice, all or none, and says what to fetch
    /// and give back. Entries that are not leasable are never taken here.
    pub fn take(&self, entries: &[Entry<'_>], now: Instant) -> Plan {
        let mut plan = Plan {
            local: vec![false; entries.len()],
            aheads: vec![0; entries.len()],
            ..Plan::default()
        };
        let mut table = self.lock();
        let mut covered = true;
        for (i, e) in entries.iter().enumerate() {
            let Some(slice) = self.slice(e.kind, e.units) else {
                continue;
            };
            if !table.contains_key(e.key) {
                table.insert(e.key.to_owned(), Lease::empty(e.kind, slice, now));
            }
            let Some(lease) = table.get_mut(e.key) else {
                continue;
            };
            if lease.kind != e.kind || lease.slice != slice || !lease.live(now) {
                // Expired, or the limit changed: what is left goes back.
                if lease.remainder > 0 && !lease.refilling {
                    let units = std::mem::take(&mut lease.remainder);
                    plan.returns.push(Units {
                        key: e.key.to_owned(),
                        kind: lease.kind,
                        units,
                    });
                }
                if !lease.refilling {
                    (lease.kind, lease.slice) = (e.kind, slice);
                }
            }
            plan.local[i] = lease.live(now) && lease.kind == e.kind && lease.remainder >= e.units;
            covered &= plan.local[i];
        }
        if !covered {
            plan.local.fill(false);
        }
        let half_age = self.max_age() / 2;
        for (i, e) in entries.iter().enumerate() {
            let Some(lease) = table
                .get_mut(e.key)
                .filter(|_| self.slice(e.kind, e.units).is_some())
            else {
                continue;
            };
            if plan.local[i] {
                lease.remainder -= e.units;
                lease.used = now;
                plan.aheads[i] = micros(lease.tat.saturating_duration_since(now));
            }
            plan.refills.extend(lease.refill(e.key, now, half_age));
        }
        plan
    }

    /// A fetched slice landed (`Some(tat_ahead)`: admitted, with the cell's TAT that far
    /// ahead in microseconds) or did not (`None`). Units that find no lease to go to (the
    /// table was drained meanwhile) are returned, to be given back.
    pub fn landed(&self, slice: &Units, admitted: Option<i64>, now: Instant) -> Option<Units> {
        let mut table = self.lock();
        let Some(lease) = table.get_mut(&slice.key) else {
            return admitted.map(|_| slice.clone());
        };
        lease.refilling = false;
        lease.pending = 0;
        match admitted {
            Some(ahead) => {
                lease.remainder += slice.units;
                lease.expires = now + self.max_age();
                lease.tat = now + Duration::from_micros(ahead.max(0).unsigned_abs());
                None
            }
            None => {
                lease.quiet_until = now + Duration::from_millis(250);
                None
            }
        }
    }

    /// Settles `delta` units (positive: more taken, negative: given back) of `key` against
    /// its live slice, if the slice can absorb it (stays between 0 and a slice). False: the
    /// caller settles it in Redis.
    pub fn settle(&self, key: &str, delta: i64, now: Instant) -> bool {
        if !self.config.enabled {
            return false;
        }
        let mut table = self.lock();
        let Some(lease) = table.get_mut(key).filter(|l| l.live(now)) else {
            return false;
        };
        let after = lease.remainder - delta;
        // A refill in flight counts as held: together never more than a slice.
        let fits = (0..=lease.slice - lease.pending).contains(&after);
        if fits {
            lease.remainder = after;
        }
        fits
    }

    /// Removes the slices that expired or went unused for `idle`, and any at all when
    /// `everything`; returns their remainders, to be given back.
    pub fn sweep(&self, now: Instant, everything: bool) -> Vec<Units> {
        let idle = Duration::from_millis(self.config.idle_ms);
        let mut out = Vec::new();
        self.lock().retain(|key, lease| {
            let stale = !lease.live(now) || now.saturating_duration_since(lease.used) >= idle;
            let keep = !everything && (lease.refilling || !stale);
            if !keep && lease.remainder > 0 {
                out.push(Units {
                    key: key.clone(),
                    kind: lease.kind,
                    units: lease.remainder,
                });
            }
            keep
        });
        out
    }
}

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leases() -> Leases {
        Leases::new(LeaseConfig {
            fraction: 0.01,
            ..LeaseConfig::default()
        })
    }

    const CELL: Kind = Kind::Cell { limit: 3000 };

    fn entry(units: i64) -> Entry<'static> {
        Entry {
            key: "c",
            kind: CELL,
            units,
        }
    }

    #[test]
    fn small_limits_and_large_takes_keep_the_exact_path() {
        let l = leases();
        assert_eq!(l.slice(CELL, 1), Some(30));
        assert_eq!(l.slice(CELL, 3), Some(30));
        assert_eq!(
            l.slice(CELL, 4),
            None,
            "a slice covers fewer than 10 requests"
        );
        assert_eq!(l.slice(Kind::Cell { limit: 999 }, 1), None);
        let off = Leases::new(LeaseConfig {
            enabled: false,
            ..LeaseConfig::default()
        });
        assert_eq!(off.slice(Kind::Cell { limit: u64::MAX }, 1), None);
    }

    #[test]
    fn a_slice_is_fetched_then_handed_out_and_never_held_beyond_one() {
        let l = leases();
        let now = Instant::now();
        let plan = l.take(&[entry(1)], now);
        assert!(!plan.any_local(), "nothing held yet: the exact path");
        assert_eq!(
            plan.refills,
            [Units {
                key: "c".into(),
                kind: CELL,
                units: 30
            }]
        );
        // No second fetch while one is in flight.
        assert!(l.take(&[entry(1)], now).refills.is_empty());
        assert_eq!(l.landed(&plan.refills[0], Some(0), now), None);
        for i in 0..15 {
            let plan = l.take(&[entry(1)], now);
            assert!(plan.all_local(), "request {i}");
            assert!(plan.refills.is_empty(), "request {i}: above half a slice");
        }
        // Below half: a top-up to one slice, while requests go on being served.
        let plan = l.take(&[entry(1)], now);
        assert!(plan.all_local());
        assert_eq!(plan.refills[0].units, 16);
        // While it is in flight, a refund that would make more than a slice goes to Redis.
        assert!(!l.settle("c", -1, now));
        l.landed(&plan.refills[0], Some(0), now);
        assert!(l.take(&[entry(1)], now).all_local());
        assert!(l.settle("c", -1, now), "back to one slice");
        assert!(!l.settle("c", -1, now), "past one slice");
        assert!(!l.settle("c", 1000, now), "more than is held");
        assert!(l.settle("c", 30, now), "exactly what is held");
    }

    #[test]
    fn expired_and_idle_slices_are_given_back() {
        let l = leases();
        let now = Instant::now();
        let plan = l.take(&[entry(1)], now);
        l.landed(&plan.refills[0], Some(0), now);
        assert!(l.take(&[entry(1)], now).all_local());
        assert!(l.sweep(now, false).is_empty(), "in use");
        let later = now + Duration::from_secs(2);
        let plan = l.take(&[entry(1)], later);
        assert!(!plan.any_local(), "expired: not used");
        assert_eq!(plan.returns[0].units, 29);
        let plan = l.take(&[entry(1)], later);
        assert!(plan.returns.is_empty(), "given back once");
        assert_eq!(l.sweep(later, true), []);
    }

    #[test]
    fn one_entry_short_means_none_is_taken() {
        let l = leases();
        let now = Instant::now();
        let other = Entry {
            key: "d",
            ..entry(1)
        };
        let plan = l.take(&[entry(1), other], now);
        assert_eq!(plan.refills.len(), 2);
        l.landed(&plan.refills[0], Some(0), now);
        let plan = l.take(&[entry(1), other], now);
        assert!(
            !plan.any_local(),
            "d has no slice yet: c is not taken either"
        );
        l.landed(
            &Units {
                key: "d".into(),
                kind: CELL,
                units: 30,
            },
            Some(0),
            now,
        );
        assert!(l.take(&[entry(1), other], now).all_local());
        assert_eq!(l.sweep(now, true).iter().map(|u| u.units).sum::<i64>(), 58);
    }
}
