//! The rate limiter that all replicas share: GCRA cells kept in Redis, so that N replicas
//! together admit what one would.
//!
//! **One round trip per admission.** A single Lua script (`gcra.lua`, called with `EVALSHA`
//! and loaded only when Redis answers `NOSCRIPT`, e.g. after a restart) checks every limit of the
//! subjects passed and writes them only if all fit — all or nothing, no refunds. It reads the
//! clock with `TIME` inside the script, so replicas' clocks never matter. Each cell is one
//! string key holding its theoretical arrival time in microseconds, with an expiry just past
//! the moment it is idle again (no sweeping, an idle subject costs no memory). A request with
//! a budget sends its budget counters in the same call ([`RedisLimiter::admit_charging`],
//! used by [`crate::quota`]): the script checks the limits and the budgets, then charges
//! all or none, so a request refused by either leaves nothing charged on the other, and
//! admission stays one round trip.
//!
//! **Coalesced.** The script call is not made per request: admissions queue to a task of the
//! limiter ([`super::batch`]) that sends what queued while its previous call was in flight as
//! one call of the script's mode `m`, which decides them one after the other, each as its own
//! call would. Under load one round trip (and one script call) serves many requests.
//!
//! **Leased.** In front of that queue sit this replica's slices of large limits and budgets
//! (`redis.lease`, [`super::lease`], [`super::slices`]): an admission whose every cell and
//! counter is covered by a slice is admitted here without a call, and a token correction
//! that a slice can absorb is settled against it. Small limits keep the exact path above.
//!
//! **Settlement off the request path.** The real token count corrects the estimate through the
//! same script in `settle` mode; [`RedisLimiter::settle`] only queues it, and a background
//! task sends what has queued up as one pipeline, summed into one correction per set of cells
//! (under load, most of a batch is the same few subjects). The queue is bounded
//! ([`SETTLE_QUEUE`]): while Redis is slower than the requests settling, a correction that
//! finds it full is dropped and counted (`switchboard_limits_settlements_dropped_total`, logged
//! at most once a minute) — the estimate then stands until the window passes — rather than
//! growing memory without bound.
//!
//! **Keys and Redis Cluster.** Keys look like `<prefix>:rl:{t:<tenant>}:k:<key>:rpm`. A
//! request's key and tenant are checked by one script call, so they must share a slot: both
//! carry the tenant's hash tag `{t:<tenant>}` (a key belongs to one tenant for life).
//! Deployments are admitted in their own call and are tagged by themselves, `{d:<id>}`. A
//! call without a tenant subject tags a virtual key by itself, `{k:<id>}`; every caller passes
//! a key together with its tenant, so each cell has one name. Ids with `{`, `}` or `%` are
//! percent-escaped so they cannot break a tag.
//!
//! **Degraded mode.** A Redis error or timeout marks the shared connection down (logged once,
//! `switchboard_redis_up` 0). While it is down, admission never touches Redis: per the
//! configured [`FailurePolicy`] it uses this process's own counters (`open`) or refuses
//! limited requests with 503 (`closed`); each such admission counts in
//! `switchboard_limits_degraded_total`. A probe pings Redis while it is down and switches back
//! by itself when it answers.

use std::sync::{Arc, Weak};
use std::time::Duration;

use redis::Script;
use tokio::sync::mpsc;

use super::batch;
use super::gcra::CellState;
use super::local::LocalLimiter;
use super::slices::Slices;
use super::{Admission, Denial, LimitView, RateLimiter, Refusal, Resource, Scope, Subject};
use crate::metrics;
use crate::shared_redis::{FailurePolicy, SharedRedis};
use switchboard_shared::budget::escape_tag as escape;

/// The script's window, in the script's unit (microseconds).
const WINDOW_MICROS: u64 = 60_000_000;
/// How often the probe pings while Redis is down.
const PROBE_EVERY: Duration = Duration::from_millis(250);
/// Most settlements sent in one pipeline.
const SETTLE_BATCH: usize = 512;
/// Most settlements waiting for the worker.
const SETTLE_QUEUE: usize = 65_536;

/// The limiter backed by the shared Redis.
#[derive(Debug, Clone)]
pub struct RedisLimiter {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    redis: SharedRedis,
    script: Script,
    /// This process's limiter over the subjects' own counters: the fallback of `open`.
    local: LocalLimiter,
    settlements: mpsc::Sender<Settlement>,
    /// This replica's slices of large limits and budgets, in front of the queue where
    /// admissions wait to go to Redis together.
    slices: Arc<Slices>,
}

/// One queued token correction: the cells and their limits, and the signed units to add.
#[derive(Debug)]
pub(super) struct Settlement {
    pub(super) cells: Vec<(String, u32)>,
    pub(super) delta: i64,
}

/// A cell of one admission call: which subject, which resource, at what limit.
#[derive(Debug, Clone, Copy)]
struct Cell {
    subject: usize,
    what: Resource,
    limit: u64,
}

impl RedisLimiter {
    /// A limiter over `redis`. Starts the settlement task and the probe, so it must be called
    /// within a Tokio runtime.
    pub fn new(redis: SharedRedis) -> Self {
        let (tx, rx) = mpsc::channel(SETTLE_QUEUE);
        let script = admission_script();
        let inner = Arc::new(Inner {
            redis: redis.clone(),
            script: script.clone(),
            local: LocalLimiter::new(),
            settlements: tx,
            slices: Slices::start(redis.clone(), script.clone()),
        });
        metrics::set_redis_up(redis.is_up());
        // Loaded ahead of the first request (on every node of a cluster), so that the first
        // admissions do not all meet NOSCRIPT at once.
        tokio::spawn(preload(redis.clone(), Some(script.clone())));
        tokio::spawn(settle_worker(redis, script, rx));
        tokio::spawn(probe(Arc::downgrade(&inner)));
        Self { inner }
    }

