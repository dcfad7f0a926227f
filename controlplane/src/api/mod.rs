//! The admin REST API: axum extractors, handlers (one module per resource), OpenAPI
//! annotations, [`error::ApiError`] with its status table, the JSON body extractor
//! ([`body::Body`]) and the [`caller::Caller`] extractor. A handler parses, checks the
//! caller's role, calls one service function ([`crate::service`]) and shapes the answer; no
//! SQL lives here.
//!
//! What the handlers share is here: list parameters (`list_params!`), the `?wait_ms=` of
//! writes, and the response of a committed write (with `x-switchboard-config-revision` and,
//! when the fleet lags, `x-switchboard-fleet-pending`).

pub mod admins;
pub mod auth;
pub mod body;
pub mod budgets;
pub mod caller;
pub mod dead_letters;
pub mod deployments;
pub mod error;
pub mod keys;
pub mod models;
pub mod prices;
pub mod providers;
pub mod requests;
pub mod spend;
pub mod status;
pub mod tenants;

use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::IntoResponse;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use switchboard_shared::cluster::REVISION_HEADER;
use utoipa::IntoParams;

use crate::service::write::Committed;
use crate::state::AppState;
use error::ApiError;

pub use crate::service::{Page, Paging};

/// Header naming the live data planes that had not applied a write when `wait_ms` ran out.
pub const FLEET_PENDING_HEADER: &str = "x-switchboard-fleet-pending";
/// Longest `wait_ms` accepted.
pub const MAX_WAIT_MS: u64 = 30_000;
/// Largest page.
pub const MAX_LIMIT: u32 = 1000;

