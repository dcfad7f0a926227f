//! Providers. The upstream credentials are write-only: sealed with the master key before they
//! reach Postgres, never returned, shipped sealed in snapshots.
//!
//! Because they are write-only, the place they are sent is guarded too: a base URL must be
//! `https` (plain `http` only for the configured `providers.http_hosts`, loopback by default),
//! name a host of `providers.allowed_hosts` when that list is set, and carry no user info; and
//! an update that changes `base_url` or `kind` must re-enter every stored credential, so that
//! nobody can point a stored secret at a host of their choosing.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use switchboard_shared::sealed::{MasterKeys, Sealed};
use switchboard_shared::snapshot::ProviderKind;
use utoipa::ToSchema;

use super::crud::{self, resource};
use super::write::{Change, Committed, Write};
use super::{Actor, Ctx, Error, FieldError, Result, check_id};
use crate::config::ProvidersConfig;
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
    /// Bedrock's AWS region, or Vertex AI's location.
    pub region: Option<String>,
    /// Vertex AI's Google Cloud project (when not the service account's own).
    pub project: Option<String>,
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
            project: r.extra.0.project.clone(),
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
    /// The upstream credential (for `vertex`: the service account's JSON key). Write-only.
    pub api_key: Option<String>,
    /// Azure OpenAI's `api-version` (required for `azure`).
    pub api_version: Option<String>,
    /// AWS region (required for `bedrock`), or the Google Cloud location (required for
    /// `vertex`: `us-central1`, `global`, ...).
    pub region: Option<String>,
    /// The Google Cloud project (`vertex`; defaults to the service account's `project_id`).
    pub project: Option<String>,
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
    project: &'a Option<String>,
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
            project: &$req.project,
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
            project: self.project.clone().or_else(|| before.project.clone()),
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
    /// AWS region (required for `bedrock`), or the Google Cloud location (required for
    /// `vertex`: `us-central1`, `global`, ...).
    pub region: Option<String>,
    /// The Google Cloud project (`vertex`; defaults to the service account's `project_id`).
    pub project: Option<String>,
    /// AWS credentials for SigV4 (`bedrock`). Write-only.
    pub aws_access_key_id: Option<String>,
    pub aws_secret_access_key: Option<String>,
    pub aws_session_token: Option<String>,
    /// Several credentials used by weight, instead of `api_key`. Write-only.
    pub api_keys: Option<Vec<NewProviderKey>>,
}

resource!(ProviderRow => ProviderView, repo: providers, noun: "provider",
    object_type: "provider", section: "providers", tenant: |_r| None, removed_by: delete);

/// What provider writes need from the settings: the master keys that seal credentials and the
/// base-URL rules.
#[derive(Clone, Copy)]
pub struct ProviderRules<'a> {
    pub keys: &'a MasterKeys,
    pub urls: &'a ProvidersConfig,
}

/// Whether `host` matches `pattern`: equal (any case), or `*.suffix` and a subdomain of it.
fn host_matches(pattern: &str, host: &str) -> bool {
    let (pattern, host) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    let pattern = pattern.trim_start_matches('[').trim_end_matches(']');
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        None => pattern == host,
    }
}

