//! Deployment health, for `GET /admin/v1/deployments/health` and `/deployments/{id}/health`:
//! what the data planes share about each deployment in Redis (breaker, in flight, latency and
//! TTFT, this minute's requests and failures, the upstream's quota reading, the last permanent
//! error an upstream answered, and for a deployment with `caps` what they counted against them
//! today and this month; `switchboard_shared::fleet_keys` is the contract), beside what the
//! request log says of its recent attempts (failure rate, latency, the latest failures).
//!
//! Reading never changes anything: the control plane only reads the deployments' hashes. Without
//! a `redis` section, or with Redis unreachable, the answer says so (`live: false`) and carries
//! the request log's figures alone. Deployments are platform objects: platform admins and
//! viewers read them, tenant admins do not.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use switchboard_shared::fleet_keys::{
    CapPeriod, CapUse, HealthFields, NANOS_PER_USD, cap_counters, cap_periods, cap_used_up,
    deployment_state,
};
use switchboard_shared::snapshot::DeploymentCaps;
use utoipa::ToSchema;

use super::budgets::counters::Counters;
use super::{Actor, Ctx, Error, Result};
use crate::repo;
use crate::repo::health::{AttemptStats, FailedAttempt};
use crate::repo::rows::DeploymentRow;

/// The request log window of `recent`.
pub const RECENT_MINUTES: i64 = 15;
/// Failed attempts listed in `last_errors` (from the last day).
pub const LAST_ERRORS: i64 = 5;
/// How long a health read of Redis may take before the answer goes without it.
const REDIS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// One deployment's health.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeploymentHealth {
    pub deployment_id: String,
    pub model: String,
    pub provider: String,
    /// `closed`, `open` (cooling down until `open_until`), `half_open` (one probe may try) or
    /// `unknown` (no live state).
    pub breaker: String,
    pub open_until: Option<DateTime<Utc>>,
    /// Whether the data planes' shared state was read (false: no `redis` section, Redis
    /// unreachable, or no data plane has routed to it in the last hour).
    pub live: bool,
    /// Data-plane replicas that reported on it in the last minute.
    pub replicas: u32,
    /// Requests in flight on it across those replicas.
    pub inflight: u64,
    /// Mean latency of whole answers and time to first token of streams, in ms (the
    /// replicas' moving averages).
    pub latency_ms: Option<f64>,
    pub ttft_ms: Option<f64>,
    pub requests_this_minute: u64,
    pub failures_this_minute: u64,
    pub tokens_this_minute: u64,
    /// The upstream's own rate-limit headers, as last read.
    pub upstream_quota: Option<QuotaView>,
    /// The last lasting error an upstream answered (bad key, unknown model, no quota).
    pub last_permanent_error: Option<PermanentErrorView>,
    /// Its own spend caps and request quotas, what the data planes counted against them and
    /// which one is used up; `null` for a deployment without `caps`.
    pub caps: Option<CapsHealth>,
    /// Its attempts in the request log over the last [`RECENT_MINUTES`] minutes.
    pub recent: RecentAttempts,
    /// Its latest failed attempts in the request log (last day).
    pub last_errors: Vec<FailedAttempt>,
}

/// The upstream's quota for the gateway's account.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QuotaView {
    pub read_at: Option<DateTime<Utc>>,
    pub remaining_requests: Option<u64>,
    pub limit_requests: Option<u64>,
    pub remaining_tokens: Option<u64>,
    pub limit_tokens: Option<u64>,
}

/// A deployment's `caps` as configured (`null`: unlimited), the requests and USD the data
/// planes counted against them in the current UTC day and month, and the cap used up.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CapsHealth {
    pub usd_per_day: Option<f64>,
    pub usd_per_month: Option<f64>,
    pub requests_per_day: Option<u64>,
    pub requests_per_month: Option<u64>,
    /// Counted today (UTC); `null` when the shared counters were not read (no `redis`
    /// section, Redis unreachable).
    pub today: Option<CapUseView>,
    /// Counted this calendar month (UTC); `null` like `today`.
    pub this_month: Option<CapUseView>,
    /// The cap used up, which keeps the deployment out of rotation until its period ends:
    /// `usd_per_day`, `requests_per_day`, `usd_per_month` or `requests_per_month` (the first
    /// in that order); `null` while none is (or when the counters were not read).
    pub exhausted: Option<String>,
}

