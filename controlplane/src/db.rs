//! Postgres: the embedded migrations (the same ones `#[sqlx::test(migrations = "../migrations")]`
//! applies), the pool, reading one row by its key ([`ById`]) and the advisory lock that lets
//! one replica at a time do a periodic job ([`with_try_lock`]).

use std::future::Future;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPoolOptions, PgRow};
use sqlx::{FromRow, PgConnection, PgPool};

/// The schema, embedded at build time from `migrations/`.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// A bounded pool.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .connect(url)
        .await
}

/// The committed config revision.
pub async fn current_revision(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let (revision,): (i64,) = sqlx::query_as("SELECT revision FROM config_revision")
        .fetch_one(pool)
        .await?;
    Ok(u64::try_from(revision).unwrap_or(0))
}

/// A statement that reads one row by its key (`$1`), in both forms a handler needs: plain, and
/// `FOR UPDATE` inside a write. Built by [`by_id!`](crate::by_id) at compile time, so each
/// lookup is written once and neither form is put together at run time.
#[derive(Debug, Clone, Copy)]
pub struct ById {
    plain: &'static str,
    locked: &'static str,
}

/// `by_id!("SELECT ", tenant_columns!(), " FROM tenants WHERE id = $1")`: the [`db::ById`]
/// of that statement, its `FOR UPDATE` form appended.
///
/// [`db::ById`]: crate::db::ById
#[macro_export]
macro_rules! by_id {
    ($($sql:tt)+) => {
        $crate::db::ById::new(concat!($($sql)+), concat!($($sql)+, " FOR UPDATE"))
    };
}

impl ById {
    /// Use [`by_id!`](crate::by_id), which derives `locked` from `plain`.
    #[doc(hidden)]
    pub const fn new(plain: &'static str, locked: &'static str) -> Self {
        Self { plain, locked }
    }

    /// The row with key `key`, if any; `lock`: `FOR UPDATE` (inside a write).
    pub async fn fetch<R>(
        &self,
        conn: &mut PgConnection,
        key: &str,
        lock: bool,
    ) -> Result<Option<R>, sqlx::Error>
    where
        R: for<'r> FromRow<'r, PgRow> + Send + Unpin,
    {
        let sql = if lock { self.locked } else { self.plain };
        sqlx::query_as(sql).bind(key).fetch_optional(conn).await
    }
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
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(key)
        .fetch_one(&mut *lock)
        .await?;
    if !locked {
        return Ok(None);
    }
    let result = work.await;
    let _ = lock.rollback().await;
    result.map(Some)
}
