//! OpenAI's side of the translations: reading an OpenAI chat request's message content and
//! tool calls, and building OpenAI's answers, stream chunks, usage, tool calls and errors.
//!
//! The provider translators (`openai_anthropic`, `openai_gemini`, `openai_bedrock`) all read
//! the same OpenAI request shapes and build the same OpenAI documents from their provider's
//! fields; `anthropic_openai` reads OpenAI's tool calls the other way round. Doing it here
//! keeps every OpenAI document the gateway makes identical in shape, whichever provider it
//! came from — the official SDKs and the gateway's own usage accounting read these documents.

use bytes::{Bytes, BytesMut};
use serde_json::{Map, Value, json};

use super::{TranslateError, now_secs, text_of, write_event};

/// Each part of an OpenAI message's `content` (a string, or a list of `text` and `image_url`
/// parts) in the provider's form: `text` gets the text value, `image` the image's URL (a
/// `data:` URL or a link) and may refuse it. `index` is the message's, for error paths.
pub fn content_parts(
    content: &Value,
    index: usize,
    text: impl Fn(Value) -> Value,
    image: impl Fn(&str) -> Result<Value, TranslateError>,
) -> Result<Vec<Value>, TranslateError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![text(Value::String(s.clone()))]),
        Value::Array(parts) => parts
            .iter()
            .map(|part| match part.get("type").and_then(Value::as_str) {
                Some("text") => Ok(text(part.get("text").cloned().unwrap_or_default())),
                Some("image_url") => image(
                    part.get("image_url")
                        .and_then(|i| i.get("url").or(Some(i)))
                        .and_then(Value::as_str)
                        .unwrap_or_default(),
                ),
                other => Err(TranslateError::new(
                    format!("messages[{index}].content: unsupported part type {other:?}"),
                    Some("messages"),
                )),
            })
            .collect(),
        _ => Err(TranslateError::new(
            format!("messages[{index}].content must be a string or an array"),
            Some("messages"),
        )),
    }
}

/// A request's `stop` (a string or a list) as the list of stop sequences providers take;
/// `None` when there is none.
pub fn stop_sequences(req: &Map<String, Value>) -> Option<Value> {
    match req.get("stop") {
        Some(Value::String(s)) => Some(json!([s])),
        Some(Value::Array(a)) if !a.is_empty() => Some(Value::Array(a.clone())),
        _ => None,
    }
}

