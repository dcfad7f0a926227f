//! `config_revision`: the one row whose number every admin write bumps first (its row lock
//! serialises writers).

use sqlx::PgExecutor;

/// The committed config revision.
pub async fn current(db: impl PgExecutor<'_>) -> sqlx::Result<u64> {
    let revision = sqlx::query_scalar!("SELECT revision FROM config_revision")
        .fetch_one(db)
        .await?;
    Ok(u64::try_from(revision).unwrap_or(0))
}

/// Bumps the revision (taking the row's lock until the transaction ends); returns the new one.
pub async fn bump(db: impl PgExecutor<'_>) -> sqlx::Result<u64> {
    let revision = sqlx::query_scalar!(
        "UPDATE config_revision SET revision = revision + 1 RETURNING revision"
    )
    .fetch_one(db)
    .await?;
    Ok(u64::try_from(revision).unwrap_or(0))
}
