//! The object pages with their writes: tenants, virtual keys (the secret shown once, with a
//! copy button; revoke), providers (credentials write-only: a password field, never shown),
//! deployments, model policies. Each form is read into the same request type the admin API
//! takes (through JSON, so a field error carries the API's path and lands next to its input),
//! checked by the same role rule, written by the same service function, and the page then says
//! whether every data plane applied it.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use maud::{Markup, html};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};
use switchboard_shared::snapshot::ResponseCache;

use super::html::{
    FormErrors, Shown, applied, csrf, general, input, page_with, pager, select, usd,
};
use super::pages::{ListQuery, refused};
use super::session::{Fields, PostForm, Session};
use crate::service::crud;
use crate::service::deployments::{self, DeploymentRow};
use crate::service::keys::{self, KeyRow, KeyWithSecret};
use crate::service::models::PolicyRow;
use crate::service::providers::{self, ProviderRow};
use crate::service::tenants::{self, TenantRow};
use crate::state::AppState;

/// A form read as the API's request type `T`; a field that does not fit is an error at its path.
fn parse<T: DeserializeOwned>(body: Value) -> Result<T, FormErrors> {
    serde_path_to_error::deserialize(body).map_err(|e| {
        let path = e.path().to_string();
        FormErrors::field(&path, e.inner().to_string())
    })
}

/// Puts the number in field `name` at `key` of `obj`, if the field is filled in.
fn number(
    f: &Fields,
    name: &str,
    key: &str,
    obj: &mut Map<String, Value>,
) -> Result<(), FormErrors> {
    let Some(text) = f.get(name) else {
        return Ok(());
    };
    let value: Value = match text.parse::<u64>() {
        Ok(n) => json!(n),
        Err(_) => match text.parse::<f64>() {
            Ok(x) if x.is_finite() => json!(x),
            _ => return Err(FormErrors::field(name, "must be a number")),
        },
    };
    obj.insert(key.to_owned(), value);
    Ok(())
}

/// The `limits` and `budget` of a tenant or key form.
fn limits_and_budget(f: &Fields, body: &mut Map<String, Value>) -> Result<(), FormErrors> {
    let mut limits = Map::new();
    number(f, "limits.rpm", "rpm", &mut limits)?;
    number(f, "limits.tpm", "tpm", &mut limits)?;
    number(f, "limits.concurrency", "concurrency", &mut limits)?;
    body.insert("limits".into(), Value::Object(limits));
    let mut budget = Map::new();
    number(f, "budget.max_usd", "max_usd", &mut budget)?;
    if !budget.is_empty() {
        budget.insert(
            "period".into(),
            json!(f.get("budget.period").unwrap_or("monthly")),
        );
        body.insert("budget".into(), Value::Object(budget));
    }
    Ok(())
}

fn limits_cell(rpm: Option<u32>, tpm: Option<u32>) -> String {
    let part = |v: Option<u32>, unit| v.map(|v| format!("{v} {unit}"));
    [part(rpm, "rpm"), part(tpm, "tpm")]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ")
}

fn budget_cell(b: Option<&switchboard_shared::snapshot::Budget>) -> String {
    b.map(|b| format!("{} {:?}", usd(b.max_usd), b.period).to_lowercase())
        .unwrap_or_default()
}

const PERIODS: &[&str] = &["monthly", "weekly", "daily", "none"];

fn limit_inputs(e: &FormErrors) -> Markup {
    html! {
        (input(e, "limits.rpm", "Requests per minute", "number", ""))
        (input(e, "limits.tpm", "Tokens per minute", "number", ""))
        (input(e, "limits.concurrency", "Requests in flight", "number", ""))
        (input(e, "budget.max_usd", "Budget (USD)", "text", ""))
        (select(e, "budget.period", "Budget period", PERIODS, "monthly"))
    }
}