/// Requests served and their cost in USD over a period.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct CapUseView {
    pub requests: u64,
    pub usd: f64,
}

/// `[day requests, day nano-USD, month requests, month nano-USD]` as read from Redis.
type CapCounts = [Option<i64>; 4];

/// The caps part of a deployment's health, from its counters (`None`: not read).
fn caps_health(caps: &DeploymentCaps, counts: Option<CapCounts>) -> CapsHealth {
    let read = |requests: Option<i64>, nanos: Option<i64>| CapUse {
        requests: u64::try_from(requests.unwrap_or(0)).unwrap_or(0),
        usd: nanos.unwrap_or(0) as f64 / NANOS_PER_USD,
    };
    let used = counts.map(|[dr, dn, mr, mn]| (read(dr, dn), read(mr, mn)));
    let view = |u: CapUse| CapUseView {
        requests: u.requests,
        usd: u.usd,
    };
    CapsHealth {
        usd_per_day: caps.usd_per_day,
        usd_per_month: caps.usd_per_month,
        requests_per_day: caps.requests_per_day,
        requests_per_month: caps.requests_per_month,
        today: used.map(|(d, _)| view(d)),
        this_month: used.map(|(_, m)| view(m)),
        exhausted: used
            .and_then(|(d, m)| cap_used_up(caps, d, m))
            .map(str::to_owned),
    }
}

/// A lasting error read from an upstream's answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PermanentErrorView {
    pub at: Option<DateTime<Utc>>,
    pub status: u16,
    /// `credential_invalid`, `permission_denied`, `model_not_found` or `quota_exhausted`.
    pub kind: String,
    /// The upstream's message (key-like words masked).
    pub message: String,
}

/// Attempts in the request log over a window.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct RecentAttempts {
    pub window_minutes: i64,
    pub attempts: i64,
    pub failed: i64,
    /// `failed / attempts` (absent without attempts).
    pub failure_rate: Option<f64>,
    pub latency_ms: Option<f64>,
}

fn at(ms: u64) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp_millis(i64::try_from(ms).ok()?)
}

fn recent(stats: Option<&AttemptStats>) -> RecentAttempts {
    let Some(s) = stats else {
        return RecentAttempts {
            window_minutes: RECENT_MINUTES,
            ..RecentAttempts::default()
        };
    };
    RecentAttempts {
        window_minutes: RECENT_MINUTES,
        attempts: s.attempts,
        failed: s.failed,
        failure_rate: (s.attempts > 0).then(|| s.failed as f64 / s.attempts as f64),
        latency_ms: s.latency_ms,
    }
}

/// Puts the row, its shared state (`None`: not read) and its request-log figures together.
fn assemble(
    row: &DeploymentRow,
    fields: Option<&[String]>,
    stats: Option<&AttemptStats>,
    now_ms: u64,
) -> DeploymentHealth {
    let live = fields.is_some_and(|f| !f.is_empty());
    let h = fields.map_or_else(HealthFields::default, |f| HealthFields::read(f, now_ms));
    let breaker = match (live, h.open_until_ms) {
        (false, _) => "unknown",
        (true, 0) => "closed",
        (true, until) if until > now_ms => "open",
        (true, _) => "half_open",
    };
    DeploymentHealth {
        deployment_id: row.id.clone(),
        model: row.model.clone(),
        provider: row.provider_id.clone(),
        breaker: breaker.to_owned(),
        open_until: (h.open_until_ms > 0).then(|| at(h.open_until_ms)).flatten(),
        live,
        replicas: h.replicas,
        inflight: h.inflight,
        latency_ms: h.latency_ms,
        ttft_ms: h.ttft_ms,
        requests_this_minute: h.requests_this_minute,
        failures_this_minute: h.failures_this_minute,
        tokens_this_minute: h.tokens_this_minute,
        upstream_quota: h.quota.map(|q| QuotaView {
            read_at: at(q.at_ms),
            remaining_requests: q.remaining_requests,
            limit_requests: q.limit_requests,
            remaining_tokens: q.remaining_tokens,
            limit_tokens: q.limit_tokens,
        }),
        last_permanent_error: h.last_error.map(|e| PermanentErrorView {
            at: at(e.at_ms),
            status: e.status,
            kind: e.kind,
            message: e.message,
        }),
        recent: recent(stats),
        last_errors: Vec::new(),
        caps: row.caps.as_ref().map(|c| caps_health(&c.0, None)),
    }
}

