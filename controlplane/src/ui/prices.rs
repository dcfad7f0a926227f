//! `GET /ui/prices`: the effective prices (searchable, with the price-file version each comes
//! from), the models deployments use that nothing prices; and the platform admin's writes:
//! set or clear an override, sync the price file now.

use axum::extract::{Query, State};
use axum::response::Response;
use maud::{Markup, html};
use serde_json::{Map, Value, json};
use switchboard_shared::price::PriceEntry;

use super::html::{FormErrors, Shown, csrf, general, input, page_with, pager};
use super::pages::{ListQuery, refused, urlencode};
use super::session::{PostForm, Session};
use crate::service::prices::{self, overrides};
use crate::service::{Error, price_book};
use crate::state::AppState;

fn per_million(v: Option<f64>) -> String {
    v.map(|v| format!("{:.4}", v * 1e6)).unwrap_or_default()
}

pub async fn prices_get(
    State(s): State<AppState>,
    session: Session,
    Query(q): Query<ListQuery>,
) -> Response {
    prices_page(&s, &session, &q, Shown::default()).await
}

async fn prices_page(s: &AppState, session: &Session, q: &ListQuery, shown: Shown) -> Response {
    let Shown { errors: e, notice } = shown;
    let paging = q.paging();
    let search = q.search.clone().filter(|s| !s.is_empty());
    let filter = price_book::PriceFilter {
        search: search.clone(),
        source: None,
        limit: paging.limit() + 1,
        offset: paging.offset(),
    };
    let rows = match price_book::list_effective(&s.pool, &filter).await {
        Ok(rows) => paging.page(rows, Clone::clone),
        Err(err) => return refused(session, "/ui/prices", "Prices", err),
    };
    let missing = if session.platform_reader() {
        price_book::missing_for_deployments(&s.pool)
            .await
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let search = search.unwrap_or_default();
    let admin = session.platform_admin();
    let content = html! {
        @if let Some(n) = notice { (n) }
        @if !missing.is_empty() {
            div.flash.bad role="status" #missing {
                "Unpriced models used by deployments: "
                @for m in &missing { strong { (m.model) } " (" (m.deployments.join(", ")) ") " }
            }
        }
        @if admin { (write_forms(session, &e)) }
        form.filters method="get" action="/ui/prices" {
            label { "Model contains" input name="search" value=(search); }
            button type="submit" { "Search" }
        }
        div.tablewrap { table #prices {
            thead { tr { th { "Model" } th { "Source" } th.num { "File version" }
                th.num { "Input $/Mtok" } th.num { "Output $/Mtok" } @if admin { th { "" } } } }
            tbody {
                @for p in &rows.items { tr {
                    td { (p.model) } td { (p.source.as_str()) }
                    td.num { (p.version_id.map(|v| v.to_string()).unwrap_or_default()) }
                    td.num { (per_million(p.entry.input_cost_per_token)) }
                    td.num { (per_million(p.entry.output_cost_per_token)) }
                    @if admin { td { @if p.source == price_book::PriceSource::Override {
                        form.inline method="post" action="/ui/prices/clear" {
                            (csrf(session)) input type="hidden" name="model" value=(p.model);
                            button.danger type="submit" aria-label=(format!("Clear the override of {}", p.model)) { "Clear override" }
                        }
                    } } }
                } }
                @if rows.items.is_empty() { tr { td colspan="6" .muted { "No prices: sync the price file." } } }
            }
        } }
        (pager(&format!("/ui/prices?search={}", urlencode(&search)), q.offset.unwrap_or(0), rows.next_offset))
    };
    page_with(session, "/ui/prices", "Prices", &e, content)
}

fn write_forms(session: &Session, e: &FormErrors) -> Markup {
    html! {
        (general(e))
        h2 { "Override a model's price" }
        form.box method="post" action="/ui/prices/override" {
            (csrf(session))
            (input(e, "model", "Model", "text", ""))
            (input(e, "input_cost_per_token", "Input $ per million tokens", "text", ""))
            (input(e, "output_cost_per_token", "Output $ per million tokens", "text", ""))
            div { button type="submit" { "Set override" } }
        }
        h2 { "Sync the price file" }
        form.box method="post" action="/ui/prices/sync" {
            (csrf(session))
            (input(e, "url", "URL (empty: the configured prices.url)", "url", ""))
            div { button type="submit" { "Sync now" } }
        }
    }
}

/// The override entry of the form: $/Mtok fields as USD per token.
fn entry_of(f: &super::session::Fields) -> Result<PriceEntry, FormErrors> {
    let mut body = Map::new();
    for name in ["input_cost_per_token", "output_cost_per_token"] {
        if let Some(text) = f.get(name) {
            let per_million: f64 = text
                .parse()
                .map_err(|_| FormErrors::field(name, "must be a number"))?;
            body.insert(name.into(), json!(per_million / 1e6));
        }
    }
    PriceEntry::from_json_strict(&Value::Object(body))
        .map_err(|e| FormErrors::from(Error::invalid(e.path, e.message)))
}

pub async fn override_post(State(s): State<AppState>, form: PostForm) -> Response {
    let PostForm { session, fields: f } = form;
    let model = f.text("model");
    let result: Result<_, FormErrors> = async {
        session.actor.require_platform_admin()?;
        overrides::check_model_name(&model)
            .map_err(|_| FormErrors::field("model", "must be a model name"))?;
        let entry = entry_of(&f)?;
        Ok(overrides::put(s.ctx(), &session.actor, &model, &entry).await?)
    }
    .await;
    let shown = Shown::after(&s, result, |(_, committed, _)| {
        (format!("Price override of {model} set"), committed)
    })
    .await;
    prices_page(&s, &session, &ListQuery::default(), shown).await
}

pub async fn clear_post(State(s): State<AppState>, form: PostForm) -> Response {
    let PostForm { session, fields: f } = form;
    let model = f.text("model");
    let result = match session.actor.require_platform_admin() {
        Ok(()) => overrides::remove(s.ctx(), &session.actor, &model).await,
        Err(e) => Err(e),
    };
    let shown = Shown::after(&s, result.map_err(FormErrors::from), |committed| {
        (format!("Price override of {model} cleared"), committed)
    })
    .await;
    prices_page(&s, &session, &ListQuery::default(), shown).await
}

pub async fn sync_post(State(s): State<AppState>, form: PostForm) -> Response {
    let PostForm { session, fields: f } = form;
    let configured = &s.settings.prices;
    let result = match session.actor.require_platform_admin() {
        Ok(()) => {
            prices::sync_now(
                s.ctx(),
                &session.actor,
                f.get("url").map(str::to_owned),
                configured,
            )
            .await
        }
        Err(e) => Err(e),
    };
    let shown = match result {
        Ok(outcome) => Shown::notice(html! { div.flash.ok role="status" {
            "Synced: version " (outcome.version_id) ", " (outcome.entries) " entries"
            @if !outcome.new_version { " (unchanged)" } "."
        } }),
        Err(e) => Shown::failed(e.into()),
    };
    prices_page(&s, &session, &ListQuery::default(), shown).await
}
