//! Budgets as the control plane sees them: which keys and tenants have one, what each spent in
//! its current period according to Postgres, and the admin operations that set and remove
//! them. The handlers are in `api::budgets`; the SQL is in [`crate::repo::budgets`]; keeping the data
//! planes' Redis counters at least as high as Postgres is [`counters`].
//!
//! **Period spend.** A budget's period is calendar-aligned in its time zone
//! (`shared::budget::period_of`); its spend is the cost of the requests that started in
//! `[period start, now)`. Every budgeted subject is answered by one statement
//! ([`period_spend`]), whichever table covers its period:
//! - `spend_events` (raw rows, exact) when the whole period lies within the raw retention
//!   (`spend.raw_retention_days`: partitions of older UTC days are dropped);
//! - `spend_daily` (UTC-day rollups) for period `none` (all time; rollups are exact there, the
//!   period starting at the epoch) and for periods that began before the retention cutoff.
//!   Rollups cannot split a UTC day, so for a period that starts inside one (a time zone other
//!   than UTC) that first partial day is left out: the figure is an under-count by at most
//!   one day's spend, never an over-count. Under-counting is the safe side because the
//!   figure only ever *raises* Redis counters: an over-count would refuse requests that are
//!   within budget. [`SpendSource`] says which table answered.
//!
//! Money is counted as the data planes count it: each request's cost rounded up to whole
//! nano-dollars (`shared::budget::usd_to_nanos`), so a counter that saw every request equals
//! Postgres' figure once they are all ingested.
//!
//! Spend that a key made before it had a budget, earlier in the same period, counts: the
//! budget is per period, not per budget.

pub mod counters;

use std::time::Duration;

use chrono::{DateTime, Days, NaiveDate, NaiveTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::{PgConnection, PgPool};
use switchboard_shared::budget::{BudgetScope, Period, nanos_to_usd, period_of, usd_to_nanos};
use switchboard_shared::snapshot::{Budget, BudgetPeriod};
use utoipa::ToSchema;

use super::write::{Change, Committed, Write};
use super::{Actor, Ctx, Error, FieldError, Page, Paging, Result};
use crate::repo::budgets::{self as repo, Owners};
use counters::Counters;

/// Longest an admin write waits for the immediate counter raise.
const RAISE_WAIT: Duration = Duration::from_secs(2);

/// Whose budget: a virtual key's own or a tenant's (shared by all its keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = BudgetScope)]
pub enum Scope {
    Key,
    Tenant,
}

impl Scope {
    pub fn shared(self) -> BudgetScope {
        match self {
            Scope::Key => BudgetScope::Key,
            Scope::Tenant => BudgetScope::Tenant,
        }
    }

    pub fn as_str(self) -> &'static str {
        self.shared().as_str()
    }

    /// The owner's table.
    fn owners(self) -> Owners {
        match self {
            Scope::Key => Owners::Keys,
            Scope::Tenant => Owners::Tenants,
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        match s {
            "key" => Some(Scope::Key),
            "tenant" => Some(Scope::Tenant),
            _ => None,
        }
    }

    /// The audit log's `object_type` of the budget's owner.
    pub fn object_type(self) -> &'static str {
        match self {
            Scope::Key => "virtual_key",
            Scope::Tenant => "tenant",
        }
    }

    /// The owner's snapshot section (for [`super::write::Scope`]).
    pub fn section(self) -> &'static str {
        match self {
            Scope::Key => "virtual_keys",
            Scope::Tenant => "tenants",
        }
    }

    /// The owner in messages ("virtual key", "tenant").
    pub fn noun(self) -> &'static str {
        match self {
            Scope::Key => "virtual key",
            Scope::Tenant => "tenant",
        }
    }
}

/// One key or tenant with a budget.
#[derive(Debug, Clone, PartialEq)]
pub struct Subject {
    pub scope: Scope,
    pub id: String,
    /// The tenant it belongs to (itself, for a tenant).
    pub tenant_id: String,
    pub budget: Budget,
}

