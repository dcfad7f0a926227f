//! What every resource's service shares, so that a resource module states only its own rules:
//! a page of a list ([`list`]), reading one object the actor may see ([`load`], [`get`],
//! [`begin`] in a write), and the
//! write tail — audit row, commit ([`saved`], [`delete`]; [`change`] with
//! [`Write::finish`] for writes that answer otherwise).
//!
//! Role checks stay with the callers (the API's handlers check the role before calling): they
//! differ per resource, and where they stand decides between 403 and 404. Tenant visibility is
//! checked here: another tenant's object reads exactly like a missing one.

use std::future::Future;

use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use super::auth::Actor;
use super::error::{Error, Result};
use super::write::{Change, Committed, Scope, Write};
use super::{Ctx, Page, Paging};
use crate::repo::ListFilter;

/// One kind of admin object, implemented by its row type.
pub trait Resource: Sized + Send + Sync {
    /// What the API answers with and the audit log records: never a secret.
    type View: Serialize + Send;
    /// The object in messages: `tenant`, `virtual key`.
    const NOUN: &'static str;
    /// The audit log's `object_type`: `tenant`, `virtual_key`.
    const OBJECT_TYPE: &'static str;
    /// Its snapshot section ([`Scope`]).
    const SECTION: &'static str;

    fn view(&self) -> Self::View;

    /// The tenant it belongs to; `None` for platform-wide objects (whose routes only platform
    /// readers pass).
    fn tenant_id(&self) -> Option<&str>;

    /// One page of rows (`f.confined_to` and `f.tenant_id` apply to tenants' objects only).
    fn list(
        pool: &PgPool,
        f: ListFilter<'_>,
    ) -> impl Future<Output = sqlx::Result<Vec<Self>>> + Send;

    /// Reads one by its key (`lock`: `FOR UPDATE`, inside a write).
    fn fetch(
        conn: &mut PgConnection,
        id: &str,
        lock: bool,
    ) -> impl Future<Output = sqlx::Result<Option<Self>>> + Send;
}

/// An admin object that can be deleted.
pub trait Removable: Resource {
    /// Deletes one by its key.
    fn remove(conn: &mut PgConnection, id: &str) -> impl Future<Output = sqlx::Result<()>> + Send;
}

/// Implements [`Resource`] for a row type whose repository module (`crate::repo::$repo`) has
/// `get(conn, key, lock)`, and [`Removable`] too when it names the repository's `removed_by` function.
macro_rules! resource {
    (
        $row:ty => $view:ty, repo: $repo:ident, noun: $noun:literal,
        object_type: $object_type:literal, section: $section:literal,
        tenant: |$r:ident| $tenant:expr $(, removed_by: $remove:ident)? $(,)?
    ) => {
        impl $crate::service::crud::Resource for $row {
            type View = $view;
            const NOUN: &'static str = $noun;
            const OBJECT_TYPE: &'static str = $object_type;
            const SECTION: &'static str = $section;

            fn view(&self) -> $view {
                <$view>::from(self)
            }

            fn tenant_id(&self) -> Option<&str> {
                let $r = self;
                $tenant
            }

            fn list(
                pool: &sqlx::PgPool,
                f: $crate::repo::ListFilter<'_>,
            ) -> impl std::future::Future<Output = sqlx::Result<Vec<Self>>> + Send {
                $crate::repo::$repo::list(pool, f)
            }

            fn fetch(
                conn: &mut sqlx::PgConnection,
                id: &str,
                lock: bool,
            ) -> impl std::future::Future<Output = sqlx::Result<Option<Self>>> + Send {
                $crate::repo::$repo::get(conn, id, lock)
            }
        }

        $(
            impl $crate::service::crud::Removable for $row {
                fn remove(
                    conn: &mut sqlx::PgConnection,
                    id: &str,
                ) -> impl std::future::Future<Output = sqlx::Result<()>> + Send {
                    $crate::repo::$repo::$remove(conn, id)
                }
            }
        )?
    };
}
pub(crate) use resource;

/// The object `id` if the actor may see it; 404 when it does not exist and when it belongs to
/// another tenant (the same answer, so that ids do not leak). `lock`: `FOR UPDATE`, in a write.
pub async fn load<R: Resource>(
    conn: &mut PgConnection,
    actor: &Actor,
    id: &str,
    lock: bool,
) -> Result<R> {
    match R::fetch(conn, id, lock).await? {
        Some(row) if row.tenant_id().is_none_or(|t| actor.sees_tenant(t)) => Ok(row),
        _ => Err(Error::not_found(R::NOUN, id)),
    }
}

