//! `audit_log`: appended to by every write, read newest first.

use sqlx::PgExecutor;

use super::ListFilter;
use super::rows::AuditRow;

/// One audit row to append.
#[derive(Debug)]
pub struct NewEntry<'a> {
    pub actor_id: Option<uuid::Uuid>,
    pub actor: &'a str,
    pub action: &'a str,
    pub object_type: &'a str,
    pub object_id: &'a str,
    pub tenant_id: Option<&'a str>,
    pub revision: i64,
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
}

pub async fn insert(db: impl PgExecutor<'_>, e: NewEntry<'_>) -> sqlx::Result<()> {
    sqlx::query!(
        "INSERT INTO audit_log (actor_id, actor, action, object_type, object_id, tenant_id, \
         revision, before, after) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        e.actor_id,
        e.actor,
        e.action,
        e.object_type,
        e.object_id,
        e.tenant_id,
        e.revision,
        e.before,
        e.after,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Newest first.
pub async fn list(db: impl PgExecutor<'_>, f: ListFilter<'_>) -> sqlx::Result<Vec<AuditRow>> {
    sqlx::query_as!(
        AuditRow,
        "SELECT id, at, actor_id, actor, action, object_type, object_id, tenant_id, revision, \
         before, after FROM audit_log WHERE ($1::text IS NULL OR tenant_id = $1) \
         AND ($2::text IS NULL OR tenant_id = $2) ORDER BY id DESC LIMIT $3 OFFSET $4",
        f.confined_to,
        f.tenant_id,
        f.limit,
        f.offset,
    )
    .fetch_all(db)
    .await
}