/// One page of a platform object's list (providers, deployments, model policies), for
/// platform readers only.
async fn platform_list<R: crud::Resource>(
    s: &AppState,
    session: &Session,
    q: &ListQuery,
) -> Result<crate::service::Page<R::View>, crate::service::Error> {
    session.actor.require_platform_reader()?;
    crud::list::<R>(s.ctx(), &session.actor, q.paging(), None).await
}

// ---- tenants ----

pub async fn tenants_get(
    State(s): State<AppState>,
    session: Session,
    Query(q): Query<ListQuery>,
) -> Response {
    tenants_page(&s, &session, &q, Shown::default()).await
}

async fn tenants_page(s: &AppState, session: &Session, q: &ListQuery, shown: Shown) -> Response {
    let Shown { errors: e, notice } = shown;
    let list = match crud::list::<TenantRow>(s.ctx(), &session.actor, q.paging(), None).await {
        Ok(l) => l,
        Err(err) => return refused(session, "/ui/tenants", "Tenants", err),
    };
    let content = html! {
        @if let Some(n) = notice { (n) }
        @if session.platform_admin() {
            h2 { "New tenant" } (general(&e))
            form.box method="post" action="/ui/tenants" {
                (csrf(session))
                (input(&e, "id", "Id", "text", "")) (input(&e, "name", "Name", "text", ""))
                (limit_inputs(&e))
                div { button type="submit" { "Create tenant" } }
            }
        }
        div.tablewrap { table #tenants {
            thead { tr { th { "Id" } th { "Name" } th { "Status" } th { "Limits" } th { "Budget" } th { "Created" } } }
            tbody { @for t in &list.items { tr {
                td { a href=(format!("/ui/tenants/{}", t.id)) { (t.id) } } td { (t.name) } td { (format!("{:?}", t.status).to_lowercase()) }
                td { (limits_cell(t.limits.rpm, t.limits.tpm)) } td { (budget_cell(t.budget.as_ref())) }
                td { (t.created_at.format("%Y-%m-%d")) }
            } } }
        } }
        (pager("/ui/tenants", q.offset.unwrap_or(0), list.next_offset))
    };
    page_with(session, "/ui/tenants", "Tenants", &e, content)
}

pub async fn tenants_post(State(s): State<AppState>, form: PostForm) -> Response {
    let PostForm { session, fields: f } = form;
    let result: Result<_, FormErrors> = async {
        session.actor.require_platform_admin()?;
        let mut body = Map::new();
        body.insert("id".into(), json!(f.text("id")));
        body.insert("name".into(), json!(f.text("name")));
        limits_and_budget(&f, &mut body)?;
        Ok(tenants::create(s.ctx(), &session.actor, parse(Value::Object(body))?).await?)
    }
    .await;
    let shown = Shown::after(&s, result, |(view, committed)| {
        (format!("Tenant {} created", view.id), committed)
    })
    .await;
    tenants_page(&s, &session, &ListQuery::default(), shown).await
}

// ---- keys ----

pub async fn keys_get(
    State(s): State<AppState>,
    session: Session,
    Query(q): Query<ListQuery>,
) -> Response {
    keys_page(&s, &session, &q, Shown::default()).await
}

