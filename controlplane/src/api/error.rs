//! The admin API's one error type, answered as RFC 9457 problem JSON, and the status table.
//!
//! Every handler returns `Result<_, ApiError>`; the status comes from one exhaustive match.
//! The service layer's [`crate::service::Error`] is one of its variants, given its status in the
//! same exhaustive match, so a new domain error cannot reach a client without one.
//! 5xx details go to the log once and never to the client; no variant carries a secret.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::service::error::Error as ServiceError;
pub use crate::service::error::FieldError;

/// The problem JSON body.
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// What a request can fail with: its own shape (body, query), or what the service said.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON at all.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// A query parameter is unusable.
    #[error("{0}")]
    BadRequest(String),
    #[error("the request body is larger than this server accepts")]
    TooLarge,
    /// Refused or failed by the service layer (its message is the detail).
    #[error(transparent)]
    Service(#[from] ServiceError),
}

impl ApiError {
    /// The status table: every service error has exactly one.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Service(e) => match e {
                ServiceError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
                ServiceError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
                ServiceError::Forbidden(_) => StatusCode::FORBIDDEN,
                ServiceError::NotFound(_) => StatusCode::NOT_FOUND,
                ServiceError::Conflict(_) => StatusCode::CONFLICT,
                ServiceError::Upstream(_) => StatusCode::BAD_GATEWAY,
                ServiceError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
                ServiceError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    /// Low-cardinality name, also the last segment of the problem `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed-json",
            ApiError::BadRequest(_) => "bad-request",
            ApiError::TooLarge => "payload-too-large",
            ApiError::Service(e) => match e {
                ServiceError::Invalid(_) => "invalid-request",
                ServiceError::Unauthenticated(_) => "unauthorized",
                ServiceError::Forbidden(_) => "forbidden",
                ServiceError::NotFound(_) => "not-found",
                ServiceError::Conflict(_) => "conflict",
                ServiceError::Upstream(_) => "bad-gateway",
                ServiceError::TooManyRequests { .. } => "too-many-requests",
                ServiceError::Internal(_) => "internal",
            },
        }
    }

    pub fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        ServiceError::invalid(path, message).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Service(ServiceError::Internal(cause)) = &self {
            tracing::error!(%cause, "admin request failed");
        }
        let errors = match &self {
            ApiError::Service(ServiceError::Invalid(errors)) => errors.clone(),
            _ => Vec::new(),
        };
        let body = Problem {
            kind: format!("urn:switchboard:problem:{}", self.kind()),
            title: status.canonical_reason().unwrap_or("error").to_owned(),
            status: status.as_u16(),
            detail: self.to_string(),
            errors,
        };
        let mut response = (status, axum::Json(body)).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let ApiError::Service(ServiceError::TooManyRequests {
            retry_after_secs, ..
        }) = &self
        {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        response
    }
}
