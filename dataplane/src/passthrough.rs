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
//! `/passthrough/openai/chat/completions`), `anthropic` (below `/v1`:
//! `/passthrough/anthropic/messages`) and `gemini` (below the version path, and naming the
//! model as Gemini's API does: `/passthrough/gemini/models/{model}:generateContent`, or
//! `:streamGenerateContent?alt=sse`; usage from `usageMetadata`) and `azure` (below the
//! deployment's URL, with the provider's `api-version`:
//! `/passthrough/azure/chat/completions`). Others answer 404. The
//! body must be a JSON object; for `openai`, `anthropic` and `azure` it names the `model`, and only
//! the model is changed; for `gemini` the path's model becomes the upstream one and the body
//! goes as sent. No query string is forwarded but Gemini's `alt=sse` (others: 400). Errors
//! leave in the provider's shape.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, RawQuery, Request, State};
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
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    let kind = match kind.as_str() {
        "openai" => ProviderKind::Openai,
        "anthropic" => ProviderKind::Anthropic,
        "gemini" => ProviderKind::Gemini,
        "azure" => ProviderKind::Azure,
        _ => {
            return ApiError::RouteNotFound {
                path: format!("/passthrough/{}", kind.chars().take(40).collect::<String>()),
            }
            .into_response();
        }
    };
    let target = match target(kind, &path, query.as_deref()) {
        Ok(target) => target,
        Err(error) => return in_shape(kind, error.into_response()),
    };
    let response = proxy_to(state, Endpoint::Passthrough, request, Some(target)).await;
    in_shape(kind, response)
}

/// Where the request goes, or a 400 for a path that is not a plain API path (or, for
/// Gemini, not `models/{model}:{method}`) or a query other than Gemini's `alt=sse` on
/// `:streamGenerateContent`, which Gemini needs for a stream the gateway can meter.
fn target(kind: ProviderKind, path: &str, query: Option<&str>) -> Result<Passthrough, ApiError> {
    if !path_is_safe(path) {
        return Err(ApiError::bad_request(
            "the passthrough path is not a plain API path",
            None,
        ));
    }
    if kind != ProviderKind::Gemini {
        if query.is_some() {
            return Err(ApiError::bad_request(
                "a passthrough takes no query string",
                None,
            ));
        }
        let path = format!("/{path}");
        return Ok(Passthrough {
            kind,
            path,
            model: None,
            stream: false,
        });
    }
    let (model, method) = path
        .strip_prefix("models/")
        .and_then(|rest| rest.rsplit_once(':'))
        .filter(|(model, method)| !model.is_empty() && !method.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(
                "a Gemini passthrough path is `models/{model}:{method}`",
                None,
            )
        })?;
    let stream = method == "streamGenerateContent";
    if query != stream.then_some("alt=sse") {
        return Err(ApiError::bad_request(
            "a Gemini passthrough takes `?alt=sse` on `:streamGenerateContent` and no other query",
            None,
        ));
    }
    let rest = if stream {
        format!(":{method}?alt=sse")
    } else {
        format!(":{method}")
    };
    Ok(Passthrough {
        kind,
        path: rest,
        model: Some(model.to_owned()),
        stream,
    })
}

/// The gateway's own errors in the provider's shape: Anthropic's, Google's, or (OpenAI)
/// as they are.
fn in_shape(kind: ProviderKind, mut response: Response) -> Response {
    let render = match kind {
        ProviderKind::Anthropic => ApiError::anthropic_body,
        ProviderKind::Gemini => google_body,
        _ => return response,
    };
    let Some(error) = response.extensions_mut().remove::<ApiError>() else {
        return response;
    };
    let body = render(&error);
    *response.body_mut() = Body::from(body);
    response.headers_mut().remove(http::header::CONTENT_LENGTH);
    response
}

/// Google's error shape: `{"error":{"code","message","status"}}`, the status named as
/// Google's APIs name it for the HTTP code.
fn google_body(error: &ApiError) -> Vec<u8> {
    let code = error.status();
    let status = match code.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ if code.is_server_error() => "INTERNAL",
        _ => "FAILED_PRECONDITION",
    };
    let body = serde_json::json!({
        "error": {"code": code.as_u16(), "message": error.to_string(), "status": status}
    });
    serde_json::to_vec(&body).unwrap_or_default()
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

    #[test]
    fn gemini_paths_name_the_model_and_only_streams_take_alt_sse() {
        let gemini = |path, query| target(ProviderKind::Gemini, path, query);
        let plain = gemini("models/gemini-2.5-flash:generateContent", None).unwrap();
        assert_eq!(plain.model.as_deref(), Some("gemini-2.5-flash"));
        assert_eq!(
            (plain.path.as_str(), plain.stream),
            (":generateContent", false)
        );
        let stream = gemini("models/team/gem:streamGenerateContent", Some("alt=sse")).unwrap();
        assert_eq!(stream.model.as_deref(), Some("team/gem"));
        assert_eq!(stream.path, ":streamGenerateContent?alt=sse");
        assert!(stream.stream);
        for (path, query) in [
            ("models/g:streamGenerateContent", None),
            ("models/g:generateContent", Some("alt=sse")),
            ("models/g:generateContent", Some("key=x")),
            ("models/:generateContent", None),
            ("models/g", None),
            ("cachedContents", None),
        ] {
            assert!(gemini(path, query).is_err(), "{path} {query:?}");
        }
        let openai = target(ProviderKind::Openai, "chat/completions", Some("a=1"));
        assert!(openai.is_err());
    }

    #[test]
    fn gateway_errors_leave_in_google_shape() {
        let body = google_body(&ApiError::InvalidKey);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], 401);
        assert_eq!(v["error"]["status"], "UNAUTHENTICATED");
        assert_eq!(v["error"]["message"], "invalid API key");
    }
}
