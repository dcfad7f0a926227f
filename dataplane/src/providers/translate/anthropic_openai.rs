//! An Anthropic client (`/v1/messages`) in front of an OpenAI-compatible API.
//!
//! Request: `system` becomes the first message; text and image blocks become content parts
//! (base64 sources as data URLs); `tool_use` blocks become the assistant's `tool_calls` and
//! `tool_result` blocks `tool` messages; `tools`, `tool_choice`
//! (`disable_parallel_tool_use` → `parallel_tool_calls: false`), `stop_sequences` → `stop`,
//! `max_tokens`; streams ask for the final usage chunk.
//!
//! Answer: the message's text and `tool_calls` become content blocks; `finish_reason` becomes
//! `stop_reason`; usage becomes Anthropic's, with cached tokens taken out of `input_tokens`
//! into `cache_read_input_tokens`.
//!
//! Stream: the first chunk opens the message (`message_start`); content and tool call chunks
//! open, fill and close content blocks as they arrive; the end (`[DONE]`, or the stream's end)
//! writes `message_delta` with the stop reason and usage, then `message_stop`.

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use serde_json::{Map, Value, json};

use super::{StreamTranslator, TranslateError, openai, refusal, text_of, write_event};
use crate::error::{anthropic_error_body, anthropic_error_type};
use crate::providers::{Endpoint, UpstreamRequest, UpstreamResponse};

/// The OpenAI-format request body for an attempt on an OpenAI-shaped upstream: the client's
/// own (model swapped) or, for a `/v1/messages` client, the translation of its Anthropic
/// request (for a `/v1/responses` client, of its Responses request). `Err` is a ready 400 in
/// the client's shape.
pub fn openai_body(request: &UpstreamRequest<'_>) -> Result<Bytes, UpstreamResponse> {
    openai_body_with(request, false)
}

/// [`openai_body`], keeping Anthropic's `cache_control` markers on text parts when
/// `keep_cache_marks` (for a provider translation that caches, such as Bedrock's; an
/// OpenAI-compatible upstream gets none).
pub fn openai_body_with(
    request: &UpstreamRequest<'_>,
    keep_cache_marks: bool,
) -> Result<Bytes, UpstreamResponse> {
    let view = request.view;
    let (model, stream) = (request.upstream_model, view.stream);
    let translated = match request.endpoint {
        Endpoint::Messages => request_with(&view.body, model, stream, keep_cache_marks),
        Endpoint::Responses => super::responses_openai::request(&view.body, model, stream),
        _ => return Ok(view.upstream_body(request.upstream_model_json)),
    };
    translated
        .map(Bytes::from)
        .map_err(|e| refusal(request.endpoint, &e))
}

/// Wraps an OpenAI-format answer (complete, streamed or an error) for a `/v1/messages`
/// client; used by every adaptor whose upstream answers in OpenAI's shape.
pub fn wrap_answer(response: UpstreamResponse, stream: bool) -> UpstreamResponse {
    super::wrap(
        response,
        stream,
        StreamToAnthropic::new(),
        self::response,
        error,
    )
}

/// The OpenAI chat completion request for an Anthropic Messages request.
pub fn request(body: &[u8], upstream_model: &str, stream: bool) -> Result<Vec<u8>, TranslateError> {
    request_with(body, upstream_model, stream, false)
}