/// Where `spent_usd` comes from: `events`, the raw spend rows (exact); `daily_rollups`, the
/// UTC-day rollups, for period `none` and for periods that began before the raw rows'
/// retention (a first partial UTC day of such a period is left out).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SpendSource {
    /// Raw spend rows: exact.
    Events,
    /// Daily (UTC) rollups: period `none`, or a period older than the raw retention.
    DailyRollups,
}

/// How far a budget is used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BudgetState {
    Ok,
    /// At or past `soft_usd` (an alert was due), below `max_usd`.
    SoftExceeded,
    /// At or past `max_usd`: the data planes refuse the subject's requests.
    Exhausted,
}

/// A subject's spend in its current period, per Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeriodSpend {
    pub period: Period,
    pub nanos: i64,
    pub source: SpendSource,
}

/// The state of `budget` after spending `nanos`, by the data planes' rules (refused once spend
/// reaches the limit).
pub fn state_of(budget: &Budget, nanos: i64) -> BudgetState {
    if nanos >= usd_to_nanos(budget.max_usd) {
        BudgetState::Exhausted
    } else if budget
        .soft_usd
        .is_some_and(|soft| nanos >= usd_to_nanos(soft))
    {
        BudgetState::SoftExceeded
    } else {
        BudgetState::Ok
    }
}

/// Which table covers `period` at `now` with `raw_retention_days` of raw rows (0: forever).
pub fn source_for(
    budget: &Budget,
    period: &Period,
    now: DateTime<Utc>,
    raw_retention_days: u64,
) -> SpendSource {
    if budget.period == BudgetPeriod::None {
        return SpendSource::DailyRollups;
    }
    if raw_retention_days == 0 {
        return SpendSource::Events;
    }
    // `ingest::drop_expired_partitions` drops the partitions of UTC days before this one.
    let cutoff = now
        .date_naive()
        .checked_sub_days(Days::new(raw_retention_days))
        .map_or(DateTime::<Utc>::MIN_UTC, |day| {
            day.and_time(NaiveTime::MIN).and_utc()
        });
    if period.start >= cutoff {
        SpendSource::Events
    } else {
        SpendSource::DailyRollups
    }
}

/// The first UTC day wholly inside a period that starts at `start`.
pub fn first_whole_day(start: DateTime<Utc>) -> NaiveDate {
    let day = start.date_naive();
    if start.time() == NaiveTime::MIN {
        day
    } else {
        day.succ_opt().unwrap_or(day)
    }
}

/// Each subject's spend in its period containing `now`, in the order given, with one query.
pub async fn period_spend(
    pool: &PgPool,
    subjects: &[Subject],
    now: DateTime<Utc>,
    raw_retention_days: u64,
) -> sqlx::Result<Vec<PeriodSpend>> {
    let mut out: Vec<PeriodSpend> = subjects
        .iter()
        .map(|s| {
            let period = period_of(&s.budget, now);
            PeriodSpend {
                period,
                nanos: 0,
                source: source_for(&s.budget, &period, now, raw_retention_days),
            }
        })
        .collect();
    if subjects.is_empty() {
        return Ok(out);
    }
    let queries: Vec<repo::SpendQuery<'_>> = subjects
        .iter()
        .zip(&out)
        .map(|(s, p)| repo::SpendQuery {
            scope: s.scope.as_str(),
            id: &s.id,
            tenant_id: &s.tenant_id,
            since: p.period.start,
            since_day: first_whole_day(p.period.start),
            raw: p.source == SpendSource::Events,
        })
        .collect();
    for (i, nanos) in repo::spend(pool, &queries, now).await? {
        if let Some(p) = out.get_mut(i) {
            p.nanos = nanos;
        }
    }
    Ok(out)
}

