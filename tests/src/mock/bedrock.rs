//! The mock's Bedrock Runtime: `POST /model/{modelId}/converse` and `/converse-stream`,
//! served from the fixtures in `tests/fixtures/bedrock/`.
//!
//! Every request must carry a valid AWS SigV4 signature for the example credentials
//! ([`BEDROCK_ACCESS_KEY_ID`], [`BEDROCK_SECRET_ACCESS_KEY`]): the mock recomputes it over the
//! signed headers, the path as sent and the body, as Bedrock would, and answers 403 otherwise.
//! Streams are framed in AWS's binary event-stream encoding, one message per frame,
//! `interval_ms` apart. Faults answer with Bedrock's errors (`x-amzn-errortype` plus
//! `{"message"}`); `fault=401` is Bedrock's 403 `UnrecognizedClientException`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use dataplane::providers::bedrock::eventstream;
use dataplane::providers::bedrock::sigv4::{self, Credentials, SigningInput};
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use serde_json::Value;

use super::body::MockBody;
use super::scenario::{Fault, Scenario};
use super::state::State;

/// The access key id the mock accepts (AWS's documentation example).
pub const BEDROCK_ACCESS_KEY_ID: &str = "AKIDEXAMPLE";
/// The secret the mock verifies signatures with (AWS's documentation example).
pub const BEDROCK_SECRET_ACCESS_KEY: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
/// Usage of the text answer and stream: input (uncached), output, cache read, cache write.
pub const BEDROCK_USAGE: (u64, u64, u64, u64) = (30, 12, 16, 4);
/// The text answer's text, and the text stream's, concatenated.
pub const BEDROCK_TEXT: &str = "Hello! How can I help you today?";

const CONVERSE: &str = include_str!("../../fixtures/bedrock/converse.json");
const CONVERSE_TOOL: &str = include_str!("../../fixtures/bedrock/converse_tool_use.json");
const STREAM: &str = include_str!("../../fixtures/bedrock/converse_stream.json");
const STREAM_TOOL: &str = include_str!("../../fixtures/bedrock/converse_stream_tool_use.json");
const ERROR_TOO_LONG: &str = include_str!("../../fixtures/bedrock/error_validation_too_long.json");
const ERROR_THROTTLING: &str = include_str!("../../fixtures/bedrock/error_throttling.json");
const ERROR_UNRECOGNIZED: &str =
    include_str!("../../fixtures/bedrock/error_unrecognized_client.json");
const ERROR_SIGNATURE: &str = include_str!("../../fixtures/bedrock/error_invalid_signature.json");
const ERROR_UNAVAILABLE: &str =
    include_str!("../../fixtures/bedrock/error_service_unavailable.json");
const ERROR_INTERNAL: &str = include_str!("../../fixtures/bedrock/error_internal.json");

/// What a Bedrock path asks for: `Some(stream)` for Converse and ConverseStream.
pub fn route(path: &str) -> Option<bool> {
    let rest = path.strip_prefix("/model/")?;
    let (model, action) = rest.split_once('/')?;
    if model.is_empty() {
        return None;
    }
    match action {
        "converse" => Some(false),
        "converse-stream" => Some(true),
        _ => None,
    }
}

/// The answer to one Converse call. `full_path` is the path as the client sent it (the
/// signature covers it, scenario prefix included).
pub fn respond(
    stream: bool,
    full_path: &str,
    headers: &HeaderMap,
    body: &[u8],
    scenario: &Scenario,
    fault: Option<Fault>,
    state: &Arc<State>,
) -> Response<MockBody> {
    if let Some(refusal) = check_signature(full_path, headers, body) {
        return refusal;
    }
    if let Some(response) = fault_answer(fault) {
        return response;
    }
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            r#"{"message":"Malformed input request, please reformat your input and try again."}"#,
        );
    };
    if !request.get("messages").is_some_and(Value::is_array) {
        return error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            r#"{"message":"1 validation error detected: Value null at 'messages' failed to satisfy constraint: Member must not be null"}"#,
        );
    }
    let tools = request
        .pointer("/toolConfig/tools")
        .is_some_and(|t| t.as_array().is_some_and(|a| !a.is_empty()));
    if !stream {
        let mut response = Response::new(MockBody::full(Bytes::from_static(
            if tools { CONVERSE_TOOL } else { CONVERSE }.as_bytes(),
        )));
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        return response;
    }
    let frames = match scenario.event_text {
        Some(bytes) => long_stream_frames(scenario.stream_chunks(), bytes),
        None => stream_frames(if tools { STREAM_TOOL } else { STREAM }),
    };
    let keep = frames.len() / 2;
    let body = MockBody::stream(
        frames,
        Duration::from_millis(scenario.interval_ms),
        Arc::clone(state),
    );
    let body = if fault == Some(Fault::ResetMidStream) {
        body.cut_after(keep)
    } else {
        body
    };
    let mut response = Response::new(body);
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/vnd.amazon.eventstream"),
    );
    response
}

