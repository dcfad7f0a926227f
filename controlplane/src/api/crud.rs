//! The parts of the resource handlers that every resource shares, so that a handler states
//! only its own rules and SQL: reading one object the caller may see ([`load`], [`get`],
//! [`begin`] in a write), a page of a list ([`page`]), and the write tail — audit row, commit, answer ([`created`],
//! [`updated`], [`delete`]; [`change`] with [`Write::finish`] for writes answered otherwise).
//!
//! Role checks stay in the handlers: they differ per resource, and where they stand decides
//! between 403 and 404. So do the handlers' shells (extractors and `utoipa::path`), alike in
//! shape but each the documented contract of its route.

use axum::Json;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgConnection};

use super::{ListParams, Page, Wait, deleted, written};
use crate::auth::Caller;
use crate::db::ById;
use crate::error::ApiError;
use crate::state::AppState;
use crate::write::{Change, Scope, Write};

/// One kind of admin object, implemented by its row type.
pub trait Resource: for<'r> FromRow<'r, PgRow> + Send + Sync + Unpin {
    /// What the API answers with and the audit log records: never a secret.
    type View: Serialize + Send;
    /// The object in messages: `tenant`, `virtual key`.
    const NOUN: &'static str;
    /// The audit log's `object_type`: `tenant`, `virtual_key`.
    const OBJECT_TYPE: &'static str;
    /// Its snapshot section ([`Scope`]).
    const SECTION: &'static str;
    /// Reads one by its id.
    const BY_ID: ById;

    fn view(&self) -> Self::View;

    /// The tenant it belongs to; `None` for platform-wide objects (whose routes only platform
    /// readers pass).
    fn tenant_id(&self) -> Option<&str>;
}

/// The object `id` if the caller may see it; 404 when it does not exist and when it belongs to
/// another tenant (the same answer, so that ids do not leak). `lock`: `FOR UPDATE`, in a write.
pub async fn load<R: Resource>(
    conn: &mut PgConnection,
    caller: &Caller,
    id: &str,
    lock: bool,
) -> Result<R, ApiError> {
    match R::BY_ID.fetch::<R>(conn, id, lock).await? {
        Some(row) if row.tenant_id().is_none_or(|t| caller.sees_tenant(t)) => Ok(row),
        _ => Err(ApiError::not_found(R::NOUN, id)),
    }
}

/// Opens a write on the object `id`: [`Write::begin`], then [`load`] it locked. 404 when it
/// does not exist or the caller may not see it.
pub async fn begin<R: Resource>(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<(Write, R), ApiError> {
    let mut w = Write::begin(&state.pool, caller).await?;
    let row = load(w.conn(), caller, id, true).await?;
    Ok((w, row))
}

/// Whether the object `id` exists, whoever may see it (for references in a body).
pub async fn exists<R: Resource>(conn: &mut PgConnection, id: &str) -> Result<bool, ApiError> {
    Ok(R::BY_ID.fetch::<R>(conn, id, false).await?.is_some())
}

/// `GET /{resources}/{id}`.
pub async fn get<R: Resource>(
    state: &AppState,
    caller: &Caller,
    id: &str,
) -> Result<Json<R::View>, ApiError> {
    let mut conn = state.pool.acquire().await?;
    Ok(Json(load::<R>(&mut conn, caller, id, false).await?.view()))
}

/// A list statement, by what confines and filters it.
#[derive(Debug, Clone, Copy)]
pub enum ListSql {
    /// Platform-wide objects: `$1` rows, `$2` offset; `?tenant_id` does not apply.
    Platform(&'static str),
    /// Tenants' objects: `$1` the tenant a tenant admin is confined to, `$2` the `?tenant_id`
    /// filter (either NULL: any tenant), `$3` rows, `$4` offset.
    Tenant(&'static str),
}

/// `GET /{resources}`: one page, `view` of each row. One row more than the page is read, to
/// know whether another page follows.
pub async fn page<Row, T>(
    state: &AppState,
    caller: &Caller,
    params: &ListParams,
    sql: ListSql,
    view: impl Fn(&Row) -> T,
) -> Result<Json<Page<T>>, ApiError>
where
    Row: for<'r> FromRow<'r, PgRow> + Send + Unpin,
{
    let paging = params.paging();
    let query = match sql {
        ListSql::Platform(sql) => sqlx::query_as(sql),
        ListSql::Tenant(sql) => sqlx::query_as(sql)
            .bind(caller.confined_to())
            .bind(params.tenant_id.as_deref()),
    };
    let rows: Vec<Row> = query
        .bind(paging.limit() + 1)
        .bind(paging.offset())
        .fetch_all(&state.pool)
        .await?;
    Ok(Json(paging.page(rows, view)))
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

/// The tail of a create: audit row, commit, 201 with the new object's view.
pub async fn created<R: Resource>(
    state: &AppState,
    w: Write,
    wait: Wait,
    id: &str,
    row: &R,
) -> Result<Response, ApiError> {
    let change = change("create", id, None, Some(row));
    let committed = w
        .finish(Some(&state.publisher), change, Some(body_scope::<R>(id)))
        .await?;
    Ok(written(state, committed, wait, StatusCode::CREATED, row.view()).await)
}

/// The tail of an update from a body: audit row, commit, 200 with the object's new view.
pub async fn updated<R: Resource>(
    state: &AppState,
    w: Write,
    wait: Wait,
    id: &str,
    before: &R,
    row: &R,
) -> Result<Response, ApiError> {
    let change = change("update", id, Some(before), Some(row));
    let committed = w
        .finish(Some(&state.publisher), change, Some(body_scope::<R>(id)))
        .await?;
    Ok(written(state, committed, wait, StatusCode::OK, row.view()).await)
}

/// `DELETE /{resources}/{id}` by `sql` (`$1`: the id): 404 when the object does not exist or
/// the caller may not see it, 409 while others reference it; else audit row, commit, 204.
pub async fn delete<R: Resource>(
    state: &AppState,
    caller: &Caller,
    id: &str,
    wait: Wait,
    sql: &'static str,
) -> Result<Response, ApiError> {
    let (mut w, before) = begin::<R>(state, caller, id).await?;
    sqlx::query(sql).bind(id).execute(w.conn()).await?;
    let change = change("delete", id, Some(&before), None);
    let committed = w.finish(Some(&state.publisher), change, None).await?;
    Ok(deleted(state, committed, wait).await)
}
