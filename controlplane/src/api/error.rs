//! The admin API's one error type, answered as RFC 9457 problem JSON, and the status table.
//!
//! Every handler returns `Result<_, ApiError>`; the status comes from one exhaustive match.
//! The service layer's [`crate::service::Error`] becomes an `ApiError` in one exhaustive match too
//! (`From`), so a new domain error cannot reach a client without a status.
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

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON at all.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// A query parameter is unusable.
    #[error("{0}")]
    BadRequest(String),
    /// JSON of the wrong shape or with invalid values.
    #[error("the request has invalid fields")]
    Invalid(Vec<FieldError>),
    #[error("the request body is larger than this server accepts")]
    TooLarge,
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A source the control plane fetches from failed (the message says how, never what it
    /// sent).
    #[error("{0}")]
    BadGateway(String),
    /// Logged with its cause; the client sees only that something failed.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) | ApiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ApiError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::BadGateway(_) => StatusCode::BAD_GATEWAY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Low-cardinality name, also the last segment of the problem `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::MalformedJson(_) => "malformed-json",
            ApiError::BadRequest(_) => "bad-request",
            ApiError::Invalid(_) => "invalid-request",
            ApiError::TooLarge => "payload-too-large",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::NotFound(_) => "not-found",
            ApiError::Conflict(_) => "conflict",
            ApiError::BadGateway(_) => "bad-gateway",
            ApiError::Internal(_) => "internal",
        }
    }

    pub fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid(vec![FieldError::new(path, message)])
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Invalid(errors) => ApiError::Invalid(errors),
            ServiceError::Unauthenticated(why) => ApiError::Unauthorized(why),
            ServiceError::Forbidden(why) => ApiError::Forbidden(why),
            ServiceError::NotFound(what) => ApiError::NotFound(what),
            ServiceError::Conflict(why) => ApiError::Conflict(why),
            ServiceError::Upstream(why) => ApiError::BadGateway(why),
            ServiceError::Internal(cause) => ApiError::Internal(cause),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if let ApiError::Internal(cause) = &self {
            tracing::error!(%cause, "admin request failed");
        }
        let errors = match &self {
            ApiError::Invalid(errors) => errors.clone(),
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
        response
    }
}
