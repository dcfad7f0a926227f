//! Coalesced admission: the admissions that arrive while a script call is in flight go to
//! Redis together, as one call, so that Redis mode does not pay a round trip (and a script
//! call) per request.
//!
//! One task per limiter owns the sending. An admission queues itself and waits for its reply.
//! The task takes the first admission of an idle period at once and sends it alone; the
//! admissions that queue up while that call is in flight go in the next call, all of them (up
//! to [`MAX_BATCH`]). Under load a call therefore carries what arrived during one round trip,
//! and when idle an admission waits for nothing but its own call.
//!
//! **Exactness.** The call is the admission script in mode `m` (`gcra.lua`): it decides the
//! admissions one after the other, in the order they queued, each exactly as a call of its
//! own would (all or nothing over its cells and counters). A Lua script runs atomically, so
//! nothing else interleaves; the only difference is that the admissions of one call share the
//! script's reading of Redis's clock.
//!
//! **Redis Cluster.** A script's keys must live in one slot. Against a cluster the queued
//! admissions are grouped by hash tag (a request's key and tenant share their tenant's tag; a
//! deployment has its own) and each group goes as a call of its own, the groups concurrently;
//! against a single server or a Sentinel-managed master all go in one call.
//!
//! **Failures and timeouts.** Each call is bounded by `redis.timeout_ms` (and reloads the
//! script on `NOSCRIPT`), as a single admission's call was. A failed call answers every
//! admission it carried with the failure, and each caller applies the failure policy as
//! before. An admission waits at most for the call in flight when it queued and then its own,
//! so at most twice the timeout, without a timer of its own; one whose caller is gone (the
//! client left) is not sent.

use redis::Script;
use tokio::sync::{mpsc, oneshot};

use super::redis::{Failure, call_many};
use crate::shared_redis::SharedRedis;

/// Most admissions in one script call (the script blocks Redis while it runs: a few hundred
/// microseconds at most).
pub const MAX_BATCH: usize = 128;

/// One admission for the script: its cell keys, then its counter keys; per cell the limit
/// and the units to take, per counter its maximum and expiry; the amount to reserve on the
/// counters.
#[derive(Debug, Default)]
pub struct Admission {
    pub keys: Vec<String>,
    pub cells: usize,
    pub cell_args: Vec<u64>,
    pub counter_args: Vec<(i64, i64)>,
    pub amount: i64,
}

impl Admission {
    /// The hash tag of its keys (all share one), which picks its slot in a cluster.
    fn tag(&self) -> &[u8] {
        self.keys.first().map_or(&b""[..], |k| {
            switchboard_shared::redis_conn::hash_tag(k.as_bytes())
        })
    }

    /// Appends this admission's part of a mode-`m` call: its keys to `keys`, its values to
    /// `cmd`'s arguments (after the header).
    fn encode(&self, cmd: &mut redis::Cmd) {
        cmd.arg(self.cells)
            .arg(self.counter_args.len())
            .arg(self.amount.max(0))
            .arg(&self.cell_args);
        for (max, ttl) in &self.counter_args {
            cmd.arg(*max).arg((*ttl).max(0));
        }
    }
}

struct Pending {
    admission: Admission,
    reply: oneshot::Sender<Result<Vec<i64>, Failure>>,
}

/// The queue to a limiter's sending task.
#[derive(Debug, Clone)]
pub struct Batcher {
    queue: mpsc::UnboundedSender<Pending>,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl Batcher {
    /// Starts the sending task (within a Tokio runtime); it ends when the batcher is dropped.
    pub fn start(redis: SharedRedis, script: Script) -> Self {
        let (queue, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(redis, script, rx));
        Self { queue }
    }

    /// Sends `admission` with whatever else is waiting and returns the script's reply for it
    /// (as a single call in mode `b` would answer).
    pub async fn admit(&self, admission: Admission) -> Result<Vec<i64>, Failure> {
        let (reply, answer) = oneshot::channel();
        if self.queue.send(Pending { admission, reply }).is_err() {
            return Err(Failure::Unexpected);
        }
        // No timer of its own: the call in flight when it queued and its own call are each
        // bounded by the timeout, and so is the wait.
        answer.await.unwrap_or(Err(Failure::Unexpected))
    }
}

/// The sending task: one round at a time, each carrying everything queued when it starts.
async fn run(redis: SharedRedis, script: Script, mut queue: mpsc::UnboundedReceiver<Pending>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let cluster = redis.conn().is_cluster();
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Callers that gave up (timed out) are not charged.
        batch.retain(|p| !p.reply.is_closed());
        if cluster {
            let mut groups: Vec<Vec<Pending>> = Vec::new();
            for p in batch.drain(..) {
                match groups
                    .iter_mut()
                    .find(|g| g[0].admission.tag() == p.admission.tag())
                {
                    Some(g) => g.push(p),
                    None => groups.push(vec![p]),
                }
            }
            let rounds = groups.into_iter().map(|g| send(&redis, &script, g));
            futures_util::future::join_all(rounds).await;
        } else if !batch.is_empty() {
            send(&redis, &script, std::mem::take(&mut batch)).await;
            batch.reserve(MAX_BATCH);
        }
    }
}

/// One call of mode `m` for `batch`, whose replies go to their callers.
async fn send(redis: &SharedRedis, script: &Script, batch: Vec<Pending>) {
    let mut cmd = redis::cmd("EVALSHA");
    let keys: usize = batch.iter().map(|p| p.admission.keys.len()).sum();
    cmd.arg(script.get_hash()).arg(keys);
    for p in &batch {
        cmd.arg(&p.admission.keys);
    }
    cmd.arg("m").arg(batch.len());
    for p in &batch {
        p.admission.encode(&mut cmd);
    }
    let replies = call_many(redis, script, &cmd).await;
    match replies {
        Ok(replies) if replies.len() == batch.len() => {
            for (p, reply) in batch.into_iter().zip(replies) {
                let _ = p.reply.send(Ok(reply));
            }
        }
        other => {
            let failure = other.err().unwrap_or(Failure::Unexpected);
            for p in batch {
                let _ = p.reply.send(Err(failure.clone()));
            }
        }
    }
}
