//! `model_policies`: the routing policy of each public model name.

use sqlx::PgExecutor;
use sqlx::types::Json;
use switchboard_shared::snapshot::ModelPolicy;

use super::rows::PolicyRow;

/// `$head`, [`PolicyRow`]'s columns, then `$tail`: one statement, checked.
macro_rules! q {
    ($head:literal, [$($tail:literal),*] $($args:tt)*) => {
        sqlx::query_as!(
            PolicyRow,
            $head + r#" model, policy AS "policy: Json<ModelPolicy>", created_at, updated_at "#
            $(+ $tail)* $($args)*
        )
    };
}

get_fn!(PolicyRow, q, "FROM model_policies WHERE model = $1");
platform_list_fns!(PolicyRow, q, "FROM model_policies", " ORDER BY model");

/// Creates or replaces the policy of `model`.
pub async fn upsert(
    db: impl PgExecutor<'_>,
    model: &str,
    policy: &ModelPolicy,
) -> sqlx::Result<PolicyRow> {
    q!(
        "INSERT INTO model_policies (model, policy) VALUES ($1, $2) \
         ON CONFLICT (model) DO UPDATE SET policy = EXCLUDED.policy, updated_at = now() \
         RETURNING",
        [""],
        model,
        Json(policy) as _
    )
    .fetch_one(db)
    .await
}

delete_fn!("DELETE FROM model_policies WHERE model = $1");
