//! An OpenAI client in front of Amazon Bedrock's Converse API.
//!
//! Request: system and developer messages become `system`; user and assistant turns become
//! `messages` (consecutive turns of one role merged) with `text`, `image` (from data URLs:
//! Converse takes image bytes, not URLs), `toolUse` and `toolResult` blocks; `max_tokens`,
//! `temperature`, `top_p` and `stop` go into `inferenceConfig`; `tools` and `tool_choice` into
//! `toolConfig`.
//!
//! Answer: `output.message.content` becomes the content and `tool_calls`; `stopReason`
//! becomes `finish_reason` (`guardrail_intervened` and `content_filtered` →
//! `content_filter`); usage becomes OpenAI's with cache reads and writes inside the prompt.
//!
//! Stream (ConverseStream, already unframed by
//! [`crate::providers::bedrock::eventstream`]): `messageStart` → the role chunk;
//! `contentBlockStart` of a `toolUse` → the call's id and name; `contentBlockDelta` → content
//! or argument chunks; `messageStop` → the `finish_reason` chunk; `metadata` carries usage,
//! written with `[DONE]` when the stream ends.

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use serde_json::{Map, Value, json};

use super::openai::{self, Block, Chunks, Ending, Role, ToolBlocks, ToolChoice};
use super::openai_anthropic::is_context_length;
use super::{StreamTranslator, TranslateError, text_of};

/// The id of every answer translated from Converse, which has none of its own.
const BEDROCK_ID: &str = "chatcmpl-bedrock";

/// The Converse request for an OpenAI chat completion request.
pub fn request(body: &[u8]) -> Result<Vec<u8>, TranslateError> {
    let (req, messages) = openai::request_and_messages(body, "`messages` must be an array")?;
    super::fields::check(super::fields::Provider::Bedrock, &req)?;
    let system_part = |text| json!({"text": text});
    let (system, turns) = openai::conversation(&messages, system_part, |i, role, m, content| {
        Ok(match role {
            Role::User => ("user", blocks_of(content, i)?),
            Role::Assistant => {
                let mut blocks = blocks_of(content, i)?;
                blocks.extend(openai::tool_calls(m).map(|call| {
                    json!({"toolUse": {"toolUseId": call.id, "name": call.name, "input": call.input}})
                }));
                ("assistant", blocks)
            }
            Role::Tool => (
                "user",
                vec![json!({"toolResult": {
                    "toolUseId": m.get("tool_call_id").cloned().unwrap_or(Value::Null),
                    "content": [{"text": text_of(content)}],
                }})],
            ),
        })
    })?;
    let mut out = Map::new();
    out.insert("messages".into(), turns.into_value("content"));
    let mut system = system;
    if !system.is_empty() && openai::system_cache_mark(&messages).is_some() {
        system.push(json!({"cachePoint": {"type": "default"}}));
    }
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    let mut config = Map::new();
    if let Some(n) = req
        .get("max_completion_tokens")
        .or_else(|| req.get("max_tokens"))
        .filter(|v| v.is_u64())
    {
        config.insert("maxTokens".into(), n.clone());
    }
    for (from, to) in [("temperature", "temperature"), ("top_p", "topP")] {
        if let Some(v) = req.get(from).filter(|v| !v.is_null()) {
            config.insert(to.into(), v.clone());
        }
    }
    if let Some(stop) = openai::stop_sequences(&req) {
        config.insert("stopSequences".into(), stop);
    }
    if !config.is_empty() {
        out.insert("inferenceConfig".into(), Value::Object(config));
    }
    let choice = openai::tool_choice(&req);
    let tools_off = matches!(choice, Some(ToolChoice::None));
    if let Some(Value::Array(tools)) = req.get("tools")
        && !tools.is_empty()
        && !tools_off
    {
        let specs = openai::function_tools(&req, |f| {
            let spec = openai::tool_definition(f, "parameters", "inputSchema", |schema| {
                Some(json!({"json": schema.cloned().unwrap_or_else(|| json!({"type": "object"}))}))
            });
            json!({"toolSpec": spec})
        });
        let mut tool_config = json!({"tools": specs});
        let mapped = match choice {
            Some(ToolChoice::Auto) => Some(json!({"auto": {}})),
            Some(ToolChoice::Required) => Some(json!({"any": {}})),
            Some(ToolChoice::Function(name)) => Some(json!({"tool": {"name": name}})),
            Some(ToolChoice::None) | None => None,
        };
        if let Some(mapped) = mapped {
            tool_config["toolChoice"] = mapped;
        }
        out.insert("toolConfig".into(), tool_config);
    }
    Ok(serde_json::to_vec(&out).unwrap_or_default())
}

