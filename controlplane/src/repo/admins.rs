//! `admin_users`: who may use the admin API, with argon2id password hashes.

use sqlx::PgExecutor;

use super::rows::AdminView;

/// `$head`, [`AdminView`]'s columns, then `$tail`: one statement, checked.
macro_rules! q {
    ($head:literal, [$($tail:literal),*] $($args:tt)*) => {
        sqlx::query_as!(
            AdminView,
            $head + " id, email, role, tenant_id, created_at, updated_at " $(+ $tail)* $($args)*
        )
    };
}

/// What a login checks.
#[derive(Debug)]
pub struct Credentials {
    pub id: uuid::Uuid,
    pub email: String,
    pub password_hash: String,
    pub role: String,
    pub tenant_id: Option<String>,
    pub token_version: i64,
}

/// What a session check reads: the admin as it is now.
#[derive(Debug)]
pub struct Session {
    pub email: String,
    pub role: String,
    pub tenant_id: Option<String>,
    pub token_version: i64,
}

/// A new admin user.
#[derive(Debug)]
pub struct NewAdmin<'a> {
    pub id: uuid::Uuid,
    pub email: &'a str,
    pub password_hash: &'a str,
    pub role: &'a str,
    pub tenant_id: Option<&'a str>,
}

// Tenant admins never list admins: `confined_to` is always `None` here.
tenant_list_fn!(AdminView, q, "FROM admin_users", "tenant_id", "email");

/// The admin with this email, whatever its case.
pub async fn credentials(
    db: impl PgExecutor<'_>,
    email: &str,
) -> sqlx::Result<Option<Credentials>> {
    sqlx::query_as!(
        Credentials,
        "SELECT id, email, password_hash, role, tenant_id, token_version FROM admin_users \
         WHERE lower(email) = lower($1)",
        email
    )
    .fetch_optional(db)
    .await
}

/// Whether an admin has this email, whatever its case.
pub async fn email_taken(db: impl PgExecutor<'_>, email: &str) -> sqlx::Result<bool> {
    let taken = sqlx::query_scalar!(
        "SELECT id FROM admin_users WHERE lower(email) = lower($1)",
        email
    )
    .fetch_optional(db)
    .await?;
    Ok(taken.is_some())
}

/// Whether any admin user exists.
pub async fn any(db: impl PgExecutor<'_>) -> sqlx::Result<bool> {
    sqlx::query_scalar!(r#"SELECT EXISTS (SELECT 1 FROM admin_users) AS "exists!""#)
        .fetch_one(db)
        .await
}

pub async fn insert(db: impl PgExecutor<'_>, a: &NewAdmin<'_>) -> sqlx::Result<AdminView> {
    q!(
        "INSERT INTO admin_users (id, email, password_hash, role, tenant_id) \
         VALUES ($1, $2, $3, $4, $5) RETURNING",
        [""],
        a.id,
        a.email,
        a.password_hash,
        a.role,
        a.tenant_id
    )
    .fetch_one(db)
    .await
}

/// Deletes the admin `id`; the deleted row, if there was one.
pub async fn delete(db: impl PgExecutor<'_>, id: uuid::Uuid) -> sqlx::Result<Option<AdminView>> {
    q!("DELETE FROM admin_users WHERE id = $1 RETURNING", [""], id)
        .fetch_optional(db)
        .await
}

/// The admin `id` as it is now, for a session check (primary-key read).
pub async fn session(db: impl PgExecutor<'_>, id: uuid::Uuid) -> sqlx::Result<Option<Session>> {
    sqlx::query_as!(
        Session,
        "SELECT email, role, tenant_id, token_version FROM admin_users WHERE id = $1",
        id
    )
    .fetch_optional(db)
    .await
}

/// Ends every session of the admin `id` (bumps its token version); the row, if there is one.
pub async fn revoke_sessions(
    db: impl PgExecutor<'_>,
    id: uuid::Uuid,
) -> sqlx::Result<Option<AdminView>> {
    q!(
        "UPDATE admin_users SET token_version = token_version + 1, updated_at = now() \
         WHERE id = $1 RETURNING",
        [""],
        id
    )
    .fetch_optional(db)
    .await
}

/// Sets role, tenant and (when given) password hash of the admin `id`, and ends its sessions.
pub async fn update(
    db: impl PgExecutor<'_>,
    id: uuid::Uuid,
    role: &str,
    tenant_id: Option<&str>,
    password_hash: Option<&str>,
) -> sqlx::Result<Option<AdminView>> {
    q!(
        "UPDATE admin_users SET role = $2, tenant_id = $3, \
         password_hash = coalesce($4, password_hash), token_version = token_version + 1, \
         updated_at = now() WHERE id = $1 RETURNING",
        [""],
        id,
        role,
        tenant_id,
        password_hash
    )
    .fetch_optional(db)
    .await
}

/// The admin `id` (for update), if there is one.
pub async fn get(db: impl PgExecutor<'_>, id: uuid::Uuid) -> sqlx::Result<Option<AdminView>> {
    q!("SELECT", ["FROM admin_users WHERE id = $1 FOR UPDATE"], id)
        .fetch_optional(db)
        .await
}