/// Runs `pipe` on the shared Redis within [`REDIS_TIMEOUT`]; `None` when Redis is absent or
/// does not answer (logged, by its category only).
async fn query<T: redis::FromRedisValue>(
    counters: Option<&Counters>,
    pipe: &redis::Pipeline,
) -> Option<T> {
    let mut conn = counters?.conn();
    match tokio::time::timeout(REDIS_TIMEOUT, pipe.query_async::<T>(&mut conn)).await {
        Ok(Ok(answer)) => Some(answer),
        Ok(Err(e)) => {
            tracing::warn!(
                error = e.category(),
                "deployment health: Redis refused the read"
            );
            None
        }
        Err(_) => {
            tracing::warn!("deployment health: Redis did not answer in time");
            None
        }
    }
}

/// Every deployment's hash in one pipeline; `None` when Redis is absent or does not answer.
async fn read_hashes(counters: Option<&Counters>, ids: &[&str]) -> Option<Vec<Vec<String>>> {
    let prefix = counters?.prefix();
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("HGETALL").arg(deployment_state(prefix, id));
    }
    query(counters, &pipe).await
}

/// The current day's and month's caps counters of each deployment in `ids`, one `MGET` each
/// (the four keys share the deployment's hash tag); `None` when Redis is absent or silent.
async fn read_caps(counters: Option<&Counters>, ids: &[&str]) -> Option<Vec<CapCounts>> {
    let prefix = counters?.prefix();
    if ids.is_empty() {
        return Some(Vec::new());
    }
    let (day, month) = cap_periods(Utc::now());
    let mut pipe = redis::pipe();
    for id in ids {
        let (day_req, day_usd) = cap_counters(prefix, id, CapPeriod::Day(day));
        let (month_req, month_usd) = cap_counters(prefix, id, CapPeriod::Month(month));
        pipe.cmd("MGET")
            .arg(day_req)
            .arg(day_usd)
            .arg(month_req)
            .arg(month_usd);
    }
    let answers: Vec<Vec<Option<i64>>> = query(counters, &pipe).await?;
    Some(
        answers
            .into_iter()
            .map(|a| [0, 1, 2, 3].map(|i| a.get(i).copied().flatten()))
            .collect(),
    )
}

/// Fills in the caps usage of the capped deployments among `healths` (in `rows`' order).
async fn add_caps_usage(
    counters: Option<&Counters>,
    rows: &[DeploymentRow],
    healths: &mut [DeploymentHealth],
) {
    let capped: Vec<(usize, &DeploymentCaps)> = rows
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.caps.as_ref().map(|c| (i, &c.0)))
        .collect();
    let ids: Vec<&str> = capped.iter().map(|(i, _)| rows[*i].id.as_str()).collect();
    let Some(counts) = read_caps(counters, &ids).await else {
        return;
    };
    for ((i, caps), counts) in capped.into_iter().zip(counts) {
        if let Some(h) = healths.get_mut(i) {
            h.caps = Some(caps_health(caps, Some(counts)));
        }
    }
}

fn now_ms() -> u64 {
    u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0)
}

