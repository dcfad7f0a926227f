//! `providers`: kind, base URL, the sealed credential and the sealed extras.

use sqlx::types::Json;
use sqlx::{PgConnection, PgExecutor};
use switchboard_shared::sealed::Sealed;

use super::rows::{ProviderExtra, ProviderRow};

/// `$head`, [`ProviderRow`]'s columns, then `$tail`: one statement, checked.
macro_rules! q {
    ($head:literal, [$($tail:literal),*] $($args:tt)*) => {
        sqlx::query_as!(
            ProviderRow,
            $head + r#" id, kind, base_url, credential AS "credential: Json<Sealed>",
            extra AS "extra: Json<ProviderExtra>", created_at, updated_at "#
            $(+ $tail)* $($args)*
        )
    };
}

/// A provider's settings as stored (credentials sealed).
#[derive(Debug)]
pub struct ProviderFields<'a> {
    pub kind: &'a str,
    pub base_url: Option<&'a str>,
    pub credential: Option<&'a Sealed>,
    pub extra: &'a ProviderExtra,
}

get_fn!(ProviderRow, q, "FROM providers WHERE id = $1");
platform_list_fns!(ProviderRow, q, "FROM providers", " ORDER BY id");

save_fns! {
    ProviderRow, ProviderFields, q, |f| [f.kind, f.base_url, f.credential.map(Json) as _, Json(f.extra) as _],
    insert: "INSERT INTO providers (id, kind, base_url, credential, extra) \
         VALUES ($1, $2, $3, $4, $5) RETURNING",
    update: "UPDATE providers SET kind = $2, base_url = $3, credential = $4, extra = $5, \
         updated_at = now() WHERE id = $1 RETURNING",
}

// Deployments reference the provider: deleting it while they exist fails (23503).
delete_fn!("DELETE FROM providers WHERE id = $1");

/// Every provider, locked (master-key rotation).
pub async fn all_locked(conn: &mut PgConnection) -> sqlx::Result<Vec<ProviderRow>> {
    q!("SELECT", ["FROM providers ORDER BY id FOR UPDATE"])
        .fetch_all(conn)
        .await
}

/// Replaces the provider's sealed fields (re-sealed): the credential and the extras.
pub async fn set_sealed(
    db: impl PgExecutor<'_>,
    id: &str,
    credential: Option<&Sealed>,
    extra: &ProviderExtra,
) -> sqlx::Result<()> {
    sqlx::query!(
        "UPDATE providers SET credential = $2, extra = $3, updated_at = now() WHERE id = $1",
        id,
        credential.map(Json) as _,
        Json(extra) as _
    )
    .execute(db)
    .await?;
    Ok(())
}
