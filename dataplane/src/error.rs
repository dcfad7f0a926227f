//! The data plane's one error type, rendered in OpenAI's error shape (or Anthropic's, on
//! `/v1/messages`).
//!
//! Every failure a client can see is an [`ApiError`]. Its `status()` is an exhaustive match
//! (no catch-all arm), so a new variant cannot ship without a deliberate status, and `kind()`
//! is a low-cardinality label for metrics. The body is always
//! `{"error":{"message","type","param","code"}}`, which the official OpenAI SDKs map to their
//! exception classes by status: 400 `BadRequestError`, 401 `AuthenticationError`,
//! 403 `PermissionDeniedError`, 404 `NotFoundError`, 429 `RateLimitError`, 5xx
//! `InternalServerError`. Messages never carry a secret: a key is referred to by nothing, an
//! upstream credential by nothing, an upstream failure only by its class.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::limits::LimitView;

/// A failure answered to the client.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<String>,
    },
    #[error("request body is larger than the {limit_bytes}-byte limit")]
    PayloadTooLarge { limit_bytes: usize },
    #[error("missing API key: send it as `Authorization: Bearer <key>` or `x-api-key`")]
    MissingKey,
    #[error("invalid API key")]
    InvalidKey,
    #[error("this API key has expired")]
    ExpiredKey,
    #[error("this API key has been revoked")]
    RevokedKey,
    #[error("this API key's tenant is suspended")]
    TenantSuspended,
    #[error("this API key may not use model `{model}`")]
    ModelNotAllowed { model: String },
    #[error("the model `{model}` does not exist")]
    ModelNotFound { model: String },
    #[error("{path} does not exist")]
    RouteNotFound { path: String },
    /// A stored response that does not exist, expired, or belongs to another tenant (the
    /// answer is the same for all three). `previous` when named by `previous_response_id`.
    #[error("{} with id '{id}' not found.", if *previous { "Previous response" } else { "Response" })]
    ResponseNotFound { id: String, previous: bool },
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("rate limit exceeded: {scope} {what} per minute")]
    RateLimited {
        scope: &'static str,
        what: &'static str,
        retry_after: Duration,
        /// The refusing limit's state, sent as the `x-ratelimit-*` headers.
        limits: LimitView,
    },
    /// A concurrency limit is full: requests already in flight hold every slot.
    #[error(
        "concurrency limit reached: {scope} `{id}` allows {limit} requests in flight at once; retry later"
    )]
    ConcurrencyLimited {
        scope: &'static str,
        id: String,
        limit: u32,
    },
    #[error("the upstream provider is rate limiting this model; retry later")]
    UpstreamRateLimited { retry_after: Option<Duration> },
    /// The upstream refused the request itself (e.g. 400 context length): its own OpenAI-shape
    /// body is passed through unchanged, so this variant only carries what to log.
    #[error("upstream rejected the request with status {status}")]
    UpstreamRejected { status: StatusCode },
    #[error("the upstream provider failed: {reason}")]
    UpstreamFailed { reason: &'static str },
    #[error("the upstream provider did not answer in time")]
    UpstreamTimeout,
    #[error("no deployment of model `{model}` is available right now; retry later")]
    NoDeploymentAvailable {
        model: String,
        retry_after: Option<Duration>,
    },
    #[error("rate limits cannot be checked right now; retry later")]
    LimitsUnavailable,
    /// A hard budget is used up for its period.
    #[error("budget exceeded: {scope} `{id}` has spent ${spent_usd:.4} of its ${max_usd:.4} budget{resets}", resets = resets_in_seconds.map_or(String::new(), |s| format!("; it resets in {s} s")))]
    BudgetExceeded {
        scope: &'static str,
        id: String,
        max_usd: f64,
        spent_usd: f64,
        resets_in_seconds: Option<i64>,
    },
    #[error("budgets cannot be checked right now; retry later")]
    BudgetsUnavailable,
    #[error("the gateway is not ready to serve requests yet")]
    NotReady,
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            param: param.map(str::to_owned),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::MissingKey
            | ApiError::InvalidKey
            | ApiError::ExpiredKey
            | ApiError::RevokedKey
            | ApiError::TenantSuspended => StatusCode::UNAUTHORIZED,
            ApiError::ModelNotAllowed { .. } => StatusCode::FORBIDDEN,
            ApiError::ModelNotFound { .. }
            | ApiError::RouteNotFound { .. }
            | ApiError::ResponseNotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::RateLimited { .. }
            | ApiError::ConcurrencyLimited { .. }
            | ApiError::UpstreamRateLimited { .. }
            | ApiError::BudgetExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::UpstreamRejected { status } => *status,
            ApiError::UpstreamFailed { .. } => StatusCode::BAD_GATEWAY,
            ApiError::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ApiError::NoDeploymentAvailable { .. }
            | ApiError::LimitsUnavailable
            | ApiError::BudgetsUnavailable
            | ApiError::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A short, fixed label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. } => "bad_request",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::MissingKey => "missing_key",
            ApiError::InvalidKey => "invalid_key",
            ApiError::ExpiredKey => "expired_key",
            ApiError::RevokedKey => "revoked_key",
            ApiError::TenantSuspended => "tenant_suspended",
            ApiError::ModelNotAllowed { .. } => "model_not_allowed",
            ApiError::ModelNotFound { .. } => "model_not_found",
            ApiError::RouteNotFound { .. } => "route_not_found",
            ApiError::ResponseNotFound { .. } => "response_not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::ConcurrencyLimited { .. } => "concurrency_limited",
            ApiError::UpstreamRateLimited { .. } => "upstream_rate_limited",
            ApiError::UpstreamRejected { .. } => "upstream_rejected",
            ApiError::UpstreamFailed { .. } => "upstream_failed",
            ApiError::UpstreamTimeout => "upstream_timeout",
            ApiError::NoDeploymentAvailable { .. } => "no_deployment_available",
            ApiError::LimitsUnavailable => "limits_unavailable",
            ApiError::BudgetExceeded { .. } => "budget_exceeded",
            ApiError::BudgetsUnavailable => "budgets_unavailable",
            ApiError::NotReady => "not_ready",
            ApiError::Internal => "internal",
        }
    }

    /// OpenAI's `error.type` for this failure.
    fn openai_type(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. }
            | ApiError::PayloadTooLarge { .. }
            | ApiError::ModelNotFound { .. }
            | ApiError::RouteNotFound { .. }
            | ApiError::ResponseNotFound { .. }
            | ApiError::MethodNotAllowed
            | ApiError::UpstreamRejected { .. } => "invalid_request_error",
            ApiError::MissingKey
            | ApiError::InvalidKey
            | ApiError::ExpiredKey
            | ApiError::RevokedKey
            | ApiError::TenantSuspended => "authentication_error",
            ApiError::ModelNotAllowed { .. } => "permission_error",
            ApiError::RateLimited { .. }
            | ApiError::ConcurrencyLimited { .. }
            | ApiError::UpstreamRateLimited { .. } => "rate_limit_error",
            // OpenAI's type for "you ran out of money" 429s.
            ApiError::BudgetExceeded { .. } => "insufficient_quota",
            ApiError::UpstreamFailed { .. }
            | ApiError::UpstreamTimeout
            | ApiError::NoDeploymentAvailable { .. }
            | ApiError::LimitsUnavailable
            | ApiError::BudgetsUnavailable
            | ApiError::NotReady
            | ApiError::Internal => "api_error",
        }
    }

    /// OpenAI's `error.code` for this failure, where OpenAI has one.
    fn openai_code(&self) -> Option<&'static str> {
        match self {
            ApiError::InvalidKey
            | ApiError::MissingKey
            | ApiError::ExpiredKey
            | ApiError::RevokedKey
            | ApiError::TenantSuspended => Some("invalid_api_key"),
            ApiError::ModelNotFound { .. } => Some("model_not_found"),
            ApiError::ResponseNotFound { previous: true, .. } => {
                Some("previous_response_not_found")
            }
            ApiError::ResponseNotFound {
                previous: false, ..
            } => Some("response_not_found"),
            ApiError::RateLimited { .. }
            | ApiError::ConcurrencyLimited { .. }
            | ApiError::UpstreamRateLimited { .. } => Some("rate_limit_exceeded"),
            ApiError::PayloadTooLarge { .. } => Some("request_too_large"),
            ApiError::ModelNotAllowed { .. } => Some("model_not_allowed"),
            ApiError::BudgetExceeded { .. } => Some("budget_exceeded"),
            ApiError::BadRequest { .. }
            | ApiError::RouteNotFound { .. }
            | ApiError::MethodNotAllowed
            | ApiError::UpstreamRejected { .. }
            | ApiError::UpstreamFailed { .. }
            | ApiError::UpstreamTimeout
            | ApiError::NoDeploymentAvailable { .. }
            | ApiError::LimitsUnavailable
            | ApiError::BudgetsUnavailable
            | ApiError::NotReady
            | ApiError::Internal => None,
        }
    }

    fn param(&self) -> Option<&str> {
        match self {
            ApiError::BadRequest { param, .. } => param.as_deref(),
            ApiError::ModelNotAllowed { .. } | ApiError::ModelNotFound { .. } => Some("model"),
            ApiError::ResponseNotFound { previous: true, .. } => Some("previous_response_id"),
            _ => None,
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ApiError::RateLimited { retry_after, .. } => Some(*retry_after),
            ApiError::LimitsUnavailable
            | ApiError::BudgetsUnavailable
            | ApiError::ConcurrencyLimited { .. } => Some(Duration::from_secs(1)),
            ApiError::BudgetExceeded {
                resets_in_seconds, ..
            } => resets_in_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs),
            ApiError::UpstreamRateLimited { retry_after }
            | ApiError::NoDeploymentAvailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Anthropic's error `type` for this failure (the `/v1/messages` route's shape).
    pub fn anthropic_type(&self) -> &'static str {
        anthropic_error_type(self.status())
    }

    /// The Anthropic-shape JSON body: `{"type":"error","error":{"type","message"}}`.
    pub fn anthropic_body(&self) -> Vec<u8> {
        anthropic_error_body(self.anthropic_type(), &self.to_string())
    }

    /// The OpenAI-shape JSON body.
    pub fn body(&self) -> Vec<u8> {
        #[derive(Serialize)]
        struct Envelope<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            message: String,
            r#type: &'a str,
            param: Option<&'a str>,
            code: Option<&'a str>,
        }
        let envelope = Envelope {
            error: Inner {
                message: self.to_string(),
                r#type: self.openai_type(),
                param: self.param(),
                code: self.openai_code(),
            },
        };
        serde_json::to_vec(&envelope).unwrap_or_default()
    }
}

