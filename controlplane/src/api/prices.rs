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
//! Override writes go through [`crate::prices::set_override_in`] inside a [`Write`]: audited,
//! revision bumped, snapshot validated, published at once.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use switchboard_shared::price::PriceEntry;
use utoipa::ToSchema;

use super::{Page, Wait, deleted, list_params, written};
use crate::auth::Caller;
use crate::body::Body;
use crate::error::{ApiError, Problem};
use crate::prices::{
    self, EffectivePrice, MissingModel, ModelPrice, PriceFilter, PriceSource, PriceVersion,
    SyncError, SyncOutcome,
};
use crate::state::AppState;
use crate::write::Write;

/// How long a sync on demand waits for the new snapshot's publication at most.
const PUBLISH_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

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
#[schema(value_type = Object)]
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
    let rows = prices::list_effective(&state.pool, &filter).await?;
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
    prices::model_price(&state.pool, &model)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("price", &model))
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
    let mut w = Write::begin(&state.pool, &caller).await?;
    let (before, _) = prices::set_override_in(&mut w, &model, &entry).await?;
    let view = prices::model_price_in(w.conn(), &model)
        .await?
        .ok_or_else(|| ApiError::Internal(format!("the override of {model:?} is not there")))?;
    let committed = w.commit(Some(&state.publisher), None).await?;
    let status = if before.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
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
    let mut w = Write::begin(&state.pool, &caller).await?;
    prices::delete_override_in(&mut w, &model).await?;
    let committed = w.commit(Some(&state.publisher), None).await?;
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
        items: prices::versions(&state.pool).await?,
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
        items: prices::missing_for_deployments(&state.pool).await?,
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
    let url = req
        .url
        .or_else(|| state.settings.prices.url.clone())
        .ok_or_else(|| ApiError::invalid("url", "is required: no prices.url is configured"))?;
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ApiError::invalid(
            "url",
            "must be an http:// or https:// URL",
        ));
    }
    let client = reqwest::Client::builder()
        .build()
        .map_err(|e| ApiError::Internal(format!("price client: {e}")))?;
    let outcome = match prices::sync_once_locked(&state.pool, &client, &url).await {
        Ok(Some(outcome)) => outcome,
        Ok(None) => return Err(ApiError::Conflict("another price sync is running".into())),
        Err(e) => return Err(sync_error(e)),
    };
    tracing::info!(
        actor = %caller.email,
        version = outcome.version_id,
        new = outcome.new_version,
        entries = outcome.entries,
        "price sync on demand done"
    );
    if outcome.new_version {
        // A new version bumped the revision: publish it now rather than at the next reconcile.
        let _ = tokio::time::timeout(
            PUBLISH_WAIT,
            crate::publish::reconcile(&state.pool, &state.publisher),
        )
        .await;
    }
    Ok(Json(outcome))
}

/// What the client may learn of a failed sync: never the file's content (an invalid file's
/// problem names its models and values), nor the URL (it may hold credentials).
fn sync_error(e: SyncError) -> ApiError {
    match e {
        SyncError::Fetch { message, .. } => {
            ApiError::BadGateway(format!("the price source could not be read: {message}"))
        }
        SyncError::Invalid { .. } => {
            tracing::warn!(error = %e, "price sync on demand refused the file");
            ApiError::invalid(
                "url",
                "the file there is not a valid price file (the control plane's log says why)",
            )
        }
        SyncError::Db(e) => ApiError::from(e),
    }
}
