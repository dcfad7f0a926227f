//! `audit_log`: appended to by every write, read newest first.

use sqlx::PgExecutor;

use super::rows::AuditEntry;

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

/// `$head`, [`AuditEntry`]'s columns, then `$tail`: one statement, checked.
macro_rules! q {
    ($head:literal, [$($tail:literal),*] $($args:tt)*) => {
        sqlx::query_as!(
            AuditEntry,
            $head + " id, at, actor_id, actor, action, object_type, object_id, tenant_id, \
            revision, before, after " $(+ $tail)* $($args)*
        )
    };
}

// Newest first.
tenant_list_fn!(AuditEntry, q, "FROM audit_log", "tenant_id", "id DESC");
