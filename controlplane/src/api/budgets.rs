//! Budgets: `GET /admin/v1/budgets` and `GET|PUT|DELETE /admin/v1/{tenants,keys}/{id}/budget`.
//! Each answer shows the budget with its current period and what was spent in it according to
//! Postgres (`service::budgets`). Writes go through the one write path, so the data planes
//! enforce a change as soon as they have the new snapshot; with a `redis` section the counter
//! of the (possibly new) period is raised to Postgres' figure right after the commit.
//!
//! Who may do what follows the owners' routes: everyone but a tenant admin of another tenant
//! reads (that one gets 404); a key's budget is written by platform admins and its tenant's
//! admins, a tenant's by platform admins only; viewers never write (403).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use switchboard_shared::snapshot::Budget;

use super::body::Body;
use super::caller::Caller;
use super::error::{ApiError, Problem};
use super::{Page, Wait, answer, deleted, list_params};
use crate::service::budgets::{self, BudgetBody, BudgetView, Scope};
use crate::state::AppState;

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

#[utoipa::path(get, path = "/budgets", tag = "budgets", params(BudgetListParams),
    responses((status = 200, body = Page<BudgetView>), (status = 400, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    params: BudgetListParams,
) -> Result<Json<Page<BudgetView>>, ApiError> {
    let page = budgets::list_views(
        state.ctx(),
        state.settings.spend.raw_retention_days,
        &caller,
        params.paging(),
        params.tenant_id.as_deref(),
        params.scope,
    );
    Ok(Json(page.await?))
}

async fn get_budget(
    state: &AppState,
    caller: &Caller,
    scope: Scope,
    id: &str,
) -> Result<Json<BudgetView>, ApiError> {
    let retention = state.settings.spend.raw_retention_days;
    let view = budgets::get_view(state.ctx(), retention, caller, scope, id).await?;
    Ok(Json(view))
}

async fn put_budget(
    state: &AppState,
    caller: &Caller,
    scope: Scope,
    id: &str,
    wait: Wait,
    budget: Budget,
) -> Result<Response, ApiError> {
    let counters = state.counters.as_ref();
    let retention = state.settings.spend.raw_retention_days;
    let done = budgets::put(state.ctx(), counters, retention, caller, scope, id, budget).await?;
    Ok(answer(state, wait, StatusCode::OK, done).await)
}

async fn delete_budget(
    state: &AppState,
    caller: &Caller,
    scope: Scope,
    id: &str,
    wait: Wait,
) -> Result<Response, ApiError> {
    let committed = budgets::remove(state.ctx(), caller, scope, id).await?;
    Ok(deleted(state, committed, wait).await)
}

/// The three budget routes of one owner, at `$path`. The owners' pairs differ only in their
/// path and in who may write (their summaries say; `service::budgets::set` decides).
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
