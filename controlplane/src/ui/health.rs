//! Deployment health in the console: `/ui/deployments/health` lists every deployment's
//! breaker, load, latency, recent failure rate, caps usage and last lasting error, and
//! `/ui/deployments/{id}/health` shows one with its latest failed attempts and — for platform
//! admins — a button that sends the test call (`POST /ui/deployments/{id}/test`) and shows what
//! the upstream answered. Both read `service::health` and `service::test_call`, as
//! `GET /admin/v1/deployments/{id}/health` and `POST .../test` do: viewers read, platform admins
//! also test, tenant admins are refused (deployments are platform objects).

use axum::extract::{Path, State};
use axum::response::Response;
use maud::{Markup, html};

use super::html::{csrf, page};
use super::pages::{refused, urlencode};
use super::session::{PostForm, Session};
use crate::service::health::{self, CapUseView, CapsHealth, DeploymentHealth};
use crate::service::test_call::{self, TestResult};
use crate::state::AppState;

const CURRENT: &str = "/ui/deployments";

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "—".to_owned(), |v| format!("{v:.0} ms"))
}

fn rate(h: &DeploymentHealth) -> String {
    match h.recent.failure_rate {
        Some(r) => format!("{:.0} % of {}", r * 100.0, h.recent.attempts),
        None => "no attempts".to_owned(),
    }
}

fn breaker(h: &DeploymentHealth) -> Markup {
    let class = match h.breaker.as_str() {
        "closed" => "ok",
        "unknown" => "muted",
        _ => "bad",
    };
    html! {
        span class=(class) { (h.breaker.replace('_', "-")) }
        @if let (Some(until), "open") = (h.open_until, h.breaker.as_str()) {
            " until " (until.format("%H:%M:%S UTC"))
        }
    }
}

/// `used` of the caps `usd` and `requests` of one period, e.g. `$0.0087 of $0.01 · 3 of 5 req`
/// (unlimited ones left out).
fn period_use(used: Option<CapUseView>, usd: Option<f64>, requests: Option<u64>) -> String {
    let Some(u) = used else {
        return "not read".to_owned();
    };
    let mut parts = Vec::new();
    if let Some(cap) = usd {
        parts.push(format!("${:.4} of ${cap}", u.usd));
    }
    if let Some(cap) = requests {
        parts.push(format!("{} of {cap} req", u.requests));
    }
    parts.join(" · ")
}

/// A deployment's caps: what each period used of them, and the one used up.
fn caps(c: Option<&CapsHealth>) -> Markup {
    let Some(c) = c else {
        return html! { span.muted { "none" } };
    };
    let day = c.usd_per_day.is_some() || c.requests_per_day.is_some();
    let month = c.usd_per_month.is_some() || c.requests_per_month.is_some();
    html! {
        @if day { "today " (period_use(c.today, c.usd_per_day, c.requests_per_day)) }
        @if day && month { br; }
        @if month { "month " (period_use(c.this_month, c.usd_per_month, c.requests_per_month)) }
        @if let Some(cap) = &c.exhausted { br; span.bad { "exhausted: " (cap) } }
    }
}

/// `GET /ui/deployments/health`: every deployment's health.
pub async fn list(State(state): State<AppState>, session: Session) -> Response {
    let all = match health::all(state.ctx(), &session.actor, state.counters.as_ref()).await {
        Ok(all) => all,
        Err(e) => return refused(&session, CURRENT, "Deployment health", e),
    };
    let content = html! {
        @if all.iter().all(|h| !h.live) {
            p.muted { "No live state: the control plane has no redis section, Redis does not \
                answer, or no data plane has routed yet. The request log's figures still show." }
        }
        div.tablewrap { table #health {
            thead { tr { th { "Deployment" } th { "Model" } th { "Breaker" } th.num { "Replicas" }
                th.num { "In flight" } th.num { "Latency" } th.num { "TTFT" }
                th { "Failures (15 min)" } th { "Caps used" } th { "Last lasting error" } } }
            tbody {
                @for h in &all { tr {
                    td { a href=(format!("/ui/deployments/{}/health", urlencode(&h.deployment_id))) {
                        (h.deployment_id) } }
                    td { (h.model) } td { (breaker(h)) } td.num { (h.replicas) }
                    td.num { (h.inflight) } td.num { (ms(h.latency_ms)) } td.num { (ms(h.ttft_ms)) }
                    td { (rate(h)) } td.caps { (caps(h.caps.as_ref())) }
                    td { @if let Some(e) = &h.last_permanent_error { (e.kind) } @else { "—" } }
                } }
                @if all.is_empty() { tr { td colspan="10" .muted { "No deployment yet." } } }
            }
        } }
        p { a href="/ui/deployments" { "Deployments" } }
    };
    page(&session, CURRENT, "Deployment health", content)
}

/// `GET /ui/deployments/{id}/health`.
pub async fn detail(
    State(state): State<AppState>,
    session: Session,
    Path(id): Path<String>,
) -> Response {
    one_page(&state, &session, &id, None).await
}