async fn keys_page(s: &AppState, session: &Session, q: &ListQuery, shown: Shown) -> Response {
    let Shown { errors: e, notice } = shown;
    let list = match crud::list::<KeyRow>(s.ctx(), &session.actor, q.paging(), q.tenant()).await {
        Ok(l) => l,
        Err(err) => return refused(session, "/ui/keys", "Virtual keys", err),
    };
    let own = session.actor.confined_to().unwrap_or_default();
    let content = html! {
        @if let Some(n) = notice { (n) }
        @if session.can_write() {
            h2 { "New key" } (general(&e))
            form.box method="post" action="/ui/keys" {
                (csrf(session))
                (input(&e, "tenant_id", "Tenant", "text", own)) (input(&e, "name", "Name", "text", ""))
                (input(&e, "expires_at", "Expires (YYYY-MM-DD, UTC)", "date", ""))
                (input(&e, "allowed_models", "Allowed models (comma-separated; empty: all)", "text", ""))
                (limit_inputs(&e))
                div { button type="submit" { "Create key" } }
            }
        }
        div.tablewrap { table #keys {
            thead { tr { th { "Id" } th { "Tenant" } th { "Name" } th { "Prefix" } th { "Status" } th { "Expires" }
                th { "Models" } th { "Limits" } th { "Budget" } @if session.can_write() { th { "" } } } }
            tbody { @for k in &list.items { tr data-key=(k.id) {
                td { a href=(format!("/ui/keys/{}", k.id)) { (k.id) } } td { (k.tenant_id) } td { (k.name) } td { code { (k.display_prefix) "…" } }
                td.status { (format!("{:?}", k.status).to_lowercase())
                    @if let Some(until) = old_secret_until(k.previous_secret_expires_at) { br; small.muted { (until) } } }
                td { (k.expires_at.map(|t| t.format("%Y-%m-%d").to_string()).unwrap_or_else(|| "never".into())) }
                td { @if k.allowed_models.is_empty() { span.muted { "all" } } @else { (k.allowed_models.join(", ")) } }
                td { (limits_cell(k.limits.rpm, k.limits.tpm)) } td { (budget_cell(k.budget.as_ref())) }
                @if session.can_write() { td { @if k.revoked_at.is_none() {
                    form.inline method="post" action=(format!("/ui/keys/{}/revoke", k.id)) {
                        (csrf(session)) button.danger type="submit" aria-label=(format!("Revoke key {}", k.id)) { "Revoke" }
                    }
                } } }
            } } }
        } }
        (pager("/ui/keys", q.offset.unwrap_or(0), list.next_offset))
    };
    page_with(session, "/ui/keys", "Virtual keys", &e, content)
}

/// The new key's secret, shown this once.
fn secret_notice(created: &KeyWithSecret, applied: Markup) -> Markup {
    html! {
        (applied)
        div.flash.ok role="status" {
            p { strong { "Copy the secret of key " (created.virtual_key.id) " now: it is not shown again." } }
            div.secret { code #new-secret { (created.key) } button.secondary type="button" data-copy="new-secret" { "Copy" } }
        }
    }
}

pub async fn keys_post(State(s): State<AppState>, form: PostForm) -> Response {
    let PostForm { session, fields: f } = form;
    let result: Result<_, FormErrors> = async {
        session.actor.require_writer()?;
        let mut body = Map::new();
        if let Some(t) = f.get("tenant_id") {
            body.insert("tenant_id".into(), json!(t));
        }
        body.insert("name".into(), json!(f.text("name")));
        if let Some(day) = f.get("expires_at") {
            let at = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")
                .map_err(|_| FormErrors::field("expires_at", "must be a date, YYYY-MM-DD"))?;
            body.insert(
                "expires_at".into(),
                json!(at.and_hms_opt(0, 0, 0).map(|t| t.and_utc())),
            );
        }
        let models_text = f.text("allowed_models");
        let models: Vec<&str> = models_text
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .collect();
        body.insert("allowed_models".into(), json!(models));
        limits_and_budget(&f, &mut body)?;
        let pepper = &s.settings.pepper;
        Ok(keys::create(s.ctx(), &session.actor, pepper, parse(Value::Object(body))?).await?)
    }
    .await;
    let shown = match result {
        Ok((created, committed)) => {
            let what = format!("Key {} created", created.virtual_key.id);
            let done = applied(&s, &what, &committed).await;
            Shown::notice(secret_notice(&created, done))
        }
        Err(errors) => Shown::failed(errors),
    };
    keys_page(&s, &session, &ListQuery::default(), shown).await
}

pub async fn keys_revoke(
    State(s): State<AppState>,
    Path(id): Path<String>,
    form: PostForm,
) -> Response {
    let session = form.session;
    let result = match session.actor.require_writer() {
        Ok(()) => keys::revoke(s.ctx(), &session.actor, &id).await,
        Err(e) => Err(e),
    };
    let shown = Shown::after(&s, result.map_err(FormErrors::from), |(view, committed)| {
        (format!("Key {} revoked", view.id), committed)
    })
    .await;
    keys_page(&s, &session, &ListQuery::default(), shown).await
}

// ---- providers ----

const KINDS: &[&str] = &["openai", "anthropic", "azure", "gemini", "bedrock", "mock"];

pub async fn providers_get(
    State(s): State<AppState>,
    session: Session,
    Query(q): Query<ListQuery>,
) -> Response {
    providers_page(&s, &session, &q, Shown::default()).await
}

async fn providers_page(s: &AppState, session: &Session, q: &ListQuery, shown: Shown) -> Response {
    let Shown { errors: e, notice } = shown;
    let list = match platform_list::<ProviderRow>(s, session, q).await {
        Ok(l) => l,
        Err(err) => return refused(session, "/ui/providers", "Providers", err),
    };
    let content = html! {
        @if let Some(n) = notice { (n) }
        @if session.platform_admin() {
            h2 { "New provider" } (general(&e))
            form.box method="post" action="/ui/providers" {
                (csrf(session))
                (input(&e, "id", "Id", "text", "")) (select(&e, "kind", "Kind", KINDS, "openai"))
                (input(&e, "base_url", "Base URL", "url", ""))
                (input(&e, "api_key", "API key (write-only)", "password", ""))
                div { button type="submit" { "Create provider" } }
            }
        }
        div.tablewrap { table #providers {
            thead { tr { th { "Id" } th { "Kind" } th { "Base URL" } th { "Credential" } th { "Updated" } } }
            tbody { @for p in &list.items { tr {
                td { (p.id) } td { (p.kind) } td { (p.base_url.as_deref().unwrap_or("")) }
                td { @if p.has_api_key || p.api_key_count > 0 || p.has_aws_credentials { "stored" } @else { span.muted { "none" } } }
                td { (p.updated_at.format("%Y-%m-%d %H:%M")) }
            } } }
        } }
        (pager("/ui/providers", q.offset.unwrap_or(0), list.next_offset))
    };
    page_with(session, "/ui/providers", "Providers", &e, content)
}

