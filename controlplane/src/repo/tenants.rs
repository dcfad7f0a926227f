//! `tenants`.

use sqlx::PgExecutor;
use sqlx::types::Json;
use switchboard_shared::snapshot::Budget;

use super::rows::TenantRow;

/// `$head`, [`TenantRow`]'s columns, then `$tail`: one statement, checked.
macro_rules! q {
    ($head:literal, [$($tail:literal),*] $($args:tt)*) => {
        sqlx::query_as!(
            TenantRow,
            $head + r#" id, name, status, rpm, tpm, budget AS "budget: Json<Budget>", created_at,
            updated_at "# $(+ $tail)* $($args)*
        )
    };
}

/// A tenant's settings as stored (insert and update take the same).
#[derive(Debug)]
pub struct TenantFields<'a> {
    pub name: &'a str,
    pub status: String,
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub budget: Option<&'a Budget>,
}

/// Runs `$sql` (`$1` the id, then the fields in [`TenantFields`]' order) returning the row.
macro_rules! save {
    ($db:expr, $sql:literal, $id:expr, $t:expr) => {
        q!(
            $sql,
            [""],
            $id,
            $t.name,
            &$t.status,
            $t.rpm,
            $t.tpm,
            $t.budget.map(Json) as _
        )
        .fetch_one($db)
        .await
    };
}

get_fn!(TenantRow, q, "FROM tenants WHERE id = $1");

/// Every tenant, by id.
pub async fn all(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<TenantRow>> {
    q!("SELECT", ["FROM tenants ORDER BY id"])
        .fetch_all(db)
        .await
}

tenant_list_fn!(TenantRow, q, "FROM tenants", "id", "id");

save_fns! {
    TenantRow, TenantFields,
    insert: "INSERT INTO tenants (id, name, status, rpm, tpm, budget) \
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING",
    update: "UPDATE tenants SET name = $2, status = $3, rpm = $4, tpm = $5, budget = $6, \
         updated_at = now() WHERE id = $1 RETURNING",
}

// Keys and tenant admins reference the tenant: deleting it while they exist fails (23503).
delete_fn!("DELETE FROM tenants WHERE id = $1");