/// The event-stream messages of a stream fixture.
fn stream_frames(fixture: &str) -> Vec<Bytes> {
    let doc: Value = serde_json::from_str(fixture).unwrap_or(Value::Null);
    doc["events"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|pair| frame(pair[0].as_str().unwrap_or_default(), &pair[1]))
        .collect()
}

/// One event-stream message of event type `kind`.
fn frame(kind: &str, payload: &Value) -> Bytes {
    eventstream::encode(
        &[
            (":event-type", kind),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        payload.to_string().as_bytes(),
    )
}

/// The `event_text` knob: `chunks` deltas of `bytes` bytes of text each between the start and
/// the stop, then the usage (many tokens an event, as Bedrock streams).
fn long_stream_frames(chunks: usize, bytes: u64) -> Vec<Bytes> {
    let text = "x".repeat(usize::try_from(bytes).unwrap_or(0));
    let delta = serde_json::json!({"contentBlockIndex": 0, "delta": {"text": text}});
    let tokens = (chunks as u64 * bytes).div_ceil(4);
    let mut frames = vec![frame(
        "messageStart",
        &serde_json::json!({"role": "assistant"}),
    )];
    frames.extend((0..chunks).map(|_| frame("contentBlockDelta", &delta)));
    frames.push(frame(
        "contentBlockStop",
        &serde_json::json!({"contentBlockIndex": 0}),
    ));
    frames.push(frame(
        "messageStop",
        &serde_json::json!({"stopReason": "end_turn"}),
    ));
    let usage =
        serde_json::json!({"inputTokens": 10, "outputTokens": tokens, "totalTokens": tokens + 10});
    frames.push(frame("metadata", &serde_json::json!({"usage": usage})));
    frames
}

/// `Some(403)` unless the request is signed correctly for the example credentials.
fn check_signature(path: &str, headers: &HeaderMap, body: &[u8]) -> Option<Response<MockBody>> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let auth = header("authorization").unwrap_or_default();
    let field = |name: &str| {
        auth.split([' ', ','])
            .find_map(|part| part.strip_prefix(name))
            .unwrap_or_default()
    };
    let credential = field("Credential=");
    let scope: Vec<&str> = credential.split('/').collect();
    if !auth.starts_with("AWS4-HMAC-SHA256 ")
        || scope.len() != 5
        || scope[0] != BEDROCK_ACCESS_KEY_ID
        || scope[3] != "bedrock"
    {
        return Some(error(
            StatusCode::FORBIDDEN,
            "UnrecognizedClientException",
            ERROR_UNRECOGNIZED,
        ));
    }
    let region = scope[2];
    let signed_names: Vec<&str> = field("SignedHeaders=").split(';').collect();
    let signed: Vec<(&str, &str)> = signed_names
        .iter()
        .map(|n| (*n, header(n).unwrap_or_default()))
        .collect();
    let expected = sigv4::authorization(
        &SigningInput {
            method: "POST",
            path,
            query: "",
            headers: &signed,
            payload: body,
            region,
            service: "bedrock",
            amz_date: header("x-amz-date").unwrap_or_default(),
        },
        &Credentials {
            access_key_id: BEDROCK_ACCESS_KEY_ID.into(),
            secret_access_key: BEDROCK_SECRET_ACCESS_KEY.into(),
            session_token: None,
        },
    );
    if expected != auth || !signed_names.contains(&"host") || !signed_names.contains(&"x-amz-date")
    {
        return Some(error(
            StatusCode::FORBIDDEN,
            "InvalidSignatureException",
            ERROR_SIGNATURE,
        ));
    }
    None
}

fn fault_answer(fault: Option<Fault>) -> Option<Response<MockBody>> {
    Some(match fault? {
        Fault::RateLimited | Fault::QuotaExhausted => error(
            StatusCode::TOO_MANY_REQUESTS,
            "ThrottlingException",
            ERROR_THROTTLING,
        ),
        Fault::ServerError => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerException",
            ERROR_INTERNAL,
        ),
        Fault::Unavailable => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailableException",
            ERROR_UNAVAILABLE,
        ),
        Fault::BadRequest => error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            ERROR_TOO_LONG,
        ),
        Fault::Unauthorized => error(
            StatusCode::FORBIDDEN,
            "UnrecognizedClientException",
            ERROR_UNRECOGNIZED,
        ),
        Fault::Hang | Fault::Reset | Fault::ResetMidStream | Fault::Malformed => return None,
    })
}

fn error(status: StatusCode, kind: &'static str, body: &str) -> Response<MockBody> {
    let mut response = Response::new(MockBody::full(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert("x-amzn-errortype", HeaderValue::from_static(kind));
    response
}
