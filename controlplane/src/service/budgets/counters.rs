//! Reconciling the data planes' budget counters in Redis with Postgres.
//!
//! The data planes enforce budgets from one Redis counter per subject and period
//! (`shared::budget::counter_key`), charged at admission and settled when the request ends.
//! Redis is not the truth: it can lose its data (a restart without persistence, a failover),
//! and while it is unreachable a fail-open data plane admits requests without counting them.
//! Postgres is the truth of what was spent, through spend ingestion. So every
//! `redis.reconcile_interval_seconds` one control-plane replica (a Postgres advisory lock,
//! [`RECONCILE_LOCK`], taken per pass) computes every budgeted key's and tenant's spend in its
//! current period from Postgres ([`super::period_spend`]) and **raises** each counter that is
//! below it to that figure — one Lua script per counter, `if current < postgres then INCRBY
//! the difference`, pipelined a batch at a time — giving a counter it creates (or raises) the
//! data planes' TTL: seconds left in the period plus a day, none for period `none`.
//!
//! It **never lowers** a counter. A counter above Postgres is the normal case: it also holds
//! reservations of requests in flight and spend whose usage events are not ingested yet; only
//! the data planes' settlement brings it down, by replacing a reservation with the real cost.
//! Raising is idempotent and monotone, so two replicas that both ran a pass (or a pass and an
//! admin write's immediate raise) still leave each counter at exactly `max(counter,
//! postgres)`; the lock only saves the duplicate work.
//!
//! Period rollover needs no reset job: the period is part of the counter's name, so a new
//! period charges a new counter and the old one expires a day after its period ended. This
//! loop only fills a new period's counter in when Postgres already has spend for it (a budget
//! whose period or time zone just changed).
//!
//! A Postgres or Redis failure fails the pass with a warning; the next pass runs as usual.
//! The Redis URL (it may hold a password) is never logged.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::Script;
use sqlx::PgPool;
use switchboard_shared::budget::{counter_key, nanos_to_usd};
use switchboard_shared::redis_conn::RedisConn;

use super::{Subject, all, period_spend};
use crate::config::RedisSettings;

/// The advisory lock key of a reconciliation pass ("SBBUDGET" in ASCII).
pub const RECONCILE_LOCK: i64 = 0x5342_4255_4447_4554;
/// Counters raised per pipelined round trip.
pub const BATCH: usize = 500;
/// A Redis call that takes longer fails the pass.
const REDIS_TIMEOUT: Duration = Duration::from_secs(5);

/// Raises `KEYS[1]` to `ARGV[1]` nano-dollars when it is below; sets TTL `ARGV[2]` (seconds,
/// 0: none) on a counter it raises. Returns the amount raised (0: untouched).
const RAISE: &str = r"
local target = tonumber(ARGV[1])
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current == nil or current >= target then
  return 0
end
redis.call('INCRBY', KEYS[1], target - current)
local ttl = tonumber(ARGV[2])
if ttl > 0 then redis.call('EXPIRE', KEYS[1], ttl) end
return target - current
";

/// The data planes' Redis, for budget counters.
#[derive(Clone)]
pub struct Counters {
    conn: RedisConn,
    prefix: Arc<str>,
    raise: Arc<Script>,
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Why a pass failed. Never holds the Redis URL.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("postgres: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("redis: {0}")]
    Redis(String),
}

impl From<redis::RedisError> for ReconcileError {
    fn from(e: redis::RedisError) -> Self {
        // The category and the server's detail; never the error's full text, which for some
        // connection errors could name the address.
        ReconcileError::Redis(match e.detail() {
            Some(detail) => format!("{}: {detail}", e.category()),
            None => e.category().to_owned(),
        })
    }
}

/// What a pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Budgeted keys and tenants looked at.
    pub subjects: usize,
    /// Counters raised to Postgres' figure.
    pub raised: usize,
    /// The sum of the raises, in nano-dollars.
    pub raised_nanos: i64,
    /// Counters Redis refused to raise (logged and counted in
    /// `switchboard_budget_reconcile_failures_total`); the others were still reconciled.
    pub failed: usize,
}

/// One counter to raise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub key: String,
    pub nanos: i64,
    /// Seconds; 0: no expiry.
    pub ttl_seconds: i64,
}

impl Counters {
    /// Prepares the connection without waiting for Redis (it connects on first use and
    /// reconnects by itself). Fails only on a bad URL.
    pub fn connect(settings: &RedisSettings) -> anyhow::Result<Self> {
        let target = crate::config::redis_target(&settings.url, REDIS_TIMEOUT);
        if let Some(problem) = target.problem() {
            anyhow::bail!("redis.url: {problem}");
        }
        let conn =
            RedisConn::lazy(&target).map_err(|e| anyhow::anyhow!("redis: {}", e.category()))?;
        Ok(Self {
            conn,
            prefix: Arc::from(settings.key_prefix.as_str()),
            raise: Arc::new(Script::new(RAISE)),
        })
    }

    /// Whether Redis answers a `PING` (the console's health card).
    pub async fn ping(&self) -> bool {
        let mut conn = self.conn.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .is_ok()
    }

    /// The connection (a cheap clone), for reading the data planes' other shared state: the
    /// deployment health of [`crate::service::health`].
    pub fn conn(&self) -> RedisConn {
        self.conn.clone()
    }