/// A tool message's `tool_call_id` (empty when it has none).
pub fn tool_call_id(message: &Value) -> &str {
    message
        .get("tool_call_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The refusal of a message whose role no provider turn can hold.
pub fn unsupported_role(index: usize, role: &str) -> TranslateError {
    TranslateError::new(
        format!("messages[{index}].role: unsupported role {role:?}"),
        Some("messages"),
    )
}

/// The role of an OpenAI chat message that becomes part of a provider turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    User,
    Assistant,
    /// `tool` (or the legacy `function`): a tool result.
    Tool,
}

/// The `cache_control` of each part of an OpenAI message's content (Anthropic's prompt-caching
/// marker, which clients put on parts as LiteLLM reads them), one entry per part; empty for
/// string content.
pub fn cache_marks(content: &Value) -> Vec<Option<&Value>> {
    content
        .as_array()
        .map(|parts| parts.iter().map(|p| p.get("cache_control")).collect())
        .unwrap_or_default()
}

/// The `cache_control` on any part of the system or developer messages: the prefix up to the
/// end of the system prompt is to be cached.
pub fn system_cache_mark(messages: &[Value]) -> Option<&Value> {
    messages
        .iter()
        .filter(|m| {
            matches!(
                m.get("role").and_then(Value::as_str),
                Some("system" | "developer")
            )
        })
        .flat_map(|m| cache_marks(m.get("content").unwrap_or(&Value::Null)))
        .flatten()
        .last()
}

/// A request's messages as a provider conversation: system and developer texts become
/// `system` parts (through `system_part`; empty ones are left out), every other message a
/// turn through `turn`, which gets its index, role, the message and its `content`.
pub fn conversation(
    messages: &[Value],
    system_part: impl Fn(String) -> Value,
    mut turn: impl FnMut(
        usize,
        Role,
        &Value,
        &Value,
    ) -> Result<(&'static str, Vec<Value>), TranslateError>,
) -> Result<(Vec<Value>, Turns), TranslateError> {
    let mut system = Vec::new();
    let mut turns = Turns::default();
    for (i, m) in messages.iter().enumerate() {
        let content = m.get("content").unwrap_or(&Value::Null);
        let role = match m.get("role").and_then(Value::as_str).unwrap_or_default() {
            "system" | "developer" => {
                let text = text_of(content);
                if !text.is_empty() {
                    system.push(system_part(text));
                }
                continue;
            }
            "user" => Role::User,
            "assistant" => Role::Assistant,
            "tool" | "function" => Role::Tool,
            other => return Err(unsupported_role(i, other)),
        };
        let (role, parts) = turn(i, role, m, content)?;
        turns.push(role, parts);
    }
    Ok((system, turns))
}

/// Provider turns built from OpenAI messages in order. Anthropic, Gemini and Bedrock want
/// roles to alternate, so consecutive messages of one role (a tool result after a user
/// message, say) merge into one turn; a message with nothing to say adds nothing.
#[derive(Debug, Default)]
pub struct Turns(Vec<(&'static str, Vec<Value>)>);

impl Turns {
    pub fn push(&mut self, role: &'static str, parts: Vec<Value>) {
        if parts.is_empty() {
            return;
        }
        match self.0.last_mut() {
            Some((last, existing)) if *last == role => existing.extend(parts),
            _ => self.0.push((role, parts)),
        }
    }

    /// The turns as `[{"role": …, <parts_key>: [...]}]`.
    pub fn into_value(self, parts_key: &str) -> Value {
        Value::Array(
            self.0
                .into_iter()
                .map(|(role, parts)| {
                    let mut turn = serde_json::Map::new();
                    turn.insert("role".into(), role.into());
                    turn.insert(parts_key.into(), Value::Array(parts));
                    Value::Object(turn)
                })
                .collect(),
        )
    }
}

/// One tool call of an OpenAI assistant message, as providers want it: its arguments parsed
/// into an object (`{}` when they are missing or not a JSON object).
#[derive(Debug)]
pub struct ToolCallIn<'a> {
    pub id: &'a Value,
    pub name: &'a Value,
    pub input: Value,
}

/// The tool calls of an OpenAI assistant message (request) or answer message.
pub fn tool_calls(message: &Value) -> impl Iterator<Item = ToolCallIn<'_>> {
    const NULL: &Value = &Value::Null;
    array_at(message, "/tool_calls").map(|call| {
        let function = call.get("function").unwrap_or(NULL);
        ToolCallIn {
            id: call.get("id").unwrap_or(NULL),
            name: function.get("name").unwrap_or(NULL),
            input: function
                .get("arguments")
                .and_then(Value::as_str)
                .and_then(|a| serde_json::from_str(a).ok())
                .filter(Value::is_object)
                .unwrap_or_else(|| json!({})),
        }
    })
}

/// A request body as a JSON object, and its `messages` array; `missing` is the 400's message
/// when there is none.
pub fn request_and_messages(
    body: &[u8],
    missing: &'static str,
) -> Result<(Map<String, Value>, Vec<Value>), TranslateError> {
    let mut req: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| TranslateError::new(format!("invalid JSON body: {e}"), None))?;
    match req.remove("messages") {
        Some(Value::Array(messages)) if messages.is_empty() => Err(TranslateError::new(
            "messages: at least one message is required",
            Some("messages"),
        )),
        Some(Value::Array(messages)) => Ok((req, messages)),
        _ => Err(TranslateError::new(missing, Some("messages"))),
    }
}

/// The elements of the array at `pointer` in `doc` (none when it is missing or no array).
pub fn array_at<'a>(doc: &'a Value, pointer: &str) -> impl Iterator<Item = &'a Value> {
    doc.pointer(pointer)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
}

/// An OpenAI request's `tool_choice`, read.
#[derive(Debug)]
pub enum ToolChoice<'a> {
    Auto,
    Required,
    None,
    /// `{"type":"function","function":{"name"}}`: the name (null when missing).
    Function(&'a Value),
}

/// The request's `tool_choice`, if it is one of OpenAI's forms.
pub fn tool_choice(req: &Map<String, Value>) -> Option<ToolChoice<'_>> {
    const NULL: &Value = &Value::Null;
    match req.get("tool_choice")? {
        Value::String(s) if s == "auto" => Some(ToolChoice::Auto),
        Value::String(s) if s == "required" => Some(ToolChoice::Required),
        Value::String(s) if s == "none" => Some(ToolChoice::None),
        Value::Object(o) => Some(ToolChoice::Function(
            o.get("function")
                .and_then(|f| f.get("name"))
                .unwrap_or(NULL),
        )),
        _ => None,
    }
}