/// `POST /ui/deployments/{id}/test`: the test call, its result above the health.
pub async fn test(
    State(state): State<AppState>,
    Path(id): Path<String>,
    form: PostForm,
) -> Response {
    let session = form.session;
    let keys = &state.settings.master_keys;
    match test_call::run(
        state.ctx(),
        &session.actor,
        keys,
        state.test_calls.as_ref(),
        &id,
    )
    .await
    {
        Ok(result) => one_page(&state, &session, &id, Some(result)).await,
        Err(e) => refused(&session, CURRENT, "Deployment test", e),
    }
}

fn test_result(t: &TestResult) -> Markup {
    let class = if t.ok { "flash ok" } else { "flash bad" };
    html! {
        div class=(class) role="status" #test-result {
            strong { @if t.ok { "Test passed" } @else { "Test failed" } }
            @if let Some(status) = t.status { " · HTTP " (status) }
            " · " (t.latency_ms) " ms"
            @if let Some(dp) = &t.answered_by { " · sent by data plane " code { (dp) } }
            p { (t.explanation) }
            @if let Some(why) = &t.fallback { p.muted { "Sent by the control plane: " (why) } }
            @if let Some(url) = &t.url { p.muted { "Called " code { (url) } } }
        }
    }
}

async fn one_page(
    state: &AppState,
    session: &Session,
    id: &str,
    tested: Option<TestResult>,
) -> Response {
    let counters = state.counters.as_ref();
    let h = match health::one(state.ctx(), &session.actor, counters, id).await {
        Ok(h) => h,
        Err(e) => return refused(session, CURRENT, "Deployment health", e),
    };
    let content = html! {
        @if let Some(t) = &tested { (test_result(t)) }
        dl.facts #deployment-health {
            dt { "Deployment" } dd { code { (h.deployment_id) } " · model " (h.model)
                " · provider " (h.provider) }
            dt { "Breaker" } dd { (breaker(&h)) @if !h.live { " (no live state)" } }
            dt { "Replicas · in flight" } dd { (h.replicas) " · " (h.inflight) }
            dt { "Latency · first token" } dd { (ms(h.latency_ms)) " · " (ms(h.ttft_ms)) }
            dt { "This minute" } dd { (h.requests_this_minute) " requests · "
                (h.failures_this_minute) " failures · " (h.tokens_this_minute) " tokens" }
            dt { "Last 15 minutes" } dd { (rate(&h)) " failed · mean " (ms(h.recent.latency_ms)) }
            dt { "Upstream quota" } dd { @if let Some(q) = &h.upstream_quota {
                (q.remaining_requests.map_or("?".into(), |v| v.to_string())) "/"
                (q.limit_requests.map_or("?".into(), |v| v.to_string())) " requests · "
                (q.remaining_tokens.map_or("?".into(), |v| v.to_string())) "/"
                (q.limit_tokens.map_or("?".into(), |v| v.to_string())) " tokens left"
            } @else { "not reported" } }
            dt { "Caps used" } dd { (caps(h.caps.as_ref())) }
            dt { "Last lasting error" } dd { @if let Some(e) = &h.last_permanent_error {
                (e.kind) " (HTTP " (e.status) ")"
                @if let Some(at) = e.at { " at " (at.format("%Y-%m-%d %H:%M:%S UTC")) }
                ": " (e.message)
            } @else { "none" } }
        }
        @if session.platform_admin() {
            form method="post" action=(format!("/ui/deployments/{}/test", urlencode(&h.deployment_id))) {
                (csrf(session))
                button type="submit" #test { "Send a test request" }
                span.muted { " One one-token chat from the control plane with the provider's \
                    credential; data planes are not involved and keep routing as before." }
            }
        }
        h2 { "Latest failed attempts (last day)" }
        div.tablewrap { table #failures {
            thead { tr { th { "When (UTC)" } th { "Request" } th.num { "Status" } th { "Error" } } }
            tbody {
                @for f in &h.last_errors { tr {
                    td { (f.started_at.format("%Y-%m-%d %H:%M:%S")) }
                    td { a href=(format!("/ui/requests/{}", urlencode(&f.request_id))) { (f.request_id) } }
                    td.num { (f.status) } td { (f.error_kind.as_deref().unwrap_or("—")) }
                } }
                @if h.last_errors.is_empty() { tr { td colspan="4" .muted { "None." } } }
            }
        } }
        p { a href="/ui/deployments/health" { "All deployments' health" } " · "
            a href="/ui/deployments" { "Deployments" } }
    };
    page(
        session,
        CURRENT,
        &format!("Health of {}", h.deployment_id),
        content,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_caps_cell_shows_each_periods_use_and_the_cap_used_up() {
        let used = |requests, usd| Some(CapUseView { requests, usd });
        let c = CapsHealth {
            usd_per_day: Some(1.0),
            usd_per_month: None,
            requests_per_day: Some(3),
            requests_per_month: Some(100),
            today: used(3, 0.0087),
            this_month: used(40, 2.5),
            exhausted: Some("requests_per_day".into()),
        };
        let text = caps(Some(&c)).into_string();
        assert!(text.contains("today $0.0087 of $1 · 3 of 3 req"), "{text}");
        assert!(text.contains("month 40 of 100 req"), "{text}");
        assert!(text.contains("exhausted: requests_per_day"), "{text}");
        let unread = CapsHealth {
            today: None,
            this_month: None,
            exhausted: None,
            ..c
        };
        assert!(caps(Some(&unread)).into_string().contains("today not read"));
        assert!(caps(None).into_string().contains("none"));
    }
}
