//! `controlplane import litellm`: moving from a LiteLLM proxy. [`plan`](plan::plan) reads the
//! LiteLLM `config.yaml` into providers, deployments and model policies; [`apply`] writes them
//! through the ordinary service write path (each a revision with its audit row, validated like
//! an admin API call), so nothing reaches Postgres that the admin API would refuse. Objects
//! whose id already exists are left alone and reported, so an import can be run again.

pub mod plan;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use switchboard_shared::sealed::MasterKeys;
use switchboard_shared::snapshot::{Cooldown, RateLimits, Timeouts};

use super::deployments::{self, DeploymentBody};
use super::models::{self, PolicyBody};
use super::providers::{self, CreateProvider, ProviderRules};
use super::{Actor, Ctx, Error, crud};
use crate::repo;
pub use plan::{ParseError, Plan, plan};

/// What an import did, line by line.
#[derive(Debug, Default)]
pub struct Report {
    pub created: Vec<String>,
    /// Already there (by id): left as it was.
    pub skipped: Vec<String>,
    /// Writes the service refused, with its reason.
    pub failed: Vec<String>,
}

impl Plan {
    /// The plan in words, for `--dry-run` and before an import: what would be created and
    /// every note. Never contains a secret's value.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for p in &self.providers {
            let _ = write!(out, "provider {} ({}", p.id, p.kind.as_str());
            if let Some(url) = &p.base_url {
                let _ = write!(out, ", {url}");
            }
            if let Some(k) = &p.api_key {
                let _ = write!(out, ", api_key {}", k.source);
            }
            if let Some(r) = &p.region {
                let _ = write!(out, ", region {r}");
            }
            if let Some(k) = &p.aws_access_key_id {
                let _ = write!(out, ", aws credentials {}", k.source);
            }
            out.push_str(")\n");
        }
        for d in &self.deployments {
            let _ = writeln!(
                out,
                "deployment {} (model {}, provider {}, upstream_model {}, weight {}, priority {}, rpm {}, tpm {})",
                d.id,
                d.model,
                d.provider,
                d.upstream_model,
                d.weight,
                d.priority,
                d.rpm.map_or("-".into(), |n| n.to_string()),
                d.tpm.map_or("-".into(), |n| n.to_string()),
            );
        }
        for p in &self.policies {
            let _ = writeln!(
                out,
                "model policy {} (strategy {}, fallbacks [{}])",
                p.model,
                serde_json::to_value(p.strategy)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                p.fallbacks.join(", ")
            );
        }
        for n in &self.notes {
            let _ = writeln!(out, "not mapped: {n}");
        }
        out
    }
}

/// Writes `plan` through the service layer as `actor`: providers, then deployments, then
/// model policies (whose fallbacks name the models just created).
pub async fn apply(cx: Ctx<'_>, actor: &Actor, rules: ProviderRules<'_>, plan: &Plan) -> Report {
    let mut report = Report::default();
    let mut stored_as = BTreeMap::new();
    for p in &plan.providers {
        if let Some(id) = put_provider(cx, actor, rules, p, &mut report).await {
            stored_as.insert(p.id.clone(), id);
        }
    }
    let mut served = BTreeSet::new();
    for d in &plan.deployments {
        let what = format!("deployment {}", d.id);
        let Some(provider) = stored_as.get(&d.provider) else {
            report.failed.push(format!(
                "{what}: its provider {} was not created",
                d.provider
            ));
            continue;
        };
        let created = deployments::create(cx, actor, body(d, provider)).await;
        if record(&mut report, what, created) {
            served.insert(d.model.clone());
        }
    }
    for p in &plan.policies {
        if served.contains(&p.model) {
            put_policy(cx, actor, p, &served, &mut report).await;
        } else {
            report.failed.push(format!(
                "model policy {}: none of the model's deployments was imported",
                p.model
            ));
        }
    }
    report
}

fn body(d: &plan::PlannedDeployment, provider: &str) -> DeploymentBody {
    DeploymentBody {
        id: Some(d.id.clone()),
        model: d.model.clone(),
        provider: provider.to_owned(),
        upstream_model: d.upstream_model.clone(),
        weight: d.weight,
        tags: vec!["litellm-import".to_owned()],
        limits: RateLimits {
            rpm: d.rpm,
            tpm: d.tpm,
            concurrency: None,
        },
        priority: d.priority,
        price: d.price.clone(),
        caps: None,
        transforms: Default::default(),
    }
}