/// A part marked with `cache_control` is followed by a Converse `cachePoint` (Bedrock's
/// prompt caching).
fn blocks_of(content: &Value, index: usize) -> Result<Vec<Value>, TranslateError> {
    let blocks = plain_blocks(content, index)?;
    let marks = openai::cache_marks(content);
    let mut out = Vec::with_capacity(blocks.len());
    for (i, block) in blocks.into_iter().enumerate() {
        out.push(block);
        if marks.get(i).copied().flatten().is_some() {
            out.push(json!({"cachePoint": {"type": "default"}}));
        }
    }
    Ok(out)
}

fn plain_blocks(content: &Value, index: usize) -> Result<Vec<Value>, TranslateError> {
    openai::content_parts(
        content,
        index,
        |text| json!({"text": text}),
        |url| {
            image_block(url).ok_or_else(|| {
                TranslateError::new(
                    format!("messages[{index}].content: Bedrock accepts images only as base64 data URLs (png, jpeg, gif, webp)"),
                    Some("messages"),
                )
            })
        },
    )
}

fn image_block(url: &str) -> Option<Value> {
    let (mime, data) = url.strip_prefix("data:")?.split_once(";base64,")?;
    let format = match mime {
        "image/png" => "png",
        "image/jpeg" | "image/jpg" => "jpeg",
        "image/gif" => "gif",
        "image/webp" => "webp",
        _ => return None,
    };
    Some(json!({"image": {"format": format, "source": {"bytes": data}}}))
}

fn finish_reason(stop: Option<&str>) -> Value {
    openai::finish_from_stop(stop, &["guardrail_intervened", "content_filtered"])
}

/// OpenAI's usage object for Converse's (whose `inputTokens` leave out both cache parts).
fn usage(u: &Value) -> Value {
    let cache = ["cacheReadInputTokens", "cacheWriteInputTokens"];
    openai::usage_from_split(u, ["inputTokens", "outputTokens"], cache)
}

/// The OpenAI chat completion for a Converse answer; the input unchanged if it is not one.
pub fn response(body: Bytes) -> Bytes {
    let Some(doc) = openai::answer_object(&body) else {
        return body;
    };
    let blocks = openai::array_at(&doc, "/output/message/content");
    let message = openai::message_of(blocks, |block, _| Block {
        text: block.get("text").and_then(Value::as_str),
        call: block.get("toolUse").map(|tool| {
            let field = |k: &str| tool.get(k).cloned().unwrap_or(Value::Null);
            openai::tool_call(field("toolUseId"), field("name"), tool.get("input"))
        }),
    });
    openai::completion(
        BEDROCK_ID.into(),
        Value::Null,
        message,
        finish_reason(doc.get("stopReason").and_then(Value::as_str)),
        usage(doc.get("usage").unwrap_or(&Value::Null)),
    )
}

/// OpenAI's error shape for a Bedrock error (`{"message": ...}`, type in a header).
pub fn error(status: StatusCode, body: Bytes) -> Bytes {
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let message = parsed
        .get("message")
        .or_else(|| parsed.get("Message"))
        .and_then(Value::as_str)
        .map_or_else(|| openai::raw_message(&body), str::to_owned);
    let (kind, code): (&str, Value) = match status.as_u16() {
        400 if is_context_length(&message) || message.contains("Input is too long") => {
            ("invalid_request_error", "context_length_exceeded".into())
        }
        401 | 403 => ("authentication_error", Value::Null),
        404 => ("invalid_request_error", "model_not_found".into()),
        429 => ("rate_limit_error", "rate_limit_exceeded".into()),
        400..=499 => ("invalid_request_error", Value::Null),
        _ => ("api_error", Value::Null),
    };
    openai::error_body(&message, kind, code)
}

/// ConverseStream events into OpenAI chat completion chunks.
#[derive(Debug)]
pub struct StreamToOpenAi {
    chunks: Chunks,
    /// Converse content block index → OpenAI tool call index.
    tool_blocks: ToolBlocks,
    stopped: bool,
    ending: Ending,
}

