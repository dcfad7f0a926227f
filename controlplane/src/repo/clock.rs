//! Postgres's clock, for `controlplane doctor`'s skew check.

use sqlx::PgPool;

/// The database server's `now()`.
pub async fn now(pool: &PgPool) -> sqlx::Result<chrono::DateTime<chrono::Utc>> {
    sqlx::query_scalar!(r#"SELECT now() AS "now!""#)
        .fetch_one(pool)
        .await
}