/// The id under which `p` is stored: an existing provider with the same upstream and
/// credential (its id, or the next `-N` one) is reused; otherwise `p` is created under the
/// first free id of that sequence. `None` when it could not be created (reported).
async fn put_provider(
    cx: Ctx<'_>,
    actor: &Actor,
    rules: ProviderRules<'_>,
    p: &plan::PlannedProvider,
    report: &mut Report,
) -> Option<String> {
    let mut id = p.id.clone();
    for n in 2.. {
        let mut conn = match cx.pool.acquire().await {
            Ok(c) => c,
            Err(e) => {
                report
                    .failed
                    .push(format!("provider {id}: {}", words(&e.into())));
                return None;
            }
        };
        match repo::providers::get(&mut conn, &id, false).await {
            Ok(Some(row)) if same_upstream(&row, p, rules.keys) => {
                report
                    .skipped
                    .push(format!("provider {id}: already exists"));
                return Some(id);
            }
            Ok(Some(_)) if n < 100 => id = format!("{}-{n}", p.id),
            Ok(_) => break,
            Err(e) => {
                report
                    .failed
                    .push(format!("provider {id}: {}", words(&e.into())));
                return None;
            }
        }
    }
    let secret = |s: &Option<plan::Secret>| s.as_ref().map(|s| s.value.clone());
    let req = CreateProvider {
        id: id.clone(),
        kind: p.kind,
        base_url: p.base_url.clone(),
        api_key: secret(&p.api_key),
        api_version: p.api_version.clone(),
        region: p.region.clone(),
        project: None,
        aws_access_key_id: secret(&p.aws_access_key_id),
        aws_secret_access_key: secret(&p.aws_secret_access_key),
        aws_session_token: secret(&p.aws_session_token),
        api_keys: None,
    };
    let created = providers::create(cx, actor, rules, req).await;
    record(report, format!("provider {id}"), created).then_some(id)
}

/// Whether a stored provider is the planned one: same kind, base URL, settings and
/// credentials (opened with the master keys to compare).
fn same_upstream(
    row: &providers::ProviderRow,
    p: &plan::PlannedProvider,
    keys: &MasterKeys,
) -> bool {
    let open = |s: Option<&switchboard_shared::sealed::Sealed>| s.map(|s| keys.open(s).ok());
    let planned = |s: &Option<plan::Secret>| s.as_ref().map(|s| Some(s.value.clone()));
    let extra = &row.extra.0;
    row.kind == p.kind.as_str()
        && row.base_url == p.base_url
        && extra.api_version == p.api_version
        && extra.region == p.region
        && open(row.credential.as_ref().map(|c| &c.0)) == planned(&p.api_key)
        && open(extra.aws_access_key_id.as_ref()) == planned(&p.aws_access_key_id)
        && open(extra.aws_secret_access_key.as_ref()) == planned(&p.aws_secret_access_key)
}

/// Creates `p`'s policy unless the model has one already; fallbacks to models that were not
/// imported are dropped (and reported).
async fn put_policy(
    cx: Ctx<'_>,
    actor: &Actor,
    p: &plan::PlannedPolicy,
    served: &BTreeSet<String>,
    report: &mut Report,
) {
    let what = format!("model policy {}", p.model);
    match crud::get::<models::PolicyRow>(cx, actor, &p.model).await {
        Ok(_) => {
            report.skipped.push(format!("{what}: already exists"));
            return;
        }
        Err(Error::NotFound(_)) => {}
        Err(e) => {
            report.failed.push(format!("{what}: {}", words(&e)));
            return;
        }
    }
    let (fallbacks, dropped): (Vec<String>, Vec<String>) = p
        .fallbacks
        .iter()
        .cloned()
        .partition(|f| served.contains(f));
    for f in dropped {
        report.failed.push(format!(
            "{what}: fallback {f:?} dropped (that model was not imported)"
        ));
    }
    let defaults = (Timeouts::default(), Cooldown::default());
    let body = PolicyBody {
        strategy: p.strategy,
        fallbacks,
        retries: p.retries,
        timeouts: Timeouts {
            first_byte_ms: p.timeout_ms.unwrap_or(defaults.0.first_byte_ms),
            total_ms: p.timeout_ms.unwrap_or(defaults.0.total_ms),
        },
        cooldown: Cooldown {
            allowed_failures: p.allowed_failures.unwrap_or(defaults.1.allowed_failures),
            seconds: p.cooldown_seconds.unwrap_or(defaults.1.seconds),
        },
        ..PolicyBody::default()
    };
    let result = models::put(cx, actor, &p.model, body)
        .await
        .map(|(v, c, _)| (v, c));
    record(report, what, result);
}

/// Files one write's outcome; whether the object exists now.
fn record<T>(report: &mut Report, what: String, result: Result<T, Error>) -> bool {
    match result {
        Ok(_) => {
            report.created.push(what);
            true
        }
        Err(Error::Conflict(why)) if why.starts_with("already exists") => {
            report.skipped.push(format!("{what}: already exists"));
            true
        }
        Err(e) => {
            report.failed.push(format!("{what}: {}", words(&e)));
            false
        }
    }
}

/// A service error in one line (field problems by path).
pub fn words(e: &Error) -> String {
    match e {
        Error::Invalid(problems) => problems
            .iter()
            .map(|p| format!("{}: {}", p.path, p.message))
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests;
