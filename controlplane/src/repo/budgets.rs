//! The budgets' SQL: the `budget` column of `tenants` and `virtual_keys`, and period spend from
//! `spend_events` / `spend_daily` for many subjects in one statement.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};
use switchboard_shared::snapshot::Budget;

/// A key or tenant, as far as budgets care.
#[derive(Debug, Clone)]
pub struct Owner {
    /// The tenant it belongs to (itself, for a tenant).
    pub tenant_id: String,
    pub budget: Option<Json<Budget>>,
}

/// The table of a budget's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owners {
    Keys,
    Tenants,
}

/// The owner `id` (`lock`: `FOR UPDATE`, inside a write).
pub async fn owner(
    conn: &mut PgConnection,
    table: Owners,
    id: &str,
    lock: bool,
) -> sqlx::Result<Option<Owner>> {
    macro_rules! q {
        ($select:literal) => {
            if lock {
                sqlx::query_as!(Owner, $select + " FOR UPDATE", id)
                    .fetch_optional(conn)
                    .await
            } else {
                sqlx::query_as!(Owner, $select, id)
                    .fetch_optional(conn)
                    .await
            }
        };
    }
    match table {
        Owners::Keys => q!(
            r#"SELECT tenant_id, budget AS "budget: Json<Budget>" FROM virtual_keys WHERE id = $1"#
        ),
        Owners::Tenants => q!(
            r#"SELECT id AS tenant_id, budget AS "budget: Json<Budget>" FROM tenants WHERE id = $1"#
        ),
    }
}

/// Sets or clears (`None`) the budget of an existing owner.
pub async fn store(
    db: impl PgExecutor<'_>,
    table: Owners,
    id: &str,
    budget: Option<&Budget>,
) -> sqlx::Result<()> {
    let budget = budget.map(Json);
    let query = match table {
        Owners::Keys => sqlx::query!(
            "UPDATE virtual_keys SET budget = $2, updated_at = now() WHERE id = $1",
            id,
            budget as _
        ),
        Owners::Tenants => sqlx::query!(
            "UPDATE tenants SET budget = $2, updated_at = now() WHERE id = $1",
            id,
            budget as _
        ),
    };
    query.execute(db).await.map(|_| ())
}

/// Which budgets a listing returns.
#[derive(Debug, Clone, Default)]
pub struct Filter<'a> {
    /// A tenant admin's own tenant.
    pub confined_to: Option<&'a str>,
    /// Only this tenant's (its own budget and its keys').
    pub tenant_id: Option<&'a str>,
    /// Only `key` or only `tenant` budgets.
    pub scope: Option<&'a str>,
}

/// A budgeted key or tenant.
#[derive(Debug, Clone)]
pub struct BudgetRow {
    /// `key` or `tenant`.
    pub scope: String,
    pub id: String,
    pub tenant_id: String,
    pub budget: Json<Budget>,
}

/// Budgeted tenants and keys, each tenant's budget before its keys', ordered by tenant then
/// id. `limit` `None`: all of them.
pub async fn list(
    db: impl PgExecutor<'_>,
    filter: &Filter<'_>,
    limit: Option<i64>,
    offset: i64,
) -> sqlx::Result<Vec<BudgetRow>> {
    sqlx::query_as!(
        BudgetRow,
        r#"SELECT scope AS "scope!", id AS "id!", tenant_id AS "tenant_id!",
            budget AS "budget!: Json<Budget>" FROM (
           SELECT 'tenant' AS scope, id, id AS tenant_id, budget FROM tenants
           WHERE jsonb_typeof(budget) = 'object'
           UNION ALL
           SELECT 'key', id, tenant_id, budget FROM virtual_keys
           WHERE jsonb_typeof(budget) = 'object'
         ) b
         WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR tenant_id = $2)
           AND ($3::text IS NULL OR scope = $3)
         ORDER BY tenant_id, scope DESC, id LIMIT $4 OFFSET $5"#,
        filter.confined_to,
        filter.tenant_id,
        filter.scope,
        limit,
        offset
    )
    .fetch_all(db)
    .await
}

