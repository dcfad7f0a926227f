//! Metered passthrough: `POST /passthrough/{kind}/{*path}` forwards a provider's own API
//! call to a deployment of that provider kind, with the upstream credential injected.
//!
//! Why it exists: clients with provider-specific needs (a beta endpoint, a field no
//! translation knows) still get the gateway's keys, limits, budgets and spend — unlike
//! passthroughs that skip them. The request walks the same phases as chat
//! ([`crate::handlers`]): key authentication, the key's model allow-list (the body's `model`
//! names a public model; only its deployments of `{kind}` are candidates), limits and budget
//! admission, routing with retries, then the [`crate::accounting::Ledger`] — usage is read
//! from the answer (OpenAI's and Anthropic's `usage`, whole or streamed), and the request is
//! recorded either way (estimated from what was relayed when no usage came back).
//!
//! Kinds: `openai` (the path is below the base URL, which includes `/v1`:
//! `/passthrough/openai/chat/completions`) and `anthropic` (below `/v1`:
//! `/passthrough/anthropic/messages`). Others answer 404. The body must be a JSON object
//! with a `model`; only the model is changed. Errors leave in the provider's shape.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use switchboard_shared::snapshot::ProviderKind;

use crate::error::ApiError;
use crate::handlers::proxy_to;
use crate::providers::Endpoint;
use crate::request::Passthrough;
use crate::state::AppState;

/// `POST /passthrough/{kind}/{*path}`.
pub async fn passthrough(
    state: State<Arc<AppState>>,
    Path((kind, path)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let kind = match kind.as_str() {
        "openai" => ProviderKind::Openai,
        "anthropic" => ProviderKind::Anthropic,
        _ => {
            return ApiError::RouteNotFound {
                path: format!("/passthrough/{}", kind.chars().take(40).collect::<String>()),
            }
            .into_response();
        }
    };
    if !path_is_safe(&path) {
        return ApiError::bad_request("the passthrough path is not a plain API path", None)
            .into_response();
    }
    let target = Passthrough {
        kind,
        path: format!("/{path}"),
    };
    let mut response = proxy_to(state, Endpoint::Passthrough, headers, body, Some(target)).await;
    if kind == ProviderKind::Anthropic
        && let Some(error) = response.extensions_mut().remove::<ApiError>()
    {
        *response.body_mut() = Body::from(error.anthropic_body());
        response.headers_mut().remove(http::header::CONTENT_LENGTH);
    }
    response
}

/// A path of plain segments: no `..`, no empty or dot segments, no query or fragment, no
/// percent-escapes, at most 200 bytes — it is appended to the provider's base path.
fn path_is_safe(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 200
        && path.split('/').all(|segment| {
            !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_paths_pass() {
        assert!(path_is_safe("messages"));
        assert!(path_is_safe("chat/completions"));
        assert!(path_is_safe("models/gemini-2.0:generateContent"));
        for bad in [
            "", "../admin", "a//b", "a/./b", "a%2e%2e", "a?b=1", "a/", "a b",
        ] {
            assert!(!path_is_safe(bad), "{bad}");
        }
    }
}
