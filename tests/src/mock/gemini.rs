//! The mock's Gemini API: `POST /v1beta/models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse`, served from the fixtures in `tests/fixtures/gemini/`.
//!
//! Like the real API it wants the key in `x-goog-api-key` (403 `PERMISSION_DENIED` without
//! one), `contents` in the body, and `alt=sse` on streams. A request with `tools` gets the
//! function-call answer. Faults answer with Gemini's error bodies; `fault=401` is Gemini's
//! invalid-key answer, a **400** with reason `API_KEY_INVALID`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use serde_json::{Map, Value};

use super::body::MockBody;
use super::scenario::{Fault, Scenario};
use super::state::State;

const ANSWER: &str = include_str!("../../fixtures/gemini/generate_content.json");
const ANSWER_CALL: &str = include_str!("../../fixtures/gemini/generate_content_function_call.json");
const STREAM: &str = include_str!("../../fixtures/gemini/stream_generate_content.sse");
const STREAM_CALL: &str =
    include_str!("../../fixtures/gemini/stream_generate_content_function_call.sse");
const ERROR_INVALID_KEY: &str = include_str!("../../fixtures/gemini/error_invalid_api_key.json");
const ERROR_CONTEXT_LENGTH: &str = include_str!("../../fixtures/gemini/error_context_length.json");
const ERROR_RATE_LIMIT: &str = include_str!("../../fixtures/gemini/error_rate_limit.json");
const ERROR_OVERLOADED: &str = include_str!("../../fixtures/gemini/error_overloaded.json");
const ERROR_SERVER: &str = include_str!("../../fixtures/gemini/error_server.json");
const ERROR_PERMISSION: &str = include_str!("../../fixtures/gemini/error_permission_denied.json");

/// Usage of the text answer and of the text stream's last event: prompt (cached included),
/// cached, candidates, thoughts.
pub const GEMINI_USAGE: (u64, u64, u64, u64) = (120, 100, 9, 4);
/// The text answer's text, and the text stream's, concatenated.
pub const GEMINI_TEXT: &str = "AI learns patterns from data to make predictions.";

/// What a Gemini path asks for: `Some(stream)` for the two generate methods.
pub fn route(path: &str) -> Option<bool> {
    let rest = path.strip_prefix("/v1beta/models/")?;
    let (model, method) = rest.split_once(':')?;
    if model.is_empty() || model.contains('/') {
        return None;
    }
    match method {
        "generateContent" => Some(false),
        "streamGenerateContent" => Some(true),
        _ => None,
    }
}

/// The answer to one generate call.
pub fn respond(
    stream: bool,
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
    scenario: &Scenario,
    fault: Option<Fault>,
    state: &Arc<State>,
) -> Response<MockBody> {
    if let Some(response) = fault_answer(fault) {
        return response;
    }
    if headers.get("x-goog-api-key").is_none() {
        return json(StatusCode::FORBIDDEN, ERROR_PERMISSION);
    }
    generate(stream, query, body, scenario, fault, state)
}

/// The body checks of `generateContent` and the fixture answer (the Gemini API's and Vertex
/// AI's alike); faults other than the ones answered before (auth) are the caller's.
pub fn generate(
    stream: bool,
    query: Option<&str>,
    body: &[u8],
    scenario: &Scenario,
    fault: Option<Fault>,
    state: &Arc<State>,
) -> Response<MockBody> {
    if stream && !query.is_some_and(|q| q.split('&').any(|kv| kv == "alt=sse")) {
        return error(
            StatusCode::BAD_REQUEST,
            "this mock serves streams only with alt=sse",
        );
    }
    let Ok(request) = serde_json::from_slice::<Map<String, Value>>(body) else {
        return error(StatusCode::BAD_REQUEST, "Invalid JSON payload received.");
    };
    if !request.get("contents").is_some_and(Value::is_array) {
        return error(
            StatusCode::BAD_REQUEST,
            "* GenerateContentRequest.contents: contents is not specified",
        );
    }
    if let Some(unknown) = request.keys().find(|k| {
        ![
            "contents",
            "systemInstruction",
            "generationConfig",
            "tools",
            "toolConfig",
            "safetySettings",
            "cachedContent",
        ]
        .contains(&k.as_str())
    }) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!(
                "Invalid JSON payload received. Unknown name \"{unknown}\": Cannot find field."
            ),
        );
    }
    let tools = request
        .get("tools")
        .is_some_and(|t| t.as_array().is_some_and(|a| !a.is_empty()));
    if !stream {
        return json(StatusCode::OK, if tools { ANSWER_CALL } else { ANSWER });
    }
    let transcript = if tools { STREAM_CALL } else { STREAM };
    let events: Vec<Bytes> = match scenario.event_text {
        Some(bytes) => long_events(scenario.stream_chunks(), bytes),
        None => transcript
            .split_inclusive("\r\n\r\n")
            .filter(|e| !e.trim().is_empty())
            .map(|e| Bytes::from_static(e.as_bytes()))
            .collect(),
    };
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
    let mut response = Response::new(body);
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    response
}

/// `chunks` events of `bytes` bytes of text each, then a finish event with usage (the
/// `event_text` knob): many tokens an event, as Gemini streams.
fn long_events(chunks: usize, bytes: u64) -> Vec<Bytes> {
    let text = "x".repeat(usize::try_from(bytes).unwrap_or(0));
    let mut events: Vec<Bytes> = (0..chunks)
        .map(|_| {
            let chunk = serde_json::json!({"candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "index": 0}], "responseId": "s1"});
            Bytes::from(format!("data: {chunk}\r\n\r\n"))
        })
        .collect();
    let tokens = (chunks as u64 * bytes).div_ceil(4);
    let last = serde_json::json!({"candidates": [{"content": {"parts": [{"text": ""}], "role": "model"}, "finishReason": "STOP", "index": 0}], "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": tokens, "totalTokenCount": tokens + 10}, "responseId": "s1"});
    events.push(Bytes::from(format!("data: {last}\r\n\r\n")));
    events
}

pub(super) fn fault_answer(fault: Option<Fault>) -> Option<Response<MockBody>> {
    let (status, body) = match fault? {
        Fault::RateLimited | Fault::QuotaExhausted => {
            (StatusCode::TOO_MANY_REQUESTS, ERROR_RATE_LIMIT)
        }
        Fault::ServerError => (StatusCode::INTERNAL_SERVER_ERROR, ERROR_SERVER),
        Fault::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, ERROR_OVERLOADED),
        Fault::BadRequest => (StatusCode::BAD_REQUEST, ERROR_CONTEXT_LENGTH),
        Fault::Unauthorized => (StatusCode::BAD_REQUEST, ERROR_INVALID_KEY),
        Fault::Hang | Fault::Reset | Fault::ResetMidStream | Fault::Malformed => return None,
    };
    Some(json(status, body))
}

fn error(status: StatusCode, message: &str) -> Response<MockBody> {
    let doc = serde_json::json!({"error": {"code": status.as_u16(), "message": message, "status": "INVALID_ARGUMENT"}});
    let mut response = Response::new(MockBody::full(Bytes::from(doc.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

pub(super) fn json(status: StatusCode, body: &'static str) -> Response<MockBody> {
    let mut response = Response::new(MockBody::full(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
