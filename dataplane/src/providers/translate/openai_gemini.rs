//! An OpenAI client in front of Google's Gemini API (`generateContent`,
//! `streamGenerateContent?alt=sse`).
//!
//! Request (every field as `translate::fields` says): system and developer messages become `systemInstruction`; user and assistant
//! turns become `contents` with roles `user` and `model` (consecutive turns of one role
//! merged); text parts become `text`, data-URL images `inlineData` and other image URLs
//! `fileData`; assistant `tool_calls` become `functionCall` parts and `tool` messages
//! `functionResponse` parts (named after the call they answer); `tools` become
//! `functionDeclarations`, `tool_choice` `toolConfig.functionCallingConfig`; `max_tokens`,
//! `temperature`, `top_p`, `stop` and `n` go into `generationConfig`.
//!
//! Answer: the first candidate's text parts become the content, `functionCall` parts
//! `tool_calls` (ids `call_<n>`, as Gemini has none); `finishReason` becomes `finish_reason`
//! (`SAFETY`, `RECITATION`, `PROHIBITED_CONTENT`, `BLOCKLIST`, `SPII` and a blocked prompt →
//! `content_filter`); `usageMetadata` becomes usage, cached content inside the prompt, thoughts
//! inside the completion.
//!
//! Stream: each event is a partial answer; its parts become chunks at once. Gemini's stream has
//! no end marker, so the usage chunk and `[DONE]` are written when the stream ends cleanly.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use serde_json::{Map, Value, json};

use super::openai::{self, Block, Chunks, Ending, Role, ToolChoice};
use super::openai_anthropic::is_context_length;
use super::{StreamTranslator, TranslateError, text_of};

/// The Gemini `generateContent` request for an OpenAI chat completion request.
pub fn request(body: &[u8]) -> Result<Vec<u8>, TranslateError> {
    let (req, messages) = openai::request_and_messages(body, "`messages` must be an array")?;
    super::fields::check(super::fields::Provider::Gemini, &req)?;
    // Tool call id → function name, for the `functionResponse` parts that answer them.
    let mut call_names: HashMap<String, Value> = HashMap::new();
    let system_part = |text| json!({"text": text});
    let (system, contents) =
        openai::conversation(&messages, system_part, |i, role, m, content| {
            Ok(match role {
                Role::User => ("user", parts_of(content, i)?),
                Role::Assistant => {
                    let mut parts = parts_of(content, i)?;
                    for call in openai::tool_calls(m) {
                        if let Some(id) = call.id.as_str() {
                            call_names.insert(id.to_owned(), call.name.clone());
                        }
                        parts
                            .push(json!({"functionCall": {"name": call.name, "args": call.input}}));
                    }
                    ("model", parts)
                }
                Role::Tool => {
                    let id = openai::tool_call_id(m);
                    let name = call_names
                        .get(id)
                        .cloned()
                        .or_else(|| m.get("name").cloned())
                        .unwrap_or_else(|| Value::String(id.to_owned()));
                    let text = text_of(content);
                    let response = serde_json::from_str::<Value>(&text)
                        .ok()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!({"content": text}));
                    (
                        "user",
                        vec![json!({"functionResponse": {"name": name, "response": response}})],
                    )
                }
            })
        })?;
    let mut out = Map::new();
    out.insert("contents".into(), contents.into_value("parts"));
    if !system.is_empty() {
        out.insert("systemInstruction".into(), json!({"parts": system}));
    }
    let mut config = Map::new();
    if let Some(n) = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .filter(|v| v.is_u64())
    {
        config.insert("maxOutputTokens".into(), n.clone());
    }
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("seed", "seed"),
        ("frequency_penalty", "frequencyPenalty"),
        ("presence_penalty", "presencePenalty"),
    ] {
        if let Some(v) = req.get(from).filter(|v| !v.is_null()) {
            config.insert(to.into(), v.clone());
        }
    }
    if let Some(stop) = openai::stop_sequences(&req) {
        config.insert("stopSequences".into(), stop);
    }
    structured_output(&req, &mut config);
    if !config.is_empty() {
        out.insert("generationConfig".into(), Value::Object(config));
    }
    let declarations = openai::function_tools(&req, |f| {
        Value::Object(openai::tool_definition(
            f,
            "parameters",
            "parameters",
            |p| p.cloned(),
        ))
    });
    if !declarations.is_empty() {
        out.insert(
            "tools".into(),
            json!([{"functionDeclarations": declarations}]),
        );
    }
    let calling = openai::tool_choice(&req).map(|choice| match choice {
        ToolChoice::Auto => json!({"mode": "AUTO"}),
        ToolChoice::Required => json!({"mode": "ANY"}),
        ToolChoice::None => json!({"mode": "NONE"}),
        ToolChoice::Function(name) => json!({"mode": "ANY", "allowedFunctionNames": [name]}),
    });
    if let Some(calling) = calling {
        out.insert(
            "toolConfig".into(),
            json!({"functionCallingConfig": calling}),
        );
    }
    Ok(serde_json::to_vec(&out).unwrap_or_default())
}