pub async fn providers_post(State(s): State<AppState>, form: PostForm) -> Response {
    let PostForm { session, fields: f } = form;
    let result: Result<_, FormErrors> = async {
        session.actor.require_platform_admin()?;
        let mut body = Map::new();
        for name in ["id", "kind", "base_url", "api_key"] {
            if let Some(v) = f.get(name) {
                body.insert(name.into(), json!(v));
            }
        }
        let rules = providers::ProviderRules {
            keys: &s.settings.master_keys,
            urls: &s.settings.providers,
        };
        Ok(providers::create(s.ctx(), &session.actor, rules, parse(Value::Object(body))?).await?)
    }
    .await;
    let shown = Shown::after(&s, result, |(view, committed)| {
        (format!("Provider {} created", view.id), committed)
    })
    .await;
    providers_page(&s, &session, &ListQuery::default(), shown).await
}

// ---- deployments ----

pub async fn deployments_get(
    State(s): State<AppState>,
    session: Session,
    Query(q): Query<ListQuery>,
) -> Response {
    deployments_page(&s, &session, &q, Shown::default()).await
}

async fn deployments_page(
    s: &AppState,
    session: &Session,
    q: &ListQuery,
    shown: Shown,
) -> Response {
    let Shown { errors: e, notice } = shown;
    let list = match platform_list::<DeploymentRow>(s, session, q).await {
        Ok(l) => l,
        Err(err) => return refused(session, "/ui/deployments", "Deployments", err),
    };
    let content = html! {
        @if let Some(n) = notice { (n) }
        @if session.platform_admin() {
            h2 { "New deployment" } (general(&e))
            form.box method="post" action="/ui/deployments" {
                (csrf(session))
                (input(&e, "id", "Id", "text", "")) (input(&e, "model", "Public model name", "text", ""))
                (input(&e, "provider", "Provider id", "text", "")) (input(&e, "upstream_model", "Upstream model", "text", ""))
                (input(&e, "weight", "Weight", "number", "1")) (input(&e, "priority", "Priority", "number", "0"))
                div { button type="submit" { "Create deployment" } }
            }
        }
        div.tablewrap { table #deployments {
            thead { tr { th { "Id" } th { "Model" } th { "Provider" } th { "Upstream model" } th.num { "Weight" } th.num { "Priority" } th { "Limits" } th { "Health" } } }
            tbody { @for d in &list.items { tr {
                td { (d.id) } td { (d.model) } td { (d.provider) } td { (d.upstream_model) }
                td.num { (d.weight) } td.num { (d.priority) } td { (limits_cell(d.limits.rpm, d.limits.tpm)) }
                td { a href=(format!("/ui/deployments/{}/health", super::pages::urlencode(&d.id))) { "health" } }
            } } }
        } }
        p { a href="/ui/deployments/health" { "Every deployment's health" } }
        (pager("/ui/deployments", q.offset.unwrap_or(0), list.next_offset))
    };
    page_with(session, "/ui/deployments", "Deployments", &e, content)
}

