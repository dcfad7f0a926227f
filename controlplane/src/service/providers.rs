//! Providers. The upstream credentials are write-only: sealed with the master key before they
//! reach Postgres, never returned, shipped sealed in snapshots.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use switchboard_shared::sealed::{MasterKeys, Sealed};
use switchboard_shared::snapshot::ProviderKind;
use utoipa::ToSchema;

use super::crud::{self, resource};
use super::write::{Change, Committed, Write};
use super::{Actor, Ctx, Error, Result, check_id};
use crate::repo;
use crate::repo::providers::ProviderFields;
pub use crate::repo::rows::ProviderRow;
use crate::repo::rows::{ProviderExtra, SealedKey, enum_text};

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
    ) -> Result<ProviderExtra> {
        let seal = |field: &str, v: &Option<String>, old: &Option<Sealed>| match v {
            Some(v) if v.trim().is_empty() => Err(Error::invalid(field, "must not be empty")),
            Some(v) => Ok(Some(keys.seal(v))),
            None => Ok(old.clone()),
        };
        let api_keys = match self.api_keys {
            None => before.api_keys.clone(),
            Some(list) => {
                let mut out = Vec::with_capacity(list.len());
                for (i, k) in list.iter().enumerate() {
                    if k.key.trim().is_empty() {
                        return Err(Error::invalid(
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

resource!(ProviderRow => ProviderView, repo: providers, noun: "provider",
    object_type: "provider", section: "providers", tenant: |_r| None, removed_by: delete);

fn check_api_key(key: Option<&String>) -> Result<()> {
    if key.is_some_and(|k| k.trim().is_empty()) {
        return Err(Error::invalid("api_key", "must not be empty"));
    }
    Ok(())
}

/// Creates a provider, its credentials sealed with `keys`.
pub async fn create(
    cx: Ctx<'_>,
    actor: &Actor,
    keys: &MasterKeys,
    req: CreateProvider,
) -> Result<(ProviderView, Committed)> {
    check_id("id", &req.id)?;
    check_api_key(req.api_key.as_ref())?;
    let sealed = req.api_key.as_deref().map(|k| keys.seal(k));
    let extra = extra_fields!(req).merge(&ProviderExtra::default(), keys)?;
    let kind = enum_text(&req.kind);
    let fields = ProviderFields {
        kind: &kind,
        base_url: req.base_url.as_deref(),
        credential: sealed.as_ref(),
        extra: &extra,
    };
    let mut w = Write::begin(cx.pool, actor).await?;
    let row = repo::providers::insert(w.conn(), &req.id, &fields).await?;
    crud::saved(cx, w, &req.id, None, &row).await
}

/// Replaces a provider's settings; absent credentials keep the stored ones.
pub async fn update(
    cx: Ctx<'_>,
    actor: &Actor,
    keys: &MasterKeys,
    id: &str,
    req: UpdateProvider,
) -> Result<(ProviderView, Committed)> {
    check_api_key(req.api_key.as_ref())?;
    let (mut w, before) = crud::begin::<ProviderRow>(cx, actor, id).await?;
    let credential = match (&req.api_key, req.remove_api_key) {
        (Some(_), true) => {
            return Err(Error::invalid(
                "remove_api_key",
                "cannot be combined with a new api_key",
            ));
        }
        (Some(k), false) => Some(keys.seal(k)),
        (None, true) => None,
        (None, false) => before.credential.as_ref().map(|c| c.0.clone()),
    };
    let extra = extra_fields!(req).merge(&before.extra.0, keys)?;
    let kind = enum_text(&req.kind);
    let fields = ProviderFields {
        kind: &kind,
        base_url: req.base_url.as_deref(),
        credential: credential.as_ref(),
        extra: &extra,
    };
    let row = repo::providers::update(w.conn(), id, &fields).await?;
    crud::saved(cx, w, id, Some(&before), &row).await
}

/// Re-seals every stored credential not sealed with the current sealing key (master-key
/// rotation, `controlplane keys reseal`), in one write. Returns how many were re-sealed.
pub async fn reseal_credentials(pool: &sqlx::PgPool, keys: &MasterKeys) -> Result<usize> {
    let mut w = Write::begin(pool, &Actor::system()).await?;
    let rows = repo::providers::with_credential_locked(w.conn()).await?;
    let mut count = 0;
    for row in rows {
        let Some(sealed) = &row.credential else {
            continue;
        };
        if sealed.0.key_id == keys.sealing_key_id() {
            continue;
        }
        let resealed = keys
            .reseal(&sealed.0)
            .map_err(|e| Error::Internal(format!("provider {}: cannot re-seal: {e}", row.id)))?;
        repo::providers::set_credential(w.conn(), &row.id, &resealed).await?;
        let before = ProviderView::from(&row);
        let mut after = before.clone();
        after.api_key_sealed_with = Some(resealed.key_id.clone());
        let change = Change::of(
            "reseal",
            "provider",
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