/// Opens a write on the object `id`: [`Write::begin`], then [`load`] it locked. 404 when it
/// does not exist or the actor may not see it.
pub async fn begin<R: Resource>(cx: Ctx<'_>, actor: &Actor, id: &str) -> Result<(Write, R)> {
    let mut w = Write::begin(cx.pool, actor).await?;
    let row = load(w.conn(), actor, id, true).await?;
    Ok((w, row))
}

/// Whether the object `id` exists, whoever may see it (for references in a body).
pub async fn exists<R: Resource>(conn: &mut PgConnection, id: &str) -> Result<bool> {
    Ok(R::fetch(conn, id, false).await?.is_some())
}

/// One page of the objects the actor may see (`tenant_id`: only that tenant's).
pub async fn list<R: Resource>(
    cx: Ctx<'_>,
    actor: &Actor,
    paging: Paging,
    tenant_id: Option<&str>,
) -> Result<Page<R::View>> {
    let rows = R::list(cx.pool, paging.rows(actor.confined_to(), tenant_id)).await?;
    Ok(paging.page(rows, R::view))
}

/// One object's view.
pub async fn get<R: Resource>(cx: Ctx<'_>, actor: &Actor, id: &str) -> Result<R::View> {
    let mut conn = cx.pool.acquire().await?;
    Ok(load::<R>(&mut conn, actor, id, false).await?.view())
}

/// The audit record of `action` on the object `id`: from `before`'s view to `after`'s, under
/// the object's tenant.
pub fn change<'a, R: Resource>(
    action: &'a str,
    id: &'a str,
    before: Option<&'a R>,
    after: Option<&'a R>,
) -> Change<'a> {
    Change::of(
        action,
        R::OBJECT_TYPE,
        id,
        after.or(before).and_then(R::tenant_id),
        before.map(R::view).as_ref(),
        after.map(R::view).as_ref(),
    )
}

/// Where snapshot problems are reported when the request body is the object `id`: at the
/// body's own paths (`limits.rpm`), not the snapshot's.
pub fn body_scope<R: Resource>(id: &str) -> Scope {
    Scope::new(R::SECTION, id)
}

/// The tail of a create or an update from a body (`before`: `None` for a create): audit row,
/// commit; the object's new view.
pub async fn saved<R: Resource>(
    cx: Ctx<'_>,
    w: Write,
    id: &str,
    before: Option<&R>,
    row: &R,
) -> Result<(R::View, Committed)> {
    let action = if before.is_some() { "update" } else { "create" };
    let change = change(action, id, before, Some(row));
    let committed = w
        .finish(cx.publisher, change, Some(body_scope::<R>(id)))
        .await?;
    Ok((row.view(), committed))
}

/// A change of an existing object, from its request body.
pub trait Edit<R: Resource>: Send {
    /// Writes the change of the object `id` inside `w`, given its locked row `before`; the
    /// row as written.
    fn apply(self, w: &mut Write, id: &str, before: &R) -> impl Future<Output = Result<R>> + Send;
}

/// Changes the object `id` by `edit`: 404 when it does not exist or the actor may not see it;
/// else the row written, its audit row, commit.
pub async fn update<R: Resource, E: Edit<R>>(
    cx: Ctx<'_>,
    actor: &Actor,
    id: &str,
    edit: E,
) -> Result<(R::View, Committed)> {
    let (mut w, before) = begin::<R>(cx, actor, id).await?;
    let row = edit.apply(&mut w, id, &before).await?;
    saved(cx, w, id, Some(&before), &row).await
}

/// Deletes the object `id`: 404 when it does not exist or the actor may not see it, 409 while
/// others reference it; else audit row, commit.
pub async fn delete<R: Removable>(cx: Ctx<'_>, actor: &Actor, id: &str) -> Result<Committed> {
    let (mut w, before) = begin::<R>(cx, actor, id).await?;
    R::remove(w.conn(), id).await?;
    let change = change("delete", id, Some(&before), None);
    w.finish(cx.publisher, change, None).await
}
