//! Postgres: the embedded migrations (the same ones `#[sqlx::test(migrations = "../migrations")]`
//! applies) and the pool.

use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;

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