/// Anthropic's error `type` for an HTTP status. The gateway's own errors on `/v1/messages`
/// and the translation of upstream errors for Anthropic clients
/// ([`crate::providers::translate::anthropic_openai`]) share it, so it lives here, below both.
pub fn anthropic_error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 | 405 | 422 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        504 => "timeout_error",
        _ => "api_error",
    }
}

/// An Anthropic error body: `{"type":"error","error":{"type","message"}}`.
pub fn anthropic_error_body(kind: &str, message: &str) -> Vec<u8> {
    serde_json::to_vec(
        &serde_json::json!({"type": "error", "error": {"type": kind, "message": message}}),
    )
    .unwrap_or_default()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status(),
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.body(),
        )
            .into_response();
        if let Some(after) = self.retry_after() {
            // Whole seconds, rounded up: `Retry-After: 0` would invite an immediate retry.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if let ApiError::RateLimited { limits, .. } = &self {
            limits.write_headers(response.headers_mut());
        }
        response.extensions_mut().insert(ErrorKind(self.kind()));
        // Kept so that a route speaking another protocol can re-render it in its own shape
        // (`/v1/messages`); error paths only.
        response.extensions_mut().insert(self);
        response
    }
}

/// Set on error responses so that the outermost layer can count them by kind.
#[derive(Debug, Clone, Copy)]
pub struct ErrorKind(pub &'static str);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_shape() {
        let e = ApiError::ModelNotFound {
            model: "gpt-9".into(),
        };
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "model");
        assert_eq!(v["error"]["code"], "model_not_found");
        assert!(v["error"]["message"].as_str().unwrap().contains("gpt-9"));
        assert_eq!(e.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn anthropic_body_has_anthropic_shape() {
        let e = ApiError::InvalidKey;
        let v: serde_json::Value = serde_json::from_slice(&e.anthropic_body()).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "authentication_error");
        assert_eq!(v["error"]["message"], "invalid API key");
        let e = ApiError::UpstreamRateLimited { retry_after: None };
        assert_eq!(e.anthropic_type(), "rate_limit_error");
        assert_eq!(ApiError::UpstreamTimeout.anthropic_type(), "timeout_error");
    }

    #[test]
    fn retry_after_is_whole_seconds_rounded_up() {
        let r = ApiError::RateLimited {
            scope: "key",
            what: "requests",
            retry_after: Duration::from_millis(1200),
            limits: LimitView {
                requests: Some(crate::limits::gcra::CellState {
                    limit: 10,
                    remaining: 0,
                    reset_nanos: 1_200_000_000,
                }),
                tokens: None,
            },
        }
        .into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "2");
        assert_eq!(r.headers()["x-ratelimit-limit-requests"], "10");
        assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");
        assert_eq!(r.headers()["x-ratelimit-reset-requests"], "1.2s");
    }
}
