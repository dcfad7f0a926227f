//! Admin users: who may use the admin API. Passwords are stored as argon2id hashes and never
//! returned. [`create`] is also what the CLI and the bootstrap use.
//!
//! Sessions end on demand: [`update`] (role, tenant, password) and [`revoke_sessions`] bump the
//! admin's token version, and [`delete`] removes the row, so every token issued before stops
//! working on the next request (`service::auth::session_actor`).

use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::hash_password;
use super::crud;
use super::write::{Change, Committed, Write};
use super::{Actor, Ctx, Error, FieldError, Page, Paging, Result, Role, double_option};
use crate::repo;
use crate::repo::admins::NewAdmin;
pub use crate::repo::rows::AdminView;
use crate::repo::rows::TenantRow;

/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 12;

/// The audit log's `object_type` of admin users.
const OBJECT_TYPE: &str = "admin_user";

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAdmin {
    pub email: String,
    /// At least 12 characters. Write-only.
    pub password: String,
    pub role: Role,
    /// Required for (and only for) tenant admins.
    pub tenant_id: Option<String>,
}

/// Fields to change; absent fields stay. Any change ends the admin's sessions.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateAdmin {
    pub role: Option<Role>,
    /// Required for (and only for) tenant admins; `null` clears it.
    #[serde(default, deserialize_with = "double_option")]
    #[schema(value_type = Option<String>)]
    pub tenant_id: Option<Option<String>>,
    /// A new password, at least 12 characters. Write-only.
    pub password: Option<String>,
}

/// The password rule, as a problem.
fn check_password(password: &str, problems: &mut Vec<FieldError>) {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        problems.push(FieldError::new(
            "password",
            format!("must be at least {MIN_PASSWORD_CHARS} characters"),
        ));
    }
}

/// The role/tenant rule, as a problem.
fn check_role_tenant(role: Role, tenant_id: Option<&str>, problems: &mut Vec<FieldError>) {
    match (role, tenant_id) {
        (Role::TenantAdmin, None) => problems.push(FieldError::new(
            "tenant_id",
            "is required for a tenant admin",
        )),
        (Role::PlatformAdmin | Role::Viewer, Some(_)) => problems.push(FieldError::new(
            "tenant_id",
            "only tenant admins belong to a tenant",
        )),
        _ => {}
    }
}

/// An argon2id hash of `password`, off the async workers.
async fn hash(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || hash_password(&password))
        .await
        .map_err(|e| Error::Internal(format!("hashing task: {e}")))?
}

impl CreateAdmin {
    /// Every problem of the request at once; the email trimmed.
    fn check(&self) -> Result<String> {
        let mut problems = Vec::new();
        let email = self.email.trim().to_owned();
        if !(email.contains('@') && email.len() <= 254 && !email.contains(char::is_whitespace)) {
            problems.push(FieldError::new("email", "must be an email address"));
        }
        check_password(&self.password, &mut problems);
        check_role_tenant(self.role, self.tenant_id.as_deref(), &mut problems);
        if problems.is_empty() {
            Ok(email)
        } else {
            Err(Error::Invalid(problems))
        }
    }
}

/// Admins, one page by email (platform readers only: tenant admins never get here).
pub async fn list(cx: Ctx<'_>, paging: Paging, tenant_id: Option<&str>) -> Result<Page<AdminView>> {
    let rows = repo::admins::list(cx.pool, paging.rows(None, tenant_id)).await?;
    Ok(paging.page(rows, AdminView::clone))
}

/// Creates an admin user in its own write (revision bump and audit row included).
pub async fn create(
    cx: Ctx<'_>,
    actor: &Actor,
    req: CreateAdmin,
) -> Result<(AdminView, Committed)> {
    let email = req.check()?;
    let hash = hash(req.password).await?;
    let mut w = Write::begin(cx.pool, actor).await?;
    if let Some(tenant) = &req.tenant_id
        && !crud::exists::<TenantRow>(w.conn(), tenant).await?
    {
        return Err(Error::invalid("tenant_id", "unknown tenant"));
    }
    if repo::admins::email_taken(w.conn(), &email).await? {
        return Err(Error::Conflict(
            "an admin with this email already exists".into(),
        ));
    }
    let new = NewAdmin {
        id: uuid::Uuid::now_v7(),
        email: &email,
        password_hash: &hash,
        role: req.role.as_str(),
        tenant_id: req.tenant_id.as_deref(),
    };
    let view = repo::admins::insert(w.conn(), &new).await?;
    let id = view.id.to_string();
    let change = Change::of(
        "create",
        OBJECT_TYPE,
        &id,
        view.tenant_id.as_deref(),
        None,
        Some(&view),
    );
    let committed = w.finish(cx.publisher, change, None).await?;
    Ok((view, committed))
}

