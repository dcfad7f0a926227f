//! The mock's responses, built from the hand-written OpenAI fixtures once per mock instance.
//!
//! The fixtures in `tests/fixtures/openai/` are copies of the examples in OpenAI's API reference;
//! here the values a test asserts on (usage, content) are overwritten with this module's
//! constants and the per-request values become template holes, so a response costs a few
//! memcpys: the model name, the id and the numbers are spliced in.

use anyhow::Context as _;
use bytes::{BufMut as _, Bytes, BytesMut};
use serde_json::{Value, json};

use super::template::{Hole, Template, put_u64};
use super::{CHAT_CONTENT, COMPLETION_TOKENS, EMBEDDING_PROMPT_TOKENS};

const CHAT: &str = include_str!("../../fixtures/openai/chat_completion.json");
const CHAT_CHUNK: &str = include_str!("../../fixtures/openai/chat_completion_chunk.json");
const COMPLETION: &str = include_str!("../../fixtures/openai/completion.json");
const EMBEDDING: &str = include_str!("../../fixtures/openai/embedding.json");
const MODELS: &str = include_str!("../../fixtures/openai/models.json");
pub const ERROR_RATE_LIMIT: &str = include_str!("../../fixtures/openai/error_rate_limit.json");
pub const ERROR_SERVER: &str = include_str!("../../fixtures/openai/error_server.json");
pub const ERROR_OVERLOADED: &str = include_str!("../../fixtures/openai/error_overloaded.json");
pub const ERROR_CONTEXT_LENGTH: &str =
    include_str!("../../fixtures/openai/error_context_length.json");
pub const ERROR_INSUFFICIENT_QUOTA: &str =
    include_str!("../../fixtures/openai/error_insufficient_quota.json");
pub const ERROR_INVALID_API_KEY: &str =
    include_str!("../../fixtures/openai/error_invalid_api_key.json");

/// A chat completion that calls a tool, served as it is to requests with `tools`.
pub const TOOL_CALLS: &str = include_str!("../../fixtures/openai/chat_completion_tool_calls.json");
const TOOL_CALLS_STREAM: &str =
    include_str!("../../fixtures/openai/chat_completion_tool_calls_stream.sse");
/// The tool-call stream's events, one per frame; the usage chunk only if asked for.
pub fn tool_call_stream(include_usage: bool) -> Vec<Bytes> {
    TOOL_CALLS_STREAM
        .split_inclusive("\n\n")
        .filter(|e| !e.trim().is_empty())
        .filter(|e| include_usage || !e.contains("\"usage\":{"))
        .map(|e| Bytes::from_static(e.as_bytes()))
        .collect()
}

/// The per-request values of one response.
#[derive(Debug, Clone, Copy)]
pub struct Reply<'a> {
    /// The request's `model` as a JSON string literal, quotes included.
    pub model: &'a [u8],
    /// Response number, for the id.
    pub id: u64,
    /// Unix seconds.
    pub created: u64,
    /// Prompt tokens to report (cached ones included).
    pub prompt: u64,
    /// Cached prompt tokens to report.
    pub cached: u64,
}

/// A chat-style stream's templates: content chunks with and without `"usage": null`, and the
/// final usage-only chunk.
#[derive(Debug)]
struct StreamTemplates {
    chunk: Template,
    chunk_usage_null: Template,
    usage_chunk: Template,
}

/// Every pre-rendered response of the mock.
#[derive(Debug)]
pub struct Templates {
    chat: Template,
    chat_stream: StreamTemplates,
    completion: Template,
    completion_stream: StreamTemplates,
    embedding: Template,
    pub models: Bytes,
}

fn parse(name: &str, text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).with_context(|| format!("fixture {name} is not JSON"))
}

/// The usage object of the fixture with our numbers; stream usage has holes for the counts.
fn usage(mut fixture_usage: Value, stream: bool) -> Value {
    fixture_usage["prompt_tokens"] = Hole::Prompt.value();
    fixture_usage["completion_tokens"] = if stream {
        Hole::Completion.value()
    } else {
        json!(COMPLETION_TOKENS)
    };
    fixture_usage["total_tokens"] = Hole::Total.value();
    fixture_usage["prompt_tokens_details"]["cached_tokens"] = Hole::Cached.value();
    fixture_usage
}

fn stamp(doc: &mut Value) {
    doc["id"] = Hole::Id.value();
    doc["created"] = Hole::Created.value();
    doc["model"] = Hole::Model.value();
}

