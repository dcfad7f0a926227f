//! Leased admission in Redis mode: an admission goes through this replica's slices
//! ([`super::lease`]) first and to Redis only for what they do not cover.
//!
//! [`Slices::admit`] answers exactly what the admission script would have answered for the
//! whole admission, so the limiter reads the reply as before:
//!
//! - every entry (cell or counter) leasable and covered by its slice: admitted here, no call;
//! - none covered: the whole admission goes to Redis (coalesced, [`super::batch`]) as before;
//! - some entries leasable and covered, others too small to lease: the small ones go to Redis
//!   and a refusal or failure puts back what was taken here.
//!
//! Slices are fetched (refills) by tasks of their own, each one more admission in the next
//! coalesced call — charged before use, all or nothing — so a request waits only for its own
//! entries. A refill that fails marks Redis down, as a failed admission does; while Redis is
//! down no slice is used and admission follows the failure policy as before. Remainders go
//! back to Redis (a GCRA give-back for a cell, a `DECRBY` for a counter) from a sweeping
//! task once unused for `idle_ms` or older than `max_age_ms`, and all of them at shutdown
//! ([`Slices::give_back_all`]). A give-back that fails leaves the units charged: a cell then
//! frees them as its window passes, a budget counter stays over-counted until the control
//! plane reconciles it (over, never under).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redis::Script;

use super::batch::{self, Batcher};
use super::lease::{Entry, Kind, Leases, Plan, Units};
use super::redis::{Failure, Settlement, send_settlements, went_down};
use crate::metrics::{self, LeaseEvent};
use crate::shared_redis::SharedRedis;

/// How often idle and expired slices are looked for.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// A limiter's slices and its way to Redis.
#[derive(Debug)]
pub(crate) struct Slices {
    leases: Leases,
    batcher: Batcher,
    redis: SharedRedis,
    script: Script,
    /// Admissions decided here without a call.
    local: AtomicU64,
}

impl Slices {
    /// Starts the batcher and the sweeping task (within a Tokio runtime).
    pub fn start(redis: SharedRedis, script: Script) -> Arc<Self> {
        let slices = Arc::new(Self {
            leases: Leases::new(redis.quota_lease()),
            batcher: Batcher::start(redis.clone(), script.clone()),
            redis,
            script,
            local: AtomicU64::new(0),
        });
        if slices.leases.enabled() {
            tokio::spawn(sweep(Arc::downgrade(&slices)));
        }
        slices
    }

    /// The script's reply to `admission`, from the slices where they cover it.
    pub async fn admit(self: &Arc<Self>, admission: batch::Admission) -> Result<Vec<i64>, Failure> {
        if !self.leases.enabled() {
            return self.batcher.admit(admission).await;
        }
        let mut plan = self.leases.take(&entries(&admission), Instant::now());
        self.move_units(&mut plan);
        if !plan.any_local() {
            return self.batcher.admit(admission).await;
        }
        if plan.all_local() {
            self.local.fetch_add(1, Ordering::Relaxed);
            let cells = &plan.aheads[..admission.cells];
            return Ok(std::iter::once(1).chain(cells.iter().copied()).collect());
        }
        let exact: Vec<usize> = (0..plan.local.len()).filter(|i| !plan.local[*i]).collect();
        let result = self.batcher.admit(subset(&admission, &exact)).await;
        let merged = match &result {
            Ok(reply) => merge(reply, &admission, &exact, &plan.aheads),
            Err(_) => None,
        };
        if merged.as_ref().is_none_or(|r| r.first() != Some(&1)) {
            self.put_back(&admission, &plan.local);
        }
        merged.ok_or_else(|| result.err().unwrap_or(Failure::Unexpected))
    }

    /// How many admissions were decided from the slices alone, without a call to Redis.
    pub fn admitted_locally(&self) -> u64 {
        self.local.load(Ordering::Relaxed)
    }

    /// Settles `delta` units of `key` against this replica's slice; false: settle in Redis.
    pub fn settle_local(&self, key: &str, delta: i64) -> bool {
        self.leases.settle(key, delta, Instant::now())
    }