pub async fn deployments_post(State(s): State<AppState>, form: PostForm) -> Response {
    let PostForm { session, fields: f } = form;
    let result: Result<_, FormErrors> = async {
        session.actor.require_platform_admin()?;
        let mut body = Map::new();
        for name in ["id", "model", "provider", "upstream_model"] {
            body.insert(name.into(), json!(f.text(name)));
        }
        number(&f, "weight", "weight", &mut body)?;
        number(&f, "priority", "priority", &mut body)?;
        Ok(deployments::create(s.ctx(), &session.actor, parse(Value::Object(body))?).await?)
    }
    .await;
    let shown = Shown::after(&s, result, |(view, committed)| {
        (format!("Deployment {} created", view.id), committed)
    })
    .await;
    deployments_page(&s, &session, &ListQuery::default(), shown).await
}

// ---- model policies ----

const STRATEGIES: &[&str] = &[
    "weighted_random",
    "round_robin",
    "priority",
    "least_busy",
    "lowest_latency",
    "lowest_usage",
    "lowest_cost",
];

pub async fn models_get(
    State(s): State<AppState>,
    session: Session,
    Query(q): Query<ListQuery>,
) -> Response {
    models_page(&s, &session, &q, Shown::default()).await
}

async fn models_page(s: &AppState, session: &Session, q: &ListQuery, shown: Shown) -> Response {
    let Shown { errors: e, notice } = shown;
    let list = match platform_list::<PolicyRow>(s, session, q).await {
        Ok(l) => l,
        Err(err) => return refused(session, "/ui/models", "Model policies", err),
    };
    let content = html! {
        @if let Some(n) = notice { (n) }
        @if session.platform_admin() {
            h2 { "Set a model's routing policy" } (general(&e))
            form.box method="post" action="/ui/models" {
                (csrf(session))
                (input(&e, "model", "Public model name", "text", ""))
                (select(&e, "strategy", "Strategy", STRATEGIES, "weighted_random"))
                (input(&e, "fallbacks", "Fallback models (comma-separated)", "text", ""))
                (input(&e, "retries", "Retries (default 2)", "number", ""))
                div { button type="submit" { "Save policy" } }
            }
        }
        div.tablewrap { table #policies {
            thead { tr { th { "Model" } th { "Strategy" } th { "Fallbacks" } th.num { "Retries" } th { "Updated" } } }
            tbody {
                @for p in &list.items { tr {
                    td { (p.model) } td { (serde_json::to_value(p.strategy).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()) }
                    td { (p.fallbacks.join(", ")) }
                    td.num { (p.retries) } td { (p.updated_at.format("%Y-%m-%d %H:%M")) }
                } }
                @if list.items.is_empty() { tr { td colspan="5" .muted { "No policies: every model routes by the defaults." } } }
            }
        } }
        (pager("/ui/models", q.offset.unwrap_or(0), list.next_offset))
    };
    page_with(session, "/ui/models", "Model policies", &e, content)
}