/// [`request`], with `cache_control` markers kept on text parts when `keep_cache_marks`.
pub fn request_with(
    body: &[u8],
    upstream_model: &str,
    stream: bool,
    keep_cache_marks: bool,
) -> Result<Vec<u8>, TranslateError> {
    let (req, messages) = openai::request_and_messages(body, "messages: Field required")?;
    let mut out_messages: Vec<Value> = Vec::with_capacity(messages.len() + 1);
    if let Some(system) = req.get("system") {
        let text = text_of(system);
        // Cache markers on system blocks are kept (as text parts) for providers that cache.
        let marked = keep_cache_marks
            && system
                .as_array()
                .is_some_and(|b| b.iter().any(|b| b.get("cache_control").is_some()));
        if marked {
            out_messages.push(json!({"role": "system", "content": system.clone()}));
        } else if !text.is_empty() {
            out_messages.push(json!({"role": "system", "content": text}));
        }
    }
    for (i, m) in messages.iter().enumerate() {
        push_message(i, m, &mut out_messages, keep_cache_marks)?;
    }
    let mut out = Map::new();
    out.insert("model".into(), upstream_model.into());
    out.insert("messages".into(), Value::Array(out_messages));
    if let Some(n) = req.get("max_tokens").filter(|v| v.is_u64()) {
        out.insert("max_tokens".into(), n.clone());
    }
    for key in ["temperature", "top_p"] {
        if let Some(v) = req.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(Value::Array(stop)) = req.get("stop_sequences")
        && !stop.is_empty()
    {
        out.insert("stop".into(), Value::Array(stop.clone()));
    }
    if let Some(user) = req.get("metadata").and_then(|m| m.get("user_id")) {
        out.insert("user".into(), user.clone());
    }
    tools(&req, &mut out);
    if stream {
        out.insert("stream".into(), Value::Bool(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(serde_json::to_vec(&out).unwrap_or_default())
}

/// Appends the OpenAI messages for Anthropic message `i`: its text and images as one user or
/// assistant message (tool uses as the assistant's `tool_calls`), its tool results as `tool`
/// messages.
fn push_message(
    i: usize,
    m: &Value,
    out_messages: &mut Vec<Value>,
    keep_cache_marks: bool,
) -> Result<(), TranslateError> {
    let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
    if role != "user" && role != "assistant" {
        return Err(TranslateError::new(
            format!("messages.{i}.role: Input should be 'user' or 'assistant'"),
            Some("messages"),
        ));
    }
    let blocks = match m.get("content") {
        Some(Value::String(s)) => {
            out_messages.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => {
            return Err(TranslateError::new(
                format!("messages.{i}.content: must be a string or a list of blocks"),
                Some("messages"),
            ));
        }
    };
    let mut parts: Vec<Value> = Vec::new();
    let mut calls: Vec<Value> = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                let mut part = json!({"type": "text", "text": block.get("text").cloned().unwrap_or_default()});
                if let Some(mark) = block.get("cache_control").filter(|_| keep_cache_marks) {
                    part["cache_control"] = mark.clone();
                }
                parts.push(part);
            }
            Some("image") => parts.push(json!({"type": "image_url", "image_url": {"url": image_url(block)}})),
            Some("tool_use") => calls.push(json!({
                "id": block.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": block.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": block.get("input").map_or_else(|| "{}".to_owned(), Value::to_string),
                },
            })),
            Some("tool_result") => out_messages.push(json!({
                "role": "tool",
                "tool_call_id": block.get("tool_use_id").cloned().unwrap_or(Value::Null),
                "content": text_of(block.get("content").unwrap_or(&Value::Null)),
            })),
            // Reasoning blocks have no OpenAI-compatible counterpart.
            Some("thinking" | "redacted_thinking") => {}
            other => {
                return Err(TranslateError::new(
                    format!("messages.{i}.content: unsupported block type {other:?}"),
                    Some("messages"),
                ));
            }
        }
    }
    if role == "assistant" {
        let text: String = parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect();
        let mut msg = json!({"role": "assistant", "content": if text.is_empty() { Value::Null } else { text.into() }});
        if !calls.is_empty() {
            msg["tool_calls"] = Value::Array(calls);
        }
        out_messages.push(msg);
    } else if !parts.is_empty() {
        out_messages.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

/// The OpenAI image URL for an Anthropic image block (a base64 source as a data URL).
fn image_url(block: &Value) -> String {
    let source = block.get("source").unwrap_or(&Value::Null);
    let field = |k: &str| source.get(k).and_then(Value::as_str);
    match field("type") {
        Some("base64") => format!(
            "data:{};base64,{}",
            field("media_type").unwrap_or("image/png"),
            field("data").unwrap_or_default()
        ),
        _ => field("url").unwrap_or_default().to_owned(),
    }
}

/// `tools` and `tool_choice` (with `disable_parallel_tool_use`) in OpenAI's shape.
fn tools(req: &Map<String, Value>, out: &mut Map<String, Value>) {
    if let Some(Value::Array(tools)) = req.get("tools") {
        let tools: Vec<Value> = tools
            .iter()
            .map(|t| {
                let f = openai::tool_definition(t, "input_schema", "parameters", |schema| {
                    Some(schema.cloned().unwrap_or_else(|| json!({"type": "object"})))
                });
                json!({"type": "function", "function": f})
            })
            .collect();
        if !tools.is_empty() {
            out.insert("tools".into(), Value::Array(tools));
        }
    }
    let Some(choice) = req.get("tool_choice") else {
        return;
    };
    let mapped = match choice.get("type").and_then(Value::as_str) {
        Some("any") => Some(json!("required")),
        Some("none") => Some(json!("none")),
        Some("tool") => Some(
            json!({"type": "function", "function": {"name": choice.get("name").cloned().unwrap_or(Value::Null)}}),
        ),
        Some("auto") => Some(json!("auto")),
        _ => None,
    };
    if let Some(mapped) = mapped {
        out.insert("tool_choice".into(), mapped);
    }
    if choice.get("disable_parallel_tool_use") == Some(&Value::Bool(true)) {
        out.insert("parallel_tool_calls".into(), Value::Bool(false));
    }
}

/// Anthropic's `stop_reason` for OpenAI's `finish_reason`.
fn stop_reason(finish: Option<&str>) -> Value {
    match finish {
        None => Value::Null,
        Some("length") => "max_tokens".into(),
        Some("tool_calls" | "function_call") => "tool_use".into(),
        Some("content_filter") => "refusal".into(),
        Some(_) => "end_turn".into(),
    }
}

/// Anthropic's usage object for OpenAI's.
fn usage(u: &Value) -> Value {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let cached = u
        .get("prompt_tokens_details")
        .and_then(|d| d.get("cached_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let created = n("cache_creation_input_tokens");
    json!({
        "input_tokens": n("prompt_tokens").saturating_sub(cached).saturating_sub(created),
        "output_tokens": n("completion_tokens"),
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": created,
    })
}

/// A message id for an OpenAI completion id.
fn message_id(id: Option<&Value>) -> Value {
    match id.and_then(Value::as_str) {
        Some(id) if id.starts_with("msg_") => id.into(),
        Some(id) => format!("msg_{id}").into(),
        None => "msg_switchboard".into(),
    }
}

/// The Anthropic message for an OpenAI chat completion; the input unchanged if it is not one.
pub fn response(body: Bytes) -> Bytes {
    let Some(doc) = openai::answer_object(&body) else {
        return body;
    };
    let choice = doc.pointer("/choices/0").unwrap_or(&Value::Null);
    let message = choice.get("message").unwrap_or(&Value::Null);
    let mut content = Vec::new();
    if let Some(text) = message
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        content.push(json!({"type": "text", "text": text}));
    }
    // Anthropic's `tool_use.input` must be an object: arguments that are not one become `{}`.
    content.extend(openai::tool_calls(message).map(
        |call| json!({"type": "tool_use", "id": call.id, "name": call.name, "input": call.input}),
    ));
    let out = json!({
        "id": message_id(doc.get("id")),
        "type": "message",
        "role": "assistant",
        "model": doc.get("model").cloned().unwrap_or(Value::Null),
        "content": content,
        "stop_reason": stop_reason(choice.get("finish_reason").and_then(Value::as_str)),
        "stop_sequence": null,
        "usage": usage(doc.get("usage").unwrap_or(&Value::Null)),
    });
    Bytes::from(serde_json::to_vec(&out).unwrap_or_default())
}

/// Anthropic's error shape for an OpenAI error body, given the upstream status.
pub fn error(status: StatusCode, body: Bytes) -> Bytes {
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let message = parsed
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map_or_else(
            || String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned(),
            str::to_owned,
        );
    Bytes::from(anthropic_error_body(anthropic_error_type(status), &message))
}

/// Which content block is open in the translated stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Text,
    /// A tool call: OpenAI's tool call index.
    Tool(u64),
}

/// OpenAI chat completion chunks into Anthropic's stream events.
#[derive(Debug)]
pub struct StreamToAnthropic {
    started: bool,
    open: Open,
    /// Index of the next content block.
    next_block: u64,
    stop: Value,
    usage: Value,
    finished: bool,
}

impl Default for StreamToAnthropic {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamToAnthropic {
    pub fn new() -> Self {
        Self {
            started: false,
            open: Open::None,
            next_block: 0,
            stop: Value::Null,
            usage: Value::Null,
            finished: false,
        }
    }

    fn start(&mut self, chunk: &Value, out: &mut BytesMut) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        let message = json!({
            "type": "message_start",
            "message": {
                "id": message_id(chunk.get("id")),
                "type": "message",
                "role": "assistant",
                "model": chunk.get("model").cloned().unwrap_or(Value::Null),
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0},
            },
        });
        write_event(out, Some("message_start"), &message);
    }

    fn close_block(&mut self, out: &mut BytesMut) {
        if self.open != Open::None {
            let index = self.next_block - 1;
            write_event(
                out,
                Some("content_block_stop"),
                &json!({"type": "content_block_stop", "index": index}),
            );
            self.open = Open::None;
        }
    }

    fn open_block(&mut self, kind: Open, block: Value, out: &mut BytesMut) -> u64 {
        self.close_block(out);
        let index = self.next_block;
        self.next_block += 1;
        self.open = kind;
        write_event(
            out,
            Some("content_block_start"),
            &json!({"type": "content_block_start", "index": index, "content_block": block}),
        );
        index
    }

    fn delta(out: &mut BytesMut, index: u64, delta: Value) {
        write_event(
            out,
            Some("content_block_delta"),
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
        );
    }

    fn end(&mut self, out: &mut BytesMut) {
        if std::mem::replace(&mut self.finished, true) || !self.started {
            return;
        }
        self.close_block(out);
        write_event(
            out,
            Some("message_delta"),
            &json!({
                "type": "message_delta",
                "delta": {"stop_reason": self.stop, "stop_sequence": null},
                "usage": usage(&self.usage),
            }),
        );
        write_event(out, Some("message_stop"), &json!({"type": "message_stop"}));
    }
}

impl StreamTranslator for StreamToAnthropic {
    fn event(&mut self, _name: Option<&str>, data: &[u8], out: &mut BytesMut) {
        if data == b"[DONE]" {
            self.end(out);
            return;
        }
        let Ok(chunk) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        if let Some(error) = chunk.get("error") {
            let message = openai::stream_error_message(error);
            write_event(
                out,
                Some("error"),
                &json!({"type": "error", "error": {"type": "api_error", "message": message}}),
            );
            self.finished = true;
            return;
        }
        self.start(&chunk, out);
        if let Some(u) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = u.clone();
        }
        let Some(choice) = chunk.pointer("/choices/0") else {
            return;
        };
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        if let Some(text) = delta
            .get("content")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
        {
            if self.open != Open::Text {
                self.open_block(Open::Text, json!({"type": "text", "text": ""}), out);
            }
            Self::delta(
                out,
                self.next_block - 1,
                json!({"type": "text_delta", "text": text}),
            );
        }
        for call in openai::array_at(delta, "/tool_calls") {
            let call_index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
            let f = call.get("function").unwrap_or(&Value::Null);
            if self.open != Open::Tool(call_index) {
                let block = json!({
                    "type": "tool_use",
                    "id": call.get("id").cloned().unwrap_or(Value::Null),
                    "name": f.get("name").cloned().unwrap_or(Value::Null),
                    "input": {},
                });
                self.open_block(Open::Tool(call_index), block, out);
            }
            if let Some(args) = f
                .get("arguments")
                .and_then(Value::as_str)
                .filter(|a| !a.is_empty())
            {
                Self::delta(
                    out,
                    self.next_block - 1,
                    json!({"type": "input_json_delta", "partial_json": args}),
                );
            }
        }
        if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop = stop_reason(Some(finish));
        }
    }

    fn finish(&mut self, _out: &mut BytesMut) {
        // Without `[DONE]` the upstream stream was cut short: no `message_stop`, so the
        // client does not mistake it for a complete answer.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_blocks_tools_and_results_translate() {
        let body = json!({
            "model": "public", "max_tokens": 100, "system": [{"type": "text", "text": "Be brief."}],
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "Look"}, {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "AAA"}}]},
                {"role": "assistant", "content": [{"type": "text", "text": "Calling."}, {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "text", "text": "42"}]}]}
            ],
            "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "stop_sequences": ["X"]
        });
        let out: Value =
            serde_json::from_slice(&request(body.to_string().as_bytes(), "gpt-up", true).unwrap())
                .unwrap();
        assert_eq!(out["model"], "gpt-up");
        assert_eq!(
            out["messages"][0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(
            out["messages"][1]["content"][1]["image_url"]["url"],
            "data:image/jpeg;base64,AAA"
        );
        assert_eq!(out["messages"][2]["content"], "Calling.");
        assert_eq!(
            out["messages"][2]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(
            out["messages"][3],
            json!({"role": "tool", "tool_call_id": "toolu_1", "content": "42"})
        );
        assert_eq!(
            out["tools"][0]["function"]["parameters"],
            json!({"type": "object"})
        );
        assert_eq!(out["tool_choice"], "required");
        assert_eq!(out["parallel_tool_calls"], false);
        assert_eq!(out["stop"], json!(["X"]));
        assert_eq!(out["max_tokens"], 100);
        assert_eq!(out["stream_options"], json!({"include_usage": true}));
    }

    #[test]
    fn cache_control_survives_into_providers_that_cache() {
        let mark = json!({"type": "ephemeral"});
        let body = json!({
            "model": "m", "max_tokens": 10,
            "system": [{"type": "text", "text": "Long rules.", "cache_control": mark}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "Doc", "cache_control": mark}, {"type": "text", "text": "Q"}]}]
        });
        let bytes = body.to_string();
        // An OpenAI-compatible upstream gets no markers.
        let plain: Value =
            serde_json::from_slice(&request(bytes.as_bytes(), "up", false).unwrap()).unwrap();
        assert!(!plain.to_string().contains("cache_control"), "{plain}");
        let chat = request_with(bytes.as_bytes(), "up", false, true).unwrap();
        // Anthropic (a chat client's markers, as the Bedrock and Gemini path sees them).
        let anthropic: Value = serde_json::from_slice(
            &super::super::openai_anthropic::request(&chat, "claude", false).unwrap(),
        )
        .unwrap();
        assert_eq!(anthropic["system"][0]["cache_control"], mark);
        assert_eq!(
            anthropic["messages"][0]["content"][0]["cache_control"],
            mark
        );
        assert!(
            anthropic["messages"][0]["content"][1]
                .get("cache_control")
                .is_none()
        );
        // Bedrock: a cachePoint after the marked block and after the system prompt.
        let bedrock: Value =
            serde_json::from_slice(&super::super::openai_bedrock::request(&chat).unwrap()).unwrap();
        assert_eq!(
            bedrock["system"][1],
            json!({"cachePoint": {"type": "default"}})
        );
        assert_eq!(
            bedrock["messages"][0]["content"][1],
            json!({"cachePoint": {"type": "default"}})
        );
        assert_eq!(bedrock["messages"][0]["content"][2]["text"], "Q");
    }

    #[test]
    fn a_completion_becomes_a_message_with_cache_split_out() {
        let body = json!({"id": "chatcmpl-1", "model": "gpt", "choices": [{"index": 0, "message": {"role": "assistant", "content": null,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 30}}});
        let out: Value = serde_json::from_slice(&response(Bytes::from(body.to_string()))).unwrap();
        assert_eq!(out["type"], "message");
        assert_eq!(out["stop_reason"], "tool_use");
        assert_eq!(
            out["content"],
            json!([{"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}}])
        );
        assert_eq!(
            out["usage"],
            json!({"input_tokens": 20, "output_tokens": 5, "cache_read_input_tokens": 30, "cache_creation_input_tokens": 0})
        );
    }

    #[test]
    fn chunks_become_events_in_order() {
        let mut t = StreamToAnthropic::new();
        let mut out = BytesMut::new();
        for data in [
            r#"{"id":"c1","model":"gpt","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"id":"c1","model":"gpt","choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#,
            r#"{"id":"c1","model":"gpt","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":""}}]},"finish_reason":null}]}"#,
            r#"{"id":"c1","model":"gpt","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]},"finish_reason":null}]}"#,
            r#"{"id":"c1","model":"gpt","choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"id":"c1","model":"gpt","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3}}"#,
            "[DONE]",
        ] {
            t.event(None, data.as_bytes(), &mut out);
        }
        let text = String::from_utf8(out.to_vec()).unwrap();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            names,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
            ]
        );
        assert!(text.contains(r#""stop_reason":"tool_use""#));
        assert!(text.contains(r#""input_tokens":9"#) && text.contains(r#""output_tokens":3"#));
    }
}