/// `response_format` as Gemini's structured output: JSON mode, and a JSON schema as
/// `responseJsonSchema` (which takes JSON Schema as it is).
fn structured_output(req: &Map<String, Value>, config: &mut Map<String, Value>) {
    let Some(format) = req.get("response_format") else {
        return;
    };
    match format.get("type").and_then(Value::as_str) {
        Some("json_object") => {
            config.insert("responseMimeType".into(), "application/json".into());
        }
        Some("json_schema") => {
            config.insert("responseMimeType".into(), "application/json".into());
            if let Some(schema) = format.pointer("/json_schema/schema") {
                config.insert("responseJsonSchema".into(), schema.clone());
            }
        }
        _ => {}
    }
}

/// Gemini parts for an OpenAI message's content.
fn parts_of(content: &Value, index: usize) -> Result<Vec<Value>, TranslateError> {
    openai::content_parts(
        content,
        index,
        |text| json!({"text": text}),
        |url| Ok(image_part(url)),
    )
}

fn image_part(url: &str) -> Value {
    if let Some(rest) = url.strip_prefix("data:")
        && let Some((mime, data)) = rest.split_once(";base64,")
    {
        return json!({"inlineData": {"mimeType": mime, "data": data}});
    }
    let lower = url.to_ascii_lowercase();
    let mime = if lower.ends_with(".png") {
        "image/png"
    } else if lower.ends_with(".webp") {
        "image/webp"
    } else if lower.ends_with(".gif") {
        "image/gif"
    } else {
        "image/jpeg"
    };
    json!({"fileData": {"mimeType": mime, "fileUri": url}})
}

/// OpenAI's `finish_reason` for Gemini's `finishReason`.
fn finish_reason(reason: &str, called_tools: bool) -> Value {
    match reason {
        "MAX_TOKENS" => "length".into(),
        "SAFETY" | "RECITATION" | "PROHIBITED_CONTENT" | "BLOCKLIST" | "SPII" | "IMAGE_SAFETY" => {
            "content_filter".into()
        }
        _ if called_tools => "tool_calls".into(),
        _ => "stop".into(),
    }
}

/// OpenAI's usage object for Gemini's `usageMetadata` (whose prompt count includes the
/// cached part; thoughts are billed as output). The accounting reads a metered Gemini
/// passthrough's usage through it too.
pub fn usage(u: &Value) -> Value {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    openai::usage(
        n("promptTokenCount"),
        n("candidatesTokenCount") + n("thoughtsTokenCount"),
        n("cachedContentTokenCount"),
        None,
    )
}

/// A function call part as an OpenAI tool call (with `index` for stream deltas); Gemini's
/// calls have no ids, so they are numbered.
fn tool_call(call: &Value, n: usize, with_index: bool) -> Value {
    let id = call
        .get("id")
        .and_then(Value::as_str)
        .map_or_else(|| format!("call_{n}"), str::to_owned);
    let name = call.get("name").cloned().unwrap_or(Value::Null);
    let mut out = openai::tool_call(id.into(), name, call.get("args"));
    if with_index {
        out["index"] = n.into();
    }
    out
}

