//! An OpenAI client in front of Anthropic's Messages API.
//!
//! Request: system and developer messages become `system`; text and image parts become
//! content blocks (data URLs as base64 sources); assistant `tool_calls` become `tool_use`
//! blocks and `tool` messages `tool_result` blocks in a user turn (consecutive turns of one
//! role are merged, as Anthropic requires alternation); `tools`, `tool_choice`
//! (`parallel_tool_calls: false` → `disable_parallel_tool_use`), `stop` → `stop_sequences`,
//! and `max_tokens` (Anthropic requires it: [`DEFAULT_MAX_TOKENS`] when absent).
//!
//! Answer: content blocks become the message's text and `tool_calls`; `stop_reason` becomes
//! `finish_reason`; usage becomes OpenAI's, whole prompt in `prompt_tokens` with the cache
//! read in `prompt_tokens_details.cached_tokens` and the cache write in
//! `cache_creation_input_tokens` (LiteLLM's name), so that pricing charges both.
//!
//! Stream: `message_start` → the role chunk; `content_block_start` of a `tool_use` → the tool
//! call's id and name; `text_delta` and `input_json_delta` → content and argument chunks;
//! `message_delta` → the `finish_reason` chunk; `message_stop` → a usage chunk and `[DONE]`.

use bytes::{Bytes, BytesMut};
use serde_json::{Map, Value, json};

use super::openai::{self, Block, Chunks, Role, ToolBlocks, ToolChoice};
use super::{StreamTranslator, TranslateError, text_of};

/// `max_tokens` sent when the client gave none (Anthropic requires one).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// The Anthropic request for an OpenAI chat completion request.
pub fn request(body: &[u8], upstream_model: &str, stream: bool) -> Result<Vec<u8>, TranslateError> {
    let (req, messages) = openai::request_and_messages(body, "`messages` must be an array")?;
    super::fields::check(super::fields::Provider::Anthropic, &req)?;
    let mut out = Map::new();
    out.insert("model".into(), upstream_model.into());
    let system_part = |text| json!({"type": "text", "text": text});
    let (system, turns) = openai::conversation(&messages, system_part, |i, role, m, content| {
        Ok(match role {
            Role::User => ("user", content_blocks(content, i)?),
            Role::Assistant => {
                let mut blocks = content_blocks(content, i)?;
                blocks.extend(openai::tool_calls(m).map(|call| {
                    json!({"type": "tool_use", "id": call.id, "name": call.name, "input": call.input})
                }));
                ("assistant", blocks)
            }
            Role::Tool => {
                let id = openai::tool_call_id(m);
                let result =
                    json!({"type": "tool_result", "tool_use_id": id, "content": text_of(content)});
                ("user", vec![result])
            }
        })
    })?;
    let mut system = system;
    if let (Some(mark), Some(last)) = (openai::system_cache_mark(&messages), system.last_mut()) {
        last["cache_control"] = mark.clone();
    }
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    out.insert("messages".into(), turns.into_value("content"));
    let max_tokens = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(DEFAULT_MAX_TOKENS);
    out.insert("max_tokens".into(), max_tokens.into());
    for key in ["temperature", "top_p"] {
        if let Some(v) = req.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    if let Some(stop) = openai::stop_sequences(&req) {
        out.insert("stop_sequences".into(), stop);
    }
    if let Some(user) = req.get("user").and_then(Value::as_str) {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    let tools = openai::function_tools(&req, |f| {
        Value::Object(openai::tool_definition(
            f,
            "parameters",
            "input_schema",
            |schema| {
                Some(
                    schema
                        .cloned()
                        .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
                )
            },
        ))
    });
    if !tools.is_empty() {
        out.insert("tools".into(), Value::Array(tools));
    }
    let mut choice = openai::tool_choice(&req).map(|choice| match choice {
        ToolChoice::Auto => json!({"type": "auto"}),
        ToolChoice::Required => json!({"type": "any"}),
        ToolChoice::None => json!({"type": "none"}),
        ToolChoice::Function(name) => json!({"type": "tool", "name": name}),
    });
    if req.get("parallel_tool_calls") == Some(&Value::Bool(false)) {
        let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
        c["disable_parallel_tool_use"] = Value::Bool(true);
    }
    if let Some(c) = choice {
        out.insert("tool_choice".into(), c);
    }
    if stream {
        out.insert("stream".into(), Value::Bool(true));
    }
    Ok(serde_json::to_vec(&out).unwrap_or_default())
}

/// Anthropic content blocks for an OpenAI message's content (string or parts).
/// A part's `cache_control` stays on its block (Anthropic's prompt caching).
fn content_blocks(content: &Value, index: usize) -> Result<Vec<Value>, TranslateError> {
    let mut blocks = openai::content_parts(
        content,
        index,
        |text| json!({"type": "text", "text": text}),
        |url| Ok(image_block(url)),
    )?;
    for (block, mark) in blocks.iter_mut().zip(openai::cache_marks(content)) {
        if let Some(mark) = mark {
            block["cache_control"] = mark.clone();
        }
    }
    Ok(blocks)
}

/// An Anthropic image block for an OpenAI image URL (a `data:` URL becomes a base64 source).
fn image_block(url: &str) -> Value {
    if let Some(rest) = url.strip_prefix("data:")
        && let Some((media_type, data)) = rest.split_once(";base64,")
    {
        return json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}});
    }
    json!({"type": "image", "source": {"type": "url", "url": url}})
}