impl StreamToOpenAi {
    pub fn new(model: &str) -> Self {
        Self {
            chunks: Chunks::new(BEDROCK_ID.into(), model.into()),
            tool_blocks: ToolBlocks::default(),
            stopped: false,
            ending: Ending::default(),
        }
    }
}

impl StreamTranslator for StreamToOpenAi {
    fn event(&mut self, name: Option<&str>, data: &[u8], out: &mut BytesMut) {
        let ev: Value = serde_json::from_slice(data).unwrap_or(Value::Null);
        let index = ev
            .get("contentBlockIndex")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        match name {
            Some("messageStart") => self.chunks.write_role(out),
            Some("contentBlockStart") => {
                if let Some(tool) = ev.pointer("/start/toolUse") {
                    let field = |k: &str| tool.get(k).cloned().unwrap_or(Value::Null);
                    let id_and_name = [field("toolUseId"), field("name")];
                    self.tool_blocks
                        .start(&self.chunks, out, index, id_and_name);
                }
            }
            Some("contentBlockDelta") => {
                if let Some(text) = ev.pointer("/delta/text").and_then(Value::as_str) {
                    self.chunks
                        .write(out, json!({"content": text}), Value::Null);
                } else if let Some(input) =
                    ev.pointer("/delta/toolUse/input").and_then(Value::as_str)
                {
                    self.tool_blocks
                        .arguments(&self.chunks, out, index, input.into());
                }
            }
            Some("messageStop") => {
                self.stopped = true;
                let stop = ev.get("stopReason").and_then(Value::as_str);
                self.chunks.write(out, json!({}), finish_reason(stop));
            }
            Some("metadata") => {
                if let Some(u) = ev.get("usage") {
                    self.ending.usage = u.clone();
                }
            }
            Some("exception") => {
                self.ending.fail(out, openai::stream_error_message(&ev));
            }
            _ => {}
        }
    }

    fn finish(&mut self, out: &mut BytesMut) {
        self.ending.finish(&self.chunks, out, self.stopped, usage);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chat_request_becomes_a_converse_request() {
        let body = json!({
            "model": "m", "max_tokens": 99, "stop": ["X"],
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Look"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAA"}}]},
                {"role": "assistant", "content": "Calling.", "tool_calls": [{"id": "tooluse_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                {"role": "tool", "tool_call_id": "tooluse_1", "content": "42"}
            ],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": "required"
        });
        let out: Value =
            serde_json::from_slice(&request(body.to_string().as_bytes()).unwrap()).unwrap();
        assert_eq!(out["system"], json!([{"text": "Be brief."}]));
        assert_eq!(
            out["messages"][0]["content"][1],
            json!({"image": {"format": "png", "source": {"bytes": "AAA"}}})
        );
        assert_eq!(
            out["messages"][1]["content"][1],
            json!({"toolUse": {"toolUseId": "tooluse_1", "name": "f", "input": {"a": 1}}})
        );
        assert_eq!(
            out["messages"][2]["content"][0],
            json!({"toolResult": {"toolUseId": "tooluse_1", "content": [{"text": "42"}]}})
        );
        assert_eq!(
            out["inferenceConfig"],
            json!({"maxTokens": 99, "stopSequences": ["X"]})
        );
        assert_eq!(
            out["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"],
            json!({"json": {"type": "object"}})
        );
        assert_eq!(out["toolConfig"]["toolChoice"], json!({"any": {}}));
        let err = request(br#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]}"#).unwrap_err();
        assert!(err.message.contains("data URLs"));
    }

    #[test]
    fn an_answer_with_a_tool_call_and_cache_usage() {
        let body = json!({
            "output": {"message": {"role": "assistant", "content": [{"text": "Let me check."}, {"toolUse": {"toolUseId": "t1", "name": "f", "input": {"a": 1}}}]}},
            "stopReason": "tool_use",
            "usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 45, "cacheReadInputTokens": 20, "cacheWriteInputTokens": 10}
        });
        let out: Value = serde_json::from_slice(&response(Bytes::from(body.to_string()))).unwrap();
        assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(out["choices"][0]["message"]["tool_calls"][0]["id"], "t1");
        assert_eq!(out["usage"]["prompt_tokens"], 40);
        assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"], 20);
        assert_eq!(out["usage"]["cache_creation_input_tokens"], 10);
    }
}
