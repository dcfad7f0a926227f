//! Deployment health, for `GET /admin/v1/deployments/health` and `/deployments/{id}/health`:
//! what the data planes share about each deployment in Redis (breaker, in flight, latency and
//! TTFT, this minute's requests and failures, the upstream's quota reading, the last permanent
//! error an upstream answered; `switchboard_shared::fleet_keys` is the contract), beside what
//! the request log says of its recent attempts (failure rate, latency, the latest failures).
//!
//! Reading never changes anything: the control plane only reads the deployments' hashes. Without
//! a `redis` section, or with Redis unreachable, the answer says so (`live: false`) and carries
//! the request log's figures alone. Deployments are platform objects: platform admins and
//! viewers read them, tenant admins do not.

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;
use switchboard_shared::fleet_keys::{HealthFields, deployment_state};
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
    }
}

/// Every deployment's hash in one pipeline; `None` when Redis is absent or does not answer.
async fn read_hashes(counters: Option<&Counters>, ids: &[&str]) -> Option<Vec<Vec<String>>> {
    let counters = counters?;
    let mut pipe = redis::pipe();
    for id in ids {
        pipe.cmd("HGETALL")
            .arg(deployment_state(counters.prefix(), id));
    }
    let mut conn = counters.conn();
    let read = pipe.query_async::<Vec<Vec<String>>>(&mut conn);
    match tokio::time::timeout(REDIS_TIMEOUT, read).await {
        Ok(Ok(hashes)) => Some(hashes),
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
    Ok(rows
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let fields = hashes.as_ref().and_then(|h| h.get(i)).map(Vec::as_slice);
            let stat = stats.iter().find(|s| s.deployment_id == row.id);
            assemble(row, fields, stat, now)
        })
        .collect())
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
    let mut health = assemble(&row, fields, stats.first(), now_ms());
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
    }
}