/// OpenAI's `finish_reason` for Anthropic's `stop_reason`.
fn finish_reason(stop_reason: Option<&str>) -> Value {
    openai::finish_from_stop(stop_reason, &["refusal"])
}

/// OpenAI's usage object for Anthropic's (whose `input_tokens` leave out both cache parts).
fn usage(u: &Value) -> Value {
    let cache = ["cache_read_input_tokens", "cache_creation_input_tokens"];
    openai::usage_from_split(u, ["input_tokens", "output_tokens"], cache)
}

/// The OpenAI chat completion for an Anthropic message; the input unchanged if it is not one
/// (the proxy then reports the upstream's answer as malformed).
pub fn response(body: Bytes) -> Bytes {
    let Some(msg) = openai::answer_object(&body) else {
        return body;
    };
    let message = openai::message_of(openai::array_at(&msg, "/content"), |block, _| {
        let field = |k: &str| block.get(k).cloned().unwrap_or(Value::Null);
        match block.get("type").and_then(Value::as_str) {
            Some("text") => Block {
                text: Some(block.get("text").and_then(Value::as_str).unwrap_or("")),
                call: None,
            },
            Some("tool_use") => Block {
                text: None,
                call: Some(openai::tool_call(
                    field("id"),
                    field("name"),
                    block.get("input"),
                )),
            },
            _ => Block::default(),
        }
    });
    openai::completion(
        msg.get("id").cloned().unwrap_or(Value::Null),
        msg.get("model").cloned().unwrap_or(Value::Null),
        message,
        finish_reason(msg.get("stop_reason").and_then(Value::as_str)),
        usage(msg.get("usage").unwrap_or(&Value::Null)),
    )
}

/// OpenAI's error shape for an Anthropic error body (`{"type":"error","error":{type,message}}`).
pub fn error(_status: http::StatusCode, body: Bytes) -> Bytes {
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (kind, message) = anthropic_error_fields(&parsed, &body);
    let (openai_type, code) = openai_error_kind(kind, &message);
    openai::error_body(&message, openai_type, code)
}

fn anthropic_error_fields<'a>(parsed: &'a Value, raw: &[u8]) -> (&'a str, String) {
    let error = parsed.get("error").unwrap_or(&Value::Null);
    let kind = error
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("api_error");
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .map_or_else(|| openai::raw_message(raw), str::to_owned);
    (kind, message)
}

/// OpenAI's `type` and `code` for an Anthropic error type (and message, for context length).
fn openai_error_kind(kind: &str, message: &str) -> (&'static str, Value) {
    match kind {
        "invalid_request_error" if is_context_length(message) => {
            ("invalid_request_error", "context_length_exceeded".into())
        }
        "invalid_request_error" | "request_too_large" => ("invalid_request_error", Value::Null),
        "authentication_error" => ("authentication_error", "invalid_api_key".into()),
        "permission_error" => ("permission_error", Value::Null),
        "not_found_error" => ("invalid_request_error", "model_not_found".into()),
        "rate_limit_error" => ("rate_limit_error", "rate_limit_exceeded".into()),
        "overloaded_error" => ("server_error", "overloaded".into()),
        _ => ("api_error", Value::Null),
    }
}

/// Whether an upstream message says the prompt is longer than the model's context.
pub fn is_context_length(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("prompt is too long")
        || m.contains("context length")
        || m.contains("context window")
        || m.contains("maximum context")
        || m.contains("too many tokens")
}