/// A budget with its current period and spend, as the admin API shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct BudgetView {
    pub scope: Scope,
    /// The key's or tenant's id.
    pub id: String,
    pub tenant_id: String,
    #[schema(value_type = BudgetBody)]
    pub budget: Budget,
    /// Start of the current period (the Unix epoch for period `none`).
    pub period_start: DateTime<Utc>,
    /// End of the current period (exclusive); absent for period `none`.
    pub period_end: Option<DateTime<Utc>>,
    /// Spent this period according to Postgres (ingested usage; in-flight requests and events
    /// not yet ingested are not in it).
    pub spent_usd: f64,
    /// `max_usd` minus `spent_usd`, at least 0.
    pub remaining_usd: f64,
    pub state: BudgetState,
    pub spend_source: SpendSource,
}

impl BudgetView {
    pub fn new(subject: &Subject, spend: &PeriodSpend) -> Self {
        let max = usd_to_nanos(subject.budget.max_usd);
        Self {
            scope: subject.scope,
            id: subject.id.clone(),
            tenant_id: subject.tenant_id.clone(),
            budget: subject.budget.clone(),
            period_start: spend.period.start,
            period_end: spend.period.end,
            spent_usd: nanos_to_usd(spend.nanos),
            remaining_usd: nanos_to_usd(max.saturating_sub(spend.nanos).max(0)),
            state: state_of(&subject.budget, spend.nanos),
            spend_source: spend.source,
        }
    }
}

// Requests are parsed straight into `shared::snapshot::Budget`; this type only documents it
// in the OpenAPI document (a test keeps the two alike).
/// A key's or tenant's budget. Unknown fields are refused.
#[derive(ToSchema)]
#[schema(as = Budget)]
#[allow(dead_code)]
pub struct BudgetBody {
    /// Hard limit in USD per period, > 0: requests are refused once spend reaches it.
    #[schema(example = 100.0)]
    max_usd: f64,
    /// Alert threshold in USD, > 0 and ≤ `max_usd`: crossing it is reported, nothing refused.
    soft_usd: Option<f64>,
    /// Default `monthly`.
    period: Option<PeriodName>,
    /// IANA time zone the periods are calendar-aligned in (default UTC).
    #[schema(example = "Europe/Berlin")]
    time_zone: Option<String>,
}

/// A budget period, calendar-aligned in the budget's time zone (weeks start on Monday).
#[derive(ToSchema)]
#[serde(rename_all = "snake_case")]
#[schema(as = BudgetPeriod)]
#[allow(dead_code)]
enum PeriodName {
    Daily,
    Weekly,
    Monthly,
    /// One period for all time.
    None,
}

/// The views of `subjects` at `now`, with one spend query.
pub async fn views(
    pool: &PgPool,
    subjects: &[Subject],
    now: DateTime<Utc>,
    raw_retention_days: u64,
) -> sqlx::Result<Vec<BudgetView>> {
    let spend = period_spend(pool, subjects, now, raw_retention_days).await?;
    Ok(subjects
        .iter()
        .zip(&spend)
        .map(|(s, p)| BudgetView::new(s, p))
        .collect())
}

/// The budgeted subjects `actor` may see, filtered, one page (`limit` + 1 rows, for
/// [`Paging::page`]).
pub async fn list(
    pool: &PgPool,
    actor: &Actor,
    tenant_id: Option<&str>,
    scope: Option<Scope>,
    limit: i64,
    offset: i64,
) -> Result<Vec<Subject>> {
    let filter = repo::Filter {
        confined_to: actor.confined_to(),
        tenant_id,
        scope: scope.map(Scope::as_str),
    };
    let rows = repo::list(pool, &filter, Some(limit + 1), offset).await?;
    Ok(subjects(rows))
}

/// Every budgeted key and tenant.
pub async fn all(pool: &PgPool) -> sqlx::Result<Vec<Subject>> {
    Ok(subjects(
        repo::list(pool, &repo::Filter::default(), None, 0).await?,
    ))
}

fn subjects(rows: Vec<repo::BudgetRow>) -> Vec<Subject> {
    rows.into_iter()
        .filter_map(|r| {
            Some(Subject {
                scope: Scope::parse(&r.scope)?,
                id: r.id,
                tenant_id: r.tenant_id,
                budget: r.budget.0,
            })
        })
        .collect()
}

