//! `POST /v1/messages/count_tokens`: Anthropic's token counting, for every deployment.
//!
//! Why it is not a proxied request like `/v1/messages`: counting costs nothing and produces no
//! answer to account, so it takes no quota ticket and leaves no usage record; it still needs a
//! valid key that may use the model. Where the model has an Anthropic deployment (that the
//! key's selection allows), the request goes there with only the model changed, with the
//! client's `anthropic-version` and `anthropic-beta`, and the answer comes back as Anthropic
//! sent it, marked `x-switchboard-token-count: provider`. Other providers have no such API
//! (or a different one): the gateway then answers with an estimate — about four bytes of
//! text a token over the system prompt, the messages and the tool definitions — marked
//! `x-switchboard-token-count: estimate`, so that a client can tell the two apart. Errors
//! leave in Anthropic's shape.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use switchboard_shared::snapshot::ProviderKind;

use crate::catalog::DeploymentEntry;
use crate::error::ApiError;
use crate::handlers::{anthropic_headers, caller, read_body};
use crate::providers::{Endpoint, UpstreamRequest};
use crate::request::RequestView;
use crate::state::AppState;

/// The header that says where a count came from: `provider` or `estimate`.
pub const SOURCE_HEADER: &str = "x-switchboard-token-count";

/// `POST /v1/messages/count_tokens`.
pub async fn count_tokens(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match serve(&state, &headers, body).await {
        Ok(response) => response,
        Err(error) => {
            let mut response = error.clone().into_response();
            response.extensions_mut().remove::<ApiError>();
            *response.body_mut() = Body::from(error.anthropic_body());
            response.headers_mut().remove(http::header::CONTENT_LENGTH);
            response
        }
    }
}

async fn serve(state: &AppState, headers: &HeaderMap, body: Body) -> Result<Response, ApiError> {
    let (catalog, key) = caller(state, headers)?;
    let bytes = read_body(body, headers, state.max_body_bytes).await?;
    let mut view = RequestView::parse(bytes)?;
    view.stream = false;
    view.anthropic_headers = anthropic_headers(headers);
    let (model, selection) = crate::selectors::resolve(&catalog, &key.key, &view, headers)?;
    let anthropic = model.deployments.iter().find(|d| {
        d.provider_kind == ProviderKind::Anthropic && selection.check(d, &key.key).is_ok()
    });
    match anthropic {
        Some(deployment) => {
            let timeout = Duration::from_millis(model.policy.timeouts.first_byte_ms);
            upstream(deployment, &view, timeout).await
        }
        None => Ok(estimate(&view.body)),
    }
}

/// Asks the Anthropic deployment, passing its answer (or error) on as it is.
async fn upstream(
    deployment: &DeploymentEntry,
    view: &RequestView,
    timeout: Duration,
) -> Result<Response, ApiError> {
    let id = uuid::Uuid::now_v7().to_string();
    let request = UpstreamRequest {
        endpoint: Endpoint::CountTokens,
        view,
        upstream_model_json: &deployment.upstream_model_json,
        upstream_model: &deployment.upstream_model,
        request_id: &id,
        native_responses: false,
    };
    let answer = tokio::time::timeout(timeout, deployment.adaptor.send(&request))
        .await
        .map_err(|_| ApiError::UpstreamTimeout)?
        .map_err(|_| ApiError::UpstreamFailed {
            reason: "could not reach the provider",
        })?;
    let mut response = Response::new(Body::new(answer.body));
    *response.status_mut() = answer.status;
    let out = response.headers_mut();
    out.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    out.insert(SOURCE_HEADER, HeaderValue::from_static("provider"));
    Ok(response)
}

/// The estimate for a provider without token counting: a token for every four bytes of the
/// system prompt, the messages' text and the tool definitions (at least one).
fn estimate(body: &[u8]) -> Response {
    let tokens = estimated_tokens(body);
    let mut response = axum::Json(json!({ "input_tokens": tokens })).into_response();
    response
        .headers_mut()
        .insert(SOURCE_HEADER, HeaderValue::from_static("estimate"));
    response
}

fn estimated_tokens(body: &[u8]) -> usize {
    let doc: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let mut bytes = 0usize;
    if let Some(system) = doc.get("system") {
        bytes += crate::providers::translate::text_of(system).len();
    }
    for message in doc
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        bytes += match message.get("content") {
            Some(Value::String(s)) => s.len(),
            Some(other) => other.to_string().len(),
            None => 0,
        };
    }
    if let Some(tools) = doc.get("tools") {
        bytes += tools.to_string().len();
    }
    bytes.div_ceil(4).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_estimate_counts_system_messages_and_tools() {
        let body = json!({"model": "m", "system": "abcd", "messages": [{"role": "user", "content": "efgh"}]});
        assert_eq!(estimated_tokens(body.to_string().as_bytes()), 2);
        let tools = json!({"model": "m", "messages": [], "tools": [{"name": "abcdefgh"}]});
        // `[{"name":"abcdefgh"}]`: 21 bytes.
        assert_eq!(estimated_tokens(tools.to_string().as_bytes()), 6);
        assert_eq!(estimated_tokens(br#"{"model":"m","messages":[]}"#), 1);
        let response = estimate(br#"{"model":"m","messages":[]}"#);
        assert_eq!(response.headers()[SOURCE_HEADER], "estimate");
    }
}