/// A request's OpenAI `tools` (the `function` of each) in the provider's shape.
pub fn function_tools(req: &Map<String, Value>, each: impl Fn(&Value) -> Value) -> Vec<Value> {
    match req.get("tools") {
        Some(Value::Array(tools)) => tools
            .iter()
            .filter_map(|t| t.get("function"))
            .map(each)
            .collect(),
        _ => Vec::new(),
    }
}

/// A tool definition in another API's shape: `name`, `description` when there is one, and
/// the schema read from `def[from]`, written as `to` by `schema` (`None` leaves it out).
pub fn tool_definition(
    def: &Value,
    from: &str,
    to: &str,
    schema: impl FnOnce(Option<&Value>) -> Option<Value>,
) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert(
        "name".into(),
        def.get("name").cloned().unwrap_or(Value::Null),
    );
    if let Some(d) = def.get("description") {
        out.insert("description".into(), d.clone());
    }
    if let Some(schema) = schema(def.get(from)) {
        out.insert(to.into(), schema);
    }
    out
}

/// An OpenAI tool call; `arguments` is serialised (`"{}"` when absent).
pub fn tool_call(id: Value, name: Value, arguments: Option<&Value>) -> Value {
    json!({
        "id": id,
        "type": "function",
        "function": {
            "name": name,
            "arguments": arguments.map_or_else(|| "{}".to_owned(), Value::to_string),
        },
    })
}

/// The first chunk of a streamed tool call: its index, id and name, no arguments yet.
pub fn tool_call_start(index: usize, id: Value, name: Value) -> Value {
    json!({"tool_calls": [{
        "index": index,
        "id": id,
        "type": "function",
        "function": {"name": name, "arguments": ""},
    }]})
}

/// A later chunk of a streamed tool call: more of its arguments.
pub fn tool_call_arguments(index: usize, partial: Value) -> Value {
    json!({"tool_calls": [{"index": index, "function": {"arguments": partial}}]})
}

/// OpenAI's usage for a provider whose input count leaves out both cache parts (Anthropic,
/// Bedrock): `tokens` names its input and output counts in `u`, `cache` its cache-read and
/// cache-write counts.
pub fn usage_from_split(u: &Value, tokens: [&str; 2], cache: [&str; 2]) -> Value {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let ([input, output], [read, write]) = (tokens.map(n), cache.map(n));
    usage(input + read + write, output, read, Some(write))
}

/// OpenAI's `finish_reason` for a Messages-style stop reason (Anthropic's, Bedrock's):
/// `max_tokens` → `length`, `tool_use` → `tool_calls`, any of `filtered` → `content_filter`,
/// anything else → `stop`.
pub fn finish_from_stop(stop: Option<&str>, filtered: &[&str]) -> Value {
    match stop {
        None => Value::Null,
        Some("max_tokens") => "length".into(),
        Some("tool_use") => "tool_calls".into(),
        Some(s) if filtered.contains(&s) => "content_filter".into(),
        Some(_) => "stop".into(),
    }
}

/// OpenAI's usage object. `prompt` is the whole prompt, cached parts included; the cache read
/// goes to `prompt_tokens_details.cached_tokens` and the cache write, where the provider has
/// one, to `cache_creation_input_tokens` (LiteLLM's name), so that pricing charges both.
pub fn usage(prompt: u64, completion: u64, cache_read: u64, cache_write: Option<u64>) -> Value {
    let mut usage = json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cache_read},
    });
    if let Some(written) = cache_write {
        usage["cache_creation_input_tokens"] = written.into();
    }
    usage
}

/// The assistant message of an answer: its text (`null` when there is none but tool calls)
/// and its tool calls.
pub fn message(text: String, calls: Vec<Value>) -> Value {
    let content = if text.is_empty() && !calls.is_empty() {
        Value::Null
    } else {
        text.into()
    };
    let mut message = json!({"role": "assistant", "content": content});
    if !calls.is_empty() {
        message["tool_calls"] = Value::Array(calls);
    }
    message
}

/// What one content block of a provider's answer adds to OpenAI's message: text, a tool
/// call, both or neither (reasoning, types the gateway does not translate).
#[derive(Debug, Default)]
pub struct Block<'a> {
    pub text: Option<&'a str>,
    pub call: Option<Value>,
}