/// The views of one page of the budgets `actor` may see, at this instant.
pub async fn list_views(
    cx: Ctx<'_>,
    raw_retention_days: u64,
    actor: &Actor,
    paging: Paging,
    tenant_id: Option<&str>,
    scope: Option<Scope>,
) -> Result<Page<BudgetView>> {
    let subjects = list(
        cx.pool,
        actor,
        tenant_id,
        scope,
        paging.limit(),
        paging.offset(),
    )
    .await?;
    let page = paging.page(subjects, Clone::clone);
    let items = views(cx.pool, &page.items, Utc::now(), raw_retention_days).await?;
    Ok(Page {
        items,
        next_offset: page.next_offset,
    })
}

/// One subject's view at this instant.
async fn view(pool: &PgPool, raw_retention_days: u64, subject: &Subject) -> Result<BudgetView> {
    views(
        pool,
        std::slice::from_ref(subject),
        Utc::now(),
        raw_retention_days,
    )
    .await?
    .pop()
    .ok_or_else(|| Error::Internal("a budget without a view".into()))
}

/// The budget of one key or tenant; 404 when the actor may not see the owner, when it does
/// not exist, or when it has no budget.
pub async fn get(pool: &PgPool, actor: &Actor, scope: Scope, id: &str) -> Result<Subject> {
    let mut conn = pool.acquire().await?;
    let owner = load_visible(&mut conn, actor, scope, id, false).await?;
    match owner.budget {
        Some(budget) => Ok(Subject {
            scope,
            id: id.to_owned(),
            tenant_id: owner.tenant_id,
            budget: budget.0,
        }),
        None => Err(no_budget(scope, id)),
    }
}

/// [`get`], as its view at this instant.
pub async fn get_view(
    cx: Ctx<'_>,
    raw_retention_days: u64,
    actor: &Actor,
    scope: Scope,
    id: &str,
) -> Result<BudgetView> {
    let subject = get(cx.pool, actor, scope, id).await?;
    view(cx.pool, raw_retention_days, &subject).await
}

fn no_budget(scope: Scope, id: &str) -> Error {
    Error::NotFound(format!("budget of {} {id:?}", scope.noun()))
}

/// Who may change budgets: a key's, its tenant's admins and platform admins (like the key's
/// other settings); a tenant's, platform admins only (like the tenant's other settings).
/// Viewers never. Refusals before any database work: 403 for viewers, 404 for another
/// tenant's tenant.
fn may_write(actor: &Actor, scope: Scope, id: &str) -> Result<()> {
    match scope {
        Scope::Key => actor.require_writer(),
        Scope::Tenant => actor.require_tenant_writer(id),
    }
}

/// Sets (or replaces) a budget through the one write path: revision bump, row change, audit
/// row, snapshot validation, commit, publish.
pub async fn set(
    cx: Ctx<'_>,
    actor: &Actor,
    scope: Scope,
    id: &str,
    budget: Budget,
) -> Result<(Subject, Committed)> {
    may_write(actor, scope, id)?;
    let problems = switchboard_shared::validate::budget_problems("", &budget);
    if !problems.is_empty() {
        return Err(Error::Invalid(
            problems
                .into_iter()
                .map(|p| FieldError::new(p.path, p.message))
                .collect(),
        ));
    }
    let mut w = Write::begin(cx.pool, actor).await?;
    let owner = load_visible(w.conn(), actor, scope, id, true).await?;
    repo::store(w.conn(), scope.owners(), id, Some(&budget)).await?;
    let before = owner.budget.map(|b| b.0);
    let change = Change::of(
        "set_budget",
        scope.object_type(),
        id,
        Some(&owner.tenant_id),
        before.as_ref(),
        Some(&budget),
    );
    let committed = finish(cx, w, change, scope, id).await?;
    let subject = Subject {
        scope,
        id: id.to_owned(),
        tenant_id: owner.tenant_id,
        budget,
    };
    Ok((subject, committed))
}

