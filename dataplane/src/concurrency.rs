//! Concurrency limits: how many requests a key, a tenant or a deployment may have in flight.
//!
//! Self-hosted engines (vLLM, Ollama) fall over on concurrent requests, not on requests per
//! minute, so a limit on requests *in flight* is its own thing, next to the per-minute cells of
//! [`crate::limits`]. A request holds a [`Lease`] on a slot from the moment it is admitted (key,
//! tenant) or its attempt starts (deployment) until its answer ends — a stream's last byte —
//! and dropping the lease gives the slot back.
//!
//! - **In process** (no `redis:` section): one counter per subject, a semaphore without a
//!   queue: [`Slots::try_acquire`] takes a slot if one is free.
//! - **Redis**: one sorted set per subject, `<prefix>:cc:<scope>:<id>`, whose members are the
//!   leases held by every replica, scored by the moment they expire (Redis's own clock, read
//!   with `TIME` inside the script, so replicas' clocks never matter). Taking a slot is one
//!   script call: drop the expired leases, count the rest, add ours if there is room. A
//!   background task renews every lease this replica holds each third of
//!   `redis.concurrency_lease_ms`; so a replica that crashes stops renewing, and its slots come
//!   back within one lease time instead of leaking for ever, as bare counters would. While
//!   Redis is unreachable, slots fall back to this replica's own counters.
//!
//! Waiting for a slot, skipping to another deployment and the 429 that names the limit are
//! the caller's ([`crate::proxy`]); this module only takes and gives back.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use redis::Script;

use crate::shared_redis::SharedRedis;

/// The script that takes a slot: `KEYS[1]` the subject's set, `ARGV` the limit, the lease time
/// in ms and the lease's member name. Returns 1 when the slot is ours, else 0.
const ACQUIRE: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
  return 1
end
return 0
";

/// The script that renews a lease still held: `KEYS[1]` the set, `ARGV` lease ms and member.
const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('ZSCORE', KEYS[1], ARGV[2]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[1]), ARGV[2])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
end
return 1
";

/// Where slots are counted.
#[derive(Debug, Clone)]
pub enum Slots {
    Local(Arc<LocalSlots>),
    Redis(Arc<RedisSlots>),
}

impl Slots {
    /// This process's own counters.
    pub fn local() -> Self {
        Slots::Local(Arc::new(LocalSlots::default()))
    }

    /// Slots shared by every replica through `redis` (needs a Tokio runtime: the renewal task).
    pub fn redis(redis: SharedRedis) -> Self {
        Slots::Redis(RedisSlots::start(redis))
    }

    /// A slot of `scope` `id`, if fewer than `limit` are held across the cluster.
    pub async fn try_acquire(&self, scope: &str, id: &str, limit: u32) -> Option<Lease> {
        match self {
            Slots::Local(l) => l.try_acquire(scope, id, limit),
            Slots::Redis(r) => r.try_acquire(scope, id, limit).await,
        }
    }
}

/// A slot held; dropping it gives the slot back.
#[derive(Debug)]
#[must_use = "the slot is given back when the lease is dropped"]
pub struct Lease {
    held: Held,
}

#[derive(Debug)]
enum Held {
    Local(Arc<AtomicU32>),
    Redis { slots: Arc<RedisSlots>, number: u64 },
}

impl Drop for Lease {
    fn drop(&mut self) {
        match &self.held {
            Held::Local(count) => {
                count.fetch_sub(1, Ordering::AcqRel);
            }
            Held::Redis { slots, number } => slots.release(*number),
        }
    }
}

/// In-process counters, one per subject.
#[derive(Debug, Default)]
pub struct LocalSlots {
    counts: Mutex<HashMap<String, Arc<AtomicU32>>>,
}

impl LocalSlots {
    fn counter(&self, scope: &str, id: &str) -> Arc<AtomicU32> {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(counts.entry(format!("{scope}:{id}")).or_default())
    }

    pub fn try_acquire(&self, scope: &str, id: &str, limit: u32) -> Option<Lease> {
        let count = self.counter(scope, id);
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .ok()?;
        Some(Lease {
            held: Held::Local(count),
        })
    }

    /// Slots held now for `scope` `id`.
    pub fn held(&self, scope: &str, id: &str) -> u32 {
        self.counter(scope, id).load(Ordering::Acquire)
    }
}

/// Leases in Redis, renewed by a background task while held.
#[derive(Debug)]
pub struct RedisSlots {
    redis: SharedRedis,
    acquire: Script,
    renew: Script,
    /// Names this replica's leases apart from every other's.
    replica: String,
    next: AtomicU64,
    /// The leases this replica holds: number → (set key, member).
    held: Mutex<HashMap<u64, (String, String)>>,
    /// Used while Redis is unreachable.
    fallback: LocalSlots,
}

