//! A Responses API client (`/v1/responses`) in front of an OpenAI chat completions API.
//!
//! Every deployment that does not speak the Responses API natively (Anthropic, Gemini,
//! Bedrock, and OpenAI-compatible upstreams without the `responses_api` tag) serves it through
//! this translation; the chat request then goes on through the provider's own translation,
//! so each provider needs only its chat translation (`docs/responses.md`).
//!
//! Request: `instructions` becomes the first system message; `input` (a string, or a list of
//! items) becomes messages — `message` items by role (`developer` as `system`), their
//! `input_text`/`output_text` and `input_image` parts as text and image parts,
//! `function_call` items as the assistant's `tool_calls`, `function_call_output` items as
//! `tool` messages, `reasoning` items left out; function `tools`, `tool_choice`,
//! `parallel_tool_calls`, `max_output_tokens` → `max_tokens`, `temperature`, `top_p`, `user`,
//! and `text.format` → `response_format` (JSON object or JSON schema). Built-in tools, file
//! inputs, item references and `background` are refused with a 400 naming the field.
//!
//! Answer: the message's text becomes a `message` output item, each tool call a
//! `function_call` item; `finish_reason` sets `status` (`length` and `content_filter` make
//! the response `incomplete`); usage becomes `input_tokens`/`output_tokens` with the cached
//! part in `input_tokens_details`.
//!
//! Stream: chunks become Responses events as they arrive (`response.created`,
//! `response.output_item.added`, `response.output_text.delta`,
//! `response.function_call_arguments.delta`, the `.done` events as each item closes), and
//! `[DONE]` writes `response.completed` with the whole response and its usage.

use bytes::{Bytes, BytesMut};
use serde_json::{Map, Value, json};

use super::{StreamTranslator, TranslateError, openai, text_of, whole, write_event};
use crate::providers::{UpstreamRequest, UpstreamResponse};

/// The deployment tag that marks an OpenAI-compatible deployment as serving `/v1/responses`
/// itself: such a deployment gets the client's request with only the model changed.
pub const NATIVE_TAG: &str = "responses_api";

/// The OpenAI chat completion request for a Responses API request.
pub fn request(body: &[u8], upstream_model: &str, stream: bool) -> Result<Vec<u8>, TranslateError> {
    let req: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| TranslateError::new(format!("invalid JSON body: {e}"), None))?;
    if req.get("background") == Some(&Value::Bool(true)) {
        return Err(TranslateError::new(
            "background: background responses are not supported by this deployment",
            Some("background"),
        ));
    }
    let mut messages = Vec::new();
    match req.get("instructions") {
        Some(Value::String(s)) if !s.is_empty() => {
            messages.push(json!({"role": "system", "content": s}));
        }
        Some(Value::Array(items)) => push_items(items, &mut messages)?,
        _ => {}
    }
    match req.get("input") {
        Some(Value::String(s)) => messages.push(json!({"role": "user", "content": s})),
        Some(Value::Array(items)) => push_items(items, &mut messages)?,
        _ => {
            return Err(TranslateError::new(
                "input: a string or a list of input items is required",
                Some("input"),
            ));
        }
    }
    let mut out = Map::new();
    out.insert("model".into(), upstream_model.into());
    out.insert("messages".into(), Value::Array(messages));
    if let Some(n) = req.get("max_output_tokens").filter(|v| v.is_u64()) {
        out.insert("max_tokens".into(), n.clone());
    }
    for key in ["temperature", "top_p", "user", "parallel_tool_calls"] {
        if let Some(v) = req.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    tools(&req, &mut out)?;
    text_format(&req, &mut out)?;
    if stream {
        out.insert("stream".into(), Value::Bool(true));
        out.insert("stream_options".into(), json!({"include_usage": true}));
    }
    Ok(serde_json::to_vec(&out).unwrap_or_default())
}