    /// The shared connection this limiter uses.
    pub fn redis(&self) -> &SharedRedis {
        &self.inner.redis
    }

    async fn admit_shared(&self, subjects: &[Subject<'_>], estimated_tokens: u64) -> Admission {
        let inner = &self.inner;
        let cells = Cells::of(inner.redis.prefix(), subjects, estimated_tokens);
        let (cells, admission) = cells.into_admission(0, &[]);
        let result = match inner.slices.admit(admission).await {
            Ok(reply) => interpret(&reply, &cells, subjects).ok_or(Failure::Unexpected),
            Err(failure) => Err(failure),
        };
        result.unwrap_or_else(|failure| {
            self.went_down(failure.reason());
            self.degraded(subjects, estimated_tokens)
        })
    }

    /// Admits `subjects` and charges `amount` to each of `counters` (the request's budgets) in
    /// one script call: every limit and every counter is checked before any is written, so a
    /// refusal by either leaves both untouched. Unlike [`RateLimiter::admit`], this calls Redis
    /// even when no subject has a limit (the counters need it).
    pub async fn admit_charging(
        &self,
        subjects: &[Subject<'_>],
        estimated_tokens: u64,
        amount: i64,
        counters: &[CounterCharge<'_>],
    ) -> Joint {
        let inner = &self.inner;
        if !inner.redis.is_up() {
            return Joint::Unreachable(self.admit_degraded(subjects, estimated_tokens));
        }
        let cells = Cells::of(inner.redis.prefix(), subjects, estimated_tokens);
        let (cells, admission) = cells.into_admission(amount, counters);
        let reply = match inner.slices.admit(admission).await {
            Ok(reply) => reply,
            Err(failure) => {
                self.went_down(failure.reason());
                return Joint::Unreachable(self.admit_degraded(subjects, estimated_tokens));
            }
        };
        if let Some(full) = counter_refusal(&reply, counters.len()) {
            return full;
        }
        match interpret(&reply, &cells, subjects) {
            Some(Ok(view)) => Joint::Admitted(view),
            Some(Err(denial)) => Joint::Limited(denial),
            None => {
                self.went_down(Failure::Unexpected.reason());
                Joint::Unreachable(self.admit_degraded(subjects, estimated_tokens))
            }
        }
    }

    /// Admission while Redis is down, as [`RateLimiter::admit`] decides it: unlimited subjects
    /// pass without counting as degraded.
    fn admit_degraded(&self, subjects: &[Subject<'_>], estimated_tokens: u64) -> Admission {
        if subjects.iter().all(|s| s.limits.is_unlimited()) {
            return Ok(LimitView::default());
        }
        self.degraded(subjects, estimated_tokens)
    }

    /// Gives back everything an admission of `subjects` took (a request and its estimated
    /// tokens), in the background like settlement; while Redis is down, from the local
    /// counters the fallback charged.
    pub fn release(&self, subjects: &[Subject<'_>], estimated_tokens: u64) {
        if !self.inner.redis.is_up() {
            self.inner
                .local
                .release_at(subjects, estimated_tokens, self.inner.local.now());
            return;
        }
        self.correct(subjects, Resource::Requests, -1);
        self.correct(subjects, Resource::Tokens, -signed(estimated_tokens));
    }

    /// Adds `delta` units of `what` to every subject's cell: against this replica's slice of
    /// it where that can absorb them, else queued for Redis.
    fn correct(&self, subjects: &[Subject<'_>], what: Resource, delta: i64) {
        if delta == 0 {
            return;
        }
        let prefix = self.inner.redis.prefix();
        let tenant = tenant_of(subjects);
        let cells: Vec<(String, u32)> = subjects
            .iter()
            .filter_map(|s| {
                let limit = match what {
                    Resource::Requests => s.limits.rpm,
                    Resource::Tokens => s.limits.tpm,
                };
                limit.map(|limit| (cell_key(prefix, tenant, s, what), limit))
            })
            .filter(|(key, _)| !self.inner.slices.settle_local(key, delta))
            .collect();
        if !cells.is_empty() {
            enqueue(&self.inner.settlements, Settlement { cells, delta });
        }
    }

    /// How many admissions this limiter decided from its slices alone, without a call to
    /// Redis (`redis.lease`).
    pub fn admitted_from_slices(&self) -> u64 {
        self.inner.slices.admitted_locally()
    }

    /// Gives this replica's unused slices back to Redis (at shutdown).
    pub async fn give_back_leases(&self) {
        self.inner.slices.give_back_all().await;
    }

    /// Records a failed call: the first one after Redis was up logs and flips the gauge.
    fn went_down(&self, reason: &str) {
        went_down(&self.inner.redis, reason);
    }

    /// Admission while Redis is unreachable, per the failure policy.
    fn degraded(&self, subjects: &[Subject<'_>], estimated_tokens: u64) -> Admission {
        let policy = self.inner.redis.policy();
        metrics::count_limits_degraded(policy_name(policy));
        match policy {
            FailurePolicy::Open => self
                .inner
                .local
                .admit_at(subjects, estimated_tokens, self.inner.local.now())
                .map_err(Denial::Limited),
            FailurePolicy::Closed => Err(Denial::Unavailable),
        }
    }
}

/// Records a failed call to `redis`: the first one after it was up logs and flips the gauge.
pub(super) fn went_down(redis: &SharedRedis, reason: &str) {
    if redis.mark_down() {
        metrics::set_redis_up(false);
        tracing::warn!(
            reason,
            policy = policy_name(redis.policy()),
            "Redis unreachable: rate limits degraded to this replica's own counters or refusal, budgets to no counting or refusal, per failure_policy"
        );
    }
}

fn policy_name(policy: FailurePolicy) -> &'static str {
    match policy {
        FailurePolicy::Open => "open",
        FailurePolicy::Closed => "closed",
    }
}

impl RateLimiter for RedisLimiter {
    async fn admit(&self, subjects: &[Subject<'_>], estimated_tokens: u64) -> Admission {
        // While down, no request waits for a timeout: the probe finds out when it is back.
        if !self.inner.redis.is_up() {
            return self.admit_degraded(subjects, estimated_tokens);
        }
        if subjects.iter().all(|s| s.limits.is_unlimited()) {
            return Ok(LimitView::default());
        }
        self.admit_shared(subjects, estimated_tokens).await
    }

    fn settle(&self, subjects: &[Subject<'_>], estimated_tokens: u64, actual_tokens: u64) {
        let delta = signed(actual_tokens) - signed(estimated_tokens);
        if delta == 0 || subjects.iter().all(|s| s.limits.tpm.is_none()) {
            return;
        }
        if !self.inner.redis.is_up() {
            // Admitted (most likely) by the local fallback: correct that.
            self.inner.local.settle_at(
                subjects,
                estimated_tokens,
                actual_tokens,
                self.inner.local.now(),
            );
            return;
        }
        self.correct(subjects, Resource::Tokens, delta);
    }
}

/// The rate-limit cells of one admission call: what each is, its key, and its two script
/// arguments (limit per minute, units to take).
struct Cells {
    cells: Vec<Cell>,
    keys: Vec<String>,
    args: Vec<u64>,
}

impl Cells {
    /// The cells, and the admission to send for them with `amount` charged to `counters`.
    fn into_admission(
        self,
        amount: i64,
        counters: &[CounterCharge<'_>],
    ) -> (Vec<Cell>, batch::Admission) {
        let mut keys = self.keys;
        let cells = keys.len();
        keys.extend(counters.iter().map(|c| c.key.to_owned()));
        let admission = batch::Admission {
            keys,
            cells,
            cell_args: self.args,
            counter_args: counters.iter().map(|c| (c.max, c.ttl_seconds)).collect(),
            amount,
        };
        (self.cells, admission)
    }

    fn of(prefix: &str, subjects: &[Subject<'_>], estimated_tokens: u64) -> Self {
        let tenant = tenant_of(subjects);
        let mut cells = Cells {
            cells: Vec::with_capacity(2 * subjects.len()),
            keys: Vec::with_capacity(2 * subjects.len()),
            args: Vec::with_capacity(4 * subjects.len()),
        };
        for (i, s) in subjects.iter().enumerate() {
            for (what, limit, units) in [
                (Resource::Requests, s.limits.rpm, 1),
                (Resource::Tokens, s.limits.tpm, estimated_tokens),
            ] {
                if let Some(limit) = limit {
                    cells.keys.push(cell_key(prefix, tenant, s, what));
                    cells.args.extend([u64::from(limit), units]);
                    cells.cells.push(Cell {
                        subject: i,
                        what,
                        limit: u64::from(limit),
                    });
                }
            }
        }
        cells
    }
}

fn tenant_of<'a>(subjects: &[Subject<'a>]) -> Option<&'a str> {
    subjects
        .iter()
        .find(|s| s.scope == Scope::Tenant)
        .map(|s| s.id)
}

/// A counter that an admission charges beside the limits (a budget's spend counter for the
/// current period; see [`crate::budget`]): it must be below `max` to admit, and it gets
/// `ttl_seconds` of expiry when charged (0: none).
#[derive(Debug, Clone, Copy)]
pub struct CounterCharge<'a> {
    pub key: &'a str,
    pub max: i64,
    pub ttl_seconds: i64,
}

/// What one call of [`RedisLimiter::admit_charging`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Joint {
    /// Every limit and counter had room; all were charged.
    Admitted(LimitView),
    /// A limit refused; nothing was charged.
    Limited(Denial),
    /// Counter `index` (into the counters passed) was at its maximum with `spent`; nothing was
    /// charged.
    CounterFull { index: usize, spent: i64 },
    /// Redis was down or did not answer: the limits were decided per the failure policy (this
    /// result, in process) and the counters were not charged.
    Unreachable(Admission),
}

/// `EVALSHA` of the script in mode `b`: the cells, then the counters.
fn charging_command(
    script: &Script,
    cells: &Cells,
    amount: i64,
    counters: &[CounterCharge<'_>],
) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(script.get_hash())
        .arg(cells.keys.len() + counters.len())
        .arg(&cells.keys);
    for c in counters {
        cmd.arg(c.key);
    }
    cmd.arg("b")
        .arg(cells.keys.len())
        .arg(amount.max(0))
        .arg(&cells.args);
    for c in counters {
        cmd.arg(c.max).arg(c.ttl_seconds.max(0));
    }
    cmd
}

/// The script's `{2, j, spent}`: counter `j` (1-based) refused.
fn counter_refusal(reply: &[i64], counters: usize) -> Option<Joint> {
    match reply {
        [2, j, spent] => {
            let index = usize::try_from(*j).ok()?.checked_sub(1)?;
            (index < counters).then_some(Joint::CounterFull {
                index,
                spent: *spent,
            })
        }
        _ => None,
    }
}

/// Charges `amount` to each of `counters` if every one is below its maximum, in one call of
/// the admission script with no rate-limit cells. `Ok(None)`: charged; `Ok(Some((index,
/// spent)))`: counter `index` was full and nothing was charged.
pub(crate) async fn charge_counters(
    redis: &SharedRedis,
    script: &Script,
    amount: i64,
    counters: &[CounterCharge<'_>],
) -> Result<Option<(usize, i64)>, Failure> {
    let none = Cells {
        cells: Vec::new(),
        keys: Vec::new(),
        args: Vec::new(),
    };
    let reply = call(
        redis,
        script,
        &charging_command(script, &none, amount, counters),
    )
    .await?;
    match counter_refusal(&reply, counters.len()) {
        Some(Joint::CounterFull { index, spent }) => Ok(Some((index, spent))),
        _ if reply == [1] => Ok(None),
        _ => Err(Failure::Unexpected),
    }
}

/// The admission script (`gcra.lua`).
pub(crate) fn admission_script() -> Script {
    Script::new(include_str!("gcra.lua"))
}

/// Why a script call gave no usable answer.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    Timeout,
    Redis(redis::RedisError),
    Unexpected,
}

impl Failure {
    pub(crate) fn reason(&self) -> &str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Redis(e) => e.category(),
            Failure::Unexpected => "unexpected reply from the admission script",
        }
    }
}

/// Sends one `EVALSHA` of `script`, bounded by the configured timeout. Built by hand rather
/// than through `ScriptInvocation`, which copies every argument once more; `NOSCRIPT` (a
/// restarted or flushed Redis) loads the script and sends it again, within the same bound.
async fn call(redis: &SharedRedis, script: &Script, cmd: &redis::Cmd) -> Result<Vec<i64>, Failure> {
    call_as(redis, script, cmd).await
}

/// [`call`] of a mode-`m` command: one reply per admission.
pub(crate) async fn call_many(
    redis: &SharedRedis,
    script: &Script,
    cmd: &redis::Cmd,
) -> Result<Vec<Vec<i64>>, Failure> {
    call_as(redis, script, cmd).await
}

async fn call_as<T: redis::FromRedisValue>(
    redis: &SharedRedis,
    script: &Script,
    cmd: &redis::Cmd,
) -> Result<T, Failure> {
    let mut conn = redis.conn();
    let attempt = async {
        match cmd.query_async::<T>(&mut conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                script.load_async(&mut conn).await?;
                cmd.query_async::<T>(&mut conn).await
            }
            other => other,
        }
    };
    match tokio::time::timeout(redis.timeout(), attempt).await {
        Ok(Ok(reply)) => Ok(reply),
        Ok(Err(e)) => Err(Failure::Redis(e)),
        Err(_) => Err(Failure::Timeout),
    }
}

fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The Redis key of one subject's cell for `what`; see the module header for the layout.
/// Built by appending, not `format!`: a leased admission makes one per cell (about 1,200
/// instructions each through `format!`, a fifth of that this way).
fn cell_key(prefix: &str, tenant: Option<&str>, s: &Subject<'_>, what: Resource) -> String {
    let suffix = match what {
        Resource::Requests => "rpm",
        Resource::Tokens => "tpm",
    };
    let id = escape(s.id);
    let (tag, tenant) = match (s.scope, tenant) {
        (Scope::Key, Some(tenant)) => ("t", Some(escape(tenant))),
        (Scope::Key, None) => ("k", None),
        (Scope::Tenant, _) => ("t", None),
        (Scope::Deployment, _) => ("d", None),
    };
    // The fixed parts are 15 bytes at most.
    let length = prefix.len() + id.len() + tenant.as_ref().map_or(0, |t| t.len()) + 15;
    let mut key = String::with_capacity(length);
    key.push_str(prefix);
    key.push_str(":rl:{");
    key.push_str(tag);
    key.push(':');
    if let Some(tenant) = &tenant {
        key.push_str(tenant);
        key.push_str("}:k:");
        key.push_str(&id);
        key.push(':');
    } else {
        key.push_str(&id);
        key.push_str("}:");
    }
    key.push_str(suffix);
    key
}

/// The script's reply as an admission result; `None` if it is not a reply the script gives.
fn interpret(reply: &[i64], cells: &[Cell], subjects: &[Subject<'_>]) -> Option<Admission> {
    match reply {
        [1, aheads @ ..] if aheads.len() == cells.len() => {
            let first_limited = cells.first().map(|c| c.subject);
            let mut view = LimitView::default();
            for (cell, &ahead) in cells.iter().zip(aheads) {
                if Some(cell.subject) != first_limited {
                    continue;
                }
                let ahead = u64::try_from(ahead).unwrap_or(0).min(WINDOW_MICROS);
                let state = CellState {
                    limit: cell.limit,
                    remaining: (WINDOW_MICROS - ahead) * cell.limit / WINDOW_MICROS,
                    reset_nanos: ahead * 1000,
                };
                match cell.what {
                    Resource::Requests => view.requests = Some(state),
                    Resource::Tokens => view.tokens = Some(state),
                }
            }
            Some(Ok(view))
        }
        [0, index, retry_after_us] => {
            let cell = cells.get(usize::try_from(*index).ok()?.checked_sub(1)?)?;
            let subject = subjects.get(cell.subject)?;
            Some(Err(Denial::Limited(Refusal {
                scope: subject.scope,
                what: cell.what,
                retry_after: Duration::from_micros(u64::try_from(*retry_after_us).unwrap_or(0)),
                limit: cell.limit,
            })))
        }
        _ => None,
    }
}

/// Queues a settlement for the worker without waiting; a full queue drops it, counted. False
/// when it was not queued.
fn enqueue(queue: &mpsc::Sender<Settlement>, settlement: Settlement) -> bool {
    match queue.try_send(settlement) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            metrics::count_settlement_dropped();
            static LAST_WARNED: std::sync::Mutex<Option<std::time::Instant>> =
                std::sync::Mutex::new(None);
            if let Ok(mut last) = LAST_WARNED.lock()
                && last.is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
            {
                *last = Some(std::time::Instant::now());
                tracing::warn!(
                    "token-limit settlement queue full: corrections dropped (Redis too slow)"
                );
            }
            false
        }
        // The worker has ended, i.e. the runtime is shutting down.
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}

/// Sends queued settlements as pipelines until the limiter is dropped. Settlements queued
/// while Redis is down are dropped: their admissions were made by the local fallback, which
/// `settle` corrects directly.
async fn settle_worker(redis: SharedRedis, script: Script, mut queue: mpsc::Receiver<Settlement>) {
    let mut batch = Vec::with_capacity(SETTLE_BATCH);
    while let Some(first) = queue.recv().await {
        batch.clear();
        batch.push(first);
        while batch.len() < SETTLE_BATCH {
            match queue.try_recv() {
                Ok(s) => batch.push(s),
                Err(_) => break,
            }
        }
        if !redis.is_up() {
            continue;
        }
        // One correction per cell set: under load most of a batch is the same few subjects.
        batch.sort_unstable_by(|a, b| a.cells.cmp(&b.cells));
        batch.dedup_by(|later, kept| {
            let same = later.cells == kept.cells;
            if same {
                kept.delta = kept.delta.saturating_add(later.delta);
            }
            same
        });
        batch.retain(|s| s.delta != 0);
        if batch.is_empty() {
            continue;
        }
        if let Err(reason) = send_settlements(&redis, &script, &batch).await
            && redis.mark_down()
        {
            metrics::set_redis_up(false);
            tracing::warn!(
                %reason,
                "Redis unreachable while settling token limits; degraded until it answers"
            );
        }
    }
}

/// One pipeline of `EVALSHA … s …`; those that find the script missing are sent again after
/// loading it.
pub(super) async fn send_settlements(
    redis: &SharedRedis,
    script: &Script,
    batch: &[Settlement],
) -> Result<(), String> {
    let mut conn = redis.conn();
    let pipeline = |items: &mut dyn Iterator<Item = &Settlement>| {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for s in items {
            let cmd = pipe
                .cmd("EVALSHA")
                .arg(script.get_hash())
                .arg(s.cells.len());
            for (key, _) in &s.cells {
                cmd.arg(key);
            }
            cmd.arg("s");
            for (_, limit) in &s.cells {
                cmd.arg(*limit).arg(s.delta);
            }
        }
        pipe
    };
    let timeout = redis.timeout();
    let replies: Vec<redis::Value> =
        tokio::time::timeout(timeout, pipeline(&mut batch.iter()).query_async(&mut conn))
            .await
            .map_err(|_| "timeout".to_owned())?
            .map_err(|e| e.category().to_owned())?;
    let missing: Vec<&Settlement> = batch
        .iter()
        .zip(&replies)
        .filter(|(_, r)| matches!(r, redis::Value::ServerError(e) if e.code() == "NOSCRIPT"))
        .map(|(s, _)| s)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    tokio::time::timeout(timeout, script.load_async(&mut conn))
        .await
        .map_err(|_| "timeout".to_owned())?
        .map_err(|e| e.category().to_owned())?;
    tokio::time::timeout(
        timeout,
        pipeline(&mut missing.into_iter()).query_async::<Vec<redis::Value>>(&mut conn),
    )
    .await
    .map_err(|_| "timeout".to_owned())?
    .map_err(|e| e.category().to_owned())?;
    Ok(())
}

/// Loads the admission script (`SCRIPT LOAD`, which a Redis Cluster client sends to every
/// node); best effort, a few bounded tries: `NOSCRIPT` still loads it later. On a cluster,
/// concurrent admissions that all meet `NOSCRIPT` were seen to over-admit (docs/performance.md),
/// so the script is loaded before traffic and again whenever Redis comes back.
async fn preload(redis: SharedRedis, script: Option<Script>) {
    let Some(script) = script else { return };
    let bound = redis.timeout().max(Duration::from_millis(500));
    // A few tries: a cluster client may still be discovering the nodes.
    for _ in 0..10 {
        let mut conn = redis.conn();
        if let Ok(Ok(_)) = tokio::time::timeout(bound, script.load_async(&mut conn)).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn inner_script(limiter: &Weak<Inner>) -> Option<Script> {
    limiter.upgrade().map(|inner| inner.script.clone())
}

/// Pings Redis while it is marked down, and marks it up again when it answers. Ends when the
/// limiter is dropped.
async fn probe(limiter: Weak<Inner>) {
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(inner) = limiter.upgrade() else {
            return;
        };
        if inner.redis.is_up() {
            continue;
        }
        let redis = inner.redis.clone();
        drop(inner);
        if redis.ping().await {
            // A Redis that was restarted, or a replica promoted, has no scripts yet.
            preload(redis.clone(), inner_script(&limiter)).await;
            metrics::set_redis_up(true);
            tracing::info!("Redis reachable again: rate limits are shared across replicas again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::LocalLimitState;

    #[test]
    fn a_full_settlement_queue_drops_and_counts_instead_of_growing() {
        let (tx, mut rx) = mpsc::channel(2);
        let one = || Settlement {
            cells: vec![("k".into(), 10)],
            delta: 1,
        };
        assert!(enqueue(&tx, one()));
        assert!(enqueue(&tx, one()));
        assert!(!enqueue(&tx, one()), "the third waits nowhere");
        assert!(rx.try_recv().is_ok());
        assert!(enqueue(&tx, one()), "room again once the worker takes one");
        drop(rx);
        assert!(!enqueue(&tx, one()));
    }

    fn subject<'a>(scope: Scope, id: &'a str, state: &'a LocalLimitState) -> Subject<'a> {
        Subject::limited(scope, id, state, Some(10), None)
    }

    #[test]
    fn a_key_and_its_tenant_share_one_hash_tag() {
        let state = LocalLimitState::new();
        let key = subject(Scope::Key, "k1", &state);
        let tenant = subject(Scope::Tenant, "t{1}", &state);
        let k = cell_key("p", Some(tenant.id), &key, Resource::Requests);
        let t = cell_key("p", Some(tenant.id), &tenant, Resource::Tokens);
        assert_eq!(k, "p:rl:{t:t%7B1%7D}:k:k1:rpm");
        assert_eq!(t, "p:rl:{t:t%7B1%7D}:tpm");
        let d = subject(Scope::Deployment, "d1", &state);
        assert_eq!(
            cell_key("p", None, &d, Resource::Requests),
            "p:rl:{d:d1}:rpm"
        );
        assert_eq!(
            cell_key("p", None, &key, Resource::Tokens),
            "p:rl:{k:k1}:tpm"
        );
    }

    #[test]
    fn replies_map_to_views_and_refusals() {
        let state = LocalLimitState::new();
        let subjects = [
            subject(Scope::Key, "k", &state),
            subject(Scope::Tenant, "t", &state),
        ];
        let cells = [
            Cell {
                subject: 0,
                what: Resource::Requests,
                limit: 10,
            },
            Cell {
                subject: 1,
                what: Resource::Requests,
                limit: 60,
            },
        ];
        // Key: 6 s ahead of a 10 rpm limit = one used, nine left.
        let view = interpret(&[1, 6_000_000, 1_000_000], &cells, &subjects)
            .unwrap()
            .unwrap();
        let requests = view.requests.unwrap();
        assert_eq!(
            (requests.limit, requests.remaining, requests.reset_nanos),
            (10, 9, 6_000_000_000)
        );
        assert_eq!(view.tokens, None);
        let denied = interpret(&[0, 2, 1_500_000], &cells, &subjects)
            .unwrap()
            .unwrap_err();
        assert_eq!(
            denied,
            Denial::Limited(Refusal {
                scope: Scope::Tenant,
                what: Resource::Requests,
                retry_after: Duration::from_millis(1500),
                limit: 60,
            })
        );
        assert!(interpret(&[0, 3, 1], &cells, &subjects).is_none());
        assert!(interpret(&[1, 5], &cells, &subjects).is_none());
    }

    /// The script against the real Redis (`REDIS_URL`, default the local one), each test
    /// under its own key prefix.
    mod against_redis {
        use super::*;
        use crate::shared_redis::RedisConfig;
        use switchboard_shared::secret::SecretRef;

        fn redis_url() -> String {
            std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
        }

        /// A limiter on the exact path (no leasing: these tests are about the script).
        fn limiter(name: &str) -> RedisLimiter {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let config: RedisConfig = serde_yaml_ng::from_str(&format!(
                "url: {{ value: '{}' }}\nkey_prefix: 'test-rl-{name}-{}-{nanos}'\ntimeout_ms: 2000\n\
                 lease: {{ enabled: false }}",
                redis_url(),
                std::process::id()
            ))
            .unwrap();
            assert!(matches!(config.url, SecretRef::Value(_)));
            RedisLimiter::new(SharedRedis::connect(&config).unwrap())
        }

        /// `command key` against the limiter's Redis.
        async fn ask<T: redis::FromRedisValue>(l: &RedisLimiter, command: &str, key: &str) -> T {
            let mut conn = l.redis().conn();
            let cmd = redis::cmd(command).arg(key).clone();
            cmd.query_async(&mut conn).await.unwrap()
        }

        async fn get(l: &RedisLimiter, key: &str) -> Option<String> {
            ask(l, "GET", key).await
        }

        async fn pttl(l: &RedisLimiter, key: &str) -> i64 {
            ask(l, "PTTL", key).await
        }

        /// Waits for the settlement task to have sent what was queued.
        async fn settled(l: &RedisLimiter, key: &str, before: Option<String>) -> Option<String> {
            for _ in 0..200 {
                let now = get(l, key).await;
                if now != before {
                    return now;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            before
        }

        #[tokio::test]
        async fn a_burst_of_the_limit_then_a_refusal_with_the_period_to_wait() {
            let l = limiter("burst");
            let state = LocalLimitState::new();
            let s = [Subject::limited(Scope::Key, "k", &state, Some(6), None)];
            for i in 0..6u64 {
                let view = l.admit(&s, 0).await.unwrap();
                assert_eq!(view.requests.unwrap().remaining, 5 - i, "request {i}");
            }
            match l.admit(&s, 0).await {
                Err(Denial::Limited(r)) => {
                    assert_eq!((r.scope, r.what), (Scope::Key, Resource::Requests));
                    // One request's share of the window: 10 s at 6 rpm (less what has passed).
                    assert!(r.retry_after <= Duration::from_secs(10), "{r:?}");
                    assert!(r.retry_after > Duration::from_secs(9), "{r:?}");
                }
                other => panic!("7th request at 6 rpm: {other:?}"),
            }
            let key = cell_key(l.redis().prefix(), None, &s[0], Resource::Requests);
            let ttl = pttl(&l, &key).await;
            assert!(ttl > 59_000 && ttl <= 61_000, "expiry {ttl} ms");
        }

        #[tokio::test]
        async fn a_refusal_by_one_subject_writes_nothing_for_the_others() {
            let l = limiter("atomic");
            let (ks, ts) = (LocalLimitState::new(), LocalLimitState::new());
            let s = [
                Subject::limited(Scope::Key, "k", &ks, Some(100), Some(1000)),
                Subject::limited(Scope::Tenant, "t", &ts, Some(1), None),
            ];
            let view = l.admit(&s, 10).await.unwrap();
            // The view is the key's: the first limited subject.
            assert_eq!(view.requests.unwrap().limit, 100);
            assert_eq!(view.tokens.unwrap().remaining, 990);
            let prefix = l.redis().prefix().to_owned();
            let key_rpm = cell_key(&prefix, Some("t"), &s[0], Resource::Requests);
            let key_tpm = cell_key(&prefix, Some("t"), &s[0], Resource::Tokens);
            let (rpm_before, tpm_before) = (get(&l, &key_rpm).await, get(&l, &key_tpm).await);
            assert!(rpm_before.is_some() && tpm_before.is_some());
            match l.admit(&s, 10).await {
                Err(Denial::Limited(r)) => assert_eq!(r.scope, Scope::Tenant),
                other => panic!("tenant at 1 rpm admitted twice: {other:?}"),
            }
            assert_eq!(get(&l, &key_rpm).await, rpm_before);
            assert_eq!(get(&l, &key_tpm).await, tpm_before);
        }

        #[tokio::test]
        async fn a_take_larger_than_the_limit_passes_only_when_idle() {
            let l = limiter("large");
            let state = LocalLimitState::new();
            let s = [Subject::limited(
                Scope::Deployment,
                "d",
                &state,
                None,
                Some(100),
            )];
            let view = l.admit(&s, 5000).await.unwrap();
            assert_eq!(view.tokens.unwrap().remaining, 0);
            assert!(matches!(
                l.admit(&s, 1).await,
                Err(Denial::Limited(Refusal {
                    what: Resource::Tokens,
                    ..
                }))
            ));
        }

        #[tokio::test]
        async fn settlement_gives_back_and_charges_more_capped_at_one_window() {
            let l = limiter("settle");
            let state = LocalLimitState::new();
            let s = [Subject::limited(Scope::Key, "k", &state, None, Some(1000))];
            let key = cell_key(l.redis().prefix(), None, &s[0], Resource::Tokens);
            l.admit(&s, 900).await.unwrap();
            assert!(l.admit(&s, 200).await.is_err());
            // The request really used 100: 800 come back.
            let before = get(&l, &key).await;
            l.settle(&s, 900, 100);
            settled(&l, &key, before).await;
            let view = l.admit(&s, 200).await.unwrap();
            assert!(
                (699..=705).contains(&view.tokens.unwrap().remaining),
                "{view:?}"
            );
            // A huge under-estimate charges at most one window: retry within a minute.
            let before = get(&l, &key).await;
            l.settle(&s, 0, 1_000_000);
            settled(&l, &key, before).await;
            match l.admit(&s, 1).await {
                Err(Denial::Limited(r)) => assert!(r.retry_after <= Duration::from_secs(60)),
                other => panic!("admitted after a full-window charge: {other:?}"),
            }
            // Giving everything back leaves an idle cell, which is deleted.
            let before = get(&l, &key).await;
            l.settle(&s, 10_000_000, 0);
            assert_eq!(settled(&l, &key, before).await, None);
            // A refund to a cell that does not exist creates none.
            l.settle(&s, 500, 0);
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(get(&l, &key).await, None);
        }

        #[tokio::test]
        async fn limits_and_counters_are_charged_together_or_not_at_all() {
            let l = limiter("joint");
            let (one, five) = (LocalLimitState::new(), LocalLimitState::new());
            let counter = format!("{}:budget:{{t:k}}:key:k:0", l.redis().prefix());
            let charge = [CounterCharge {
                key: &counter,
                max: 100,
                ttl_seconds: 60,
            }];
            let s = [Subject::limited(Scope::Key, "k", &one, Some(1), None)];
            assert!(matches!(
                l.admit_charging(&s, 0, 60, &charge).await,
                Joint::Admitted(view) if view.requests.is_some()
            ));
            assert_eq!(get(&l, &counter).await.as_deref(), Some("60"));
            assert!((59_000..=60_000).contains(&pttl(&l, &counter).await));
            // The limit refuses: the counter is not charged.
            assert!(matches!(
                l.admit_charging(&s, 0, 60, &charge).await,
                Joint::Limited(Denial::Limited(_))
            ));
            assert_eq!(get(&l, &counter).await.as_deref(), Some("60"));
            // Another subject with room: charged (60 < 100), to 120.
            let s = [Subject::limited(Scope::Key, "k5", &five, Some(5), None)];
            let cell = cell_key(l.redis().prefix(), None, &s[0], Resource::Requests);
            assert!(matches!(
                l.admit_charging(&s, 0, 60, &charge).await,
                Joint::Admitted(_)
            ));
            assert_eq!(get(&l, &counter).await.as_deref(), Some("120"));
            // The counter is full: refused with its spend, and the limit is not charged.
            let before = get(&l, &cell).await;
            assert_eq!(
                l.admit_charging(&s, 0, 60, &charge).await,
                Joint::CounterFull {
                    index: 0,
                    spent: 120
                }
            );
            assert_eq!(get(&l, &cell).await, before);
            // Without limits, the counters alone.
            let script = admission_script();
            assert_eq!(
                charge_counters(l.redis(), &script, 1, &charge)
                    .await
                    .unwrap(),
                Some((0, 120))
            );
        }

        #[tokio::test]
        async fn concurrent_admissions_go_together_and_stay_exact() {
            let l = limiter("coalesce");
            let (ks, ts) = (LocalLimitState::new(), LocalLimitState::new());
            let s = [
                Subject::limited(Scope::Key, "k", &ks, Some(40), None),
                Subject::limited(Scope::Tenant, "t", &ts, Some(1000), Some(100_000)),
            ];
            let counter = format!("{}:budget:{{t:t}}:key:k:0", l.redis().prefix());
            let charge = [CounterCharge {
                key: &counter,
                max: 1_000_000,
                ttl_seconds: 60,
            }];
            // 100 at once, half charging a counter: exactly the key's 40 pass, each seeing
            // one more taken than the one before it, and only the admitted are charged.
            let calls = (0..100).map(|i| {
                let (l, s) = (&l, &s);
                async move {
                    if i % 2 == 0 {
                        match l.admit_charging(s, 10, 7, &charge).await {
                            Joint::Admitted(view) => Some((view, true)),
                            Joint::Limited(Denial::Limited(_)) => None,
                            other => panic!("{other:?}"),
                        }
                    } else {
                        l.admit(s, 10).await.ok().map(|view| (view, false))
                    }
                }
            });
            let admitted: Vec<_> = futures_util::future::join_all(calls)
                .await
                .into_iter()
                .flatten()
                .collect();
            assert_eq!(admitted.len(), 40);
            let mut remaining: Vec<u64> = admitted
                .iter()
                .map(|(v, _)| v.requests.unwrap().remaining)
                .collect();
            remaining.sort_unstable();
            assert_eq!(remaining, (0..40).collect::<Vec<u64>>());
            let charged = admitted.iter().filter(|(_, c)| *c).count() as i64;
            let spent: i64 = get(&l, &counter).await.unwrap().parse().unwrap();
            assert_eq!(spent, 7 * charged);
            // The tenant's token cell took the admitted requests' tokens, no more (less what
            // has refilled since).
            let view = l.admit(&s[1..], 0).await.unwrap();
            let left = view.tokens.unwrap().remaining;
            assert!((99_600..99_700).contains(&left), "{left}");
        }

        #[tokio::test]
        async fn unlimited_subjects_never_reach_redis() {
            // An unreachable Redis: an unlimited request is still admitted, and Redis is not
            // even marked down (nothing was asked of it).
            let config: RedisConfig = serde_yaml_ng::from_str(
                "url: { value: 'redis://127.0.0.1:1' }\nfailure_policy: closed",
            )
            .unwrap();
            let l = RedisLimiter::new(SharedRedis::connect(&config).unwrap());
            let state = LocalLimitState::new();
            let s = [Subject::limited(Scope::Key, "k", &state, None, None)];
            assert_eq!(l.admit(&s, 10).await, Ok(LimitView::default()));
            assert!(l.redis().is_up());
            // A limited one is refused as unavailable under `closed`, and marks Redis down.
            let s = [Subject::limited(Scope::Key, "k", &state, Some(5), None)];
            assert_eq!(l.admit(&s, 10).await, Err(Denial::Unavailable));
            assert!(!l.redis().is_up());
        }

        /// Microseconds `key`'s TAT is ahead of Redis's clock (0: idle, no key).
        async fn ahead(l: &RedisLimiter, key: &str) -> i64 {
            let tat: i64 = get(l, key).await.map_or(0, |v| v.parse().unwrap());
            let mut conn = l.redis().conn();
            let (secs, micros): (i64, i64) =
                redis::cmd("TIME").query_async(&mut conn).await.unwrap();
            (tat - (secs * 1_000_000 + micros)).max(0)
        }

        #[tokio::test]
        async fn a_slice_is_charged_in_redis_whole_used_locally_and_given_back() {
            // Slices of a tenth: 100 requests of a 1000 rpm limit, 60 ms of the cell each.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos();
            let config: RedisConfig = serde_yaml_ng::from_str(&format!(
                "url: {{ value: '{}' }}\nkey_prefix: 'test-rl-lease-{nanos}'\ntimeout_ms: 2000\n\
                 lease: {{ fraction: 0.1, max_age_ms: 60000, idle_ms: 60000 }}",
                redis_url()
            ))
            .unwrap();
            let l = RedisLimiter::new(SharedRedis::connect(&config).unwrap());
            let state = LocalLimitState::new();
            let s = [Subject::limited(Scope::Key, "k", &state, Some(1000), None)];
            let key = cell_key(l.redis().prefix(), None, &s[0], Resource::Requests);
            // The first request takes the exact path; its slice is fetched beside it.
            l.admit(&s, 0).await.unwrap();
            let mut held = ahead(&l, &key).await;
            for _ in 0..200 {
                if held > 5_000_000 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                held = ahead(&l, &key).await;
            }
            assert!(held > 5_000_000, "1 + 100 units charged: {held} us ahead");
            // 50 requests from the slice: Redis is not charged again.
            for _ in 0..50 {
                l.admit(&s, 0).await.unwrap();
            }
            let used = ahead(&l, &key).await;
            assert!(used <= held, "{used} after {held}");
            // The 50 left go back: 3 s of the cell.
            l.give_back_leases().await;
            let back = ahead(&l, &key).await;
            assert!(
                (3_000_000..5_000_000).contains(&(used - back)),
                "{used} before, {back} after"
            );
        }

        #[tokio::test]
        async fn open_policy_falls_back_to_the_local_counters() {
            let config: RedisConfig =
                serde_yaml_ng::from_str("url: { value: 'redis://127.0.0.1:1' }").unwrap();
            let l = RedisLimiter::new(SharedRedis::connect(&config).unwrap());
            let state = LocalLimitState::new();
            let s = [Subject::limited(Scope::Key, "k", &state, Some(2), None)];
            assert!(l.admit(&s, 0).await.is_ok());
            assert!(!l.redis().is_up());
            // Second one decided locally without waiting on Redis; the third is refused by
            // the local cell.
            assert!(l.admit(&s, 0).await.is_ok());
            assert!(matches!(l.admit(&s, 0).await, Err(Denial::Limited(_))));
        }
    }
}