/// The assistant message for a provider's answer blocks; `read` gets each block and the
/// number of tool calls before it.
pub fn message_of<'a>(
    blocks: impl Iterator<Item = &'a Value>,
    read: impl Fn(&'a Value, usize) -> Block<'a>,
) -> Value {
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in blocks {
        let Block { text: t, call } = read(block, calls.len());
        if let Some(t) = t {
            text.push_str(t);
        }
        calls.extend(call);
    }
    message(text, calls)
}

/// A complete chat completion.
pub fn completion(id: Value, model: Value, message: Value, finish: Value, usage: Value) -> Bytes {
    let out = json!({
        "id": id,
        "object": "chat.completion",
        "created": now_secs(),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage,
    });
    Bytes::from(serde_json::to_vec(&out).unwrap_or_default())
}

/// OpenAI's error body, `param` null.
pub fn error_body(message: &str, kind: &str, code: Value) -> Bytes {
    let out = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    Bytes::from(serde_json::to_vec(&out).unwrap_or_default())
}

/// An upstream error body's start as text, for errors whose message cannot be found in it.
pub fn raw_message(body: &[u8]) -> String {
    String::from_utf8_lossy(&body[..body.len().min(500)]).into_owned()
}

/// An upstream answer as a JSON object; `None` when it is not one (the caller hands the body
/// on unchanged and the proxy reports the upstream's answer as malformed).
pub fn answer_object(body: &[u8]) -> Option<Value> {
    serde_json::from_slice::<Value>(body)
        .ok()
        .filter(Value::is_object)
}

/// The message of an error event in an upstream stream (`"upstream error"` without one).
pub fn stream_error_message(error: &Value) -> &str {
    error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("upstream error")
}

/// Writes a stream's error event: the upstream failed mid-stream.
pub fn write_stream_error(out: &mut BytesMut, message: &str, kind: &str, code: Value) {
    write_event(
        out,
        None,
        &json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
    );
}

/// The identity every chunk of one translated stream repeats.
#[derive(Debug, Clone, Default)]
pub struct Chunks {
    pub id: Value,
    pub model: Value,
    pub created: i64,
}

impl Chunks {
    pub fn new(id: Value, model: Value) -> Self {
        Self {
            id,
            model,
            created: now_secs(),
        }
    }

    /// Writes one chat completion chunk with `delta` and `finish` (null until the end).
    pub fn write(&self, out: &mut BytesMut, delta: Value, finish: Value) {
        let chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        write_event(out, None, &chunk);
    }

    /// Writes the first chunk: the assistant role with empty content.
    pub fn write_role(&self, out: &mut BytesMut) {
        self.write(
            out,
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        );
    }

    /// Writes the usage-only chunk and `[DONE]`, which end a stream.
    pub fn write_usage_and_done(&self, out: &mut BytesMut, usage: Value) {
        let chunk = json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage,
        });
        write_event(out, None, &chunk);
        out.extend_from_slice(b"data: [DONE]\n\n");
    }
}

/// The tool calls of a stream whose provider numbers its content blocks (Anthropic,
/// Bedrock): which block each call was opened in, so that argument deltas, which name only
/// the block, reach the right call.
#[derive(Debug, Default)]
pub struct ToolBlocks(Vec<(u64, usize)>);

impl ToolBlocks {
    /// A tool use opened at block `index`: writes the call's first chunk (its id and name).
    pub fn start(&mut self, chunks: &Chunks, out: &mut BytesMut, index: u64, block: [Value; 2]) {
        let call = self.0.len();
        self.0.push((index, call));
        let [id, name] = block;
        chunks.write(out, tool_call_start(call, id, name), Value::Null);
    }

    /// More arguments of the call opened at block `index`; nothing for an unknown block.
    pub fn arguments(&self, chunks: &Chunks, out: &mut BytesMut, index: u64, partial: Value) {
        if let Some(&(_, call)) = self.0.iter().find(|(b, _)| *b == index) {
            chunks.write(out, tool_call_arguments(call, partial), Value::Null);
        }
    }
}

/// The end of a translated stream whose provider reports usage before its last event and may
/// fail mid-stream (Gemini, Bedrock).
#[derive(Debug, Default)]
pub struct Ending {
    /// The provider's latest usage object.
    pub usage: Value,
    failed: bool,
}

impl Ending {
    /// The upstream reported an error mid-stream: an error event now, and no `[DONE]` later.
    pub fn fail(&mut self, out: &mut BytesMut, message: &str) {
        write_stream_error(out, message, "api_error", Value::Null);
        self.failed = true;
    }