fn stream_templates(mut chunk: Value, usage_doc: Value) -> anyhow::Result<StreamTemplates> {
    stamp(&mut chunk);
    if let Some(usage) = chunk.as_object_mut() {
        usage.remove("usage");
    }
    let mut with_null = chunk.clone();
    with_null["usage"] = Value::Null;
    let mut usage_chunk = chunk.clone();
    usage_chunk["choices"] = json!([]);
    usage_chunk["usage"] = usage_doc;
    Ok(StreamTemplates {
        chunk: Template::build(&chunk)?,
        chunk_usage_null: Template::build(&with_null)?,
        usage_chunk: Template::build(&usage_chunk)?,
    })
}

impl Templates {
    /// Builds every template from the fixtures.
    pub fn build() -> anyhow::Result<Self> {
        let chat_fixture = parse("chat_completion.json", CHAT)?;
        let mut chat = chat_fixture.clone();
        stamp(&mut chat);
        chat["choices"][0]["message"]["content"] = json!(CHAT_CONTENT);
        chat["usage"] = usage(chat_fixture["usage"].clone(), false);

        let mut chat_chunk = parse("chat_completion_chunk.json", CHAT_CHUNK)?;
        chat_chunk["choices"][0]["delta"] = Hole::Delta.value();
        chat_chunk["choices"][0]["finish_reason"] = Hole::Finish.value();
        let chat_stream = stream_templates(chat_chunk, usage(chat_fixture["usage"].clone(), true))?;

        let completion_fixture = parse("completion.json", COMPLETION)?;
        let mut legacy_usage = completion_fixture["usage"].clone();
        legacy_usage["prompt_tokens_details"] = json!({ "cached_tokens": 0 });
        let mut completion = completion_fixture.clone();
        stamp(&mut completion);
        completion["choices"][0]["text"] = json!(CHAT_CONTENT);
        completion["choices"][0]["finish_reason"] = json!("stop");
        completion["usage"] = usage(legacy_usage.clone(), false);
        // A legacy stream chunk is a completion object without usage and with a text delta.
        let mut completion_chunk = completion_fixture;
        completion_chunk["choices"][0]["text"] = Hole::Text.value();
        completion_chunk["choices"][0]["finish_reason"] = Hole::Finish.value();
        let completion_stream = stream_templates(completion_chunk, usage(legacy_usage, true))?;

        let mut embedding = parse("embedding.json", EMBEDDING)?;
        embedding["model"] = Hole::Model.value();
        embedding["usage"] = json!({
            "prompt_tokens": EMBEDDING_PROMPT_TOKENS,
            "total_tokens": EMBEDDING_PROMPT_TOKENS,
        });

        let models = parse("models.json", MODELS)?;
        Ok(Self {
            chat: Template::build(&chat)?,
            chat_stream,
            completion: Template::build(&completion)?,
            completion_stream,
            embedding: Template::build(&embedding)?,
            models: Bytes::from(serde_json::to_vec(&models)?),
        })
    }

    /// A non-streamed chat completion.
    pub fn chat(&self, reply: &Reply<'_>) -> Bytes {
        self.one(&self.chat, reply, "chatcmpl-mock-")
    }

    /// A non-streamed legacy completion.
    pub fn completion(&self, reply: &Reply<'_>) -> Bytes {
        self.one(&self.completion, reply, "cmpl-mock-")
    }

    /// An embeddings list with `n` vectors (index 0 to n-1), as many as the request's inputs.
    pub fn embedding(&self, reply: &Reply<'_>, n: usize) -> Bytes {
        let one = self.one(&self.embedding, reply, "");
        if n <= 1 {
            return one;
        }
        let Ok(mut list) = serde_json::from_slice::<serde_json::Value>(&one) else {
            return one;
        };
        let first = list["data"][0].clone();
        list["data"] = (0..n)
            .map(|i| {
                let mut item = first.clone();
                item["index"] = json!(i);
                item
            })
            .collect();
        serde_json::to_vec(&list).map_or(one, Bytes::from)
    }

    fn one(&self, template: &Template, reply: &Reply<'_>, id_prefix: &str) -> Bytes {
        let mut out = BytesMut::with_capacity(template.literal_len() + 64 + reply.model.len());
        template.render(&mut out, |hole, out| {
            fill_common(hole, out, reply, id_prefix, COMPLETION_TOKENS);
        });
        out.freeze()
    }