pub async fn models_post(State(s): State<AppState>, form: PostForm) -> Response {
    let PostForm { session, fields: f } = form;
    let model = f.text("model");
    let result: Result<_, FormErrors> = async {
        session.actor.require_platform_admin()?;
        if model.is_empty() {
            return Err(FormErrors::field("model", "is required"));
        }
        let mut body = Map::new();
        body.insert(
            "strategy".into(),
            json!(f.get("strategy").unwrap_or("weighted_random")),
        );
        let text = f.text("fallbacks");
        let fallbacks: Vec<&str> = text
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .collect();
        body.insert("fallbacks".into(), json!(fallbacks));
        number(&f, "retries", "retries", &mut body)?;
        let req: crate::service::models::PolicyBody = parse(Value::Object(body))?;
        Ok(crate::service::models::put(s.ctx(), &session.actor, &model, req).await?)
    }
    .await;
    let shown = Shown::after(&s, result, |(view, committed, _)| {
        (format!("Policy of {} saved", view.model), committed)
    })
    .await;
    models_page(&s, &session, &ListQuery::default(), shown).await
}

// ---- one key: edit, rotate ----

pub async fn key_rotate(
    State(s): State<AppState>,
    Path(id): Path<String>,
    form: PostForm,
) -> Response {
    let PostForm { session, fields: f } = form;
    let result: Result<_, FormErrors> = async {
        session.actor.require_writer()?;
        let mut body = Map::new();
        number(&f, "grace_minutes", "grace_minutes", &mut body)?;
        let req: keys::RotateKey = parse(Value::Object(body))?;
        Ok(keys::rotate(s.ctx(), &session.actor, &s.settings.pepper, &id, req).await?)
    }
    .await;
    let q = ListQuery::default();
    match result {
        Ok((rotated, committed)) => {
            let old = match rotated.virtual_key.previous_secret_expires_at {
                Some(at) => format!("works until {} UTC", at.format("%Y-%m-%d %H:%M")),
                None => "no longer works".to_owned(),
            };
            let what = format!(
                "Key {} rotated: the old secret {old}",
                rotated.virtual_key.id
            );
            let done = applied(&s, &what, &committed).await;
            let shown = Shown::notice(secret_notice(&rotated, done));
            keys_page(&s, &session, &q, shown).await
        }
        Err(errors) => key_page(&s, &session, &id, Shown::failed(errors)).await,
    }
}

/// When a rotated-out secret stops working, for the key's views.
fn old_secret_until(at: Option<chrono::DateTime<chrono::Utc>>) -> Option<String> {
    at.map(|at| format!("old secret until {} UTC", at.format("%Y-%m-%d %H:%M")))
}

pub async fn key_get(
    State(s): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    key_page(&s, &session, &id, Shown::default()).await
}

