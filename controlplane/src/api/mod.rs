//! The admin REST API's handlers, one module per resource, and what they share: list
//! parameters (`list_params!`), the `?wait_ms=` of writes, and the response of a committed
//! write (with `x-switchboard-config-revision` and, when the fleet lags,
//! `x-switchboard-fleet-pending`). [`crud`] holds the parts of the handlers themselves that
//! every resource shares: reading one object, a page of a list, the write tail.

pub mod admins;
pub mod auth;
pub mod budgets;
pub mod crud;
pub mod deployments;
pub mod keys;
pub mod models;
pub mod prices;
pub mod providers;
pub mod spend;
pub mod status;
pub mod tenants;

use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use switchboard_shared::cluster::REVISION_HEADER;
use utoipa::{IntoParams, ToSchema};

use crate::error::ApiError;
use crate::state::AppState;
use crate::write::Committed;

/// Header naming the live data planes that had not applied a write when `wait_ms` ran out.
pub const FLEET_PENDING_HEADER: &str = "x-switchboard-fleet-pending";
/// Longest `wait_ms` accepted.
pub const MAX_WAIT_MS: u64 = 30_000;
/// Largest page.
pub const MAX_LIMIT: u32 = 1000;

/// A list route's paging, as the client asked for it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Paging {
    pub limit: Option<u32>,
    pub offset: Option<u64>,
}

impl Paging {
    pub fn limit(&self) -> i64 {
        i64::from(self.limit.unwrap_or(100))
    }

    pub fn offset(&self) -> i64 {
        i64::try_from(self.offset.unwrap_or(0)).unwrap_or(i64::MAX)
    }

    /// The page from `limit + 1` fetched rows.
    pub fn page<R, T>(&self, mut rows: Vec<R>, view: impl Fn(&R) -> T) -> Page<T> {
        let limit = usize::try_from(self.limit()).unwrap_or(usize::MAX);
        let more = rows.len() > limit;
        rows.truncate(limit);
        Page {
            next_offset: more.then(|| self.offset.unwrap_or(0) + limit as u64),
            items: rows.iter().map(view).collect(),
        }
    }
}

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
            pub limit: Option<u32>,
            /// Items to skip; pass the previous page's `next_offset`.
            pub offset: Option<u64>,
            $($(#[$field_meta])* pub $field: $ty,)*
        }

        impl $name {
            pub fn paging(&self) -> $crate::api::Paging {
                $crate::api::Paging {
                    limit: self.limit,
                    offset: self.offset,
                }
            }
        }

        impl<S: Send + Sync> ::axum::extract::FromRequestParts<S> for $name {
            type Rejection = $crate::error::ApiError;

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

/// One page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Offset of the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<u64>,
}

/// `?wait_ms=N` on a write: wait until every live data plane serves the write's revision.
#[derive(Debug, Clone, Copy, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct Wait {
    /// Wait up to this many milliseconds (≤ 30000) for the fleet to apply the write.
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
) -> Response {
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
pub async fn deleted(state: &AppState, committed: Committed, wait: Wait) -> Response {
    let mut response = written(state, committed, wait, StatusCode::NO_CONTENT, ()).await;
    *response.body_mut() = axum::body::Body::empty();
    response
        .headers_mut()
        .remove(axum::http::header::CONTENT_TYPE);
    response
}

/// For `PATCH` bodies: distinguishes an absent field (`None`) from `null` (`Some(None)`).
pub fn double_option<'de, T, D>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    T: Deserialize<'de>,
    D: Deserializer<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// Operator-chosen ids (tenants, providers, deployments): 1–64 of `[A-Za-z0-9._-]`.
pub fn check_id(path: &str, id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            path,
            "must be 1-64 characters of letters, digits, '.', '_' or '-'",
        ))
    }
}