/// [`set`], then raises the counter of the budget's current period to Postgres' spend at
/// once (with `counters`), so that a new period (a changed `period` or `time_zone`) does not
/// start from zero until the next pass; answers the budget's view.
pub async fn put(
    cx: Ctx<'_>,
    counters: Option<&Counters>,
    raw_retention_days: u64,
    actor: &Actor,
    scope: Scope,
    id: &str,
    budget: Budget,
) -> Result<(BudgetView, Committed)> {
    let (subject, committed) = set(cx, actor, scope, id, budget).await?;
    if let Some(counters) = counters {
        raise_now(cx.pool, counters, raw_retention_days, &subject).await;
    }
    Ok((
        view(cx.pool, raw_retention_days, &subject).await?,
        committed,
    ))
}

/// Best effort: a failure is a warning and the reconciliation loop catches up.
async fn raise_now(pool: &PgPool, counters: &Counters, raw_retention_days: u64, subject: &Subject) {
    let raise = counters::reconcile_subjects(
        pool,
        counters,
        std::slice::from_ref(subject),
        Utc::now(),
        raw_retention_days,
    );
    match tokio::time::timeout(RAISE_WAIT, raise).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "budget counter not raised after a write"),
        Err(_) => tracing::warn!("budget counter raise after a write timed out"),
    }
}

/// Removes a budget (404 when there is none) through the one write path.
pub async fn remove(cx: Ctx<'_>, actor: &Actor, scope: Scope, id: &str) -> Result<Committed> {
    may_write(actor, scope, id)?;
    let mut w = Write::begin(cx.pool, actor).await?;
    let owner = load_visible(w.conn(), actor, scope, id, true).await?;
    let Some(before) = owner.budget else {
        return Err(no_budget(scope, id));
    };
    repo::store(w.conn(), scope.owners(), id, None).await?;
    let change = Change::of(
        "delete_budget",
        scope.object_type(),
        id,
        Some(&owner.tenant_id),
        Some(&before.0),
        None,
    );
    finish(cx, w, change, scope, id).await
}

/// The owner (`lock`: `FOR UPDATE`, in a write); another tenant's key reads as unknown.
async fn load_visible(
    conn: &mut PgConnection,
    actor: &Actor,
    scope: Scope,
    id: &str,
    lock: bool,
) -> Result<repo::Owner> {
    match repo::owner(conn, scope.owners(), id, lock).await? {
        Some(o) if actor.sees_tenant(&o.tenant_id) => Ok(o),
        _ => Err(Error::not_found(scope.noun(), id)),
    }
}