    /// The key prefix (equal to the data planes' `redis.key_prefix`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Raises every target counter that is below its figure; one round trip per [`BATCH`].
    /// Returns how many were raised, by how much in total, and how many Redis refused: a
    /// command Redis refuses (a wrong type, an amount out of range) is logged and counted, and
    /// never stops the other subjects' raises. A connection fault fails the pass.
    pub async fn raise(&self, targets: &[Target]) -> Result<(usize, i64, usize), ReconcileError> {
        let mut raised = 0;
        let mut raised_nanos = 0i64;
        let mut failed = 0;
        for batch in targets.chunks(BATCH) {
            let mut pipe = redis::pipe();
            pipe.ignore_errors();
            // Loaded in the same round trip, ahead of its calls: a Redis that restarted since
            // the last batch has lost its script cache.
            pipe.load_script(&self.raise).ignore();
            for t in batch {
                pipe.invoke_script(
                    self.raise
                        .key(&t.key)
                        .arg(t.nanos)
                        .arg(t.ttl_seconds.max(0)),
                );
            }
            let mut conn = self.conn.clone();
            let raises: Vec<redis::RedisResult<i64>> = pipe.query_async(&mut conn).await?;
            for (t, r) in batch.iter().zip(raises) {
                match r {
                    Ok(r) if r > 0 => {
                        raised += 1;
                        raised_nanos = raised_nanos.saturating_add(r);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        failed += 1;
                        refused(&t.key, e);
                    }
                }
            }
        }
        Ok((raised, raised_nanos, failed))
    }
}

/// Logs and counts a counter Redis refused to raise.
fn refused(key: &str, e: redis::RedisError) {
    crate::metrics::count(crate::metrics::BUDGET_RECONCILE_FAILURES_TOTAL, None);
    tracing::warn!(counter = %key, error = %ReconcileError::from(e),
        "Redis refused a budget counter; the others are still reconciled");
}

/// Raises the counters of `subjects` for their periods containing `now` to at least their
/// Postgres spend. No lock: raising is monotone, so concurrent raises are harmless.
pub async fn reconcile_subjects(
    pool: &PgPool,
    counters: &Counters,
    subjects: &[Subject],
    now: DateTime<Utc>,
    raw_retention_days: u64,
) -> Result<Outcome, ReconcileError> {
    let spend = period_spend(pool, subjects, now, raw_retention_days).await?;
    let targets: Vec<Target> = subjects
        .iter()
        .zip(&spend)
        // Nothing in Postgres: nothing to raise to.
        .filter(|(_, p)| p.nanos > 0)
        .map(|(s, p)| Target {
            key: counter_key(
                counters.prefix(),
                s.scope.shared(),
                &s.id,
                &s.tenant_id,
                &p.period,
            ),
            nanos: p.nanos,
            // The data planes' rule (`dataplane::budget`): a day past the period's end.
            ttl_seconds: p.period.seconds_left(now).map_or(0, |left| left + 86_400),
        })
        .collect();
    let (raised, raised_nanos, failed) = counters.raise(&targets).await?;
    Ok(Outcome {
        subjects: subjects.len(),
        raised,
        raised_nanos,
        failed,
    })
}

/// One pass over every budgeted key and tenant, without the lock.
pub async fn reconcile_once(
    pool: &PgPool,
    counters: &Counters,
    now: DateTime<Utc>,
    raw_retention_days: u64,
) -> Result<Outcome, ReconcileError> {
    let subjects = all(pool).await?;
    reconcile_subjects(pool, counters, &subjects, now, raw_retention_days).await
}

/// One pass, done only if this replica gets the advisory lock ([`crate::db::with_try_lock`]);
/// `Ok(None)`: another replica is reconciling.
pub async fn reconcile_once_locked(
    pool: &PgPool,
    counters: &Counters,
    now: DateTime<Utc>,
    raw_retention_days: u64,
) -> Result<Option<Outcome>, ReconcileError> {
    let pass = reconcile_once(pool, counters, now, raw_retention_days);
    crate::db::with_try_lock(pool, RECONCILE_LOCK, pass).await
}

/// Reconciles every `every` until `shutdown`; failures are warnings and the loop goes on.
pub async fn run(
    pool: PgPool,
    counters: Counters,
    every: Duration,
    raw_retention_days: u64,
    shutdown: impl Future<Output = ()>,
) {
    let (pool, counters) = (&pool, &counters);
    crate::service::every(every, shutdown, move || async move {
        match reconcile_once_locked(pool, counters, Utc::now(), raw_retention_days).await {
            Ok(Some(o)) if o.raised > 0 => tracing::info!(
                subjects = o.subjects,
                raised = o.raised,
                raised_usd = nanos_to_usd(o.raised_nanos),
                "budget counters raised to Postgres spend"
            ),
            Ok(Some(o)) => tracing::debug!(
                subjects = o.subjects,
                "budget counters reconciled: none below Postgres"
            ),
            Ok(None) => {
                tracing::debug!("budget reconciliation skipped: another replica holds the lock");
            }
            Err(e) => {
                tracing::warn!(error = %e, "budget reconciliation failed; retrying next interval")
            }
        }
    })
    .await;
}
