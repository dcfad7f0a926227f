//! Providers: `/admin/v1/providers`. The upstream credential is write-only: sealed with the
//! master key before it reaches Postgres, never returned, shipped sealed in snapshots.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use sqlx::types::Json as Jsonb;
use switchboard_shared::sealed::Sealed;
use switchboard_shared::snapshot::ProviderKind;
use utoipa::ToSchema;

use super::crud::{self, ListSql, Resource};
use super::{ListParams, Page, Wait, check_id};
use crate::auth::Caller;
use crate::body::Body;
use crate::db::ById;
use crate::error::{ApiError, Problem};
use crate::rows::{ProviderExtra, ProviderRow, SealedKey, enum_text};
use crate::state::AppState;
use crate::write::{Change, Write};
use crate::{by_id, provider_columns};

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProviderView {
    pub id: String,
    /// `openai` or `mock`.
    pub kind: String,
    pub base_url: Option<String>,
    /// Whether a credential is stored (it is never returned).
    pub has_api_key: bool,
    /// Id of the master key that sealed the credential.
    pub api_key_sealed_with: Option<String>,
    /// Azure OpenAI's `api-version`.
    pub api_version: Option<String>,
    /// Bedrock's AWS region.
    pub region: Option<String>,
    /// Whether AWS credentials are stored (never returned).
    pub has_aws_credentials: bool,
    /// How many weighted credentials (`api_keys`) are stored (never returned).
    pub api_key_count: usize,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&ProviderRow> for ProviderView {
    fn from(r: &ProviderRow) -> Self {
        Self {
            id: r.id.clone(),
            kind: r.kind.clone(),
            base_url: r.base_url.clone(),
            has_api_key: r.credential.is_some(),
            api_key_sealed_with: r.credential.as_ref().map(|c| c.0.key_id.clone()),
            api_version: r.extra.0.api_version.clone(),
            region: r.extra.0.region.clone(),
            has_aws_credentials: r.extra.0.aws_access_key_id.is_some(),
            api_key_count: r.extra.0.api_keys.len(),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProvider {
    pub id: String,
    #[schema(value_type = String, example = "openai")]
    pub kind: ProviderKind,
    /// Including the API version path, e.g. `https://api.openai.com/v1`.
    pub base_url: Option<String>,
    /// The upstream credential. Write-only.
    pub api_key: Option<String>,
    /// Azure OpenAI's `api-version` (required for `azure`).
    pub api_version: Option<String>,
    /// AWS region (required for `bedrock`).
    pub region: Option<String>,
    /// AWS credentials for SigV4 (`bedrock`). Write-only.
    pub aws_access_key_id: Option<String>,
    pub aws_secret_access_key: Option<String>,
    pub aws_session_token: Option<String>,
    /// Several credentials used by weight, instead of `api_key`. Write-only.
    pub api_keys: Option<Vec<NewProviderKey>>,
}

/// Settings some kinds need (validated per kind with the whole config). Credentials are
/// write-only; on update an absent field keeps the stored value.
#[derive(Debug)]
struct ExtraFields<'a> {
    api_version: &'a Option<String>,
    region: &'a Option<String>,
    aws_access_key_id: &'a Option<String>,
    aws_secret_access_key: &'a Option<String>,
    aws_session_token: &'a Option<String>,
    api_keys: &'a Option<Vec<NewProviderKey>>,
}

macro_rules! extra_fields {
    ($req:expr) => {
        ExtraFields {
            api_version: &$req.api_version,
            region: &$req.region,
            aws_access_key_id: &$req.aws_access_key_id,
            aws_secret_access_key: &$req.aws_secret_access_key,
            aws_session_token: &$req.aws_session_token,
            api_keys: &$req.api_keys,
        }
    };
}

/// One weighted credential.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewProviderKey {
    pub key: String,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

impl ExtraFields<'_> {
    /// The stored form: new values sealed, absent ones taken from `before`.
    fn merge(
        &self,
        before: &ProviderExtra,
        keys: &switchboard_shared::sealed::MasterKeys,
    ) -> Result<ProviderExtra, ApiError> {
        let seal = |field: &str, v: &Option<String>, old: &Option<Sealed>| match v {
            Some(v) if v.trim().is_empty() => Err(ApiError::invalid(field, "must not be empty")),
            Some(v) => Ok(Some(keys.seal(v))),
            None => Ok(old.clone()),
        };
        let api_keys = match self.api_keys {
            None => before.api_keys.clone(),
            Some(list) => {
                let mut out = Vec::with_capacity(list.len());
                for (i, k) in list.iter().enumerate() {
                    if k.key.trim().is_empty() {
                        return Err(ApiError::invalid(
                            format!("api_keys[{i}].key"),
                            "must not be empty",
                        ));
                    }
                    out.push(SealedKey {
                        key: keys.seal(&k.key),
                        weight: k.weight,
                    });
                }
                out
            }
        };
        Ok(ProviderExtra {
            api_version: self
                .api_version
                .clone()
                .or_else(|| before.api_version.clone()),
            region: self.region.clone().or_else(|| before.region.clone()),
            aws_access_key_id: seal(
                "aws_access_key_id",
                self.aws_access_key_id,
                &before.aws_access_key_id,
            )?,
            aws_secret_access_key: seal(
                "aws_secret_access_key",
                self.aws_secret_access_key,
                &before.aws_secret_access_key,
            )?,
            aws_session_token: seal(
                "aws_session_token",
                self.aws_session_token,
                &before.aws_session_token,
            )?,
            api_keys,
        })
    }
}

// The fields repeat `CreateProvider`'s: serde's `flatten` does not work with
// `deny_unknown_fields`, which every body needs. `extra_fields!` reads both one way.
/// Replaces a provider's settings; an absent `api_key` keeps the stored one.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateProvider {
    #[schema(value_type = String, example = "openai")]
    pub kind: ProviderKind,
    pub base_url: Option<String>,
    /// A new upstream credential. Write-only.
    pub api_key: Option<String>,
    /// Removes the stored credential.
    #[serde(default)]
    pub remove_api_key: bool,
    /// Azure OpenAI's `api-version` (required for `azure`).
    pub api_version: Option<String>,
    /// AWS region (required for `bedrock`).
    pub region: Option<String>,
    /// AWS credentials for SigV4 (`bedrock`). Write-only.
    pub aws_access_key_id: Option<String>,
    pub aws_secret_access_key: Option<String>,
    pub aws_session_token: Option<String>,
    /// Several credentials used by weight, instead of `api_key`. Write-only.
    pub api_keys: Option<Vec<NewProviderKey>>,
}

impl Resource for ProviderRow {
    type View = ProviderView;
    const NOUN: &'static str = "provider";
    const OBJECT_TYPE: &'static str = "provider";
    const SECTION: &'static str = "providers";
    const BY_ID: ById = by_id!(
        "SELECT ",
        provider_columns!(),
        " FROM providers WHERE id = $1"
    );

    fn view(&self) -> ProviderView {
        ProviderView::from(self)
    }

    fn tenant_id(&self) -> Option<&str> {
        None
    }
}

const LIST: ListSql = ListSql::Platform(concat!(
    "SELECT ",
    provider_columns!(),
    " FROM providers ORDER BY id LIMIT $1 OFFSET $2"
));
const INSERT: &str = concat!(
    "INSERT INTO providers (id, kind, base_url, credential, extra) VALUES ($1, $2, $3, $4, $5) \
     RETURNING ",
    provider_columns!()
);
const UPDATE: &str = concat!(
    "UPDATE providers SET kind = $2, base_url = $3, credential = $4, extra = $5, \
     updated_at = now() WHERE id = $1 RETURNING ",
    provider_columns!()
);
const DELETE: &str = "DELETE FROM providers WHERE id = $1";

/// Runs [`INSERT`] or [`UPDATE`], which take the same parameters.
async fn save(
    conn: &mut PgConnection,
    sql: &'static str,
    id: &str,
    kind: &ProviderKind,
    base_url: &Option<String>,
    credential: Option<Jsonb<Sealed>>,
    extra: ProviderExtra,
) -> Result<ProviderRow, sqlx::Error> {
    sqlx::query_as(sql)
        .bind(id)
        .bind(enum_text(kind))
        .bind(base_url)
        .bind(credential)
        .bind(Jsonb(extra))
        .fetch_one(conn)
        .await
}

fn check_api_key(key: Option<&String>) -> Result<(), ApiError> {
    if key.is_some_and(|k| k.trim().is_empty()) {
        return Err(ApiError::invalid("api_key", "must not be empty"));
    }
    Ok(())
}

#[utoipa::path(get, path = "/providers", tag = "providers", params(ListParams),
    responses((status = 200, body = Page<ProviderView>), (status = 403, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: ListParams,
) -> Result<Json<Page<ProviderView>>, ApiError> {
    caller.require_platform_reader()?;
    crud::page(&state, &caller, &params, LIST, ProviderRow::view).await
}

#[utoipa::path(get, path = "/providers/{id}", tag = "providers", params(("id" = String, Path)),
    responses((status = 200, body = ProviderView), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<ProviderView>, ApiError> {
    caller.require_platform_reader()?;
    crud::get::<ProviderRow>(&state, &caller, &id).await
}

#[utoipa::path(post, path = "/providers", tag = "providers", params(Wait), request_body = CreateProvider,
    responses((status = 201, body = ProviderView), (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    wait: Wait,
    Body(req): Body<CreateProvider>,
) -> Result<Response, ApiError> {
    caller.require_platform_admin()?;
    check_id("id", &req.id)?;
    check_api_key(req.api_key.as_ref())?;
    let sealed = req
        .api_key
        .as_deref()
        .map(|k| Jsonb(state.settings.master_keys.seal(k)));
    let extra = extra_fields!(req).merge(&ProviderExtra::default(), &state.settings.master_keys)?;
    let mut w = Write::begin(&state.pool, &caller).await?;
    let row = save(
        w.conn(),
        INSERT,
        &req.id,
        &req.kind,
        &req.base_url,
        sealed,
        extra,
    )
    .await?;
    crud::created(&state, w, wait, &row.id, &row).await
}

#[utoipa::path(put, path = "/providers/{id}", tag = "providers", params(("id" = String, Path), Wait),
    request_body = UpdateProvider,
    responses((status = 200, body = ProviderView), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    wait: Wait,
    Body(req): Body<UpdateProvider>,
) -> Result<Response, ApiError> {
    caller.require_platform_admin()?;
    check_api_key(req.api_key.as_ref())?;
    let (mut w, before) = crud::begin::<ProviderRow>(&state, &caller, &id).await?;
    let credential = match (&req.api_key, req.remove_api_key) {
        (Some(_), true) => {
            return Err(ApiError::invalid(
                "remove_api_key",
                "cannot be combined with a new api_key",
            ));
        }
        (Some(k), false) => Some(Jsonb(state.settings.master_keys.seal(k))),
        (None, true) => None,
        (None, false) => before.credential.clone(),
    };
    let extra = extra_fields!(req).merge(&before.extra.0, &state.settings.master_keys)?;
    let row = save(
        w.conn(),
        UPDATE,
        &id,
        &req.kind,
        &req.base_url,
        credential,
        extra,
    )
    .await?;
    crud::updated(&state, w, wait, &id, &before, &row).await
}

#[utoipa::path(delete, path = "/providers/{id}", tag = "providers", params(("id" = String, Path), Wait),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    wait: Wait,
) -> Result<Response, ApiError> {
    caller.require_platform_admin()?;
    crud::delete::<ProviderRow>(&state, &caller, &id, wait, DELETE).await
}

/// Re-seals every stored credential not sealed with the current sealing key (master-key
/// rotation, `controlplane keys reseal`), in one write. Returns how many were re-sealed.
pub async fn reseal_credentials(
    pool: &sqlx::PgPool,
    keys: &switchboard_shared::sealed::MasterKeys,
) -> Result<usize, ApiError> {
    let mut w = Write::begin(pool, &Caller::system()).await?;
    let rows: Vec<ProviderRow> = sqlx::query_as(concat!(
        "SELECT ",
        provider_columns!(),
        " FROM providers WHERE credential IS NOT NULL ORDER BY id FOR UPDATE"
    ))
    .fetch_all(w.conn())
    .await?;
    let mut count = 0;
    for row in rows {
        let Some(Jsonb(sealed)) = &row.credential else {
            continue;
        };
        if sealed.key_id == keys.sealing_key_id() {
            continue;
        }
        let resealed = keys
            .reseal(sealed)
            .map_err(|e| ApiError::Internal(format!("provider {}: cannot re-seal: {e}", row.id)))?;
        sqlx::query("UPDATE providers SET credential = $2, updated_at = now() WHERE id = $1")
            .bind(&row.id)
            .bind(Jsonb(&resealed))
            .execute(w.conn())
            .await?;
        let before = row.view();
        let mut after = before.clone();
        after.api_key_sealed_with = Some(resealed.key_id.clone());
        let change = Change::of(
            "reseal",
            ProviderRow::OBJECT_TYPE,
            &row.id,
            None,
            Some(&before),
            Some(&after),
        );
        w.audit(change).await?;
        count += 1;
    }
    w.commit(None, None).await?;
    Ok(count)
}
