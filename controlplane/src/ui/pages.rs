//! The read-mostly pages: overview, budgets, spend (with CSV), prices, fleet and the audit
//! log. Each calls the same service functions as the admin API, with the session's actor, so
//! a tenant admin's pages hold its tenant's rows only and platform-wide pages refuse it.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use chrono::{NaiveDate, Utc};
use maud::{Markup, html};
use serde::Deserialize;

use super::html::{PAGE, bar, page, pager, share, usd};
use super::session::Session;
use crate::service::spend::{self, GroupBy, SpendRow};
use crate::service::{Error, Paging, budgets, fleet};
use crate::state::AppState;

/// `?offset=` and the filters the list pages take.
#[derive(Debug, Default, Deserialize)]
pub struct ListQuery {
    pub offset: Option<u64>,
    pub tenant_id: Option<String>,
    pub search: Option<String>,
}

impl ListQuery {
    pub fn paging(&self) -> Paging {
        Paging {
            limit: Some(PAGE),
            offset: self.offset,
        }
    }
    pub fn tenant(&self) -> Option<&str> {
        self.tenant_id.as_deref().filter(|t| !t.is_empty())
    }
}

/// A page that could not be read: the service's refusal in words.
pub fn refused(session: &Session, current: &str, title: &str, e: Error) -> Response {
    let message = match &e {
        Error::Internal(cause) => {
            tracing::error!(%cause, "ui: a page failed");
            "Internal error.".to_owned()
        }
        Error::Invalid(fields) => fields
            .iter()
            .map(|f| format!("{}: {}", f.path, f.message))
            .collect::<Vec<_>>()
            .join("; "),
        other => other.to_string(),
    };
    let mut response = page(
        session,
        current,
        title,
        html! { div.flash.bad role="alert" { (message) } },
    );
    *response.status_mut() = match e {
        Error::Forbidden(_) => axum::http::StatusCode::FORBIDDEN,
        Error::NotFound(_) => axum::http::StatusCode::NOT_FOUND,
        Error::Invalid(_) => axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        _ => axum::http::StatusCode::INTERNAL_SERVER_ERROR,
    };
    response
}

/// Today's totals over spend rows.
fn totals(rows: &[SpendRow]) -> (i64, i64, f64) {
    rows.iter().fold((0, 0, 0.0), |(r, e, c), row| {
        (r + row.requests, e + row.errors, c + row.cost_usd)
    })
}

fn spend_table(label: &str, rows: &[SpendRow]) -> Markup {
    html! {
        div.tablewrap { table {
            thead { tr { th { (label) } th.num { "Requests" } th.num { "Errors" }
                th.num { "Prompt tokens" } th.num { "Completion tokens" } th.num { "Cost" } } }
            tbody {
                @for r in rows { tr {
                    td { @if r.group.is_empty() { span.muted { "(none)" } } @else { (r.group) } }
                    td.num { (r.requests) } td.num { (r.errors) } td.num { (r.prompt_tokens) }
                    td.num { (r.completion_tokens) } td.num { (usd(r.cost_usd)) }
                } }
                @if rows.is_empty() { tr { td colspan="6" .muted { "No spend in this range." } } }
            }
        } }
    }
}

