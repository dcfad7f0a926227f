//! The console's page frame and the pieces every page shares: the navigation (by role), form
//! fields with their errors next to them, the pager, and the sentence a write ends with
//! ("applied on all N data planes", or the laggards by name).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, html};

use super::session::Session;
use crate::service::Error;
use crate::service::write::Committed;
use crate::state::AppState;

/// Rows per page of every list.
pub const PAGE: u32 = 50;
/// How long a write waits for the fleet to apply it.
pub const WAIT: Duration = Duration::from_secs(3);

/// The navigation: path, label, whether tenant admins see it.
const NAV: &[(&str, &str, bool)] = &[
    ("/ui", "Overview", true),
    ("/ui/tenants", "Tenants", true),
    ("/ui/keys", "Keys", true),
    ("/ui/providers", "Providers", false),
    ("/ui/deployments", "Deployments", false),
    ("/ui/models", "Model policies", false),
    ("/ui/budgets", "Budgets", true),
    ("/ui/spend", "Spend", true),
    ("/ui/requests", "Requests", true),
    ("/ui/prices", "Prices", false),
    ("/ui/fleet", "Fleet", false),
    ("/ui/audit", "Audit log", true),
];

/// [`page`] answered with the status of a failed write (200 when `errors` is empty).
pub fn page_with(
    session: &Session,
    current: &str,
    title: &str,
    errors: &FormErrors,
    content: Markup,
) -> Response {
    let mut response = page(session, current, title, content);
    if let Some(status) = errors.status {
        *response.status_mut() = status;
    }
    response
}

/// A whole page for `session`.
pub fn page(session: &Session, current: &str, title: &str, content: Markup) -> Response {
    let a = &session.actor;
    let who = match &a.tenant_id {
        Some(t) if session.actor.confined_to().is_some() => {
            format!("{} · {} of {t}", a.email, a.role.as_str())
        }
        _ => format!("{} · {}", a.email, a.role.as_str()),
    };
    let body = html! {
        a.skip href="#main" { "Skip to content" }
        header {
            span.brand { "Switchboard" }
            nav aria-label="Main" {
                @for (path, label, tenant) in NAV {
                    @if *tenant || session.platform_reader() {
                        @if *path == current { a href=(path) aria-current="page" { (label) } }
                        @else { a href=(path) { (label) } }
                    }
                }
            }
            span.who { (who) }
            form.inline method="post" action="/ui/logout" {
                input type="hidden" name="csrf" value=(session.csrf);
                button.secondary type="submit" { "Sign out" }
            }
        }
        main #main { h1 { (title) } (content) }
    };
    document(title, body)
}

/// The HTML document around `body`, with the embedded stylesheet and script.
pub fn document(title: &str, body: Markup) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Switchboard" }
                link rel="stylesheet" href="/ui/assets/ui.css";
                script src="/ui/assets/ui.js" defer {}
            }
            body { (body) }
        }
    };
    let mut response = (StatusCode::OK, markup).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    headers.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    response
}

/// What a failed write says: one message for the form, and one per field.
#[derive(Debug, Default)]
pub struct FormErrors {
    pub general: Option<String>,
    pub fields: BTreeMap<String, String>,
    /// The page's status: the API's for the same refusal (200 when nothing failed).
    pub status: Option<StatusCode>,
}

impl FormErrors {
    pub fn field(path: &str, message: impl Into<String>) -> Self {
        let mut e = FormErrors {
            general: Some("Some fields are not valid: see the messages next to them.".into()),
            status: Some(StatusCode::UNPROCESSABLE_ENTITY),
            ..Default::default()
        };
        e.fields.insert(path.to_owned(), message.into());
        e
    }

    /// The message for the input `name` (or a sub-path of it, `limits.rpm` for `limits`).
    fn for_field(&self, name: &str) -> Option<&str> {
        self.fields.iter().find_map(|(path, message)| {
            let hit = path == name
                || path.starts_with(&format!("{name}."))
                || path.starts_with(&format!("{name}["));
            hit.then_some(message.as_str())
        })
    }

    pub fn is_empty(&self) -> bool {
        self.general.is_none() && self.fields.is_empty()
    }
}