/// Appends the chat messages for a list of Responses input items.
fn push_items(items: &[Value], out: &mut Vec<Value>) -> Result<(), TranslateError> {
    for (i, item) in items.iter().enumerate() {
        let kind = item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message");
        match kind {
            "message" => out.push(message(i, item)?),
            "function_call" => {
                let call = json!({
                    "id": item.get("call_id").cloned().unwrap_or(Value::Null),
                    "type": "function",
                    "function": {
                        "name": item.get("name").cloned().unwrap_or(Value::Null),
                        "arguments": item.get("arguments").cloned().unwrap_or_else(|| "{}".into()),
                    },
                });
                match out.last_mut() {
                    Some(last) if last["role"] == "assistant" => {
                        if !last["tool_calls"].is_array() {
                            last["tool_calls"] = json!([]);
                        }
                        if let Some(calls) = last["tool_calls"].as_array_mut() {
                            calls.push(call);
                        }
                    }
                    _ => out
                        .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            "function_call_output" => out.push(json!({
                "role": "tool",
                "tool_call_id": item.get("call_id").cloned().unwrap_or(Value::Null),
                "content": match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(other) => text_of(other),
                    None => String::new(),
                },
            })),
            // Reasoning summaries have no chat counterpart.
            "reasoning" => {}
            other => {
                return Err(TranslateError::new(
                    format!(
                        "input[{i}].type: `{other}` items are not supported by this deployment"
                    ),
                    Some("input"),
                ));
            }
        }
    }
    Ok(())
}

/// One `message` input item as a chat message.
fn message(i: usize, item: &Value) -> Result<Value, TranslateError> {
    let role = match item.get("role").and_then(Value::as_str) {
        Some("user") => "user",
        Some("assistant") => "assistant",
        Some("system" | "developer") => "system",
        other => {
            return Err(TranslateError::new(
                format!(
                    "input[{i}].role: expected user, assistant, system or developer, got {other:?}"
                ),
                Some("input"),
            ));
        }
    };
    let parts = match item.get("content") {
        Some(Value::String(s)) => return Ok(json!({"role": role, "content": s})),
        Some(Value::Array(parts)) => parts,
        _ => {
            return Err(TranslateError::new(
                format!("input[{i}].content: must be a string or a list of content parts"),
                Some("input"),
            ));
        }
    };
    let mut out = Vec::with_capacity(parts.len());
    for part in parts {
        match part.get("type").and_then(Value::as_str) {
            Some("input_text" | "output_text" | "text" | "refusal") => {
                let text = part.get("text").or_else(|| part.get("refusal"));
                out.push(json!({"type": "text", "text": text.cloned().unwrap_or_default()}));
            }
            Some("input_image") => {
                let Some(url) = part.get("image_url").and_then(Value::as_str) else {
                    return Err(TranslateError::new(
                        format!(
                            "input[{i}].content: images by `file_id` are not supported; send `image_url`"
                        ),
                        Some("input"),
                    ));
                };
                let mut image = json!({"url": url});
                if let Some(detail) = part.get("detail").filter(|d| d.is_string()) {
                    image["detail"] = detail.clone();
                }
                out.push(json!({"type": "image_url", "image_url": image}));
            }
            other => {
                return Err(TranslateError::new(
                    format!(
                        "input[{i}].content: `{}` parts are not supported by this deployment",
                        other.unwrap_or("untyped")
                    ),
                    Some("input"),
                ));
            }
        }
    }
    if role == "user" {
        return Ok(json!({"role": role, "content": out}));
    }
    // System and assistant turns are plain text in every chat translation.
    Ok(json!({"role": role, "content": text_of(&Value::Array(out))}))
}

/// Function `tools` and `tool_choice` in chat's shape; built-in tools are refused.
fn tools(req: &Map<String, Value>, out: &mut Map<String, Value>) -> Result<(), TranslateError> {
    if let Some(Value::Array(tools)) = req.get("tools") {
        let mut chat_tools = Vec::with_capacity(tools.len());
        for (i, tool) in tools.iter().enumerate() {
            let kind = tool.get("type").and_then(Value::as_str).unwrap_or_default();
            if kind != "function" {
                return Err(TranslateError::new(
                    format!(
                        "tools[{i}].type: `{kind}` tools are not supported by this deployment; only `function` tools are"
                    ),
                    Some("tools"),
                ));
            }
            let mut function = Map::new();
            for key in ["name", "description", "parameters", "strict"] {
                if let Some(v) = tool.get(key).filter(|v| !v.is_null()) {
                    function.insert(key.into(), v.clone());
                }
            }
            chat_tools.push(json!({"type": "function", "function": function}));
        }
        if !chat_tools.is_empty() {
            out.insert("tools".into(), Value::Array(chat_tools));
        }
    }
    match req.get("tool_choice") {
        Some(Value::String(s)) => {
            out.insert("tool_choice".into(), s.clone().into());
        }
        Some(choice @ Value::Object(_)) if choice["type"] == "function" => {
            out.insert(
                "tool_choice".into(),
                json!({"type": "function", "function": {"name": choice.get("name").cloned().unwrap_or(Value::Null)}}),
            );
        }
        Some(Value::Null) | None => {}
        Some(_) => {
            return Err(TranslateError::new(
                "tool_choice: only `auto`, `none`, `required` or a function are supported by this deployment",
                Some("tool_choice"),
            ));
        }
    }
    Ok(())
}

/// `text.format` as chat's `response_format`.
fn text_format(
    req: &Map<String, Value>,
    out: &mut Map<String, Value>,
) -> Result<(), TranslateError> {
    let Some(format) = req.get("text").and_then(|t| t.get("format")) else {
        return Ok(());
    };
    let mapped = match format.get("type").and_then(Value::as_str) {
        Some("text") | None => return Ok(()),
        Some("json_object") => json!({"type": "json_object"}),
        Some("json_schema") => {
            let mut schema = Map::new();
            for key in ["name", "description", "schema", "strict"] {
                if let Some(v) = format.get(key).filter(|v| !v.is_null()) {
                    schema.insert(key.into(), v.clone());
                }
            }
            json!({"type": "json_schema", "json_schema": schema})
        }
        Some(other) => {
            return Err(TranslateError::new(
                format!("text.format.type: `{other}` is not supported"),
                Some("text"),
            ));
        }
    };
    out.insert("response_format".into(), mapped);
    Ok(())
}

/// The response object every answer to `request` starts from: its id, the request's settings
/// echoed as the Responses API does, no output yet.
pub fn skeleton(request: &UpstreamRequest<'_>) -> Value {
    let req: Map<String, Value> = serde_json::from_slice(&request.view.body).unwrap_or_default();
    let get = |k: &str, default: Value| req.get(k).cloned().unwrap_or(default);
    json!({
        "id": format!("resp_{}", request.request_id.replace('-', "")),
        "object": "response",
        "created_at": super::now_secs(),
        "status": "in_progress",
        "error": null,
        "incomplete_details": null,
        "instructions": get("instructions", Value::Null),
        "max_output_tokens": get("max_output_tokens", Value::Null),
        "model": request.upstream_model,
        "output": [],
        "parallel_tool_calls": get("parallel_tool_calls", Value::Bool(true)),
        "previous_response_id": get("previous_response_id", Value::Null),
        "reasoning": {"effort": null, "summary": null},
        "store": get("store", Value::Bool(true)),
        "temperature": get("temperature", json!(1.0)),
        "text": get("text", json!({"format": {"type": "text"}})),
        "tool_choice": get("tool_choice", "auto".into()),
        "tools": get("tools", json!([])),
        "top_p": get("top_p", json!(1.0)),
        "truncation": "disabled",
        "usage": null,
        "user": get("user", Value::Null),
        "metadata": get("metadata", json!({})),
    })
}

/// Wraps an OpenAI chat answer (complete or streamed) for a Responses client. Errors are
/// already in OpenAI's error shape, which the Responses API shares: they pass unchanged.
pub fn wrap_answer(response: UpstreamResponse, request: &UpstreamRequest<'_>) -> UpstreamResponse {
    let UpstreamResponse {
        status,
        mut headers,
        body,
    } = response;
    if !status.is_success() {
        return UpstreamResponse {
            status,
            headers,
            body,
        };
    }
    let skeleton = skeleton(request);
    let is_sse = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let body = if request.view.stream && is_sse {
        super::set_content_type(&mut headers, true);
        super::SseTranslate::boxed(body, StreamToResponses::new(skeleton))
    } else {
        super::set_content_type(&mut headers, false);
        whole(body, move |b| response_of(skeleton, &b))
    };
    UpstreamResponse {
        status,
        headers,
        body,
    }
}

/// The Responses API's usage object for chat's.
fn usage(u: &Value) -> Value {
    let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    let (input, output) = (n("/prompt_tokens"), n("/completion_tokens"));
    let mut usage = json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens": n("/prompt_tokens_details/cached_tokens")},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens": n("/completion_tokens_details/reasoning_tokens")},
        "total_tokens": input + output,
    });
    // Cache writes (Anthropic through its chat translation) stay visible to accounting.
    if let Some(created) = u.get("cache_creation_input_tokens").filter(|v| v.is_u64()) {
        usage["cache_creation_input_tokens"] = created.clone();
    }
    usage
}