/// [`Write::finish`]; snapshot problems at this budget are reported at the body's own paths
/// (`max_usd`, not `budget.max_usd`).
async fn finish(
    cx: Ctx<'_>,
    w: Write,
    change: Change<'_>,
    scope: Scope,
    id: &str,
) -> Result<Committed> {
    w.finish(
        cx.publisher,
        change,
        Some(super::write::Scope::new(scope.section(), id)),
    )
    .await
    .map_err(|e| match e {
        Error::Invalid(errors) => Error::Invalid(
            errors
                .into_iter()
                .map(|f| match f.path.strip_prefix("budget.") {
                    Some(rest) => FieldError::new(rest, f.message),
                    None => f,
                })
                .collect(),
        ),
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::PartialSchema;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn budget(period: BudgetPeriod, soft: Option<f64>) -> Budget {
        Budget {
            max_usd: 10.0,
            soft_usd: soft,
            period,
            time_zone: None,
        }
    }

    #[test]
    fn states_follow_the_data_planes_thresholds() {
        let b = budget(BudgetPeriod::Daily, Some(8.0));
        assert_eq!(state_of(&b, 0), BudgetState::Ok);
        assert_eq!(state_of(&b, 7_999_999_999), BudgetState::Ok);
        assert_eq!(state_of(&b, 8_000_000_000), BudgetState::SoftExceeded);
        assert_eq!(state_of(&b, 9_999_999_999), BudgetState::SoftExceeded);
        // Refused once spend reaches the limit, as the data planes' reservation script does.
        assert_eq!(state_of(&b, 10_000_000_000), BudgetState::Exhausted);
        assert_eq!(
            state_of(&budget(BudgetPeriod::Daily, None), 9_000_000_000),
            BudgetState::Ok
        );
    }

    #[test]
    fn raw_rows_answer_only_periods_within_retention() {
        let now = at("2026-11-20T12:00:00Z");
        let monthly = budget(BudgetPeriod::Monthly, None);
        let p = period_of(&monthly, now);
        // The month began 19 days ago: 30 days of raw rows cover it, 7 do not.
        assert_eq!(source_for(&monthly, &p, now, 30), SpendSource::Events);
        assert_eq!(source_for(&monthly, &p, now, 19), SpendSource::Events);
        assert_eq!(source_for(&monthly, &p, now, 18), SpendSource::DailyRollups);
        assert_eq!(source_for(&monthly, &p, now, 0), SpendSource::Events);
        let none = budget(BudgetPeriod::None, None);
        let p = period_of(&none, now);
        assert_eq!(source_for(&none, &p, now, 0), SpendSource::DailyRollups);
    }

    #[test]
    fn rollups_start_at_the_first_whole_utc_day() {
        assert_eq!(
            first_whole_day(at("2026-11-01T00:00:00Z")),
            "2026-11-01".parse::<NaiveDate>().unwrap()
        );
        // Tokyo's December begins at 15:00 UTC on November 30th.
        assert_eq!(
            first_whole_day(at("2026-11-30T15:00:00Z")),
            "2026-12-01".parse::<NaiveDate>().unwrap()
        );
        assert_eq!(
            first_whole_day(DateTime::<Utc>::UNIX_EPOCH),
            "1970-01-01".parse::<NaiveDate>().unwrap()
        );
    }

    #[test]
    fn the_view_reports_remaining_and_state() {
        let subject = Subject {
            scope: Scope::Key,
            id: "k1".into(),
            tenant_id: "t1".into(),
            budget: budget(BudgetPeriod::Daily, Some(5.0)),
        };
        let now = at("2026-11-20T12:00:00Z");
        let spend = PeriodSpend {
            period: period_of(&subject.budget, now),
            nanos: 12_500_000_000,
            source: SpendSource::Events,
        };
        let v = BudgetView::new(&subject, &spend);
        assert_eq!(v.spent_usd, 12.5);
        assert_eq!(v.remaining_usd, 0.0);
        assert_eq!(v.state, BudgetState::Exhausted);
        assert_eq!(v.period_start, at("2026-11-20T00:00:00Z"));
        assert_eq!(v.period_end, Some(at("2026-11-21T00:00:00Z")));
        let v = BudgetView::new(
            &subject,
            &PeriodSpend {
                nanos: 2_250_000_000,
                ..spend
            },
        );
        assert_eq!((v.remaining_usd, v.state), (7.75, BudgetState::Ok));
    }

    #[test]
    fn the_documented_budget_has_the_fields_of_the_real_one() {
        let full = Budget {
            max_usd: 1.0,
            soft_usd: Some(0.5),
            period: BudgetPeriod::Weekly,
            time_zone: Some("UTC".into()),
        };
        let serde_json::Value::Object(fields) = serde_json::to_value(&full).unwrap() else {
            panic!("a budget is an object");
        };
        let mut real: Vec<String> = fields.keys().cloned().collect();
        let schema = serde_json::to_value(BudgetBody::schema()).unwrap();
        let mut documented: Vec<String> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        real.sort();
        documented.sort();
        assert_eq!(real, documented);
        assert_eq!(schema["required"], serde_json::json!(["max_usd"]));
        let periods = serde_json::to_value(PeriodName::schema()).unwrap();
        for p in [
            BudgetPeriod::Daily,
            BudgetPeriod::Weekly,
            BudgetPeriod::Monthly,
            BudgetPeriod::None,
        ] {
            let name = serde_json::to_value(p).unwrap();
            assert!(
                periods.to_string().contains(&name.to_string()),
                "{name} missing in {periods}"
            );
        }
    }
}
