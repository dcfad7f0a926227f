//! Model prices: `/admin/v1/prices` — the effective price of every model (LiteLLM's price file
//! with admin overrides on top), one model's two layers, the overrides, the synced versions,
//! the models that deployments use but nothing prices, and a sync on demand.
//!
//! Model names contain `/` (`gemini/gemini-2.5-pro`): in a path, write it as `%2F`
//! (`/prices/gemini%2Fgemini-2.5-pro/override`). Routes match the raw path, where `%2F` is not
//! a separator, and the `{model}` parameter is percent-decoded. The fixed names `versions`,
//! `missing` and `sync` shadow models of those names (none exists; `?search=` finds them).
//!
//! Every role may read prices (they are the same for every tenant); the missing-price report
//! names deployments, so it is for platform readers. Overrides and syncs are platform admins'.
//! Override writes go through `service::prices::overrides`: audited, revision bumped, snapshot
//! validated, published at once.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use switchboard_shared::price::PriceEntry;
use utoipa::ToSchema;

use super::body::Body;
use super::caller::Caller;
use super::error::{ApiError, Problem};
use super::{Page, Wait, deleted, list_params, written};
use crate::service::price_book::{
    self as read, EffectivePrice, MissingModel, ModelPrice, PriceFilter, PriceSource, PriceVersion,
};
use crate::service::prices::{self, SyncOutcome, overrides};
use crate::state::AppState;

list_params! {
    /// `GET /prices` parameters.
    pub struct PriceListParams {
        /// Only models whose name contains this (case-insensitive).
        pub search: Option<String>,
        /// Only prices from an `override` or from the `file`.
        pub source: Option<PriceSource>,
    }
}

/// A price entry in LiteLLM's field names (USD per token), e.g. `{"input_cost_per_token":
/// 2.5e-06, "output_cost_per_token": 1e-05}`, read strictly: an unknown field, a wrongly typed
/// one or a negative rate is refused with its path. It replaces the file's entry as a whole,
/// so it sets `input_cost_per_token` or `output_cost_per_token`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(transparent)]
#[schema(value_type = crate::service::price_book::PriceEntryDoc)]
pub struct PriceEntryBody(serde_json::Value);

/// `POST /prices/sync` body.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncBody {
    /// Where to fetch the price file; default: the configured `prices.url`.
    pub url: Option<String>,
}

#[utoipa::path(get, path = "/prices", tag = "prices", params(PriceListParams),
    responses((status = 200, body = Page<EffectivePrice>), (status = 400, body = Problem)))]
pub async fn list(
    State(state): State<AppState>,
    _caller: Caller,
    params: PriceListParams,
) -> Result<Json<Page<EffectivePrice>>, ApiError> {
    let paging = params.paging();
    let filter = PriceFilter {
        search: params.search.clone().filter(|s| !s.is_empty()),
        source: params.source,
        limit: paging.limit() + 1,
        offset: paging.offset(),
    };
    let rows = read::list_effective(&state.pool, &filter).await?;
    Ok(Json(paging.page(rows, Clone::clone)))
}

#[utoipa::path(get, path = "/prices/{model}", tag = "prices",
    params(("model" = String, Path, description = "The model name, `/` written as `%2F`")),
    responses((status = 200, body = ModelPrice), (status = 404, body = Problem)))]
pub async fn get(
    State(state): State<AppState>,
    _caller: Caller,
    Path(model): Path<String>,
) -> Result<Json<ModelPrice>, ApiError> {
    Ok(Json(read::model_price(&state.pool, &model).await?))
}

#[utoipa::path(put, path = "/prices/{model}/override", tag = "prices",
    params(("model" = String, Path, description = "The model name, `/` written as `%2F`"), Wait),
    request_body = PriceEntryBody,
    responses((status = 200, body = ModelPrice, description = "replaced"),
        (status = 201, body = ModelPrice, description = "created"),
        (status = 400, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn put_override(
    State(state): State<AppState>,
    caller: Caller,
    Path(model): Path<String>,
    wait: Wait,
    Body(PriceEntryBody(body)): Body<PriceEntryBody>,
) -> Result<Response, ApiError> {
    caller.require_platform_admin()?;
    let entry =
        PriceEntry::from_json_strict(&body).map_err(|e| ApiError::invalid(e.path, e.message))?;
    let (view, committed, created) = overrides::put(state.ctx(), &caller, &model, &entry).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(written(&state, committed, wait, status, view).await)
}

#[utoipa::path(delete, path = "/prices/{model}/override", tag = "prices",
    params(("model" = String, Path, description = "The model name, `/` written as `%2F`"), Wait),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn delete_override(
    State(state): State<AppState>,
    caller: Caller,
    Path(model): Path<String>,
    wait: Wait,
) -> Result<Response, ApiError> {
    caller.require_platform_admin()?;
    let committed = overrides::remove(state.ctx(), &caller, &model).await?;
    Ok(deleted(&state, committed, wait).await)
}

#[utoipa::path(get, path = "/prices/versions", tag = "prices",
    responses((status = 200, body = Page<PriceVersion>)))]
pub async fn versions(
    State(state): State<AppState>,
    _caller: Caller,
) -> Result<Json<Page<PriceVersion>>, ApiError> {
    // At most `prices::VERSIONS_KEPT`: one page.
    Ok(Json(Page {
        items: read::versions(&state.pool).await?,
        next_offset: None,
    }))
}

#[utoipa::path(get, path = "/prices/missing", tag = "prices",
    responses((status = 200, body = Page<MissingModel>), (status = 403, body = Problem)))]
pub async fn missing(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Page<MissingModel>>, ApiError> {
    caller.require_platform_reader()?;
    Ok(Json(Page {
        items: read::missing_for_deployments(&state.pool).await?,
        next_offset: None,
    }))
}

#[utoipa::path(post, path = "/prices/sync", tag = "prices", request_body = SyncBody,
    responses((status = 200, body = SyncOutcome), (status = 403, body = Problem),
        (status = 409, body = Problem, description = "another sync is running"),
        (status = 422, body = Problem, description = "no URL, or the file is not a valid price file"),
        (status = 502, body = Problem, description = "the source could not be read")))]
pub async fn sync(
    State(state): State<AppState>,
    caller: Caller,
    Body(req): Body<SyncBody>,
) -> Result<Json<SyncOutcome>, ApiError> {
    caller.require_platform_admin()?;
    let configured = &state.settings.prices;
    Ok(Json(
        prices::sync_now(state.ctx(), &caller, req.url, configured).await?,
    ))
}