/// `status` and `incomplete_details` for chat's `finish_reason`.
fn status(finish: Option<&str>) -> (&'static str, Value) {
    match finish {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

fn text_item(id: &str, text: &str, status: &str) -> Value {
    json!({
        "type": "message", "id": id, "status": status, "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    })
}

fn call_item(id: &str, call_id: &Value, name: &Value, arguments: &str, status: &str) -> Value {
    json!({
        "type": "function_call", "id": id, "call_id": call_id, "name": name,
        "arguments": arguments, "status": status,
    })
}

/// The id suffix shared by a response's items.
fn suffix(skeleton: &Value) -> String {
    skeleton["id"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("resp_")
        .to_owned()
}

/// The Responses object for a chat completion; the input unchanged if it is not one.
pub fn response_of(mut skeleton: Value, body: &[u8]) -> Bytes {
    let Some(doc) = openai::answer_object(body) else {
        return Bytes::copy_from_slice(body);
    };
    let choice = doc.pointer("/choices/0").unwrap_or(&Value::Null);
    let message = choice.get("message").unwrap_or(&Value::Null);
    let suffix = suffix(&skeleton);
    let mut output = Vec::new();
    if let Some(text) = message
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        output.push(text_item(&format!("msg_{suffix}"), text, "completed"));
    }
    for (i, call) in openai::array_at(message, "/tool_calls").enumerate() {
        let f = call.get("function").unwrap_or(&Value::Null);
        output.push(call_item(
            &format!("fc_{suffix}_{i}"),
            call.get("id").unwrap_or(&Value::Null),
            f.get("name").unwrap_or(&Value::Null),
            f.get("arguments").and_then(Value::as_str).unwrap_or("{}"),
            "completed",
        ));
    }
    let (status, incomplete) = status(choice.get("finish_reason").and_then(Value::as_str));
    skeleton["status"] = status.into();
    skeleton["incomplete_details"] = incomplete;
    skeleton["output"] = Value::Array(output);
    skeleton["usage"] = usage(doc.get("usage").unwrap_or(&Value::Null));
    if let Some(model) = doc.get("model").filter(|m| m.is_string()) {
        skeleton["model"] = model.clone();
    }
    Bytes::from(serde_json::to_vec(&skeleton).unwrap_or_default())
}

/// The output item open in a translated stream.
#[derive(Debug)]
enum Open {
    None,
    Text {
        index: usize,
        id: String,
        text: String,
    },
    Call {
        chat_index: u64,
        index: usize,
        item: Value,
        arguments: String,
    },
}

/// OpenAI chat completion chunks into Responses API events.
#[derive(Debug)]
pub struct StreamToResponses {
    skeleton: Value,
    suffix: String,
    sequence: u64,
    started: bool,
    open: Open,
    output: Vec<Value>,
    finish: Option<String>,
    usage: Value,
    finished: bool,
}

impl StreamToResponses {
    pub fn new(skeleton: Value) -> Self {
        Self {
            suffix: suffix(&skeleton),
            skeleton,
            sequence: 0,
            started: false,
            open: Open::None,
            output: Vec::new(),
            finish: None,
            usage: Value::Null,
            finished: false,
        }
    }

    /// Writes one event: `event:` its type, `data:` the fields with type and sequence number.
    fn emit(&mut self, out: &mut BytesMut, kind: &str, mut data: Value) {
        data["type"] = kind.into();
        data["sequence_number"] = self.sequence.into();
        self.sequence += 1;
        write_event(out, Some(kind), &data);
    }

    fn start(&mut self, chunk: &Value, out: &mut BytesMut) {
        if std::mem::replace(&mut self.started, true) {
            return;
        }
        if let Some(model) = chunk.get("model").filter(|m| m.is_string()) {
            self.skeleton["model"] = model.clone();
        }
        let response = self.skeleton.clone();
        self.emit(out, "response.created", json!({"response": response}));
        let response = self.skeleton.clone();
        self.emit(out, "response.in_progress", json!({"response": response}));
    }

    fn close(&mut self, out: &mut BytesMut) {
        match std::mem::replace(&mut self.open, Open::None) {
            Open::None => {}
            Open::Text { index, id, text } => {
                let at = json!({"item_id": id, "output_index": index, "content_index": 0});
                let mut done = at.clone();
                done["text"] = text.clone().into();
                done["logprobs"] = json!([]);
                self.emit(out, "response.output_text.done", done);
                let mut part = at;
                part["part"] = json!({"type": "output_text", "text": text, "annotations": []});
                self.emit(out, "response.content_part.done", part);
                let item = text_item(&id, &text, "completed");
                self.item_done(out, index, item);
            }
            Open::Call {
                index,
                mut item,
                arguments,
                ..
            } => {
                let id = item["id"].clone();
                let done = json!({"item_id": id, "output_index": index, "arguments": arguments});
                self.emit(out, "response.function_call_arguments.done", done);
                item["arguments"] = arguments.into();
                item["status"] = "completed".into();
                self.item_done(out, index, item);
            }
        }
    }

    fn item_done(&mut self, out: &mut BytesMut, index: usize, item: Value) {
        let done = json!({"output_index": index, "item": item});
        self.emit(out, "response.output_item.done", done);
        self.output.push(item);
    }

    fn text(&mut self, text: &str, out: &mut BytesMut) {
        if !matches!(self.open, Open::Text { .. }) {
            self.close(out);
            let index = self.output.len();
            let id = format!("msg_{}", self.suffix);
            let mut item = text_item(&id, "", "in_progress");
            item["content"] = json!([]);
            self.emit(
                out,
                "response.output_item.added",
                json!({"output_index": index, "item": item}),
            );
            let part = json!({"item_id": id, "output_index": index, "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []}});
            self.emit(out, "response.content_part.added", part);
            self.open = Open::Text {
                index,
                id,
                text: String::new(),
            };
        }
        if let Open::Text {
            index,
            id,
            text: all,
        } = &mut self.open
        {
            all.push_str(text);
            let delta = json!({"item_id": id, "output_index": *index, "content_index": 0,
                "delta": text, "logprobs": []});
            self.emit(out, "response.output_text.delta", delta);
        }
    }

    fn call(&mut self, call: &Value, out: &mut BytesMut) {
        let chat_index = call.get("index").and_then(Value::as_u64).unwrap_or(0);
        let f = call.get("function").unwrap_or(&Value::Null);
        if !matches!(self.open, Open::Call { chat_index: c, .. } if c == chat_index) {
            self.close(out);
            let index = self.output.len();
            let id = format!("fc_{}_{index}", self.suffix);
            let item = call_item(
                &id,
                call.get("id").unwrap_or(&Value::Null),
                f.get("name").unwrap_or(&Value::Null),
                "",
                "in_progress",
            );
            let added = json!({"output_index": index, "item": item});
            self.emit(out, "response.output_item.added", added);
            self.open = Open::Call {
                chat_index,
                index,
                item,
                arguments: String::new(),
            };
        }
        let Some(delta) = f
            .get("arguments")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
        else {
            return;
        };
        if let Open::Call {
            index,
            item,
            arguments,
            ..
        } = &mut self.open
        {
            arguments.push_str(delta);
            let event = json!({"item_id": item["id"], "output_index": *index, "delta": delta});
            self.emit(out, "response.function_call_arguments.delta", event);
        }
    }

    fn end(&mut self, out: &mut BytesMut) {
        if std::mem::replace(&mut self.finished, true) || !self.started {
            return;
        }
        self.close(out);
        let (status, incomplete) = status(self.finish.as_deref());
        let mut response = self.skeleton.clone();
        response["status"] = status.into();
        response["incomplete_details"] = incomplete;
        response["output"] = Value::Array(std::mem::take(&mut self.output));
        response["usage"] = usage(&self.usage);
        let kind = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.emit(out, kind, json!({"response": response}));
    }
}

impl StreamTranslator for StreamToResponses {
    fn event(&mut self, _name: Option<&str>, data: &[u8], out: &mut BytesMut) {
        if data == b"[DONE]" {
            self.end(out);
            return;
        }
        let Ok(chunk) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        if let Some(error) = chunk.get("error") {
            let message = openai::stream_error_message(error).to_owned();
            let code = error.get("code").cloned().unwrap_or(Value::Null);
            self.emit(
                out,
                "error",
                json!({"code": code, "message": message, "param": null}),
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
            self.text(text, out);
        }
        for call in openai::array_at(delta, "/tool_calls") {
            self.call(call, out);
        }
        if let Some(finish) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish = Some(finish.to_owned());
        }
    }

    fn finish(&mut self, _out: &mut BytesMut) {
        // Without `[DONE]` the upstream stream was cut short: no `response.completed`, so
        // the client does not mistake it for a complete answer.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: Value, stream: bool) -> Value {
        serde_json::from_slice(&request(body.to_string().as_bytes(), "up", stream).unwrap())
            .unwrap()
    }

    #[test]
    fn instructions_items_tools_and_format_translate() {
        let out = chat(
            json!({
                "model": "m", "instructions": "Be brief.", "max_output_tokens": 50,
                "input": [
                    {"role": "developer", "content": "Use metric."},
                    {"role": "user", "content": [{"type": "input_text", "text": "Look"},
                        {"type": "input_image", "image_url": "data:image/png;base64,AA", "detail": "low"}]},
                    {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Calling."}]},
                    {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{\"a\":1}"},
                    {"type": "function_call_output", "call_id": "call_1", "output": "42"},
                    {"type": "reasoning", "summary": []}
                ],
                "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}, "strict": true}],
                "tool_choice": {"type": "function", "name": "f"},
                "text": {"format": {"type": "json_schema", "name": "w", "schema": {"type": "object"}, "strict": true}}
            }),
            true,
        );
        assert_eq!(out["model"], "up");
        assert_eq!(
            out["messages"][0],
            json!({"role": "system", "content": "Be brief."})
        );
        assert_eq!(
            out["messages"][1],
            json!({"role": "system", "content": "Use metric."})
        );
        assert_eq!(
            out["messages"][2]["content"][1]["image_url"],
            json!({"url": "data:image/png;base64,AA", "detail": "low"})
        );
        assert_eq!(out["messages"][3]["content"], "Calling.");
        assert_eq!(
            out["messages"][3]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(
            out["messages"][4],
            json!({"role": "tool", "tool_call_id": "call_1", "content": "42"})
        );
        assert_eq!(out["messages"].as_array().unwrap().len(), 5);
        assert_eq!(out["tools"][0]["function"]["name"], "f");
        assert_eq!(out["tool_choice"]["function"]["name"], "f");
        assert_eq!(out["response_format"]["json_schema"]["name"], "w");
        assert_eq!(out["max_tokens"], 50);
        assert_eq!(out["stream_options"], json!({"include_usage": true}));
    }

    #[test]
    fn what_cannot_be_translated_is_refused_naming_the_field() {
        for (body, param) in [
            (
                json!({"model": "m", "input": "hi", "tools": [{"type": "web_search"}]}),
                "tools",
            ),
            (
                json!({"model": "m", "input": [{"type": "item_reference", "id": "x"}]}),
                "input",
            ),
            (
                json!({"model": "m", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}),
                "input",
            ),
            (json!({"model": "m"}), "input"),
            (
                json!({"model": "m", "input": "hi", "background": true}),
                "background",
            ),
        ] {
            let err = request(body.to_string().as_bytes(), "up", false).unwrap_err();
            assert_eq!(err.param, Some(param), "{body}");
        }
    }

    fn skeleton_for_test() -> Value {
        json!({"id": "resp_abc", "object": "response", "status": "in_progress", "output": [], "usage": null, "model": "up"})
    }

    #[test]
    fn a_completion_becomes_a_response() {
        let body = json!({"id": "c1", "model": "up-2", "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi",
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 50, "completion_tokens": 5, "prompt_tokens_details": {"cached_tokens": 30}}});
        let out: Value = serde_json::from_slice(&response_of(
            skeleton_for_test(),
            body.to_string().as_bytes(),
        ))
        .unwrap();
        assert_eq!(out["status"], "completed");
        assert_eq!(out["model"], "up-2");
        assert_eq!(out["output"][0]["content"][0]["text"], "Hi");
        assert_eq!(out["output"][1]["call_id"], "call_1");
        assert_eq!(out["usage"]["input_tokens"], 50);
        assert_eq!(out["usage"]["input_tokens_details"]["cached_tokens"], 30);
        assert_eq!(out["usage"]["total_tokens"], 55);
    }

    #[test]
    fn chunks_become_events_in_order() {
        let mut t = StreamToResponses::new(skeleton_for_test());
        let mut out = BytesMut::new();
        let chunk = |delta: Value, finish: Value| json!({"id": "c1", "model": "gpt", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        let call = |head: bool| {
            let f = if head {
                json!({"name": "f", "arguments": ""})
            } else {
                json!({"arguments": "{}"})
            };
            json!({"tool_calls": [{"index": 0, "id": if head { "call_1" } else { "" }, "function": f}]})
        };
        let chunks = [
            chunk(json!({"role": "assistant", "content": ""}), Value::Null),
            chunk(json!({"content": "Hi"}), Value::Null),
            chunk(call(true), Value::Null),
            chunk(call(false), Value::Null),
            chunk(json!({}), "tool_calls".into()),
            json!({"id": "c1", "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 3}}),
        ];
        for c in &chunks {
            t.event(None, c.to_string().as_bytes(), &mut out);
        }
        t.event(None, b"[DONE]", &mut out);
        let text = String::from_utf8(out.to_vec()).unwrap();
        let names: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            names,
            [
                "response.created",
                "response.in_progress",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_text.delta",
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.completed",
            ]
        );
        let last: Value = serde_json::from_str(
            text.lines()
                .rev()
                .find_map(|l| l.strip_prefix("data: "))
                .unwrap(),
        )
        .unwrap();
        assert_eq!(last["sequence_number"], 12);
        assert_eq!(last["response"]["usage"]["input_tokens"], 9);
        assert_eq!(last["response"]["output"][1]["arguments"], "{}");
    }
}
