//! `deployments`: a provider plus the model name it knows, with weight, limits, price, caps
//! and transforms.

use sqlx::PgExecutor;
use sqlx::types::Json;
use switchboard_shared::price::PriceEntry;
use switchboard_shared::snapshot::{DeploymentCaps, Transforms};

use super::rows::DeploymentRow;

/// `$head`, [`DeploymentRow`]'s columns, then `$tail`: one statement, checked.
macro_rules! q {
    ($head:literal, [$($tail:literal),*] $($args:tt)*) => {
        sqlx::query_as!(
            DeploymentRow,
            $head + r#" id, model, provider_id, upstream_model, weight, tags, rpm, tpm,
            concurrency, priority, price AS "price: Json<PriceEntry>",
            caps AS "caps: Json<DeploymentCaps>", transforms AS "transforms: Json<Transforms>",
            created_at, updated_at "# $(+ $tail)* $($args)*
        )
    };
}

/// A deployment's settings as stored.
#[derive(Debug)]
pub struct DeploymentFields<'a> {
    pub model: &'a str,
    pub provider_id: &'a str,
    pub upstream_model: &'a str,
    pub weight: i64,
    pub tags: &'a [String],
    pub rpm: Option<i64>,
    pub tpm: Option<i64>,
    pub concurrency: Option<i64>,
    pub priority: i64,
    pub price: Option<&'a PriceEntry>,
    pub caps: Option<&'a DeploymentCaps>,
    /// `None` when there are none (stored as SQL `NULL`).
    pub transforms: Option<&'a Transforms>,
}

get_fn!(DeploymentRow, q, "FROM deployments WHERE id = $1");
platform_list_fns!(DeploymentRow, q, "FROM deployments", " ORDER BY id");

save_fns! {
    DeploymentRow, DeploymentFields, q,
    |f| [f.model, f.provider_id, f.upstream_model, f.weight, f.tags, f.rpm, f.tpm, f.priority,
        f.price.map(Json) as _, f.concurrency, f.caps.map(Json) as _,
        f.transforms.map(Json) as _],
    insert: "INSERT INTO deployments (id, model, provider_id, upstream_model, weight, tags, rpm, \
         tpm, priority, price, concurrency, caps, transforms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING",
    update: "UPDATE deployments SET model = $2, provider_id = $3, upstream_model = $4, weight = $5, \
         tags = $6, rpm = $7, tpm = $8, priority = $9, price = $10, concurrency = $11, \
         caps = $12, transforms = $13, updated_at = now() WHERE id = $1 RETURNING",
}

delete_fn!("DELETE FROM deployments WHERE id = $1");

/// The `upstream_model`s of deployments without a price of their own, each with the ids of
/// those deployments, by model.
pub async fn unpriced_models(db: impl PgExecutor<'_>) -> sqlx::Result<Vec<(String, Vec<String>)>> {
    let rows = sqlx::query!(
        r#"SELECT upstream_model, array_agg(id ORDER BY id) AS "ids!" FROM deployments
        WHERE price IS NULL GROUP BY upstream_model ORDER BY upstream_model"#
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.upstream_model, r.ids))
        .collect())
}
