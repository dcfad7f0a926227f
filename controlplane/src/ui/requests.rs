//! The request log in the console: `/ui/requests` lists what the data planes served, refused
//! or failed (newest first, filtered, a page at a time by the API's cursor), and
//! `/ui/requests/{id}` shows one request with its attempt timeline. Both read
//! `service::requests`, so a tenant admin sees only its tenant's requests, as in
//! `GET /admin/v1/requests`.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;

use super::html::{page, usd};
use super::pages::{refused, urlencode};
use super::session::Session;
use crate::service::requests::{self, RequestRow};
use crate::state::AppState;

/// The list's filters, as the form sends them (empty fields are no filter).
#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    tenant_id: Option<String>,
    key_id: Option<String>,
    model: Option<String>,
    deployment_id: Option<String>,
    status: Option<String>,
    q: Option<String>,
    cursor: Option<String>,
}

fn given(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

impl Filters {
    fn query(&self) -> Result<requests::Query, crate::service::Error> {
        let status = match given(&self.status) {
            Some(s) => Some(
                s.parse::<i16>()
                    .map_err(|_| crate::service::Error::invalid("status", "must be a number"))?,
            ),
            None => None,
        };
        Ok(requests::Query {
            tenant_id: given(&self.tenant_id),
            key_id: given(&self.key_id),
            model: given(&self.model),
            deployment_id: given(&self.deployment_id),
            status,
            client_request_id: given(&self.q),
            cursor: given(&self.cursor),
            limit: Some(50),
            ..requests::Query::default()
        })
    }

    /// The query string of these filters, without the cursor.
    fn link(&self) -> String {
        let pairs = [
            ("tenant_id", &self.tenant_id),
            ("key_id", &self.key_id),
            ("model", &self.model),
            ("deployment_id", &self.deployment_id),
            ("status", &self.status),
            ("q", &self.q),
        ];
        pairs
            .iter()
            .filter_map(|(k, v)| given(v).map(|v| format!("{k}={}", urlencode(&v))))
            .collect::<Vec<_>>()
            .join("&")
    }
}

/// `GET /ui/requests`: the request log, newest first.
pub async fn list(
    State(state): State<AppState>,
    session: Session,
    Query(f): Query<Filters>,
) -> Response {
    let listed = match f.query() {
        Ok(q) => requests::list(state.ctx(), &session.actor, &q).await,
        Err(e) => Err(e),
    };
    let listed = match listed {
        Ok(l) => l,
        Err(e) => return refused(&session, "/ui/requests", "Requests", e),
    };
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    let content = html! {
        form.filters method="get" action="/ui/requests" {
            @if session.actor.confined_to().is_none() {
                label { "Tenant" input name="tenant_id" value=(value(&f.tenant_id)); }
            }
            label { "Key" input name="key_id" value=(value(&f.key_id)); }
            label { "Model" input name="model" value=(value(&f.model)); }
            label { "Deployment" input name="deployment_id" value=(value(&f.deployment_id)); }
            label { "Status" input name="status" inputmode="numeric" value=(value(&f.status)); }
            label { "Client request id" input name="q" value=(value(&f.q)); }
            button type="submit" { "Filter" }
        }
        div.tablewrap { table #requests {
            thead { tr { th { "When (UTC)" } th { "Tenant" } th { "Key" } th { "Model" }
                th { "Deployment" } th.num { "Status" } th { "Outcome" } th.num { "Latency" }
                th.num { "Tokens" } th.num { "Cost" } } }
            tbody {
                @for r in &listed.data { (row(r)) }
                @if listed.data.is_empty() { tr { td colspan="10" .muted { "No request matches." } } }
            }
        } }
        nav.pager aria-label="Pages" {
            @if f.cursor.is_some() { a href=(format!("/ui/requests?{}", f.link())) { "First page" } }
            @if let Some(next) = &listed.next_cursor {
                a href=(format!("/ui/requests?{}&cursor={}", f.link(), urlencode(next))) { "Next page" }
            } @else { span.muted { "End of list" } }
        }
    };
    page(&session, "/ui/requests", "Requests", content)
}

fn row(r: &RequestRow) -> Markup {
    html! { tr {
        td { a href=(format!("/ui/requests/{}", urlencode(&r.request_id))) {
            (r.started_at.format("%Y-%m-%d %H:%M:%S")) } }
        td { (r.tenant_id) } td { (r.key_id) } td { (r.model) }
        td { (r.deployment_id.as_deref().unwrap_or("—")) }
        td.num { (r.status) }
        td { (r.outcome) @if let Some(kind) = &r.error_kind { " · " (kind) } }
        td.num { (r.latency_ms) " ms" }
        td.num { (r.prompt_tokens + r.completion_tokens) }
        td.num { (usd(r.cost_usd)) }
    } }
}

/// `GET /ui/requests/{id}`: one request and its attempts.
pub async fn detail(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    let found = match requests::get(state.ctx(), &session.actor, &id).await {
        Ok(d) => d,
        Err(e) => return refused(&session, "/ui/requests", "Request", e),
    };
    let r = &found.request;
    let attempts: &[Value] = r.attempts.as_array().map_or(&[], Vec::as_slice);
    let text = |a: &Value, k: &str| match &a[k] {
        Value::String(s) => s.clone(),
        Value::Null => "—".to_owned(),
        other => other.to_string(),
    };
    let content = html! {
        dl.facts #request {
            dt { "Request id" } dd { code { (r.request_id) } }
            dt { "Client request id" } dd { (r.client_request_id.as_deref().unwrap_or("—")) }
            dt { "Started" } dd { (r.started_at.format("%Y-%m-%d %H:%M:%S%.3f UTC")) }
            dt { "Tenant · key" } dd { (r.tenant_id) " · " (r.key_id) }
            dt { "Model · endpoint" } dd { (r.model) " · " (r.endpoint) @if r.stream { " (stream)" } }
            dt { "Status · outcome" } dd { (r.status) " · " (r.outcome)
                @if let Some(kind) = &r.error_kind { " · " (kind) } }
            dt { "Latency · first token" } dd { (r.latency_ms) " ms"
                @if let Some(t) = r.ttft_ms { " · " (t) " ms" } }
            dt { "Tokens" } dd { (r.prompt_tokens) " in · " (r.completion_tokens) " out · "
                (r.cached_read_tokens) " cache read" @if r.cache_hit { " (cache hit)" } }
            dt { "Cost" } dd { (usd(r.cost_usd)) }
        }
        h2 { "Attempts" }
        div.tablewrap { table #attempts {
            thead { tr { th.num { "#" } th { "Deployment" } th.num { "Status" } th { "Error" } th.num { "Latency" } } }
            tbody {
                @for (i, a) in attempts.iter().enumerate() { tr {
                    td.num { (i + 1) } td { (text(a, "deployment_id")) } td.num { (text(a, "status")) }
                    td { (text(a, "error_kind")) } td.num { (text(a, "latency_ms")) " ms" }
                } }
                @if attempts.is_empty() { tr { td colspan="5" .muted {
                    "No upstream attempt: the gateway answered by itself." } } }
            }
        } }
        @if found.content.is_some() {
            p.muted { "Captured content is kept for this tenant; read it with "
                code { "GET /admin/v1/requests/{id}" } "." }
        }
        p { a href="/ui/requests" { "Back to requests" } }
    };
    page(&session, "/ui/requests", "Request", content)
}