/// The OpenAI chat completion for a Gemini answer; the input unchanged if it is not one.
pub fn response(body: Bytes) -> Bytes {
    let Some(doc) = openai::answer_object(&body) else {
        return body;
    };
    let candidate = doc.pointer("/candidates/0").unwrap_or(&Value::Null);
    let parts = openai::array_at(candidate, "/content/parts");
    let mut message = openai::message_of(parts, |part, calls| {
        if part.get("thought") == Some(&Value::Bool(true)) {
            return Block::default();
        }
        Block {
            text: part.get("text").and_then(Value::as_str),
            call: part.get("functionCall").map(|c| tool_call(c, calls, false)),
        }
    });
    let called_tools = message.get("tool_calls").is_some();
    let finish = match candidate.get("finishReason").and_then(Value::as_str) {
        Some(reason) => finish_reason(reason, called_tools),
        // No candidate at all: the prompt itself was blocked.
        None if doc.pointer("/promptFeedback/blockReason").is_some() => "content_filter".into(),
        None => "stop".into(),
    };
    if finish == "content_filter" && message["content"] == "" {
        message["content"] = Value::Null;
    }
    openai::completion(
        doc.get("responseId")
            .cloned()
            .unwrap_or_else(|| "gemini".into()),
        doc.get("modelVersion").cloned().unwrap_or(Value::Null),
        message,
        finish,
        usage(doc.get("usageMetadata").unwrap_or(&Value::Null)),
    )
}

/// Whether a Gemini error body says the API key is invalid (Gemini answers that with a 400).
pub fn is_invalid_api_key(body: &[u8]) -> bool {
    memchr::memmem::find(body, b"API_KEY_INVALID").is_some()
}

/// Whole seconds (rounded up) of the `RetryInfo.retryDelay` (`"2s"`, `"0.5s"`) in a Gemini
/// error body, if any.
pub fn retry_delay_secs(body: &[u8]) -> Option<u64> {
    let parsed: Value = serde_json::from_slice(body).ok()?;
    let delay = parsed
        .pointer("/error/details")?
        .as_array()?
        .iter()
        .find_map(|d| d.get("retryDelay").and_then(Value::as_str))?;
    let secs: f64 = delay.strip_suffix('s')?.parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| secs.ceil() as u64)
}

/// OpenAI's error shape for a Gemini error body
/// (`{"error":{"code","message","status","details"}}`).
pub fn error(status: StatusCode, body: Bytes) -> Bytes {
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let message = parsed
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map_or_else(|| openai::raw_message(&body), str::to_owned);
    let grpc = parsed
        .pointer("/error/status")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let (kind, code): (&str, Value) = match (status.as_u16(), grpc) {
        (400, _) if is_invalid_api_key(&body) => ("authentication_error", "invalid_api_key".into()),
        (400, _)
            if is_context_length(&message)
                || message.contains("exceeds the maximum number of tokens") =>
        {
            ("invalid_request_error", "context_length_exceeded".into())
        }
        (401, _) | (_, "UNAUTHENTICATED") => ("authentication_error", "invalid_api_key".into()),
        (403, _) | (_, "PERMISSION_DENIED") => ("permission_error", Value::Null),
        (404, _) => ("invalid_request_error", "model_not_found".into()),
        (429, _) | (_, "RESOURCE_EXHAUSTED") => ("rate_limit_error", "rate_limit_exceeded".into()),
        (400..=499, _) => ("invalid_request_error", Value::Null),
        _ => ("api_error", Value::Null),
    };
    openai::error_body(&message, kind, code)
}

/// Gemini's partial answers into OpenAI chat completion chunks.
#[derive(Debug)]
pub struct StreamToOpenAi {
    chunks: Chunks,
    started: bool,
    calls: usize,
    ending: Ending,
}

impl Default for StreamToOpenAi {
    fn default() -> Self {
        Self::new()
    }
}

impl StreamToOpenAi {
    pub fn new() -> Self {
        Self {
            chunks: Chunks::new(Value::Null, Value::Null),
            started: false,
            calls: 0,
            ending: Ending::default(),
        }
    }
}