/// Declares a handler by its kind, so that each route states only its OpenAPI contract (the
/// attribute) and its body: the role checks (with `?`) and the one service call, a future.
/// The kind makes the extractors and shapes the answer:
/// - `page`: `(state, caller, params: ListParams)`, the page as JSON;
/// - `one`: `(state, caller, id)` (the path parameter), the view as JSON;
/// - `create`: `(state, caller, req: Body)`, 201 with the view (after `?wait_ms`);
/// - `save`: `(state, caller, id, req: Body)`, 200 with the view;
/// - `act`: `(state, caller, id)`, a write without a body, 200 with the view;
/// - `delete`: `(state, caller, id)`, 204;
/// - `reads for anyone` / `reads for platform_readers`: a resource's `list` and `get` with
///   their contracts (the list filtered by `?tenant_id`, resp. platform readers only);
/// - `create`, `save put|patch`, `remove`: a resource's standard writes with their contracts,
///   from the tag, the path, the body and view types, the statuses beyond the usual ones, the
///   role check (`by` a check of the caller, `by_id` one that takes the path's id) and the
///   service function (given `with` a setting when it takes one, e.g. the pepper).
macro_rules! handler {
    (create $tag:literal, $path:literal, $body_ty:ty => $view:ty [$($status:literal),*],
        by $check:ident, $service:path $(, with $setting:ident)?) => {
        handler! {
            #[utoipa::path(post, path = $path, tag = $tag, params(Wait), request_body = $body_ty,
                responses((status = 201, body = $view) $(, (status = $status, body = Problem))*,
                    (status = 422, body = Problem)))]
            create create(state, caller, req: $body_ty) {
                caller.$check()?;
                $service(state.ctx(), &caller, $(&state.settings.$setting,)? req)
            }
        }
    };
    (save $method:ident $tag:literal, $path:literal, $body_ty:ty => $view:ty,
        $(by $check:ident)? $(by_id $id_check:ident)?, $service:path $(, with $setting:ident)?) => {
        handler! {
            #[utoipa::path($method, path = $path, tag = $tag, params(("id" = String, Path), Wait),
                request_body = $body_ty,
                responses((status = 200, body = $view), (status = 404, body = Problem),
                    (status = 422, body = Problem)))]
            save update(state, caller, id, req: $body_ty) {
                $(caller.$check()?;)?
                $(caller.$id_check(&id)?;)?
                $service(state.ctx(), &caller, $(&state.settings.$setting,)? &id, req)
            }
        }
    };
    (remove $tag:literal, $path:literal($param:literal) [$($status:literal),*],
        $(by $check:ident)? $(by_id $id_check:ident)?, $service:path) => {
        handler! {
            #[utoipa::path(delete, path = $path, tag = $tag, params(($param = String, Path), Wait),
                responses((status = 204), (status = 404, body = Problem)
                    $(, (status = $status, body = Problem))*))]
            delete delete(state, caller, id) {
                $(caller.$check()?;)?
                $(caller.$id_check(&id)?;)?
                $service(state.ctx(), &caller, &id)
            }
        }
    };
    (reads for anyone $($rest:tt)*) => {
        handler!(@reads [] [tenant_id] $($rest)*);
    };
    (reads for platform_readers $($rest:tt)*) => {
        handler!(@reads [require_platform_reader] [] $($rest)*);
    };
    (@reads [$($check:ident)?] [$($filter:ident)?] $tag:literal, $list:literal [$($more:tt)*],
        $get:literal($param:literal), $row:ty => $view:ty) => {
        handler! {
            #[utoipa::path(get, path = $list, tag = $tag, params(ListParams),
                responses((status = 200, body = Page<$view>) $($more)*))]
            page list(state, caller, params) -> $view {
                $(caller.$check()?;)?
                let tenant_id = None $(.or(params.$filter.as_deref()))?;
                crud::list::<$row>(state.ctx(), &caller, params.paging(), tenant_id)
            }
        }
        handler! {
            #[utoipa::path(get, path = $get, tag = $tag, params(($param = String, Path)),
                responses((status = 200, body = $view), (status = 404, body = Problem)))]
            one get(state, caller, id) -> $view {
                $(caller.$check()?;)?
                crud::get::<$row>(state.ctx(), &caller, &id)
            }
        }
    };
    (@fn #[$contract:meta] $name:ident($state:ident, $caller:ident $(, $arg:pat => $ty:ty)*)
        -> $ret:ty $body:block) => {
        #[$contract]
        pub async fn $name(
            ::axum::extract::State($state): ::axum::extract::State<$crate::state::AppState>,
            $caller: $crate::api::caller::Caller,
            $($arg: $ty,)*
        ) -> Result<$ret, $crate::api::error::ApiError> $body
    };
    (#[$c:meta] page $name:ident($state:ident, $caller:ident, $params:ident) -> $view:ty
        $body:block) => {
        handler!(@fn #[$c] $name($state, $caller, $params => $crate::api::ListParams)
            -> ::axum::Json<$crate::api::Page<$view>> { Ok(::axum::Json($body.await?)) });
    };
    (#[$c:meta] one $name:ident($state:ident, $caller:ident, $id:ident) -> $view:ty
        $body:block) => {
        handler!(@fn #[$c] $name($state, $caller, ::axum::extract::Path($id) => ::axum::extract::Path<String>)
            -> ::axum::Json<$view> { Ok(::axum::Json($body.await?)) });
    };
    (#[$c:meta] create $name:ident($state:ident, $caller:ident, $req:ident: $body_ty:ty)
        $body:block) => {
        handler!(@fn #[$c] $name($state, $caller, wait => $crate::api::Wait,
            $crate::api::body::Body($req) => $crate::api::body::Body<$body_ty>)
            -> ::axum::response::Response { Ok($crate::api::answer(&$state, wait, ::axum::http::StatusCode::CREATED, $body.await?).await) });
    };
    (#[$c:meta] save $name:ident($state:ident, $caller:ident, $id:ident, $req:ident: $body_ty:ty)
        $body:block) => {
        handler!(@fn #[$c] $name($state, $caller, ::axum::extract::Path($id) => ::axum::extract::Path<String>,
            wait => $crate::api::Wait,
            $crate::api::body::Body($req) => $crate::api::body::Body<$body_ty>)
            -> ::axum::response::Response { Ok($crate::api::answer(&$state, wait, ::axum::http::StatusCode::OK, $body.await?).await) });
    };
    (#[$c:meta] act $name:ident($state:ident, $caller:ident, $id:ident) $body:block) => {
        handler!(@fn #[$c] $name($state, $caller, ::axum::extract::Path($id) => ::axum::extract::Path<String>,
            wait => $crate::api::Wait)
            -> ::axum::response::Response { Ok($crate::api::answer(&$state, wait, ::axum::http::StatusCode::OK, $body.await?).await) });
    };
    (#[$c:meta] delete $name:ident($state:ident, $caller:ident, $id:ident) $body:block) => {
        handler!(@fn #[$c] $name($state, $caller, ::axum::extract::Path($id) => ::axum::extract::Path<String>,
            wait => $crate::api::Wait)
            -> ::axum::response::Response { Ok($crate::api::deleted(&$state, $body.await?, wait).await) });
    };
}
pub(crate) use handler;