impl RedisSlots {
    /// The slots, with their renewal task (which ends when the slots are dropped).
    pub fn start(redis: SharedRedis) -> Arc<Self> {
        let slots = Arc::new(Self {
            redis,
            acquire: Script::new(ACQUIRE),
            renew: Script::new(RENEW),
            replica: format!("{:016x}", fastrand::u64(..)),
            next: AtomicU64::new(1),
            held: Mutex::default(),
            fallback: LocalSlots::default(),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(renew_while_alive(Arc::downgrade(&slots)));
        }
        slots
    }

    fn lease_ms(&self) -> u64 {
        u64::try_from(self.redis.lease_time().as_millis()).unwrap_or(u64::MAX)
    }

    fn key(&self, scope: &str, id: &str) -> String {
        format!("{}:cc:{scope}:{id}", self.redis.prefix())
    }

    async fn try_acquire(self: &Arc<Self>, scope: &str, id: &str, limit: u32) -> Option<Lease> {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        let key = self.key(scope, id);
        let member = format!("{}:{number}", self.replica);
        let mut invocation = self.acquire.key(&key);
        invocation.arg(limit).arg(self.lease_ms()).arg(&member);
        let mut conn = self.redis.conn();
        let called = tokio::time::timeout(
            self.redis.timeout(),
            invocation.invoke_async::<i64>(&mut conn),
        )
        .await;
        match called {
            Ok(Ok(1)) => {
                self.redis.mark_up();
                self.held_map().insert(number, (key, member));
                Some(Lease {
                    held: Held::Redis {
                        slots: Arc::clone(self),
                        number,
                    },
                })
            }
            Ok(Ok(_)) => {
                self.redis.mark_up();
                None
            }
            _ => {
                if self.redis.mark_down() {
                    tracing::warn!("concurrency slots: Redis unreachable; counting in process");
                }
                self.fallback.try_acquire(scope, id, limit)
            }
        }
    }

    fn held_map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (String, String)>> {
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives a lease back: forgotten at once (no more renewals), removed from Redis off the
    /// request path.
    fn release(&self, number: u64) {
        let Some((key, member)) = self.held_map().remove(&number) else {
            return;
        };
        let mut conn = self.redis.conn();
        let timeout = self.redis.timeout().max(Duration::from_millis(250));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let mut zrem = redis::cmd("ZREM");
                zrem.arg(&key).arg(&member);
                let removed = zrem.query_async::<i64>(&mut conn);
                // A lease not removed expires on its own within the lease time.
                let _ = tokio::time::timeout(timeout, removed).await;
            });
        }
    }

    /// Pushes the expiry of every lease held forward by one lease time, in one pipeline.
    async fn renew_all(&self) {
        let leases: Vec<(String, String)> = self.held_map().values().cloned().collect();
        if leases.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for (key, member) in &leases {
            pipe.cmd("EVALSHA")
                .arg(self.renew.get_hash())
                .arg(1)
                .arg(key)
                .arg(self.lease_ms())
                .arg(member)
                .ignore();
        }
        let mut conn = self.redis.conn();
        let sent = tokio::time::timeout(
            self.redis.timeout().max(Duration::from_millis(250)),
            pipe.query_async::<()>(&mut conn),
        )
        .await;
        if let Ok(Err(_)) = sent {
            // Typically the first renewal after a restart or flush (no script): load it, the
            // next round works.
            let _ = self
                .renew
                .prepare_invoke()
                .load_async(&mut conn)
                .await
                .map(drop);
        }
    }
}

/// Renews the leases of `slots` every third of the lease time until the slots are dropped.
async fn renew_while_alive(slots: Weak<RedisSlots>) {
    loop {
        let Some(period) = slots.upgrade().map(|s| s.redis.lease_time() / 3) else {
            return;
        };
        tokio::time::sleep(period).await;
        let Some(alive) = slots.upgrade() else {
            return;
        };
        alive.renew_all().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_slots_admit_up_to_the_limit_and_come_back_when_dropped() {
        let slots = LocalSlots::default();
        let a = slots.try_acquire("deployment", "d", 2).unwrap();
        let _b = slots.try_acquire("deployment", "d", 2).unwrap();
        assert!(slots.try_acquire("deployment", "d", 2).is_none(), "full");
        assert!(
            slots.try_acquire("deployment", "other", 2).is_some(),
            "subjects are apart"
        );
        drop(a);
        assert_eq!(slots.held("deployment", "d"), 1);
        assert!(slots.try_acquire("deployment", "d", 2).is_some());
    }
}
