//! The mock's Anthropic Messages API: `POST /v1/messages`, served from the fixtures in
//! `tests/fixtures/anthropic/`.
//!
//! It checks what the real API refuses, so that a gateway that forgets a header or leaks an
//! OpenAI-only field fails here: `anthropic-version` is required, `max_tokens` and `messages`
//! are required, and unknown top-level fields such as `stream_options` are refused. A request
//! with `tools` gets the tool-use answer, otherwise the text one; `stream: true` gets the
//! fixture's transcript, one event per frame, `interval_ms` apart. Faults answer with
//! Anthropic's error bodies (`503` becomes Anthropic's `529 overloaded_error`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use serde_json::{Map, Value};

use super::body::MockBody;
use super::scenario::{Fault, Scenario};
use super::state::State;

const MESSAGE: &str = include_str!("../../fixtures/anthropic/message.json");
const MESSAGE_TOOL_USE: &str = include_str!("../../fixtures/anthropic/message_tool_use.json");
const STREAM: &str = include_str!("../../fixtures/anthropic/message_stream.sse");
const STREAM_TOOL_USE: &str = include_str!("../../fixtures/anthropic/message_stream_tool_use.sse");
const ERROR_OVERLOADED: &str = include_str!("../../fixtures/anthropic/error_overloaded.json");
const ERROR_RATE_LIMIT: &str = include_str!("../../fixtures/anthropic/error_rate_limit.json");
const ERROR_CONTEXT_LENGTH: &str =
    include_str!("../../fixtures/anthropic/error_context_length.json");
const ERROR_AUTHENTICATION: &str =
    include_str!("../../fixtures/anthropic/error_authentication.json");
const ERROR_SERVER: &str = include_str!("../../fixtures/anthropic/error_server.json");

/// The `anthropic_version` Vertex AI's `rawPredict` wants in the body.
pub const VERTEX_VERSION: &str = "vertex-2023-10-16";

/// The fields the Messages API accepts at the top level.
const KNOWN_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "system",
    "stop_sequences",
    "stream",
    "temperature",
    "top_p",
    "top_k",
    "tools",
    "tool_choice",
    "metadata",
    "thinking",
    "service_tier",
    "container",
    "mcp_servers",
];

/// Usage of the text answer (`message.json`, and the text stream's `message_start` and
/// `message_delta`): uncached input, cache creation, cache read, output.
pub const ANTHROPIC_USAGE: (u64, u64, u64, u64) = (25, 10, 40, 15);

/// The text of the text answer's stream, concatenated.
pub const ANTHROPIC_STREAM_TEXT: &str = "Hello! How can I help?";

/// `input_tokens` of every `POST /v1/messages/count_tokens` answer.
pub const ANTHROPIC_COUNT_TOKENS: u64 = 42;

/// The answer to one `POST /v1/messages/count_tokens`: the same header and body checks as the
/// Messages API (`max_tokens` is not required here), then [`ANTHROPIC_COUNT_TOKENS`].
pub fn count_tokens(headers: &HeaderMap, body: &[u8]) -> Response<MockBody> {
    if headers.get("anthropic-version").is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "anthropic-version: header is required",
        );
    }
    let Ok(request) = serde_json::from_slice::<Map<String, Value>>(body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "There was an error parsing the body of your request",
        );
    };
    for required in ["model", "messages"] {
        if !request.contains_key(required) {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                &format!("{required}: Field required"),
            );
        }
    }
    let doc = serde_json::json!({ "input_tokens": ANTHROPIC_COUNT_TOKENS });
    with_type(
        StatusCode::OK,
        "application/json",
        MockBody::full(Bytes::from(doc.to_string())),
    )
}

/// The answer to one `POST /v1/messages`.
pub fn respond(
    headers: &HeaderMap,
    body: &[u8],
    scenario: &Scenario,
    fault: Option<Fault>,
    state: &Arc<State>,
) -> Response<MockBody> {
    if let Some(response) = fault_answer(fault, scenario) {
        return response;
    }
    if headers.get("anthropic-version").is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "anthropic-version: header is required",
        );
    }
    messages(Dialect::Anthropic, body, scenario, fault, state)
}