/// Anthropic's stream events into OpenAI chat completion chunks.
#[derive(Debug, Default)]
pub struct StreamToOpenAi {
    chunks: Chunks,
    usage: Value,
    /// Anthropic's content block index → OpenAI tool call index, for `tool_use` blocks.
    tool_blocks: ToolBlocks,
    finished: bool,
}

impl StreamToOpenAi {
    pub fn new() -> Self {
        Self {
            chunks: Chunks::new(Value::Null, Value::Null),
            usage: json!({}),
            ..Self::default()
        }
    }

    fn merge_usage(&mut self, u: Option<&Value>) {
        if let (Some(Value::Object(u)), Value::Object(mine)) = (u, &mut self.usage) {
            for (k, v) in u {
                if !v.is_null() {
                    mine.insert(k.clone(), v.clone());
                }
            }
        }
    }

    fn close(&mut self, out: &mut BytesMut) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        self.chunks.write_usage_and_done(out, usage(&self.usage));
    }
}

impl StreamTranslator for StreamToOpenAi {
    fn event(&mut self, _name: Option<&str>, data: &[u8], out: &mut BytesMut) {
        let Ok(ev) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        let index = ev.get("index").and_then(Value::as_u64).unwrap_or(0);
        match ev.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                let msg = ev.get("message").unwrap_or(&Value::Null);
                self.chunks.id = msg.get("id").cloned().unwrap_or(Value::Null);
                self.chunks.model = msg.get("model").cloned().unwrap_or(Value::Null);
                self.merge_usage(msg.get("usage"));
                self.chunks.write_role(out);
            }
            Some("content_block_start") => {
                let block = ev.get("content_block").unwrap_or(&Value::Null);
                if block.get("type").and_then(Value::as_str) == Some("tool_use") {
                    let field = |k: &str| block.get(k).cloned().unwrap_or(Value::Null);
                    let id_and_name = [field("id"), field("name")];
                    self.tool_blocks
                        .start(&self.chunks, out, index, id_and_name);
                }
            }
            Some("content_block_delta") => {
                let delta = ev.get("delta").unwrap_or(&Value::Null);
                match delta.get("type").and_then(Value::as_str) {
                    Some("text_delta") => {
                        let text = delta.get("text").cloned().unwrap_or_default();
                        self.chunks
                            .write(out, json!({"content": text}), Value::Null);
                    }
                    Some("input_json_delta") => {
                        let partial = delta.get("partial_json").cloned().unwrap_or_default();
                        self.tool_blocks
                            .arguments(&self.chunks, out, index, partial);
                    }
                    _ => {}
                }
            }
            Some("message_delta") => {
                self.merge_usage(ev.get("usage"));
                let stop = ev
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str);
                if stop.is_some() {
                    self.chunks.write(out, json!({}), finish_reason(stop));
                }
            }
            Some("message_stop") => self.close(out),
            Some("error") => {
                let (kind, message) = anthropic_error_fields(&ev, data);
                let (openai_type, code) = openai_error_kind(kind, &message);
                openai::write_stream_error(out, &message, openai_type, code);
                self.finished = true;
            }
            _ => {}
        }
    }

    fn finish(&mut self, _out: &mut BytesMut) {
        // A stream that ends without `message_stop` is cut short: no `[DONE]`, so the client
        // does not mistake it for a complete answer.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(body: Value) -> Value {
        serde_json::from_slice(&request(body.to_string().as_bytes(), "claude-up", false).unwrap())
            .unwrap()
    }

    #[test]
    fn system_images_tools_and_results_translate() {
        let out = req(json!({
            "model": "public",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBOR"}},
                    {"type": "image_url", "image_url": {"url": "https://x/y.jpg"}}
                ]},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
                {"role": "user", "content": "And tomorrow?"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "description": "d", "parameters": {"type": "object"}}}],
            "tool_choice": "required",
            "parallel_tool_calls": false,
            "stop": "END",
            "temperature": 0.2
        }));
        assert_eq!(out["model"], "claude-up");
        assert_eq!(
            out["system"],
            json!([{"type": "text", "text": "Be brief."}])
        );
        assert_eq!(out["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(out["stop_sequences"], json!(["END"]));
        assert_eq!(out["temperature"], 0.2);
        assert_eq!(
            out["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
        assert_eq!(out["tools"][0]["input_schema"], json!({"type": "object"}));
        let m = &out["messages"];
        assert_eq!(
            m[0]["content"][1]["source"],
            json!({"type": "base64", "media_type": "image/png", "data": "iVBOR"})
        );
        assert_eq!(
            m[0]["content"][2]["source"],
            json!({"type": "url", "url": "https://x/y.jpg"})
        );
        assert_eq!(
            m[1]["content"][0],
            json!({"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}})
        );
        // The tool result and the next user text merge into one user turn.
        assert_eq!(m[2]["role"], "user");
        assert_eq!(
            m[2]["content"][0],
            json!({"type": "tool_result", "tool_use_id": "call_1", "content": "18C"})
        );
        assert_eq!(m[2]["content"][1]["text"], "And tomorrow?");
        assert_eq!(m.as_array().unwrap().len(), 3);
        assert!(out.get("stream").is_none());
    }

    #[test]
    fn max_tokens_and_named_tool_choice() {
        let out = req(
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 7,
            "tool_choice": {"type": "function", "function": {"name": "f"}}}),
        );
        assert_eq!(out["max_tokens"], 7);
        assert_eq!(out["tool_choice"], json!({"type": "tool", "name": "f"}));
    }

    #[test]
    fn bad_requests_are_refused_with_the_field() {
        let err = request(br#"{"model":"m"}"#, "x", false).unwrap_err();
        assert_eq!(err.param, Some("messages"));
        let err = request(
            br#"{"model":"m","messages":[{"role":"user","content":[{"type":"audio"}]}]}"#,
            "x",
            false,
        )
        .unwrap_err();
        assert!(err.message.contains("audio"), "{}", err.message);
    }

    #[test]
    fn a_message_with_tool_use_and_cache_usage_becomes_a_completion() {
        let body = json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [{"type": "text", "text": "Checking."}, {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}}],
            "stop_reason": "tool_use",
            "usage": {"input_tokens": 10, "output_tokens": 4, "cache_read_input_tokens": 100, "cache_creation_input_tokens": 20}
        });
        let out: Value = serde_json::from_slice(&response(Bytes::from(body.to_string()))).unwrap();
        let choice = &out["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["message"]["content"], "Checking.");
        assert_eq!(
            choice["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"city\":\"Paris\"}"
        );
        assert_eq!(out["usage"]["prompt_tokens"], 130);
        assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"], 100);
        assert_eq!(out["usage"]["cache_creation_input_tokens"], 20);
        assert_eq!(out["usage"]["total_tokens"], 134);
    }

    #[test]
    fn errors_map_to_openai_types_and_codes() {
        let e = |b: &str| -> Value {
            serde_json::from_slice(&error(
                http::StatusCode::BAD_REQUEST,
                Bytes::from(b.to_owned()),
            ))
            .unwrap()
        };
        let v = e(
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"prompt is too long: 210000 tokens > 200000 maximum"}}"#,
        );
        assert_eq!(v["error"]["code"], "context_length_exceeded");
        let v = e(r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#);
        assert_eq!(v["error"]["type"], "server_error");
        let v = e(
            r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"}}"#,
        );
        assert_eq!(v["error"]["code"], "invalid_api_key");
        let v = e("not json");
        assert_eq!(v["error"]["type"], "api_error");
    }

    #[test]
    fn stream_events_become_chunks_as_they_come() {
        let mut t = StreamToOpenAi::new();
        let mut feed = |data: Value| {
            let mut out = BytesMut::new();
            t.event(None, data.to_string().as_bytes(), &mut out);
            String::from_utf8(out.to_vec()).unwrap()
        };
        let start = feed(
            json!({"type": "message_start", "message": {"id": "msg_1", "model": "c", "usage": {"input_tokens": 25, "output_tokens": 1}}}),
        );
        assert!(start.contains("\"role\":\"assistant\""));
        assert_eq!(
            feed(
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
            ),
            ""
        );
        assert!(feed(json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}})).contains("\"content\":\"Hi\""));
        let tool = feed(
            json!({"type": "content_block_start", "index": 1, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}}),
        );
        assert!(tool.contains("\"id\":\"toolu_1\"") && tool.contains("\"index\":0"));
        let args = feed(
            json!({"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": "{\"a\":"}}),
        );
        assert!(args.contains(r#""arguments":"{\"a\":""#), "{args}");
        let fin = feed(
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 15}}),
        );
        assert!(fin.contains("\"finish_reason\":\"tool_calls\""));
        let stop = feed(json!({"type": "message_stop"}));
        assert!(stop.ends_with("data: [DONE]\n\n"));
        assert!(
            stop.contains("\"prompt_tokens\":25") && stop.contains("\"completion_tokens\":15"),
            "{stop}"
        );
    }
}
