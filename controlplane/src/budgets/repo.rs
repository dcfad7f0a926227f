//! The budgets' SQL: the `budget` column of `tenants` and `virtual_keys`, and period spend from
//! `spend_events` / `spend_daily` for many subjects in one statement.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};
use switchboard_shared::snapshot::Budget;

use super::{Scope, Subject};
use crate::by_id;
use crate::db::ById;

/// A key or tenant, as far as budgets care.
#[derive(Debug, Clone)]
pub struct Owner {
    pub tenant_id: String,
    pub budget: Option<Budget>,
}

/// Loads a key or tenant (`lock`: `FOR UPDATE`, inside a write).
pub async fn load(
    conn: &mut PgConnection,
    scope: Scope,
    id: &str,
    lock: bool,
) -> sqlx::Result<Option<Owner>> {
    const KEY: ById = by_id!("SELECT tenant_id, budget FROM virtual_keys WHERE id = $1");
    const TENANT: ById = by_id!("SELECT id, budget FROM tenants WHERE id = $1");
    let by_id = match scope {
        Scope::Key => KEY,
        Scope::Tenant => TENANT,
    };
    let row: Option<(String, Option<Json<Budget>>)> = by_id.fetch(conn, id, lock).await?;
    Ok(row.map(|(tenant_id, budget)| Owner {
        tenant_id,
        budget: budget.map(|b| b.0),
    }))
}

/// Sets or clears (`None`) the budget of an existing key or tenant.
pub async fn store(
    conn: &mut PgConnection,
    scope: Scope,
    id: &str,
    budget: Option<&Budget>,
) -> sqlx::Result<()> {
    let sql = match scope {
        Scope::Key => "UPDATE virtual_keys SET budget = $2, updated_at = now() WHERE id = $1",
        Scope::Tenant => "UPDATE tenants SET budget = $2, updated_at = now() WHERE id = $1",
    };
    sqlx::query(sql)
        .bind(id)
        .bind(budget.map(Json))
        .execute(conn)
        .await?;
    Ok(())
}

/// Which budgets a listing returns.
#[derive(Debug, Clone, Default)]
pub struct Filter<'a> {
    /// A tenant admin's own tenant.
    pub confined_to: Option<&'a str>,
    /// Only this tenant's (its own budget and its keys').
    pub tenant_id: Option<&'a str>,
    pub scope: Option<Scope>,
}

/// Budgeted tenants and keys, each tenant's budget before its keys', ordered by tenant then
/// id. `limit` `None`: all of them.
pub async fn list(
    pool: &PgPool,
    filter: &Filter<'_>,
    limit: Option<i64>,
    offset: i64,
) -> sqlx::Result<Vec<Subject>> {
    let rows: Vec<(String, String, String, Json<Budget>)> = sqlx::query_as(
        "SELECT scope, id, tenant_id, budget FROM ( \
           SELECT 'tenant' AS scope, id, id AS tenant_id, budget FROM tenants \
           WHERE jsonb_typeof(budget) = 'object' \
           UNION ALL \
           SELECT 'key', id, tenant_id, budget FROM virtual_keys \
           WHERE jsonb_typeof(budget) = 'object' \
         ) b \
         WHERE ($1::text IS NULL OR tenant_id = $1) AND ($2::text IS NULL OR tenant_id = $2) \
           AND ($3::text IS NULL OR scope = $3) \
         ORDER BY tenant_id, scope DESC, id LIMIT $4 OFFSET $5",
    )
    .bind(filter.confined_to)
    .bind(filter.tenant_id)
    .bind(filter.scope.map(Scope::as_str))
    .bind(limit)
    .bind(offset)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(scope, id, tenant_id, budget)| {
            Some(Subject {
                scope: Scope::parse(&scope)?,
                id,
                tenant_id,
                budget: budget.0,
            })
        })
        .collect())
}

/// Every budgeted key and tenant.
pub async fn all(pool: &PgPool) -> sqlx::Result<Vec<Subject>> {
    list(pool, &Filter::default(), None, 0).await
}

/// One subject's spend question.
#[derive(Debug, Clone)]
pub struct SpendQuery<'a> {
    pub scope: Scope,
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
    pool: &PgPool,
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
        scope.push(q.scope.as_str());
        id.push(q.id);
        tenant_id.push(q.tenant_id);
        since.push(q.since);
        since_day.push(q.since_day);
        raw.push(q.raw);
    }
    let rows: Vec<(i64, Option<f64>)> = sqlx::query_as(
        r#"
WITH s AS (
    SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::text[], $5::timestamptz[],
        $6::date[], $7::boolean[]) AS s(i, scope, id, tenant_id, since, since_day, raw)
)
SELECT s.i, sum(ceil(greatest(e.cost_usd, 0) * 1e9::float8))
FROM s JOIN spend_events e
    ON e.key_id = s.id AND e.started_at >= s.since AND e.started_at < $8
WHERE s.scope = 'key' AND s.raw
GROUP BY s.i
UNION ALL
SELECT s.i, sum(ceil(greatest(e.cost_usd, 0) * 1e9::float8))
FROM s JOIN spend_events e
    ON e.tenant_id = s.id AND e.started_at >= s.since AND e.started_at < $8
WHERE s.scope = 'tenant' AND s.raw
GROUP BY s.i
UNION ALL
SELECT s.i, sum(ceil(greatest(d.cost_usd, 0) * 1e9::float8))
FROM s JOIN spend_daily d
    ON d.tenant_id = s.tenant_id AND d.key_id = s.id AND d.day >= s.since_day
    AND d.day <= ($8 AT TIME ZONE 'UTC')::date
WHERE s.scope = 'key' AND NOT s.raw
GROUP BY s.i
UNION ALL
SELECT s.i, sum(ceil(greatest(d.cost_usd, 0) * 1e9::float8))
FROM s JOIN spend_daily d
    ON d.tenant_id = s.id AND d.day >= s.since_day
    AND d.day <= ($8 AT TIME ZONE 'UTC')::date
WHERE s.scope = 'tenant' AND NOT s.raw
GROUP BY s.i
"#,
    )
    .bind(&index)
    .bind(&scope)
    .bind(&id)
    .bind(&tenant_id)
    .bind(&since)
    .bind(&since_day)
    .bind(&raw)
    .bind(now)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(i, nanos)| {
            // Saturating: f64 → i64 `as` clamps, and NaN becomes 0.
            Some((usize::try_from(i).ok()?, nanos.unwrap_or(0.0) as i64))
        })
        .collect())
}