    /// Gives every remainder back to Redis (at shutdown).
    pub async fn give_back_all(&self) {
        let back = self.leases.sweep(Instant::now(), true);
        give_back(&self.redis, &self.script, back).await;
    }

    /// Starts the plan's refills and give-backs, each a task of its own.
    fn move_units(self: &Arc<Self>, plan: &mut Plan) {
        let returns = std::mem::take(&mut plan.returns);
        if !returns.is_empty() {
            let (redis, script) = (self.redis.clone(), self.script.clone());
            tokio::spawn(async move { give_back(&redis, &script, returns).await });
        }
        for slice in plan.refills.drain(..) {
            let slices = Arc::clone(self);
            tokio::spawn(async move { slices.refill(slice).await });
        }
    }

    /// Fetches one slice and hands it to the table.
    async fn refill(&self, slice: Units) {
        let reply = self.batcher.admit(slice.admission()).await;
        let admitted = match reply.as_deref() {
            Ok([1, ahead]) => Some(*ahead),
            Ok([1]) => Some(0),
            _ => None,
        };
        let event = match admitted {
            Some(_) => LeaseEvent::Refill,
            None => LeaseEvent::Refused,
        };
        metrics::count_lease(event, 1);
        if let Err(failure) = &reply {
            went_down(&self.redis, failure.reason());
        }
        if let Some(orphan) = self.leases.landed(&slice, admitted, Instant::now()) {
            give_back(&self.redis, &self.script, vec![orphan]).await;
        }
    }

    /// Puts back what an admission took from the slices, for one that was not admitted.
    fn put_back(self: &Arc<Self>, admission: &batch::Admission, local: &[bool]) {
        let mut returns = Vec::new();
        for (e, _) in entries(admission).iter().zip(local).filter(|(_, l)| **l) {
            if !self.settle_local(e.key, -e.units) {
                returns.push(Units {
                    key: e.key.to_owned(),
                    kind: e.kind,
                    units: e.units,
                });
            }
        }
        self.move_units(&mut Plan {
            returns,
            ..Plan::default()
        });
    }
}

/// The entries of an admission: its cells with their limits and units, then its counters
/// with the amount.
fn entries(a: &batch::Admission) -> Vec<Entry<'_>> {
    let cells = a.cell_args.chunks_exact(2).map(|args| {
        let units = i64::try_from(args[1]).unwrap_or(i64::MAX);
        (Kind::Cell { limit: args[0] }, units)
    });
    let counters = a
        .counter_args
        .iter()
        .map(|&(max, ttl)| (Kind::Counter { max, ttl }, a.amount));
    a.keys
        .iter()
        .zip(cells.chain(counters))
        .map(|(key, (kind, units))| Entry { key, kind, units })
        .collect()
}

/// The admission of only the entries `exact` (indices, cells first, ascending).
fn subset(a: &batch::Admission, exact: &[usize]) -> batch::Admission {
    let cells: Vec<usize> = exact.iter().copied().filter(|i| *i < a.cells).collect();
    batch::Admission {
        keys: exact.iter().map(|i| a.keys[*i].clone()).collect(),
        cells: cells.len(),
        cell_args: cells
            .iter()
            .flat_map(|i| [a.cell_args[2 * i], a.cell_args[2 * i + 1]])
            .collect(),
        counter_args: exact[cells.len()..]
            .iter()
            .map(|i| a.counter_args[i - a.cells])
            .collect(),
        amount: a.amount,
    }
}

/// The reply for the whole admission from the reply for its `exact` entries, the others
/// having been taken from slices (their cells `aheads` microseconds ahead).
fn merge(reply: &[i64], a: &batch::Admission, exact: &[usize], aheads: &[i64]) -> Option<Vec<i64>> {
    // 1-based index of the `n`th (1-based) exact entry, in the whole admission.
    let whole = |n: i64| Some(*exact.get(usize::try_from(n).ok()?.checked_sub(1)?)? + 1);
    match reply {
        [1, sub @ ..] => {
            let mut sub = sub.iter();
            let mut out = vec![1];
            for (i, ahead) in aheads.iter().enumerate().take(a.cells) {
                out.push(if exact.contains(&i) {
                    *sub.next()?
                } else {
                    *ahead
                });
            }
            Some(out)
        }
        [0, i, retry] => Some(vec![0, i64::try_from(whole(*i)?).ok()?, *retry]),
        [2, j, spent] => {
            let exact_cells = exact.iter().filter(|i| **i < a.cells).count();
            let index = whole(*j + i64::try_from(exact_cells).ok()?)? - a.cells;
            Some(vec![2, i64::try_from(index).ok()?, *spent])
        }
        _ => None,
    }
}