/// Every deployment's health, by id.
pub async fn all(
    cx: Ctx<'_>,
    actor: &Actor,
    counters: Option<&Counters>,
) -> Result<Vec<DeploymentHealth>> {
    actor.require_platform_reader()?;
    let rows = repo::deployments::all(cx.pool).await?;
    let ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    let since = Utc::now() - Duration::minutes(RECENT_MINUTES);
    let stats = repo::health::attempt_stats(cx.pool, None, since).await?;
    let hashes = read_hashes(counters, &ids).await;
    let now = now_ms();
    let mut healths: Vec<DeploymentHealth> = rows
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let fields = hashes.as_ref().and_then(|h| h.get(i)).map(Vec::as_slice);
            let stat = stats.iter().find(|s| s.deployment_id == row.id);
            assemble(row, fields, stat, now)
        })
        .collect();
    add_caps_usage(counters, &rows, &mut healths).await;
    Ok(healths)
}

/// One deployment's health, with its latest failed attempts.
pub async fn one(
    cx: Ctx<'_>,
    actor: &Actor,
    counters: Option<&Counters>,
    id: &str,
) -> Result<DeploymentHealth> {
    actor.require_platform_reader()?;
    let mut conn = cx.pool.acquire().await?;
    let row = repo::deployments::get(&mut conn, id, false)
        .await?
        .ok_or_else(|| Error::not_found("deployment", id))?;
    let since = Utc::now() - Duration::minutes(RECENT_MINUTES);
    let stats = repo::health::attempt_stats(&mut *conn, Some(id), since).await?;
    let day = Utc::now() - Duration::days(1);
    let last_errors = repo::health::failed_attempts(&mut *conn, id, day, LAST_ERRORS).await?;
    let hashes = read_hashes(counters, &[id]).await;
    let fields = hashes.as_ref().and_then(|h| h.first()).map(Vec::as_slice);
    let mut health = [assemble(&row, fields, stats.first(), now_ms())];
    add_caps_usage(counters, std::slice::from_ref(&row), &mut health).await;
    let [mut health] = health;
    health.last_errors = last_errors;
    Ok(health)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_reads_closed_open_half_open_or_unknown() {
        let row = DeploymentRow {
            id: "d1".into(),
            model: "m".into(),
            provider_id: "p".into(),
            upstream_model: "u".into(),
            weight: 1,
            tags: Vec::new(),
            rpm: None,
            tpm: None,
            concurrency: None,
            priority: 0,
            price: None,
            caps: None,
            transforms: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        };
        let now = 1_000_000;
        let fields = |until: &str| vec!["until".to_owned(), until.to_owned()];
        let breaker = |f: Option<&[String]>| assemble(&row, f, None, now).breaker;
        assert_eq!(breaker(None), "unknown");
        assert_eq!(breaker(Some(&[])), "unknown", "no data plane reported");
        assert_eq!(breaker(Some(&fields("0"))), "closed");
        assert_eq!(breaker(Some(&fields("2000000"))), "open");
        assert_eq!(breaker(Some(&fields("999000"))), "half_open");
        let stats = AttemptStats {
            deployment_id: "d1".into(),
            attempts: 8,
            failed: 2,
            latency_ms: Some(12.5),
        };
        let h = assemble(&row, None, Some(&stats), now);
        assert_eq!(h.recent.failure_rate, Some(0.25));
        assert_eq!(h.recent.window_minutes, RECENT_MINUTES);
        assert!(h.caps.is_none(), "no caps, no caps section");
    }

    #[test]
    fn caps_usage_reads_nano_usd_and_names_the_cap_used_up() {
        let caps = DeploymentCaps {
            usd_per_day: Some(1.0),
            requests_per_month: Some(3),
            ..DeploymentCaps::default()
        };
        let unread = caps_health(&caps, None);
        assert_eq!(
            (unread.usd_per_day, unread.requests_per_month),
            (Some(1.0), Some(3))
        );
        assert!(unread.today.is_none() && unread.exhausted.is_none());
        let h = caps_health(
            &caps,
            Some([Some(2), Some(2_900_000), Some(3), Some(8_700_000)]),
        );
        let today = h.today.unwrap();
        assert_eq!((today.requests, today.usd), (2, 0.0029));
        assert_eq!(h.this_month.unwrap().usd, 0.0087);
        assert_eq!(h.exhausted.as_deref(), Some("requests_per_month"));
        let fresh = caps_health(&caps, Some([None; 4]));
        assert_eq!(fresh.today.unwrap().requests, 0);
        assert!(fresh.exhausted.is_none());
    }
}
