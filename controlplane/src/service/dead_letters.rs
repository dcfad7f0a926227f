//! Ingestion's dead letters (issue 13 item 2): a usage event that can never be stored — not a
//! usage record, values the books refuse ([`check_record`]), or a row Postgres refuses on its
//! own — is kept here with its reason instead of blocking its batch or being dropped silently.
//! Each is counted in `switchboard_ingest_dead_letters_total{reason}`; platform admins list
//! them with `GET /admin/v1/dead-letters`.

use switchboard_shared::usage::UsageRecord;

use super::{Actor, Ctx, Page, Paging, Result};
use crate::repo;
pub use crate::repo::dead_letters::DeadLetter;

/// Largest token count of one event accepted (10^12: far above any real request, far below
/// `bigint`, so that the daily rollups cannot overflow).
pub const MAX_EVENT_TOKENS: u64 = 1_000_000_000_000;
/// Largest cost of one event accepted, in USD.
pub const MAX_EVENT_COST_USD: f64 = 1_000_000.0;
/// Longest payload kept.
const MAX_PAYLOAD_BYTES: usize = 16 * 1024;

/// Why a record cannot be booked, if it cannot.
pub fn check_record(r: &UsageRecord) -> Option<String> {
    let u = &r.usage;
    for (name, n) in [
        ("prompt_tokens", u.prompt_tokens),
        ("completion_tokens", u.completion_tokens),
        ("cached_read_tokens", u.cached_read_tokens),
        ("cache_creation_tokens", u.cache_creation_tokens),
    ] {
        if n > MAX_EVENT_TOKENS {
            return Some(format!("{name} {n} is above {MAX_EVENT_TOKENS}"));
        }
    }
    if !(r.cost_usd.is_finite() && (0.0..=MAX_EVENT_COST_USD).contains(&r.cost_usd)) {
        return Some(format!(
            "cost_usd {} is not between 0 and {MAX_EVENT_COST_USD}",
            r.cost_usd
        ));
    }
    if r.request_id.is_empty() {
        return Some("request_id is empty".into());
    }
    None
}

/// Why a record is refused for its age, if it is: it started on a UTC day whose raw spend
/// partition retention has dropped (`spend.raw_retention_days`, 0 = kept forever). Stored, it
/// would land in the default partition and be added to the rollups a second time (a spill
/// file or a stream replayed long after the fact).
pub fn expired(
    r: &UsageRecord,
    today: chrono::NaiveDate,
    raw_retention_days: u64,
) -> Option<String> {
    if raw_retention_days == 0 {
        return None;
    }
    let cutoff = today.checked_sub_days(chrono::Days::new(raw_retention_days))?;
    let day = r.started_at.date_naive();
    (day < cutoff).then(|| {
        format!("started on {day}, before the raw spend retention ({raw_retention_days} days)")
    })
}

/// Stores a dead letter and counts it. `kind` is the metric's low-cardinality reason.
pub async fn store(
    pool: &sqlx::PgPool,
    kind: &'static str,
    request_id: Option<&str>,
    reason: &str,
    payload: &[u8],
) -> Result<()> {
    let text = String::from_utf8_lossy(&payload[..payload.len().min(MAX_PAYLOAD_BYTES)]);
    repo::dead_letters::insert(pool, request_id, reason, &text).await?;
    crate::metrics::count(
        crate::metrics::INGEST_DEAD_LETTERS_TOTAL,
        Some(("reason", kind)),
    );
    tracing::error!(kind, reason, request_id, "usage event dead-lettered");
    Ok(())
}

/// Dead letters, newest first (platform admins only).
pub async fn list(cx: Ctx<'_>, actor: &Actor, paging: Paging) -> Result<Page<DeadLetter>> {
    actor.require_platform_admin()?;
    let rows = repo::dead_letters::list(cx.pool, paging.limit() + 1, paging.offset()).await?;
    Ok(paging.page(rows, DeadLetter::clone))
}