/// Declares a list route's query parameters: `limit` and `offset` (documented here, once),
/// then the route's own filters. The struct is its own extractor, which answers parameters
/// that do not parse, and a page size outside 1..=1000, with 400.
macro_rules! list_params {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $($(#[$field_meta:meta])* pub $field:ident: $ty:ty,)*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, ::serde::Deserialize, ::utoipa::IntoParams)]
        #[serde(deny_unknown_fields)]
        #[into_params(parameter_in = Query)]
        pub struct $name {
            /// Page size, 1..=1000 (default 100).
            #[param(minimum = 1, maximum = 1000)]
            pub limit: Option<u32>,
            /// Items to skip; pass the previous page's `next_offset`.
            pub offset: Option<u64>,
            $($(#[$field_meta])* pub $field: $ty,)*
        }

        impl $name {
            pub fn paging(&self) -> $crate::service::Paging {
                $crate::service::Paging {
                    limit: self.limit,
                    offset: self.offset,
                }
            }
        }

        impl<S: Send + Sync> ::axum::extract::FromRequestParts<S> for $name {
            type Rejection = $crate::api::error::ApiError;

            async fn from_request_parts(
                parts: &mut ::axum::http::request::Parts,
                _: &S,
            ) -> Result<Self, Self::Rejection> {
                let params: Self = $crate::api::query(parts)?;
                $crate::api::check_limit(params.limit)?;
                Ok(params)
            }
        }
    };
}
pub(crate) use list_params;

list_params! {
    /// Paging and filtering of list routes.
    pub struct ListParams {
        /// Only objects of this tenant.
        pub tenant_id: Option<String>,
    }
}

/// The query parameters of a request as `T`; 400 with serde's message when they do not parse.
pub fn query<T: DeserializeOwned>(parts: &Parts) -> Result<T, ApiError> {
    Query::<T>::try_from_uri(&parts.uri)
        .map(|Query(params)| params)
        .map_err(|e| ApiError::BadRequest(e.body_text()))
}

/// A page size outside 1..=[`MAX_LIMIT`] is a 400.
pub fn check_limit(limit: Option<u32>) -> Result<(), ApiError> {
    match limit {
        Some(limit) if !(1..=MAX_LIMIT).contains(&limit) => Err(ApiError::BadRequest(format!(
            "limit must be between 1 and {MAX_LIMIT}"
        ))),
        _ => Ok(()),
    }
}

/// `?wait_ms=N` on a write: wait until every live data plane serves the write's revision.
#[derive(Debug, Clone, Copy, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Wait {
    /// Wait up to this many milliseconds (≤ 30000) for the fleet to apply the write.
    #[param(maximum = 30000)]
    pub wait_ms: Option<u64>,
}

impl<S: Send + Sync> FromRequestParts<S> for Wait {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let wait: Wait = query(parts)?;
        if wait.wait_ms.is_some_and(|ms| ms > MAX_WAIT_MS) {
            return Err(ApiError::BadRequest(format!(
                "wait_ms must be at most {MAX_WAIT_MS}"
            )));
        }
        Ok(wait)
    }
}

/// The response to a committed write: `body` with the revision header, after waiting for the
/// fleet when asked.
pub async fn written<T: Serialize>(
    state: &AppState,
    committed: Committed,
    wait: Wait,
    status: StatusCode,
    body: T,
) -> ::axum::response::Response {
    let pending = match wait.wait_ms {
        Some(ms) if ms > 0 => {
            state
                .fleet
                .wait_for(committed.revision, Duration::from_millis(ms))
                .await
        }
        _ => Vec::new(),
    };
    let mut response = (status, Json(body)).into_response();
    let headers = response.headers_mut();
    headers.insert(REVISION_HEADER, HeaderValue::from(committed.revision));
    if !pending.is_empty()
        && let Ok(value) = HeaderValue::from_str(&pending.join(","))
    {
        headers.insert(FLEET_PENDING_HEADER, value);
    }
    response
}

/// The answer to a delete: 204 with the revision header.
pub async fn deleted(
    state: &AppState,
    committed: Committed,
    wait: Wait,
) -> ::axum::response::Response {
    let mut response = written(
        state,
        committed,
        wait,
        ::axum::http::StatusCode::NO_CONTENT,
        (),
    )
    .await;
    *response.body_mut() = axum::body::Body::empty();
    response
        .headers_mut()
        .remove(axum::http::header::CONTENT_TYPE);
    response
}

/// The answer to a committed write from a service: its view with `status`.
pub async fn answer<T: Serialize>(
    state: &AppState,
    wait: Wait,
    status: StatusCode,
    (body, committed): (T, Committed),
) -> ::axum::response::Response {
    written(state, committed, wait, status, body).await
}
