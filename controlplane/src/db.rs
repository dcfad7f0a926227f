//! Postgres: the embedded migrations (the same ones `#[sqlx::test(migrations = "../migrations")]`
//! applies), the pool, and the advisory lock that lets one replica at a time do a periodic job
//! ([`with_try_lock`]). Every other statement is in [`crate::repo`].

use std::future::Future;

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;

/// The schema, embedded at build time from `migrations/`.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// How many migrations the database has applied (an error when it has none, not even the
/// bookkeeping table).
pub async fn applied_migrations(pool: &PgPool) -> Result<usize, sqlx::migrate::MigrateError> {
    use sqlx::migrate::Migrate as _;
    let mut conn = pool.acquire().await?;
    Ok(conn
        .list_applied_migrations(&MIGRATOR.table_name)
        .await?
        .len())
}

/// A pool that connects on first use (for `doctor`, which reports an unreachable database
/// instead of failing on it).
pub fn connect_lazy(url: &str) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(std::time::Duration::from_secs(3))
        .connect_lazy(url)
}

/// A bounded pool.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .connect(url)
        .await
}

/// Runs `work` only if this replica gets the advisory lock `key` (one replica at a time does a
/// periodic job); `Ok(None)`: another one holds it.
///
/// The lock is transaction-scoped, taken on a connection of its own that `work` does not use:
/// it is released however `work` ends — also when the caller's future is dropped halfway (a
/// session lock would stay held by the pooled connection).
pub async fn with_try_lock<T, E>(
    pool: &PgPool,
    key: i64,
    work: impl Future<Output = Result<T, E>>,
) -> Result<Option<T>, E>
where
    E: From<sqlx::Error>,
{
    let mut lock = pool.begin().await?;
    let locked = sqlx::query_scalar!(r#"SELECT pg_try_advisory_xact_lock($1) AS "locked!""#, key)
        .fetch_one(&mut *lock)
        .await?;
    if !locked {
        return Ok(None);
    }
    let result = work.await;
    let _ = lock.rollback().await;
    result.map(Some)
}