/// Where a Messages API body is sent: to Anthropic (`model` in the body, the version in a
/// header), or to Vertex AI's `rawPredict` (no `model`, `anthropic_version` in the body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Anthropic,
    Vertex,
}

/// The body checks of the Messages API in `dialect` and the fixture answer; faults other than
/// the ones answered before (auth) are the caller's.
pub fn messages(
    dialect: Dialect,
    body: &[u8],
    scenario: &Scenario,
    fault: Option<Fault>,
    state: &Arc<State>,
) -> Response<MockBody> {
    let invalid = |message: &str| error(StatusCode::BAD_REQUEST, "invalid_request_error", message);
    let Ok(request) = serde_json::from_slice::<Map<String, Value>>(body) else {
        return invalid("There was an error parsing the body of your request");
    };
    // The field that names the model (Anthropic) or the API version (Vertex AI).
    let own = match dialect {
        Dialect::Anthropic => "model",
        Dialect::Vertex => "anthropic_version",
    };
    if let Some(unknown) = request.keys().find(|k| {
        let k = k.as_str();
        k != own && (k == "model" || !KNOWN_FIELDS.contains(&k))
    }) {
        return invalid(&format!("{unknown}: Extra inputs are not permitted"));
    }
    for required in [own, "messages", "max_tokens"] {
        if !request.contains_key(required) {
            return invalid(&format!("{required}: Field required"));
        }
    }
    if dialect == Dialect::Vertex
        && request.get("anthropic_version") != Some(&Value::from(VERTEX_VERSION))
    {
        return invalid(&format!(
            "anthropic_version: Input should be '{VERTEX_VERSION}'"
        ));
    }
    let tools = request
        .get("tools")
        .is_some_and(|t| t.as_array().is_some_and(|a| !a.is_empty()));
    let stream = request.get("stream") == Some(&Value::Bool(true));
    if !stream {
        let fixture = if tools { MESSAGE_TOOL_USE } else { MESSAGE };
        return with_type(
            StatusCode::OK,
            "application/json",
            MockBody::full(Bytes::from_static(fixture.as_bytes())),
        );
    }
    let transcript = if tools { STREAM_TOOL_USE } else { STREAM };
    let events = sse_events(transcript);
    let keep = events.len() / 2;
    let body = MockBody::stream(
        events,
        Duration::from_millis(scenario.interval_ms),
        Arc::clone(state),
    );
    let body = if fault == Some(Fault::ResetMidStream) {
        body.cut_after(keep)
    } else {
        body
    };
    with_type(StatusCode::OK, "text/event-stream", body)
}

/// The events of an SSE transcript, each with its blank-line terminator, one per frame.
pub fn sse_events(transcript: &'static str) -> Vec<Bytes> {
    transcript
        .split_inclusive("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| Bytes::from_static(e.as_bytes()))
        .collect()
}

pub(super) fn fault_answer(
    fault: Option<Fault>,
    scenario: &Scenario,
) -> Option<Response<MockBody>> {
    let (status, body) = match fault? {
        // Anthropic has no distinct "out of credit" answer: a rate limit stands in.
        Fault::RateLimited | Fault::QuotaExhausted => {
            (StatusCode::TOO_MANY_REQUESTS, ERROR_RATE_LIMIT)
        }
        Fault::ServerError => (StatusCode::INTERNAL_SERVER_ERROR, ERROR_SERVER),
        Fault::Unavailable => (StatusCode::from_u16(529).ok()?, ERROR_OVERLOADED),
        Fault::BadRequest => (StatusCode::BAD_REQUEST, ERROR_CONTEXT_LENGTH),
        Fault::Unauthorized => (StatusCode::UNAUTHORIZED, ERROR_AUTHENTICATION),
        Fault::Hang | Fault::Reset | Fault::ResetMidStream | Fault::Malformed => return None,
    };
    let mut response = with_type(
        status,
        "application/json",
        MockBody::full(Bytes::from_static(body.as_bytes())),
    );
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(scenario.retry_after_secs()));
    }
    Some(response)
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response<MockBody> {
    let doc = serde_json::json!({"type": "error", "error": {"type": kind, "message": message}});
    with_type(
        status,
        "application/json",
        MockBody::full(Bytes::from(doc.to_string())),
    )
}

fn with_type(status: StatusCode, content_type: &'static str, body: MockBody) -> Response<MockBody> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