/// Deletes the admin `id`; an admin cannot delete itself.
pub async fn delete(cx: Ctx<'_>, actor: &Actor, id: &str) -> Result<Committed> {
    let uuid = parse_id(id)?;
    if actor.id == Some(uuid) {
        return Err(Error::Conflict("an admin cannot delete itself".into()));
    }
    let mut w = Write::begin(cx.pool, actor).await?;
    let before = repo::admins::delete(w.conn(), uuid)
        .await?
        .ok_or_else(|| Error::not_found("admin user", id))?;
    let change = Change::of(
        "delete",
        OBJECT_TYPE,
        id,
        before.tenant_id.as_deref(),
        Some(&before),
        None,
    );
    w.finish(cx.publisher, change, None).await
}

fn parse_id(id: &str) -> Result<uuid::Uuid> {
    id.parse().map_err(|_| Error::not_found("admin user", id))
}

/// Changes the admin `id`'s role, tenant or password and ends its sessions (platform admins
/// only, checked by the caller).
pub async fn update(
    cx: Ctx<'_>,
    actor: &Actor,
    id: &str,
    req: UpdateAdmin,
) -> Result<(AdminView, Committed)> {
    let uuid = parse_id(id)?;
    let mut problems = Vec::new();
    if let Some(password) = &req.password {
        check_password(password, &mut problems);
    }
    let hash = match req.password {
        Some(password) if problems.is_empty() => Some(hash(password).await?),
        _ => None,
    };
    let mut w = Write::begin(cx.pool, actor).await?;
    let before = repo::admins::get(w.conn(), uuid)
        .await?
        .ok_or_else(|| Error::not_found("admin user", id))?;
    let role = match req.role {
        Some(role) => role,
        None => Role::parse(&before.role)
            .ok_or_else(|| Error::Internal(format!("admin {id} has an unknown role")))?,
    };
    let tenant_id = req.tenant_id.unwrap_or_else(|| before.tenant_id.clone());
    check_role_tenant(role, tenant_id.as_deref(), &mut problems);
    if !problems.is_empty() {
        return Err(Error::Invalid(problems));
    }
    if let Some(tenant) = &tenant_id
        && !crud::exists::<TenantRow>(w.conn(), tenant).await?
    {
        return Err(Error::invalid("tenant_id", "unknown tenant"));
    }
    let role = role.as_str();
    let after = repo::admins::update(w.conn(), uuid, role, tenant_id.as_deref(), hash.as_deref())
        .await?
        .ok_or_else(|| Error::not_found("admin user", id))?;
    let change = Change::of(
        "update",
        OBJECT_TYPE,
        id,
        after.tenant_id.as_deref(),
        Some(&before),
        Some(&after),
    );
    let committed = w.finish(cx.publisher, change, None).await?;
    Ok((after, committed))
}

/// Ends every session of the admin `id` ("log out everywhere"): a platform admin may end
/// anyone's, any admin its own; for the others the admin is not found.
pub async fn revoke_sessions(
    cx: Ctx<'_>,
    actor: &Actor,
    id: &str,
) -> Result<(AdminView, Committed)> {
    let uuid = parse_id(id)?;
    if actor.id != Some(uuid) && actor.role != Role::PlatformAdmin {
        return Err(Error::not_found("admin user", id));
    }
    let mut w = Write::begin(cx.pool, actor).await?;
    let after = repo::admins::revoke_sessions(w.conn(), uuid)
        .await?
        .ok_or_else(|| Error::not_found("admin user", id))?;
    let change = Change::of(
        "revoke_sessions",
        OBJECT_TYPE,
        id,
        after.tenant_id.as_deref(),
        None,
        Some(&after),
    );
    let committed = w.finish(cx.publisher, change, None).await?;
    Ok((after, committed))
}

/// Creates a platform admin from bootstrap settings when no admin exists yet (as the process
/// itself). Returns whether one was created.
pub async fn bootstrap(pool: &sqlx::PgPool, email: String, password: String) -> Result<bool> {
    if repo::admins::any(pool).await? {
        return Ok(false);
    }
    let req = CreateAdmin {
        email,
        password,
        role: Role::PlatformAdmin,
        tenant_id: None,
    };
    let cx = Ctx {
        pool,
        publisher: None,
    };
    create(cx, &Actor::system(), req).await?;
    Ok(true)
}
