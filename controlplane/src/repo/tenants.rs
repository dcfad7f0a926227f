//! `tenants`.

use sqlx::types::Json;
use switchboard_shared::snapshot::Budget;

use super::rows::TenantRow;

/// `$head`, [`TenantRow`]'s columns, then `$tail`: one statement, checked.
macro_rules! q {
    ($head:literal, [$($tail:literal),*] $($args:tt)*) => {
        sqlx::query_as!(
            TenantRow,
            $head + r#" id, name, status, rpm, tpm, concurrency, budget AS "budget: Json<Budget>",
            capture_content,
            created_at, updated_at "# $(+ $tail)* $($args)*
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
    pub concurrency: Option<i64>,
    pub budget: Option<&'a Budget>,
    pub capture_content: bool,
}

get_fn!(TenantRow, q, "FROM tenants WHERE id = $1");

all_fn!(TenantRow, q, ["FROM tenants ORDER BY id"]);

tenant_list_fn!(TenantRow, q, "FROM tenants", "id", "id");

save_fns! {
    TenantRow, TenantFields, q,
    |f| [f.name, &f.status, f.rpm, f.tpm, f.budget.map(Json) as _, f.concurrency, f.capture_content],
    insert: "INSERT INTO tenants (id, name, status, rpm, tpm, budget, concurrency, capture_content) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING",
    update: "UPDATE tenants SET name = $2, status = $3, rpm = $4, tpm = $5, budget = $6, \
         concurrency = $7, capture_content = $8, updated_at = now() WHERE id = $1 RETURNING",
}

// Keys and tenant admins reference the tenant: deleting it while they exist fails (23503).
delete_fn!("DELETE FROM tenants WHERE id = $1");