/// One subject's spend question.
#[derive(Debug, Clone)]
pub struct SpendQuery<'a> {
    /// `key` or `tenant`.
    pub scope: &'a str,
    pub id: &'a str,
    pub tenant_id: &'a str,
    /// Raw rows: those started at or after this instant.
    pub since: DateTime<Utc>,
    /// Rollups: days from this one.
    pub since_day: NaiveDate,
    /// Whether to read raw rows (else rollups).
    pub raw: bool,
}

/// Spend in nano-dollars per query index, each row's cost rounded up to whole nano-dollars as
/// the data planes charge it: raw rows started in `[since, now)`, or rollups of UTC days from
/// `since_day` to `now`'s. Indexes with no spend are absent.
///
/// One statement for every subject: the subjects travel as arrays, and each of the four
/// branches (key or tenant, raw or rollups) joins them to the spend table on its index
/// (`spend_events (key_id|tenant_id, started_at)`, `spend_daily (tenant_id, day)`).
pub async fn spend(
    db: impl PgExecutor<'_>,
    queries: &[SpendQuery<'_>],
    now: DateTime<Utc>,
) -> sqlx::Result<Vec<(usize, i64)>> {
    let n = queries.len();
    let mut index = Vec::with_capacity(n);
    let mut scope = Vec::with_capacity(n);
    let mut id = Vec::with_capacity(n);
    let mut tenant_id = Vec::with_capacity(n);
    let mut since = Vec::with_capacity(n);
    let mut since_day = Vec::with_capacity(n);
    let mut raw = Vec::with_capacity(n);
    for (i, q) in queries.iter().enumerate() {
        index.push(i64::try_from(i).unwrap_or(i64::MAX));
        scope.push(q.scope);
        id.push(q.id);
        tenant_id.push(q.tenant_id);
        since.push(q.since);
        since_day.push(q.since_day);
        raw.push(q.raw);
    }
    let rows = sqlx::query!(
        r#"
WITH s AS (
    SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
        $6::date[], $7::boolean[]) AS s(i, scope, id, tenant_id, since, since_day, raw)
)
SELECT s.i AS "i!", sum(ceil(greatest(e.cost_usd, 0) * 1e9::float8)) AS "nanos?"
FROM s JOIN spend_events e
    ON e.key_id = s.id AND e.started_at >= s.since AND e.started_at < $8
WHERE s.scope = 'key' AND s.raw
GROUP BY s.i
UNION ALL
SELECT s.i AS "i!", sum(ceil(greatest(e.cost_usd, 0) * 1e9::float8)) AS "nanos?"
FROM s JOIN spend_events e
    ON e.tenant_id = s.id AND e.started_at >= s.since AND e.started_at < $8
WHERE s.scope = 'tenant' AND s.raw
GROUP BY s.i
UNION ALL
SELECT s.i AS "i!", sum(ceil(greatest(d.cost_usd, 0) * 1e9::float8)) AS "nanos?"
FROM s JOIN spend_daily d
    ON d.tenant_id = s.tenant_id AND d.key_id = s.id AND d.day >= s.since_day
    AND d.day <= ($8 AT TIME ZONE 'UTC')::date
WHERE s.scope = 'key' AND NOT s.raw
GROUP BY s.i
UNION ALL
SELECT s.i AS "i!", sum(ceil(greatest(d.cost_usd, 0) * 1e9::float8)) AS "nanos?"
FROM s JOIN spend_daily d
    ON d.tenant_id = s.id AND d.day >= s.since_day
    AND d.day <= ($8 AT TIME ZONE 'UTC')::date
WHERE s.scope = 'tenant' AND NOT s.raw
GROUP BY s.i
"#,
        &index as _,
        &scope as _,
        &id as _,
        &tenant_id as _,
        &since as _,
        &since_day as _,
        &raw as _,
        now
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            // Saturating: f64 → i64 `as` clamps, and NaN becomes 0.
            Some((usize::try_from(r.i).ok()?, r.nanos.unwrap_or(0.0) as i64))
        })
        .collect())
}