async fn key_page(s: &AppState, session: &Session, id: &str, shown: Shown) -> Response {
    let Shown { errors: e, notice } = shown;
    let k = match crud::get::<KeyRow>(s.ctx(), &session.actor, id).await {
        Ok(k) => k,
        Err(err) => return refused(session, "/ui/keys", "Virtual key", err),
    };
    let num = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_default();
    let period = k.budget.as_ref().map_or("monthly".to_owned(), |b| {
        format!("{:?}", b.period).to_lowercase()
    });
    let content = html! {
        @if let Some(n) = notice { (n) }
        p { "Tenant " strong { (k.tenant_id) } ", status " strong { (format!("{:?}", k.status).to_lowercase()) }
            ", secret " code { (k.display_prefix) "…" } "." }
        @if let Some(until) = old_secret_until(k.previous_secret_expires_at) {
            p #old-secret { "The " (until) " (the last rotation's grace window)." }
        }
        @if session.can_write() && k.revoked_at.is_none() {
            (general(&e))
            form.box method="post" action=(format!("/ui/keys/{}", k.id)) {
                (csrf(session))
                (input(&e, "name", "Name", "text", &k.name))
                (input(&e, "expires_at", "Expires (YYYY-MM-DD, UTC; empty: never)", "date",
                    &k.expires_at.map(|t| t.format("%Y-%m-%d").to_string()).unwrap_or_default()))
                (input(&e, "allowed_models", "Allowed models (comma-separated; empty: all)", "text", &k.allowed_models.join(", ")))
                (input(&e, "limits.rpm", "Requests per minute", "number", &num(k.limits.rpm)))
                (input(&e, "limits.tpm", "Tokens per minute", "number", &num(k.limits.tpm)))
                (input(&e, "limits.concurrency", "Requests in flight", "number", &num(k.limits.concurrency)))
                (input(&e, "budget.max_usd", "Budget (USD; empty: none)", "text",
                    &k.budget.as_ref().map(|b| b.max_usd.to_string()).unwrap_or_default()))
                (select(&e, "budget.period", "Budget period", PERIODS, &period))
                (input(&e, "cache.ttl_seconds", "Response cache for this key (seconds an answer is kept; 0: never cached; empty: the models' policies decide)",
                    "number", &cache_ttl(k.cache.as_ref())))
                div { button type="submit" { "Save" } }
            }
            form.box method="post" action=(format!("/ui/keys/{}/rotate", k.id)) {
                (csrf(session))
                (input(&e, "grace_minutes", "Grace window (minutes the old secret keeps working; empty: none)", "number", ""))
                div { button.secondary type="submit" { "Rotate secret" } }
            }
        }
        p { a href="/ui/keys" { "All keys" } }
    };
    page_with(session, "/ui/keys", &format!("Key {}", k.id), &e, content)
}

/// The key form's `cache.ttl_seconds` for the key's `cache`: empty for none, 0 when off.
fn cache_ttl(cache: Option<&ResponseCache>) -> String {
    match cache {
        None => String::new(),
        Some(c) if !c.enabled => "0".to_owned(),
        Some(c) => c.ttl_seconds.to_string(),
    }
}

/// The key form's `cache.ttl_seconds` as the key's `cache`: empty clears it (the models'
/// policies decide), 0 turns caching off for the key, seconds cache for that long; the key's
/// other cache settings (`max_entry_bytes`, set through the API) stay as they are.
fn key_cache(f: &Fields, current: Option<ResponseCache>) -> Result<Value, FormErrors> {
    let Some(text) = f.get("cache.ttl_seconds") else {
        return Ok(Value::Null);
    };
    let ttl: u64 = text
        .parse()
        .map_err(|_| FormErrors::field("cache.ttl_seconds", "must be a whole number"))?;
    let mut cache = current.unwrap_or_default();
    cache.enabled = ttl > 0;
    if ttl > 0 {
        cache.ttl_seconds = ttl;
    }
    Ok(json!(cache))
}

pub async fn key_post(
    State(s): State<AppState>,
    Path(id): Path<String>,
    form: PostForm,
) -> Response {
    let PostForm { session, fields: f } = form;
    let result: Result<_, FormErrors> = async {
        session.actor.require_writer()?;
        let mut body = Map::new();
        body.insert("name".into(), json!(f.text("name")));
        let expires = match f.get("expires_at") {
            Some(day) => {
                let at = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")
                    .map_err(|_| FormErrors::field("expires_at", "must be a date, YYYY-MM-DD"))?;
                json!(at.and_hms_opt(0, 0, 0).map(|t| t.and_utc()))
            }
            None => Value::Null,
        };
        body.insert("expires_at".into(), expires);
        let models_text = f.text("allowed_models");
        let models: Vec<&str> = models_text
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .collect();
        body.insert("allowed_models".into(), json!(models));
        limits_and_budget(&f, &mut body)?;
        body.entry("budget").or_insert(Value::Null);
        let current = crud::get::<KeyRow>(s.ctx(), &session.actor, &id).await?;
        body.insert("cache".into(), key_cache(&f, current.cache)?);
        let req: keys::UpdateKey = parse(Value::Object(body))?;
        Ok(crud::update::<KeyRow, _>(s.ctx(), &session.actor, &id, req).await?)
    }
    .await;
    let shown = Shown::after(&s, result, |(view, committed)| {
        (format!("Key {} saved", view.id), committed)
    })
    .await;
    key_page(&s, &session, &id, shown).await
}