    /// A chat stream's SSE events, each its own `Bytes`: role chunk, `chunks` content chunks,
    /// the finish chunk, the usage chunk if `include_usage`, and `[DONE]`.
    pub fn chat_stream(&self, reply: &Reply<'_>, chunks: usize, include_usage: bool) -> Vec<Bytes> {
        let parts = std::iter::once(StreamPart::Role)
            .chain((0..chunks).map(StreamPart::Content))
            .chain(std::iter::once(StreamPart::Finish));
        let stream = Stream {
            templates: &self.chat_stream,
            id_prefix: "chatcmpl-mock-",
            chunks,
            include_usage,
        };
        stream.render(reply, parts)
    }

    /// A legacy completion stream: `chunks` text chunks, the finish chunk, usage, `[DONE]`.
    pub fn completion_stream(
        &self,
        reply: &Reply<'_>,
        chunks: usize,
        include_usage: bool,
    ) -> Vec<Bytes> {
        let parts = (0..chunks)
            .map(StreamPart::Content)
            .chain(std::iter::once(StreamPart::Finish));
        let stream = Stream {
            templates: &self.completion_stream,
            id_prefix: "cmpl-mock-",
            chunks,
            include_usage,
        };
        stream.render(reply, parts)
    }
}

/// One stream's shape: which templates, and how many chunks.
struct Stream<'t> {
    templates: &'t StreamTemplates,
    id_prefix: &'static str,
    chunks: usize,
    include_usage: bool,
}

impl Stream<'_> {
    fn render(&self, reply: &Reply<'_>, parts: impl Iterator<Item = StreamPart>) -> Vec<Bytes> {
        let chunk = if self.include_usage {
            &self.templates.chunk_usage_null
        } else {
            &self.templates.chunk
        };
        let per_event = chunk.literal_len() + 96 + reply.model.len();
        let mut out = BytesMut::with_capacity(per_event * (self.chunks + 4));
        let mut events = Vec::with_capacity(self.chunks + 4);
        for part in parts {
            out.put_slice(b"data: ");
            chunk.render(&mut out, |hole, out| match hole {
                Hole::Delta | Hole::Text => part.write(hole, out),
                Hole::Finish if matches!(part, StreamPart::Finish) => out.put_slice(b"\"stop\""),
                _ => fill_common(hole, out, reply, self.id_prefix, 0),
            });
            out.put_slice(b"\n\n");
            events.push(out.split().freeze());
        }
        if self.include_usage {
            out.put_slice(b"data: ");
            self.templates.usage_chunk.render(&mut out, |hole, out| {
                fill_common(hole, out, reply, self.id_prefix, self.chunks as u64);
            });
            out.put_slice(b"\n\n");
            events.push(out.split().freeze());
        }
        events.push(Bytes::from_static(DONE_EVENT));
        events
    }
}

/// The last SSE event of every OpenAI stream.
pub const DONE_EVENT: &[u8] = b"data: [DONE]\n\n";

/// What one stream chunk carries.
#[derive(Debug, Clone, Copy)]
enum StreamPart {
    /// The first chat chunk: the assistant role and empty content.
    Role,
    /// Content chunk number i: `tok<i> `.
    Content(usize),
    /// The last chunk: empty delta, `finish_reason: "stop"`.
    Finish,
}

impl StreamPart {
    /// Writes this part as a chat `delta` object (`Hole::Delta`) or a legacy `text` string.
    fn write(self, hole: Hole, out: &mut BytesMut) {
        let chat = hole == Hole::Delta;
        match self {
            StreamPart::Role => out.put_slice(br#"{"role":"assistant","content":""}"#),
            StreamPart::Content(i) => {
                let (open, close): (&[u8], &[u8]) = if chat {
                    (br#"{"content":"tok"#, b" \"}")
                } else {
                    (b"\"tok", b" \"")
                };
                out.put_slice(open);
                put_u64(out, i as u64);
                out.put_slice(close);
            }
            StreamPart::Finish => out.put_slice(if chat { b"{}" } else { b"\"\"" }),
        }
    }
}

fn fill_common(
    hole: Hole,
    out: &mut BytesMut,
    reply: &Reply<'_>,
    id_prefix: &str,
    completion: u64,
) {
    match hole {
        Hole::Model => out.put_slice(reply.model),
        Hole::Id => {
            out.put_u8(b'"');
            out.put_slice(id_prefix.as_bytes());
            put_u64(out, reply.id);
            out.put_u8(b'"');
        }
        Hole::Created => put_u64(out, reply.created),
        Hole::Prompt => put_u64(out, reply.prompt),
        Hole::Cached => put_u64(out, reply.cached),
        Hole::Completion => put_u64(out, completion),
        Hole::Total => put_u64(out, reply.prompt + completion),
        Hole::Delta | Hole::Text => out.put_slice(b"null"),
        Hole::Finish => out.put_slice(b"null"),
    }
}