/// Gives remainders back to Redis in one pipeline: a cell's through the script's settle mode
/// (never below now), a counter's by `DECRBY`.
async fn give_back(redis: &SharedRedis, script: &Script, units: Vec<Units>) {
    if units.is_empty() {
        return;
    }
    metrics::count_lease(LeaseEvent::Return, units.len() as u64);
    let mut cells = Vec::new();
    let mut pipe = redis::pipe();
    for u in &units {
        match u.kind {
            Kind::Cell { limit } => cells.push(Settlement {
                cells: vec![(u.key.clone(), u32::try_from(limit).unwrap_or(u32::MAX))],
                delta: -u.units,
            }),
            Kind::Counter { .. } => {
                pipe.cmd("DECRBY").arg(&u.key).arg(u.units).ignore();
            }
        }
    }
    if !cells.is_empty()
        && let Err(reason) = send_settlements(redis, script, &cells).await
    {
        tracing::debug!(%reason, "giving back leased rate-limit units failed");
    }
    if cells.len() < units.len() {
        let mut conn = redis.conn();
        let sent = tokio::time::timeout(redis.timeout(), pipe.query_async::<()>(&mut conn)).await;
        if !matches!(sent, Ok(Ok(()))) {
            tracing::debug!("giving back leased budget units failed");
        }
    }
}

/// Gives back idle and expired slices until the limiter is dropped (while Redis is down they
/// wait: nothing uses them then).
async fn sweep(slices: Weak<Slices>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        let Some(slices) = slices.upgrade() else {
            return;
        };
        if slices.redis.is_up() {
            let back = slices.leases.sweep(Instant::now(), false);
            give_back(&slices.redis, &slices.script, back).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Cells `a` (limit 10, 1 unit) and `b` (limit 20, 5 units), counter `c` (max 100).
    fn admission() -> batch::Admission {
        batch::Admission {
            keys: vec!["a".into(), "b".into(), "c".into()],
            cells: 2,
            cell_args: vec![10, 1, 20, 5],
            counter_args: vec![(100, 60)],
            amount: 7,
        }
    }

    #[test]
    fn a_partial_admission_maps_back_to_the_whole() {
        let a = admission();
        let kinds: Vec<_> = entries(&a).iter().map(|e| (e.key, e.units)).collect();
        assert_eq!(kinds, [("a", 1), ("b", 5), ("c", 7)]);
        // `a` was taken from its slice: `b` and `c` go to Redis.
        let exact = [1, 2];
        let sub = subset(&a, &exact);
        assert_eq!(
            (sub.cells, &sub.keys[..]),
            (1, &["b".to_owned(), "c".to_owned()][..])
        );
        assert_eq!(
            (&sub.cell_args[..], &sub.counter_args[..]),
            (&[20, 5][..], &[(100, 60)][..])
        );
        let aheads = [111, 0, 0];
        assert_eq!(
            merge(&[1, 222], &a, &exact, &aheads),
            Some(vec![1, 111, 222])
        );
        assert_eq!(merge(&[0, 1, 9], &a, &exact, &aheads), Some(vec![0, 2, 9]));
        assert_eq!(
            merge(&[2, 1, 99], &a, &exact, &aheads),
            Some(vec![2, 1, 99])
        );
        assert_eq!(merge(&[0, 3, 9], &a, &exact, &aheads), None);
        // Only the counter goes to Redis.
        let exact = [2];
        assert_eq!(subset(&a, &exact).cells, 0);
        assert_eq!(merge(&[1], &a, &exact, &[5, 6, 0]), Some(vec![1, 5, 6]));
        assert_eq!(
            merge(&[2, 1, 99], &a, &exact, &aheads),
            Some(vec![2, 1, 99])
        );
    }
}
