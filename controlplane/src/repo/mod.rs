//! The repository layer: every SQL statement of the control plane, one module per table group,
//! each checked against the schema at compile time by sqlx's macros (`query!`, `query_as!`,
//! `query_scalar!`). The metadata they need is checked in (`controlplane/.sqlx/`), so a build
//! needs no database (`SQLX_OFFLINE`); `scripts/sqlx-prepare` regenerates it and
//! `scripts/sqlx-prepare --check` (in CI) fails when it is stale.
//!
//! Functions here take an executor (a pool, a connection or a transaction) and return
//! `sqlx::Result`: no rules, no roles, no HTTP. Optional filters use the
//! `($1::text IS NULL OR col = $1)` idiom, so every statement is static; the two statements
//! that cannot be (the spend partitions' DDL, whose table names carry a date) say why.
//! Lookups by key come in two forms: plain, and `FOR UPDATE` inside a write (`lock`).

/// In a table module whose statement macro is `$q` (`$q!(head, [tail, ...], args...)`: `head`,
/// the row type's columns, then the tail pieces): `get(conn, key, lock)`, the row whose key is
/// `$1`, plain or `FOR UPDATE` inside a write. Both statements are checked at compile time.
macro_rules! get_fn {
    ($row:ty, $q:ident, $where:literal) => {
        /// The row with key `key` (`lock`: `FOR UPDATE`, inside a write).
        pub async fn get(
            conn: &mut sqlx::PgConnection,
            key: &str,
            lock: bool,
        ) -> sqlx::Result<Option<$row>> {
            if lock {
                $q!("SELECT", [$where, " FOR UPDATE"], key)
                    .fetch_optional(conn)
                    .await
            } else {
                $q!("SELECT", [$where], key).fetch_optional(conn).await
            }
        }
    };
}

/// In a table module: `list(db, f)`, one page — `$q!("SELECT", [tail...], args...)` — of rows.
/// `platform_list_fns!` and `tenant_list_fn!` say which page.
macro_rules! list_fn {
    ($row:ty, $q:ident, [$($tail:literal),*] $(, $arg:ident)*) => {
        /// One page, `f.limit` rows from `f.offset`.
        pub async fn list(
            db: impl sqlx::PgExecutor<'_>,
            f: $crate::repo::ListFilter<'_>,
        ) -> sqlx::Result<Vec<$row>> {
            $q!("SELECT", [$($tail),*] $(, f.$arg)*).fetch_all(db).await
        }
    };
}

/// In a table module of platform-wide objects: `list(db, f)` and `all(db)` in `$order` (no
/// tenant filter applies).
macro_rules! platform_list_fns {
    ($row:ty, $q:ident, $from:literal, $order:literal) => {
        list_fn!(
            $row,
            $q,
            [$from, $order, " LIMIT $1 OFFSET $2"],
            limit,
            offset
        );

        /// All of them (the snapshot build).
        pub async fn all(db: impl sqlx::PgExecutor<'_>) -> sqlx::Result<Vec<$row>> {
            $q!("SELECT", [$from, $order]).fetch_all(db).await
        }
    };
}

/// In a table module of tenants' objects: `list(db, f)`, one page in `$order`, a tenant
/// admin's own tenant's only (`f.confined_to`) and filtered by `f.tenant_id`, both on `$column`.
macro_rules! tenant_list_fn {
    ($row:ty, $q:ident, $from:literal, $column:literal, $order:literal) => {
        list_fn!(
            $row,
            $q,
            [
                $from,
                " WHERE ($1::text IS NULL OR ",
                $column,
                " = $1) AND ($2::text IS NULL OR ",
                $column,
                " = $2) ORDER BY ",
                $order,
                " LIMIT $3 OFFSET $4"
            ],
            confined_to,
            tenant_id,
            limit,
            offset
        );
    };
}

/// In a table module whose statement macro is `$q`: `insert(db, id, fields)` and
/// `update(db, id, fields)`, the statements `$insert` and `$update` — `$1` the id, then the
/// values `|$f| ...` lists from the fields — each answering the row.
macro_rules! save_fns {
    (
        $row:ty, $fields:ident, $q:ident, |$f:ident| [$($value:tt)*],
        insert: $insert:literal, update: $update:literal $(,)?
    ) => {
        save_fns!(@fn insert, $row, $fields, $q, |$f| [$($value)*], $insert,
            "Inserts the row `id`; a taken id fails (23505).");
        save_fns!(@fn update, $row, $fields, $q, |$f| [$($value)*], $update,
            "Replaces the stored settings of the row `id`.");
    };
    (@fn $name:ident, $row:ty, $fields:ident, $q:ident, |$f:ident| [$($value:tt)*],
        $sql:literal, $doc:literal) => {
        #[doc = $doc]
        pub async fn $name(
            db: impl sqlx::PgExecutor<'_>,
            id: &str,
            $f: &$fields<'_>,
        ) -> sqlx::Result<$row> {
            $q!($sql, [""], id, $($value)*).fetch_one(db).await
        }
    };
}

/// In a table module: `all(db)`, every row — `$q!("SELECT", [tail...])`.
macro_rules! all_fn {
    ($row:ty, $q:ident, [$($tail:literal),*]) => {
        /// Every row (the snapshot build).
        pub async fn all(db: impl sqlx::PgExecutor<'_>) -> sqlx::Result<Vec<$row>> {
            $q!("SELECT", [$($tail),*]).fetch_all(db).await
        }
    };
}

/// `delete(db, key)`: runs `$sql` (`$1` the key). A row still referenced fails with 23503.
macro_rules! delete_fn {
    ($sql:literal) => {
        /// Deletes the row with key `key` (nothing when there is none).
        pub async fn delete(db: impl sqlx::PgExecutor<'_>, key: &str) -> sqlx::Result<()> {
            sqlx::query!($sql, key).execute(db).await.map(|_| ())
        }
    };
}

pub mod admins;
pub mod audit;
pub mod budgets;
pub mod clock;
pub mod dead_letters;
pub mod deployments;
pub mod health;
pub mod keys;
pub mod models;
pub mod prices;
pub mod providers;
pub mod requests;
pub mod revision;
pub mod rows;
pub mod spend;
pub mod tenants;

use sqlx::{PgPool, Postgres, Transaction};

/// A `REPEATABLE READ, READ ONLY` transaction: several reads that see one state.
pub async fn read_only(pool: &PgPool) -> sqlx::Result<Transaction<'static, Postgres>> {
    let mut tx = pool.begin().await?;
    sqlx::query!("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await?;
    Ok(tx)
}

/// One list page in rows: `limit` rows (the service asks one more than its page, to know
/// whether another follows) from `offset`, confined to a tenant and filtered by one.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListFilter<'a> {
    /// The tenant a tenant admin is confined to (`None`: any).
    pub confined_to: Option<&'a str>,
    /// The `?tenant_id` filter (`None`: any).
    pub tenant_id: Option<&'a str>,
    pub limit: i64,
    pub offset: i64,
}