    /// The upstream stream ended: if it `completed` without failing, the usage chunk
    /// (`usage` turns the provider's object into OpenAI's) and `[DONE]`.
    pub fn finish(
        &self,
        chunks: &Chunks,
        out: &mut BytesMut,
        completed: bool,
        usage: fn(&Value) -> Value,
    ) {
        if self.failed || !completed {
            return;
        }
        chunks.write_usage_and_done(out, usage(&self.usage));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_parts_map_text_and_images_and_refuse_the_rest() {
        let text = |t: Value| json!({"t": t});
        let image = |url: &str| Ok(json!({"i": url}));
        let parts = content_parts(
            &json!([
                {"type": "text", "text": "a"},
                {"type": "image_url", "image_url": {"url": "data:x"}},
                {"type": "image_url", "image_url": "https://y"}
            ]),
            0,
            text,
            image,
        )
        .unwrap();
        assert_eq!(
            parts,
            [
                json!({"t": "a"}),
                json!({"i": "data:x"}),
                json!({"i": "https://y"})
            ]
        );
        assert_eq!(
            content_parts(&json!("hi"), 0, text, image).unwrap(),
            [json!({"t": "hi"})]
        );
        assert!(
            content_parts(&json!(""), 0, text, image)
                .unwrap()
                .is_empty()
        );
        let err = content_parts(&json!([{"type": "audio"}]), 3, text, image).unwrap_err();
        assert!(err.message.starts_with("messages[3].content"), "{err}");
        assert!(content_parts(&json!(7), 0, text, image).is_err());
    }

    #[test]
    fn consecutive_turns_of_a_role_merge_and_empty_ones_vanish() {
        let mut turns = Turns::default();
        turns.push("user", vec![json!(1)]);
        turns.push("user", vec![json!(2)]);
        turns.push("assistant", Vec::new());
        turns.push("assistant", vec![json!(3)]);
        turns.push("user", vec![json!(4)]);
        assert_eq!(
            turns.into_value("content"),
            json!([
                {"role": "user", "content": [1, 2]},
                {"role": "assistant", "content": [3]},
                {"role": "user", "content": [4]}
            ])
        );
    }

    #[test]
    fn stop_becomes_a_list() {
        let req = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            stop_sequences(&req(json!({"stop": "X"}))),
            Some(json!(["X"]))
        );
        assert_eq!(
            stop_sequences(&req(json!({"stop": ["A", "B"]}))),
            Some(json!(["A", "B"]))
        );
        assert_eq!(stop_sequences(&req(json!({"stop": []}))), None);
        assert_eq!(stop_sequences(&req(json!({}))), None);
    }

    #[test]
    fn tool_call_arguments_become_objects() {
        let message = json!({"tool_calls": [
            {"id": "c1", "function": {"name": "f", "arguments": "{\"x\":1}"}},
            {"id": "c2", "function": {"name": "g", "arguments": "[1]"}},
            {"id": "c3", "function": {"name": "h"}}
        ]});
        let calls: Vec<_> = tool_calls(&message).collect();
        assert_eq!(calls.len(), 3);
        assert_eq!((calls[0].id, calls[0].name), (&json!("c1"), &json!("f")));
        assert_eq!(calls[0].input, json!({"x": 1}));
        assert_eq!(calls[1].input, json!({}));
        assert_eq!(calls[2].input, json!({}));
    }

    #[test]
    fn usage_puts_cache_parts_where_pricing_reads_them() {
        assert_eq!(
            usage(130, 5, 100, Some(20)),
            json!({"prompt_tokens": 130, "completion_tokens": 5, "total_tokens": 135,
                   "prompt_tokens_details": {"cached_tokens": 100},
                   "cache_creation_input_tokens": 20})
        );
        assert!(
            usage(1, 1, 0, None)
                .get("cache_creation_input_tokens")
                .is_none()
        );
    }

    #[test]
    fn a_message_with_only_tool_calls_has_null_content() {
        let m = message(String::new(), vec![tool_call("c".into(), "f".into(), None)]);
        assert_eq!(m["content"], Value::Null);
        assert_eq!(m["tool_calls"][0]["function"]["arguments"], "{}");
        assert_eq!(message("hi".into(), Vec::new())["content"], "hi");
        assert!(
            message(String::new(), Vec::new())
                .get("tool_calls")
                .is_none()
        );
    }
}