/// `GET /ui`: today's traffic and spend, the fleet, NATS and Redis.
pub async fn overview(State(state): State<AppState>, session: Session) -> Response {
    let today = Utc::now().date_naive();
    let report = |by| spend::report(state.ctx(), &session.actor, by, today, today, None);
    let (models, keys) = match (report(GroupBy::Model).await, report(GroupBy::Key).await) {
        (Ok(m), Ok(k)) => (m.rows, k.rows),
        (Err(e), _) | (_, Err(e)) => return refused(&session, "/ui", "Overview", e),
    };
    let (requests, errors, cost) = totals(&models);
    let cluster = if session.platform_reader() {
        Some(cluster_health(&state).await)
    } else {
        None
    };
    let content = html! {
        h2 { "Today (UTC)" }
        div.cards {
            div.card { div.n #requests-today { (requests) } div.l { "requests" } }
            div.card { div.n { (errors) } div.l { "errors" } }
            div.card { div.n #spend-today { (usd(cost)) } div.l { "spend" } }
        }
        @if let Some(cluster) = cluster { (cluster) }
        h2 { "Top models today" } (spend_table("Model", &models[..models.len().min(5)]))
        h2 { "Top keys today" } (spend_table("Key", &keys[..keys.len().min(5)]))
    };
    page(&session, "/ui", "Overview", content)
}

/// The fleet's revision and lag, NATS and Redis, as cards.
async fn cluster_health(state: &AppState) -> Markup {
    let fleet = fleet::fleet(state.ctx(), &state.fleet).await;
    let nats = tokio::time::timeout(Duration::from_secs(1), state.publisher.head()).await;
    let nats_ok = matches!(nats, Ok(Ok(_)));
    let redis = match &state.counters {
        Some(c) => Some(c.ping().await),
        None => None,
    };
    html! {
        h2 { "Cluster" }
        div.cards {
            @if let Ok(f) = &fleet {
                div.card { div.n { (f.revision) } div.l { "config revision" } }
                div.card { div.n { (f.dataplanes.len()) } div.l { "live data planes" } }
                div.card {
                    div.n { (f.dataplanes.iter().map(|d| d.lag).max().unwrap_or(0)) }
                    div.l { "largest lag (revisions)" }
                }
            }
            div.card {
                @if nats_ok { div.n.ok { "up" } } @else { div.n.bad { "down" } }
                div.l { "NATS (JetStream)" }
            }
            div.card {
                @match redis {
                    Some(true) => { div.n.ok { "up" } }
                    Some(false) => { div.n.bad { "down" } }
                    None => { div.n.muted { "—" } }
                }
                div.l { "Redis (budget counters)" }
            }
        }
    }
}

/// `GET /ui/budgets`: every budget the actor may see, with its bar and reset time.
pub async fn budgets(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<ListQuery>,
) -> Response {
    let list = budgets::list_views(
        state.ctx(),
        state.settings.spend.raw_retention_days,
        &session.actor,
        q.paging(),
        q.tenant(),
        None,
    )
    .await;
    let list = match list {
        Ok(list) => list,
        Err(e) => return refused(&session, "/ui/budgets", "Budgets", e),
    };
    let content = html! {
        div.tablewrap { table {
            thead { tr { th { "Of" } th { "Id" } th { "Tenant" } th { "Period" } th { "Used" }
                th.num { "Spent" } th.num { "Limit" } th { "Resets" } th { "State" } } }
            tbody {
                @for b in &list.items { tr {
                    td { (b.scope.as_str()) } td { (b.id) } td { (b.tenant_id) }
                    td { (format!("{:?}", b.budget.period).to_lowercase()) }
                    td { (bar(b.spent_usd, b.budget.max_usd)) }
                    td.num { (usd(b.spent_usd)) } td.num { (usd(b.budget.max_usd)) }
                    td { @match b.period_end { Some(t) => (t.format("%Y-%m-%d %H:%M UTC")), None => "never" } }
                    td { (format!("{:?}", b.state).to_lowercase()) }
                } }
                @if list.items.is_empty() { tr { td colspan="9" .muted { "No budgets." } } }
            }
        } }
        (pager("/ui/budgets", q.offset.unwrap_or(0), list.next_offset))
    };
    page(&session, "/ui/budgets", "Budgets", content)
}

/// `GET /ui/spend` parameters.
#[derive(Debug, Deserialize)]
pub struct SpendQuery {
    pub group_by: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub format: Option<String>,
}

fn group_of(s: &str) -> Option<GroupBy> {
    match s {
        "tenant" => Some(GroupBy::Tenant),
        "key" => Some(GroupBy::Key),
        "model" => Some(GroupBy::Model),
        "deployment" => Some(GroupBy::Deployment),
        _ => None,
    }
}

/// `GET /ui/spend`: spend by day range and group, as a table or `?format=csv`.
pub async fn spend(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<SpendQuery>,
) -> Response {
    let today = Utc::now().date_naive();
    let group = q.group_by.clone().unwrap_or_else(|| "model".into());
    let day = |s: &Option<String>, default: NaiveDate| {
        s.as_deref()
            .filter(|s| !s.is_empty())
            .map_or(Ok(default), |s| {
                NaiveDate::parse_from_str(s, "%Y-%m-%d")
                    .map_err(|_| Error::invalid("from", "a date"))
            })
    };
    let range =
        day(&q.from, today - chrono::Days::new(6)).and_then(|f| Ok((f, day(&q.to, today)?)));
    let Some(by) = group_of(&group) else {
        return refused(
            &session,
            "/ui/spend",
            "Spend",
            Error::NotFound(format!("grouping {group:?}")),
        );
    };
    let (from, to) = match range {
        Ok((f, t)) if f <= t && (t - f).num_days() <= 3660 => (f, t),
        _ => {
            return refused(
                &session,
                "/ui/spend",
                "Spend",
                Error::NotFound("a valid day range (YYYY-MM-DD, from ≤ to)".into()),
            );
        }
    };
    let report = match spend::report(state.ctx(), &session.actor, by, from, to, None).await {
        Ok(r) => r,
        Err(e) => return refused(&session, "/ui/spend", "Spend", e),
    };
    if q.format.as_deref() == Some("csv") {
        return csv(&group, &report.rows);
    }
    let by_day = daily(&state, &session, from, to).await;
    let query = format!("group_by={group}&from={from}&to={to}");
    let content = html! {
        form.filters method="get" action="/ui/spend" {
            label { "Group by" select name="group_by" {
                @for g in ["model", "key", "deployment", "tenant"] { option value=(g) selected[g == group] { (g) } }
            } }
            label { "From" input type="date" name="from" value=(from); }
            label { "To" input type="date" name="to" value=(to); }
            button type="submit" { "Show" }
            a href=(format!("/ui/spend?{query}&format=csv")) download { "Export CSV" }
        }
        h2 { "By day" } (by_day)
        h2 { "By " (group) } (spend_table(&group, &report.rows))
    };
    page(&session, "/ui/spend", "Spend", content)
}

/// Spend per day in `from..=to`, as bars (one report per day; at most 31 days are drawn).
async fn daily(state: &AppState, session: &Session, from: NaiveDate, to: NaiveDate) -> Markup {
    let mut days = Vec::new();
    let mut day = if (to - from).num_days() > 30 {
        to - chrono::Days::new(30)
    } else {
        from
    };
    while day <= to {
        let r = spend::report(state.ctx(), &session.actor, GroupBy::Tenant, day, day, None).await;
        days.push((day, r.map(|r| totals(&r.rows)).unwrap_or_default()));
        day = day + chrono::Days::new(1);
    }
    let max = days.iter().map(|(_, t)| t.2).fold(0.0, f64::max);
    html! {
        div.tablewrap { table {
            thead { tr { th { "Day" } th { "" } th.num { "Requests" } th.num { "Cost" } } }
            tbody { @for (d, (req, _, cost)) in &days { tr {
                td { (d) } td { (share(*cost, max)) }
                td.num { (req) } td.num { (usd(*cost)) }
            } } }
        } }
    }
}

/// The report as CSV.
fn csv(group: &str, rows: &[SpendRow]) -> Response {
    let mut text = format!(
        "{group},requests,errors,prompt_tokens,completion_tokens,cached_read_tokens,cache_creation_tokens,cost_usd\n"
    );
    for r in rows {
        // A leading `=`, `+`, `-` or `@` would be a formula in a spreadsheet.
        let name = r.group.replace('"', "\"\"");
        let name = if name.starts_with(['=', '+', '-', '@']) {
            format!("'{name}")
        } else {
            name
        };
        text.push_str(&format!(
            "\"{name}\",{},{},{},{},{},{},{}\n",
            r.requests,
            r.errors,
            r.prompt_tokens,
            r.completion_tokens,
            r.cached_read_tokens,
            r.cache_creation_tokens,
            r.cost_usd
        ));
    }
    let mut response = text.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_static("attachment; filename=\"spend.csv\""),
    );
    response
}

/// `GET /ui/fleet`: every live data plane.
pub async fn fleet_page(State(state): State<AppState>, session: Session) -> Response {
    let view = match session.actor.require_platform_reader() {
        Ok(()) => fleet::fleet(state.ctx(), &state.fleet).await,
        Err(e) => Err(e),
    };
    let view = match view {
        Ok(v) => v,
        Err(e) => return refused(&session, "/ui/fleet", "Fleet", e),
    };
    let content = html! {
        p { "Config revision " strong { (view.revision) } "." }
        div.tablewrap { table {
            thead { tr { th { "Data plane" } th { "Host" } th { "Version" } th.num { "Revision" }
                th.num { "Lag" } th { "Ready" } th { "Last heartbeat" } } }
            tbody {
                @for d in &view.dataplanes { tr {
                    td { (d.id) } td { (d.hostname) } td { (d.version) } td.num { (d.revision) }
                    td.num { (d.lag) }
                    td { @if d.ready { span.ok { "ready" } } @else { span.bad { "not ready" } } }
                    td { (d.last_seen.format("%H:%M:%S UTC")) }
                } }
                @if view.dataplanes.is_empty() { tr { td colspan="7" .muted { "No data plane has been heard from." } } }
            }
        } }
    };
    page(&session, "/ui/fleet", "Fleet", content)
}

/// `GET /ui/audit`: the audit log, newest first, filtered by tenant.
pub async fn audit(
    State(state): State<AppState>,
    session: Session,
    Query(q): Query<ListQuery>,
) -> Response {
    let list = match fleet::audit(state.ctx(), &session.actor, q.paging(), q.tenant()).await {
        Ok(l) => l,
        Err(e) => return refused(&session, "/ui/audit", "Audit log", e),
    };
    let tenant = q.tenant().unwrap_or_default();
    let content = html! {
        form.filters method="get" action="/ui/audit" {
            label { "Tenant" input name="tenant_id" value=(tenant); }
            button type="submit" { "Filter" }
        }
        div.tablewrap { table {
            thead { tr { th { "When" } th { "Who" } th { "Action" } th { "Object" } th { "Tenant" } th.num { "Revision" } } }
            tbody {
                @for e in &list.items { tr {
                    td { (e.at.format("%Y-%m-%d %H:%M:%S")) } td { (e.actor) } td { (e.action) }
                    td { (e.object_type) " " (e.object_id) } td { (e.tenant_id.as_deref().unwrap_or("")) }
                    td.num { (e.revision) }
                } }
                @if list.items.is_empty() { tr { td colspan="6" .muted { "Nothing recorded." } } }
            }
        } }
        (pager(&format!("/ui/audit?tenant_id={}", urlencode(tenant)), q.offset.unwrap_or(0), list.next_offset))
    };
    page(&session, "/ui/audit", "Audit log", content)
}

/// Percent-encodes a query value.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