// ---- one tenant: status, limits, budget ----

pub async fn tenant_get(
    State(s): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    tenant_page(&s, &session, &id, Shown::default()).await
}

async fn tenant_page(s: &AppState, session: &Session, id: &str, shown: Shown) -> Response {
    let Shown { errors: e, notice } = shown;
    let t = match crud::get::<TenantRow>(s.ctx(), &session.actor, id).await {
        Ok(t) => t,
        Err(err) => return refused(session, "/ui/tenants", "Tenant", err),
    };
    let num = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_default();
    let period = t.budget.as_ref().map_or("monthly".to_owned(), |b| {
        format!("{:?}", b.period).to_lowercase()
    });
    let status = format!("{:?}", t.status).to_lowercase();
    let content = html! {
        @if let Some(n) = notice { (n) }
        @if session.platform_admin() {
            (general(&e))
            form.box method="post" action=(format!("/ui/tenants/{}", t.id)) {
                (csrf(session))
                (input(&e, "name", "Name", "text", &t.name))
                (select(&e, "status", "Status (suspended: every key refused)", &["active", "suspended"], &status))
                (input(&e, "limits.rpm", "Requests per minute", "number", &num(t.limits.rpm)))
                (input(&e, "limits.tpm", "Tokens per minute", "number", &num(t.limits.tpm)))
                (input(&e, "limits.concurrency", "Requests in flight", "number", &num(t.limits.concurrency)))
                (input(&e, "budget.max_usd", "Budget (USD; empty: none)", "text",
                    &t.budget.as_ref().map(|b| b.max_usd.to_string()).unwrap_or_default()))
                (select(&e, "budget.period", "Budget period", PERIODS, &period))
                (select(&e, "capture_content", "Keep requests' content in the request log",
                    &["off", "on"], if t.capture_content { "on" } else { "off" }))
                div { button type="submit" { "Save" } }
            }
        } @else {
            p { (t.name) " — " (status) ", limits " (limits_cell(t.limits.rpm, t.limits.tpm))
                ", budget " (budget_cell(t.budget.as_ref())) "." }
        }
        p { a href=(format!("/ui/keys?tenant_id={}", t.id)) { "This tenant's keys" } " · "
            a href=(format!("/ui/audit?tenant_id={}", t.id)) { "its audit log" } " · "
            a href="/ui/tenants" { "All tenants" } }
    };
    page_with(
        session,
        "/ui/tenants",
        &format!("Tenant {}", t.id),
        &e,
        content,
    )
}

pub async fn tenant_post(
    State(s): State<AppState>,
    Path(id): Path<String>,
    form: PostForm,
) -> Response {
    let PostForm { session, fields: f } = form;
    let result: Result<_, FormErrors> = async {
        session.actor.require_tenant_writer(&id)?;
        let mut body = Map::new();
        body.insert("name".into(), json!(f.text("name")));
        body.insert("status".into(), json!(f.get("status").unwrap_or("active")));
        body.insert(
            "capture_content".into(),
            json!(f.get("capture_content") == Some("on")),
        );
        limits_and_budget(&f, &mut body)?;
        let req: tenants::UpdateTenant = parse(Value::Object(body))?;
        Ok(crud::update::<TenantRow, _>(s.ctx(), &session.actor, &id, req).await?)
    }
    .await;
    let shown = Shown::after(&s, result, |(view, committed)| {
        (format!("Tenant {} saved", view.id), committed)
    })
    .await;
    tenant_page(&s, &session, &id, shown).await
}