impl From<Error> for FormErrors {
    fn from(e: Error) -> Self {
        let status = match &e {
            Error::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::Upstream(_) => StatusCode::BAD_GATEWAY,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let (general, fields) = match e {
            Error::Invalid(list) => (
                "Some fields are not valid: see the messages next to them.".to_owned(),
                list.into_iter().map(|f| (f.path, f.message)).collect(),
            ),
            Error::Internal(cause) => {
                tracing::error!(%cause, "ui: a write failed");
                (
                    "Internal error: the write was not made.".to_owned(),
                    BTreeMap::new(),
                )
            }
            other => (capitalise(&other.to_string()), BTreeMap::new()),
        };
        FormErrors {
            general: Some(general),
            fields,
            status: Some(status),
        }
    }
}

fn capitalise(s: &str) -> String {
    let mut chars = s.chars();
    chars.next().map_or_else(String::new, |c| {
        c.to_uppercase().collect::<String>() + chars.as_str()
    })
}

/// A labelled input named `name`, with its error below it.
pub fn input(errors: &FormErrors, name: &str, label: &str, kind: &str, value: &str) -> Markup {
    let id = format!("f-{}", name.replace('.', "-"));
    let error = errors.for_field(name);
    let error_id = format!("{id}-err");
    html! {
        div {
            label for=(id) { (label) }
            input id=(id) name=(name) type=(kind) value=(value)
                aria-invalid=[error.map(|_| "true")] aria-describedby=[error.map(|_| error_id.as_str())];
            @if let Some(e) = error { div.err id=(error_id) role="alert" { (e) } }
        }
    }
}

/// A labelled select named `name`.
pub fn select(
    errors: &FormErrors,
    name: &str,
    label: &str,
    options: &[&str],
    value: &str,
) -> Markup {
    let id = format!("f-{name}");
    html! {
        div {
            label for=(id) { (label) }
            select id=(id) name=(name) {
                @for o in options { option value=(o) selected[*o == value] { (o) } }
            }
            @if let Some(e) = errors.for_field(name) { div.err role="alert" { (e) } }
        }
    }
}

/// The hidden CSRF field of a form.
pub fn csrf(session: &Session) -> Markup {
    html! { input type="hidden" name="csrf" value=(session.csrf); }
}

/// The form-wide message of a failed write.
pub fn general(errors: &FormErrors) -> Markup {
    html! { @if let Some(g) = &errors.general { div.flash.bad role="alert" { (g) } } }
}

/// "Next page" and "First page" links: `base` is the path with its other query parameters.
pub fn pager(base: &str, offset: u64, next: Option<u64>) -> Markup {
    let sep = if base.contains('?') { '&' } else { '?' };
    html! {
        nav.pager aria-label="Pages" {
            @if offset > 0 { a href=(base) { "First page" } }
            @if let Some(n) = next { a href=(format!("{base}{sep}offset={n}")) { "Next page" } }
            @else { span.muted { "End of list" } }
        }
    }
}

/// What a page shows above its content after a form post: the notice of a write that went
/// through, or the errors to show next to the form's inputs. `Shown::default()` is a page
/// freshly opened.
#[derive(Default)]
pub struct Shown {
    pub errors: FormErrors,
    pub notice: Option<Markup>,
}

impl Shown {
    /// After a write: its errors, or the notice saying whether every data plane applied it
    /// (`what` names the write and gives its commit).
    pub async fn after<V>(
        state: &AppState,
        result: Result<V, FormErrors>,
        what: impl FnOnce(&V) -> (String, &Committed),
    ) -> Self {
        match result {
            Ok(done) => {
                let (text, committed) = what(&done);
                Self::notice(applied(state, &text, committed).await)
            }
            Err(errors) => Self::failed(errors),
        }
    }

    /// A page showing a failed write's `errors`.
    pub fn failed(errors: FormErrors) -> Self {
        Self {
            errors,
            notice: None,
        }
    }

    /// A page showing `notice` above its content.
    pub fn notice(notice: Markup) -> Self {
        Self {
            errors: FormErrors::default(),
            notice: Some(notice),
        }
    }
}

/// Waits (up to [`WAIT`]) for the live data planes to apply `committed`, and says how it went.
pub async fn applied(state: &AppState, what: &str, committed: &Committed) -> Markup {
    let revision = committed.revision;
    let pending = state.fleet.wait_for(revision, WAIT).await;
    let live = state.fleet.live(revision).len();
    html! {
        @if live == 0 {
            div.flash role="status" { (what) " (revision " (revision) "). No data plane is connected." }
        } @else if pending.is_empty() {
            div.flash.ok role="status" {
                (what) " — applied on all " (live) " data plane" @if live != 1 { "s" }
                " (revision " (revision) ")."
            }
        } @else {
            div.flash.bad role="status" {
                (what) " (revision " (revision) "), not yet applied by: " (pending.join(", ")) "."
            }
        }
    }
}

/// A budget's progress bar (a native `meter`: no inline style, which the CSP forbids).
pub fn bar(spent: f64, max: f64) -> Markup {
    let pct = if max > 0.0 {
        (spent / max * 100.0).clamp(0.0, 100.0)
    } else {
        0.0
    };
    html! {
        meter min="0" max="100" low="80" high="99" optimum="0" value=(format!("{pct:.1}"))
            title=(format!("{pct:.0}% used")) { (format!("{pct:.0}%")) }
    }
}

/// A neutral bar of `v` against `max` (spend per day): no good or bad colouring.
pub fn share(v: f64, max: f64) -> Markup {
    let pct = if max > 0.0 {
        (v / max * 100.0).clamp(0.0, 100.0)
    } else {
        0.0
    };
    html! { meter min="0" max="100" value=(format!("{pct:.1}")) { (format!("{pct:.0}%")) } }
}

/// USD with cents (and more digits under a cent).
pub fn usd(v: f64) -> String {
    if v != 0.0 && v.abs() < 0.01 {
        format!("${v:.6}")
    } else {
        format!("${v:.2}")
    }
}
