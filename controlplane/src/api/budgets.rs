//! Budgets: `GET /admin/v1/budgets` and `GET|PUT|DELETE /admin/v1/{tenants,keys}/{id}/budget`.
//! Each answer shows the budget with its current period and what was spent in it according to
//! Postgres ([`crate::budgets`]). Writes go through the one write path, so the data planes
//! enforce a change as soon as they have the new snapshot; with a `redis` section the counter
//! of the (possibly new) period is raised to Postgres' figure right after the commit.
//!
//! Who may do what follows the owners' routes: everyone but a tenant admin of another tenant
//! reads (that one gets 404); a key's budget is written by platform admins and its tenant's
//! admins, a tenant's by platform admins only; viewers never write (403).

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use chrono::Utc;
use switchboard_shared::snapshot::Budget;

use super::{Page, Wait, deleted, list_params, written};
use crate::auth::Caller;
use crate::body::Body;
use crate::budgets::{self, BudgetBody, BudgetView, Scope, Subject};
use crate::error::{ApiError, Problem};
use crate::state::AppState;

/// Longest an admin write waits for the immediate counter raise.
const RAISE_WAIT: Duration = Duration::from_secs(2);

list_params! {
    /// `GET /admin/v1/budgets` parameters.
    pub struct BudgetListParams {
        /// Only this tenant's budget and its keys'.
        pub tenant_id: Option<String>,
        /// Only `key` or only `tenant` budgets.
        #[param(value_type = Option<String>)]
        pub scope: Option<Scope>,
    }
}

/// The budgets' views at this instant.
async fn views(state: &AppState, subjects: &[Subject]) -> Result<Vec<BudgetView>, ApiError> {
    Ok(budgets::views(
        &state.pool,
        subjects,
        Utc::now(),
        state.settings.spend.raw_retention_days,
    )
    .await?)
}

async fn view(state: &AppState, subject: &Subject) -> Result<BudgetView, ApiError> {
    views(state, std::slice::from_ref(subject))
        .await?
        .pop()
        .ok_or_else(|| ApiError::Internal("a budget without a view".into()))
}

#[utoipa::path(get, path = "/budgets", tag = "budgets", params(BudgetListParams),
    responses((status = 200, body = Page<BudgetView>), (status = 400, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: BudgetListParams,
) -> Result<Json<Page<BudgetView>>, ApiError> {
    let paging = params.paging();
    let subjects = budgets::list(
        &state.pool,
        &caller,
        params.tenant_id.as_deref(),
        params.scope,
        paging.limit(),
        paging.offset(),
    )
    .await?;
    let page = paging.page(subjects, Clone::clone);
    let items = views(&state, &page.items).await?;
    Ok(Json(Page {
        items,
        next_offset: page.next_offset,
    }))
}

async fn get_budget(
    state: &AppState,
    caller: &Caller,
    scope: Scope,
    id: &str,
) -> Result<Json<BudgetView>, ApiError> {
    let subject = budgets::get(&state.pool, caller, scope, id).await?;
    Ok(Json(view(state, &subject).await?))
}

async fn put_budget(
    state: &AppState,
    caller: &Caller,
    scope: Scope,
    id: &str,
    wait: Wait,
    budget: Budget,
) -> Result<Response, ApiError> {
    let (subject, committed) = budgets::set(
        &state.pool,
        Some(&state.publisher),
        caller,
        scope,
        id,
        budget,
    )
    .await?;
    raise_now(state, &subject).await;
    let body = view(state, &subject).await?;
    Ok(written(state, committed, wait, StatusCode::OK, body).await)
}

/// Raises the counter of the budget's current period to Postgres' spend at once, so that a new
/// period (a changed `period` or `time_zone`) does not start from zero until the next pass.
/// Best effort: a failure is a warning and the reconciliation loop catches up.
async fn raise_now(state: &AppState, subject: &Subject) {
    let Some(counters) = &state.counters else {
        return;
    };
    let raise = budgets::counters::reconcile_subjects(
        &state.pool,
        counters,
        std::slice::from_ref(subject),
        Utc::now(),
        state.settings.spend.raw_retention_days,
    );
    match tokio::time::timeout(RAISE_WAIT, raise).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "budget counter not raised after a write"),
        Err(_) => tracing::warn!("budget counter raise after a write timed out"),
    }
}

async fn delete_budget(
    state: &AppState,
    caller: &Caller,
    scope: Scope,
    id: &str,
    wait: Wait,
) -> Result<Response, ApiError> {
    let committed = budgets::remove(&state.pool, Some(&state.publisher), caller, scope, id).await?;
    Ok(deleted(state, committed, wait).await)
}

/// The three budget routes of one owner, at `$path`. The owners' pairs differ only in their
/// path and in who may write (their summaries say; [`budgets::set`] decides).
macro_rules! owner_budget_routes {
    (
        $scope:expr, $path:literal,
        get: $get:ident,
        $(#[$put_doc:meta])* put: $put:ident,
        $(#[$delete_doc:meta])* delete: $delete:ident $(,)?
    ) => {
        #[utoipa::path(get, path = $path, tag = "budgets", params(("id" = String, Path)),
            responses((status = 200, body = BudgetView), (status = 404, body = Problem)))]
        pub async fn $get(
            State(state): State<AppState>,
            caller: Caller,
            Path(id): Path<String>,
        ) -> Result<Json<BudgetView>, ApiError> {
            get_budget(&state, &caller, $scope, &id).await
        }

        $(#[$put_doc])*
        #[utoipa::path(put, path = $path, tag = "budgets",
            params(("id" = String, Path), Wait), request_body = BudgetBody,
            responses((status = 200, body = BudgetView), (status = 400, body = Problem),
                (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)))]
        pub async fn $put(
            State(state): State<AppState>,
            caller: Caller,
            Path(id): Path<String>,
            wait: Wait,
            Body(budget): Body<Budget>,
        ) -> Result<Response, ApiError> {
            put_budget(&state, &caller, $scope, &id, wait, budget).await
        }

        $(#[$delete_doc])*
        #[utoipa::path(delete, path = $path, tag = "budgets",
            params(("id" = String, Path), Wait),
            responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
        pub async fn $delete(
            State(state): State<AppState>,
            caller: Caller,
            Path(id): Path<String>,
            wait: Wait,
        ) -> Result<Response, ApiError> {
            delete_budget(&state, &caller, $scope, &id, wait).await
        }
    };
}

owner_budget_routes! {
    Scope::Tenant, "/tenants/{id}/budget",
    get: get_tenant_budget,
    /// Sets or replaces a tenant's budget (platform admins).
    put: put_tenant_budget,
    /// Removes a tenant's budget (platform admins).
    delete: delete_tenant_budget,
}

owner_budget_routes! {
    Scope::Key, "/keys/{id}/budget",
    get: get_key_budget,
    /// Sets or replaces a key's budget (platform admins, the key's tenant admins).
    put: put_key_budget,
    /// Removes a key's budget (platform admins, the key's tenant admins).
    delete: delete_key_budget,
}
