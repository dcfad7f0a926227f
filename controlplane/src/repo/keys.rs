//! `virtual_keys`: settings, the keyed hash and display prefix of the secret (never the
//! secret), status.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;
use sqlx::types::Json;
use switchboard_shared::snapshot::{Budget, ResponseCache};

use super::rows::KeyRow;

/// `$head`, [`KeyRow`]'s columns, then `$tail`: one statement, checked.
macro_rules! q {
    ($head:literal, [$($tail:literal),*] $($args:tt)*) => {
        sqlx::query_as!(
            KeyRow,
            $head + r#" id, tenant_id, name, key_hash, display_prefix, status, expires_at,
            allowed_models, rpm, tpm, concurrency, budget AS "budget: Json<Budget>",
            metadata AS "metadata: Json<BTreeMap<String, String>>", created_at, updated_at,
            revoked_at, previous_key_hash, previous_expires_at,
            cache AS "cache: Json<ResponseCache>" "# $(+ $tail)* $($args)*
        )
    };
}

/// A key's settings as stored.
#[derive(Debug)]
pub struct KeyFields<'a> {
    pub name: &'a str,
    pub expires_at: Option<DateTime<Utc>>,
    pub allowed_models: &'a [String],
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub concurrency: Option<i64>,
    pub budget: Option<&'a Budget>,
    pub metadata: &'a BTreeMap<String, String>,
    /// The key's own response cache (`None`: the model policy decides).
    pub cache: Option<&'a ResponseCache>,
}

/// A new key's secret as stored: its keyed hash and display prefix.
#[derive(Debug)]
pub struct SecretFields<'a> {
    pub key_hash: &'a str,
    pub display_prefix: &'a str,
}

get_fn!(KeyRow, q, "FROM virtual_keys WHERE id = $1");

// Nothing references a key by foreign key: spend rows keep its id as plain text.
delete_fn!("DELETE FROM virtual_keys WHERE id = $1");

all_fn!(KeyRow, q, ["FROM virtual_keys ORDER BY id"]);

tenant_list_fn!(KeyRow, q, "FROM virtual_keys", "tenant_id", "id");

/// Runs `$sql` — `$1` the id, `$2`..`$10` the [`KeyFields`], then `$extra` — returning the row.
macro_rules! save {
    ($db:expr, $sql:literal, $id:expr, $k:expr $(, $extra:expr)*) => {
        q!(
            $sql,
            [""],
            $id,
            $k.name,
            $k.expires_at,
            $k.allowed_models,
            $k.rpm,
            $k.tpm,
            $k.budget.map(Json) as _,
            Json($k.metadata) as _,
            $k.concurrency,
            $k.cache.map(Json) as _
            $(, $extra)*
        )
        .fetch_one($db)
        .await
    };
}

/// Inserts the key `id` of `tenant_id` with its secret's stored form.
pub async fn insert(
    db: impl PgExecutor<'_>,
    id: &str,
    tenant_id: &str,
    secret: &SecretFields<'_>,
    k: &KeyFields<'_>,
) -> sqlx::Result<KeyRow> {
    save!(
        db,
        "INSERT INTO virtual_keys (id, name, expires_at, allowed_models, rpm, tpm, budget, \
         metadata, concurrency, cache, tenant_id, key_hash, display_prefix) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING",
        id,
        k,
        tenant_id,
        secret.key_hash,
        secret.display_prefix
    )
}

/// Replaces the key's settings.
pub async fn update(db: impl PgExecutor<'_>, id: &str, k: &KeyFields<'_>) -> sqlx::Result<KeyRow> {
    save!(
        db,
        "UPDATE virtual_keys SET name = $2, expires_at = $3, allowed_models = $4, rpm = $5, \
         tpm = $6, budget = $7, metadata = $8, concurrency = $9, cache = $10, updated_at = now() \
         WHERE id = $1 RETURNING",
        id,
        k
    )
}

/// Revokes the key (its first revocation time stays).
pub async fn revoke(db: impl PgExecutor<'_>, id: &str) -> sqlx::Result<KeyRow> {
    q!(
        "UPDATE virtual_keys SET status = 'revoked', revoked_at = coalesce(revoked_at, now()), \
         updated_at = now() WHERE id = $1 RETURNING",
        [""],
        id
    )
    .fetch_one(db)
    .await
}

/// Gives the key a new secret. With a grace window of `grace_minutes` (> 0) the current
/// secret's hash becomes the previous one, valid until now plus the window; with none, any
/// previous secret is dropped at once.
pub async fn set_secret(
    db: impl PgExecutor<'_>,
    id: &str,
    secret: &SecretFields<'_>,
    grace_minutes: u32,
) -> sqlx::Result<KeyRow> {
    q!(
        "UPDATE virtual_keys SET \
         previous_key_hash = CASE WHEN $4 > 0 THEN key_hash END, \
         previous_expires_at = CASE WHEN $4 > 0 THEN now() + make_interval(mins => $4) END, \
         key_hash = $2, display_prefix = $3, updated_at = now() WHERE id = $1 RETURNING",
        [""],
        id,
        secret.key_hash,
        secret.display_prefix,
        i32::try_from(grace_minutes).unwrap_or(i32::MAX)
    )
    .fetch_one(db)
    .await
}