/// The base-URL rules of the module header, as a problem at `base_url`.
pub fn check_base_url(rules: &ProvidersConfig, base_url: &str) -> Result<()> {
    let bad = |message: String| Err(Error::invalid("base_url", message));
    let Ok(url) = reqwest::Url::parse(base_url) else {
        return bad("must be an absolute http(s) URL".into());
    };
    let Some(host) = url.host_str() else {
        return bad("must name a host".into());
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if !url.username().is_empty() || url.password().is_some() {
        return bad("must not carry user info; use the credential fields".into());
    }
    let any = |patterns: &[String]| patterns.iter().any(|p| host_matches(p, host));
    match url.scheme() {
        "https" => {}
        "http" if any(&rules.http_hosts) => {}
        "http" => {
            return bad(format!(
                "must use https; plain http is allowed only for providers.http_hosts ({host} is not one)"
            ));
        }
        other => return bad(format!("scheme {other:?} is not http(s)")),
    }
    if !rules.allowed_hosts.is_empty() && !any(&rules.allowed_hosts) {
        return bad(format!(
            "host {host} is not in this control plane's providers.allowed_hosts"
        ));
    }
    Ok(())
}

/// A change of `base_url` or `kind` must re-enter every stored credential: the problems, one
/// per credential kept from before.
fn check_credentials_reentered(before: &ProviderRow, req: &UpdateProvider) -> Result<()> {
    let kind = enum_text(&req.kind);
    if before.base_url.as_deref() == req.base_url.as_deref() && before.kind == kind {
        return Ok(());
    }
    let why = "must be given again when base_url or kind changes (stored credentials are \
               never sent to a new destination)";
    let mut problems = Vec::new();
    if before.credential.is_some() && req.api_key.is_none() && !req.remove_api_key {
        problems.push(FieldError::new("api_key", why));
    }
    let extra = &before.extra.0;
    let kept = [
        (
            "aws_access_key_id",
            extra.aws_access_key_id.is_some(),
            req.aws_access_key_id.is_none(),
        ),
        (
            "aws_secret_access_key",
            extra.aws_secret_access_key.is_some(),
            req.aws_secret_access_key.is_none(),
        ),
        (
            "aws_session_token",
            extra.aws_session_token.is_some(),
            req.aws_session_token.is_none(),
        ),
        (
            "api_keys",
            !extra.api_keys.is_empty(),
            req.api_keys.is_none(),
        ),
    ];
    for (field, stored, absent) in kept {
        if stored && absent {
            problems.push(FieldError::new(field, why));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Error::Invalid(problems))
    }
}

fn check_api_key(key: Option<&String>) -> Result<()> {
    if key.is_some_and(|k| k.trim().is_empty()) {
        return Err(Error::invalid("api_key", "must not be empty"));
    }
    Ok(())
}

/// Where a key file without `token_uri` gets its tokens (as the data plane's Vertex adaptor).
const GOOGLE_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// A Vertex AI credential must be a service account's JSON key whose `token_uri` passes the
/// base-URL rules: the data plane sends a signed assertion there, which is worth a token. The
/// problem is reported at `field` and never quotes the key.
fn check_service_account(rules: &ProvidersConfig, field: &str, json: &str) -> Result<()> {
    #[derive(Deserialize)]
    struct KeyFile {
        #[serde(rename = "type")]
        kind: String,
        client_email: String,
        private_key: String,
        #[serde(default)]
        token_uri: Option<String>,
    }
    let bad = |message: &str| Err(Error::invalid(field, message));
    let Ok(key) = serde_json::from_str::<KeyFile>(json) else {
        return bad(
            "must be a service account's JSON key file (type, client_email, private_key, token_uri)",
        );
    };
    if key.kind != "service_account" {
        return bad("the key file's type must be service_account");
    }
    if key.client_email.is_empty() || !key.private_key.contains("PRIVATE KEY-----") {
        return bad("the key file needs client_email and a PEM private_key");
    }
    let uri = key.token_uri.as_deref().unwrap_or(GOOGLE_TOKEN_URI);
    check_base_url(rules, uri).map_err(|e| match e {
        Error::Invalid(problems) => Error::Invalid(
            problems
                .into_iter()
                .map(|p| FieldError::new(field, format!("token_uri {}", p.message)))
                .collect(),
        ),
        other => other,
    })
}

/// The Vertex credentials of a write checked with [`check_service_account`].
fn check_vertex_credentials(
    rules: &ProvidersConfig,
    kind: ProviderKind,
    api_key: Option<&String>,
    api_keys: Option<&Vec<NewProviderKey>>,
) -> Result<()> {
    if kind != ProviderKind::Vertex {
        return Ok(());
    }
    if let Some(key) = api_key {
        check_service_account(rules, "api_key", key)?;
    }
    for (i, k) in api_keys.into_iter().flatten().enumerate() {
        check_service_account(rules, &format!("api_keys[{i}].key"), &k.key)?;
    }
    Ok(())
}

/// Creates a provider, its credentials sealed with the rules' keys.
pub async fn create(
    cx: Ctx<'_>,
    actor: &Actor,
    rules: ProviderRules<'_>,
    req: CreateProvider,
) -> Result<(ProviderView, Committed)> {
    let keys = rules.keys;
    check_id("id", &req.id)?;
    check_api_key(req.api_key.as_ref())?;
    check_vertex_credentials(
        rules.urls,
        req.kind,
        req.api_key.as_ref(),
        req.api_keys.as_ref(),
    )?;
    if let Some(url) = &req.base_url {
        check_base_url(rules.urls, url)?;
    }
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

/// Replaces a provider's settings; absent credentials keep the stored ones, unless the base URL
/// or kind changes (then they must be given again).
pub async fn update(
    cx: Ctx<'_>,
    actor: &Actor,
    rules: ProviderRules<'_>,
    id: &str,
    req: UpdateProvider,
) -> Result<(ProviderView, Committed)> {
    let keys = rules.keys;
    check_api_key(req.api_key.as_ref())?;
    check_vertex_credentials(
        rules.urls,
        req.kind,
        req.api_key.as_ref(),
        req.api_keys.as_ref(),
    )?;
    if let Some(url) = &req.base_url {
        check_base_url(rules.urls, url)?;
    }
    let (mut w, before) = crud::begin::<ProviderRow>(cx, actor, id).await?;
    check_credentials_reentered(&before, &req)?;
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

/// One sealed value under the current sealing key: `None` when it already is.
fn resealed(keys: &MasterKeys, id: &str, field: &str, sealed: &Sealed) -> Result<Option<Sealed>> {
    if sealed.key_id == keys.sealing_key_id() {
        return Ok(None);
    }
    keys.reseal(sealed)
        .map(Some)
        .map_err(|e| Error::Internal(format!("provider {id}: cannot re-seal {field}: {e}")))
}

/// The row's sealed fields — the credential, the AWS keys and every weighted key in `extra` —
/// under the current sealing key; `None` when all of them already are.
fn reseal_row(
    keys: &MasterKeys,
    row: &ProviderRow,
) -> Result<Option<(Option<Sealed>, ProviderExtra)>> {
    let mut changed = false;
    let mut one = |field: &str, value: &Option<Sealed>| -> Result<Option<Sealed>> {
        let Some(sealed) = value else {
            return Ok(None);
        };
        Ok(Some(match resealed(keys, &row.id, field, sealed)? {
            Some(new) => {
                changed = true;
                new
            }
            None => sealed.clone(),
        }))
    };
    let credential = one("api_key", &row.credential.as_ref().map(|c| c.0.clone()))?;
    let old = &row.extra.0;
    let mut extra = old.clone();
    extra.aws_access_key_id = one("aws_access_key_id", &old.aws_access_key_id)?;
    extra.aws_secret_access_key = one("aws_secret_access_key", &old.aws_secret_access_key)?;
    extra.aws_session_token = one("aws_session_token", &old.aws_session_token)?;
    for (i, k) in extra.api_keys.iter_mut().enumerate() {
        if let Some(new) = one(&format!("api_keys[{i}]"), &Some(k.key.clone()))? {
            k.key = new;
        }
    }
    Ok(changed.then_some((credential, extra)))
}

/// Re-seals every sealed provider field not sealed with the current sealing key — the
/// credential, Bedrock's AWS keys and the weighted `api_keys` in `extra` (master-key
/// rotation, `controlplane keys reseal`), in one write. Returns how many providers changed.
pub async fn reseal_credentials(pool: &sqlx::PgPool, keys: &MasterKeys) -> Result<usize> {
    let mut w = Write::begin(pool, &Actor::system()).await?;
    let rows = repo::providers::all_locked(w.conn()).await?;
    let mut count = 0;
    for row in rows {
        let Some((credential, extra)) = reseal_row(keys, &row)? else {
            continue;
        };
        repo::providers::set_sealed(w.conn(), &row.id, credential.as_ref(), &extra).await?;
        let before = ProviderView::from(&row);
        let mut after = before.clone();
        after.api_key_sealed_with = credential.as_ref().map(|c| c.key_id.clone());
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_need_https_except_for_http_hosts_and_match_the_allow_list() {
        let open = ProvidersConfig::default();
        for ok in [
            "https://api.openai.com/v1",
            "http://127.0.0.1:9000/v1",
            "http://localhost/v1",
            "http://[::1]:8080",
        ] {
            assert!(check_base_url(&open, ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://evil.example/v1",
            "ftp://api.openai.com",
            "not a url",
            "https://user:pw@api.openai.com/v1",
            "http://127.0.0.1.evil.example/v1",
        ] {
            assert!(check_base_url(&open, bad).is_err(), "{bad}");
        }
        let listed = ProvidersConfig {
            allowed_hosts: vec!["api.openai.com".into(), "*.openai.azure.com".into()],
            http_hosts: vec![],
        };
        assert!(check_base_url(&listed, "https://api.openai.com/v1").is_ok());
        assert!(check_base_url(&listed, "https://r1.openai.azure.com").is_ok());
        assert!(check_base_url(&listed, "https://openai.azure.com").is_err());
        assert!(check_base_url(&listed, "https://evilopenai.azure.com").is_err());
        assert!(check_base_url(&listed, "https://api.openai.com.evil.example").is_err());
        assert!(check_base_url(&listed, "http://127.0.0.1/v1").is_err());
    }
}