impl StreamTranslator for StreamToOpenAi {
    fn event(&mut self, _name: Option<&str>, data: &[u8], out: &mut BytesMut) {
        let Ok(doc) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        if let Some(error) = doc.get("error") {
            self.ending.fail(out, openai::stream_error_message(error));
            return;
        }
        if !self.started {
            self.started = true;
            self.chunks.id = doc
                .get("responseId")
                .cloned()
                .unwrap_or_else(|| "gemini".into());
            self.chunks.model = doc.get("modelVersion").cloned().unwrap_or(Value::Null);
            self.chunks.write_role(out);
        }
        if let Some(u) = doc.get("usageMetadata").filter(|u| u.is_object()) {
            self.ending.usage = u.clone();
        }
        let candidate = doc.pointer("/candidates/0").unwrap_or(&Value::Null);
        for part in openai::array_at(candidate, "/content/parts") {
            if part.get("thought") == Some(&Value::Bool(true)) {
                continue;
            }
            if let Some(t) = part
                .get("text")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())
            {
                self.chunks.write(out, json!({"content": t}), Value::Null);
            }
            if let Some(call) = part.get("functionCall") {
                let call = tool_call(call, self.calls, true);
                self.calls += 1;
                self.chunks
                    .write(out, json!({"tool_calls": [call]}), Value::Null);
            }
        }
        if let Some(reason) = candidate.get("finishReason").and_then(Value::as_str) {
            self.chunks
                .write(out, json!({}), finish_reason(reason, self.calls > 0));
        } else if doc.pointer("/promptFeedback/blockReason").is_some() {
            self.chunks.write(out, json!({}), "content_filter".into());
        }
    }

    fn finish(&mut self, out: &mut BytesMut) {
        self.ending.finish(&self.chunks, out, self.started, usage);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_request_becomes_contents_with_tools_and_results() {
        let body = json!({
            "model": "m", "max_tokens": 64, "temperature": 0.3, "stop": "END",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Look"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}}]},
                {"role": "assistant", "content": null, "tool_calls": [{"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_0", "content": "{\"temp\":18}"}
            ],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}}
        });
        let out: Value =
            serde_json::from_slice(&request(body.to_string().as_bytes()).unwrap()).unwrap();
        assert_eq!(
            out["systemInstruction"],
            json!({"parts": [{"text": "Be brief."}]})
        );
        assert_eq!(
            out["contents"][0]["parts"][1],
            json!({"inlineData": {"mimeType": "image/png", "data": "AAA"}})
        );
        assert_eq!(
            out["contents"][1],
            json!({"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]})
        );
        assert_eq!(
            out["contents"][2]["parts"][0],
            json!({"functionResponse": {"name": "get_weather", "response": {"temp": 18}}})
        );
        assert_eq!(
            out["generationConfig"],
            json!({"maxOutputTokens": 64, "temperature": 0.3, "stopSequences": ["END"]})
        );
        assert_eq!(
            out["tools"][0]["functionDeclarations"][0]["name"],
            "get_weather"
        );
        assert_eq!(
            out["toolConfig"]["functionCallingConfig"],
            json!({"mode": "ANY", "allowedFunctionNames": ["get_weather"]})
        );
    }

    #[test]
    fn answers_map_finish_reasons_calls_and_usage() {
        let body = json!({
            "candidates": [{"content": {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"a": 1}}}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 100, "candidatesTokenCount": 7, "thoughtsTokenCount": 3, "cachedContentTokenCount": 60},
            "modelVersion": "gemini-2.5-flash", "responseId": "r1"
        });
        let out: Value = serde_json::from_slice(&response(Bytes::from(body.to_string()))).unwrap();
        assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(
            out["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"],
            "{\"a\":1}"
        );
        assert_eq!(out["usage"]["prompt_tokens"], 100);
        assert_eq!(out["usage"]["completion_tokens"], 10);
        assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"], 60);
        let blocked = json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 5}});
        let out: Value =
            serde_json::from_slice(&response(Bytes::from(blocked.to_string()))).unwrap();
        assert_eq!(out["choices"][0]["finish_reason"], "content_filter");
    }

    #[test]
    fn errors_map_by_status_and_reason() {
        let e = |status: u16, b: &str| -> Value {
            serde_json::from_slice(&error(
                StatusCode::from_u16(status).unwrap(),
                Bytes::from(b.to_owned()),
            ))
            .unwrap()
        };
        let v = e(
            400,
            r#"{"error":{"code":400,"message":"API key not valid. Please pass a valid API key.","status":"INVALID_ARGUMENT","details":[{"reason":"API_KEY_INVALID"}]}}"#,
        );
        assert_eq!(v["error"]["type"], "authentication_error");
        let v = e(
            400,
            r#"{"error":{"code":400,"message":"The input token count (1200000) exceeds the maximum number of tokens allowed (1048576).","status":"INVALID_ARGUMENT"}}"#,
        );
        assert_eq!(v["error"]["code"], "context_length_exceeded");
        let v = e(
            429,
            r#"{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED"}}"#,
        );
        assert_eq!(v["error"]["type"], "rate_limit_error");
    }
}
