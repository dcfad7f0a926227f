//! What the data plane reads from a client's request body, and the two edits it makes.
//!
//! "Don't touch the body": the gateway parses only `model`, `stream`,
//! `stream_options.include_usage`, `max_tokens`, `n` and `best_of` (borrowing, without
//! building a tree: [`crate::json_scan`] finds them, serde reads what the scan does not
//! decide), and forwards every other byte as the client sent it. The edits are splices at byte offsets that
//! the parser reports: the public model name becomes the upstream one, and a stream gets
//! `"stream_options":{"include_usage":true}` so that the upstream reports usage.
//!
//! Two readings go further, each only when the snapshot asks for it: a model's content rules
//! may read the last user message's text ([`RequestView::last_user_text`], from the `messages`
//! span the one parse found), and a model's or deployment's transforms rebuild the body an
//! attempt sends ([`RequestView::transformed`]).

use std::borrow::Cow;
use std::ops::Range;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;
use switchboard_shared::snapshot::Transforms;

use crate::error::ApiError;

/// Where a metered passthrough goes: deployments of `kind`, at `path` (which starts with `/`)
/// below the provider's base URL (below its `/v1` for Anthropic). For Gemini, whose paths
/// name the model (`models/{model}:{method}`), `model` is that public name and `path` the
/// rest (`:generateContent`, `:streamGenerateContent?alt=sse`), which follows the upstream
/// model's segment; `stream` says the path asks for a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passthrough {
    pub kind: switchboard_shared::snapshot::ProviderKind,
    pub path: String,
    pub model: Option<String>,
    pub stream: bool,
}

/// The fields the gateway needs, plus where to splice.
#[derive(Debug, Clone)]
pub struct RequestView {
    /// The original body, shared (not copied) with every attempt.
    pub body: Bytes,
    pub model: String,
    pub stream: bool,
    /// Whether the client itself asked for the final usage chunk.
    pub client_wants_usage: bool,
    /// `max_tokens`, `max_completion_tokens` or (Responses API) `max_output_tokens`, for the
    /// token-limit estimate: a whole number
    /// in `1..=`[`MAX_TOKENS_CAP`].
    pub max_tokens: Option<u64>,
    /// `n` (or `best_of`, if larger), how many answers are generated: each a whole number in
    /// `1..=`[`MAX_CHOICES`]; 1 when absent. The completion allowance is charged once per answer.
    pub choices: u64,
    /// The request offers `tools` or `functions` (routing skips deployments without them).
    pub uses_tools: bool,
    /// The request carries an `image_url` part (routing skips deployments without vision).
    pub has_images: bool,
    /// Where the prompt (`messages`, or `prompt`) sits in the body, for prefix affinity.
    pub prompt_span: Option<Range<usize>>,
    /// The client's `anthropic-version` and `anthropic-beta` headers (set by the handler, not
    /// the parser), forwarded to Anthropic deployments.
    pub anthropic_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// A metered passthrough's target (set by its handler): the provider kind, and the path
    /// below the provider's base URL.
    pub passthrough: Option<Passthrough>,
    /// The body's content type when it is not JSON (a multipart upload, with its boundary),
    /// sent upstream as it came.
    pub content_type: Option<http::HeaderValue>,
    model_span: Range<usize>,
    /// The raw `stream_options` value's span, when present.
    stream_options_span: Option<Range<usize>>,
    /// Offset just after the top-level object's opening `{`.
    object_start: usize,
}

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(default)]
    stream: Option<bool>,
    /// Kept raw even when `null`, so that the splice replaces it rather than adding a twin.
    #[serde(borrow, default, deserialize_with = "raw_even_if_null")]
    stream_options: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "raw_even_if_null")]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "raw_even_if_null")]
    max_completion_tokens: Option<&'a RawValue>,
    /// The Responses API's name for it.
    #[serde(borrow, default, deserialize_with = "raw_even_if_null")]
    max_output_tokens: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "raw_even_if_null")]
    n: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "raw_even_if_null")]
    best_of: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tools: Option<&'a RawValue>,
    #[serde(borrow, default)]
    functions: Option<&'a RawValue>,
    #[serde(borrow, default)]
    messages: Option<&'a RawValue>,
    #[serde(borrow, default)]
    prompt: Option<&'a RawValue>,
}

#[derive(Debug, PartialEq, Eq)]
/// [`Fields`] as the rest of the parse reads them: each value's JSON text, `null` dropped where
/// serde drops it (the fields read as `Option<&RawValue>` without `raw_even_if_null`).
struct Found<'a> {
    model: Option<&'a str>,
    stream: Option<bool>,
    stream_options: Option<&'a str>,
    max_tokens: Option<&'a str>,
    max_completion_tokens: Option<&'a str>,
    max_output_tokens: Option<&'a str>,
    n: Option<&'a str>,
    best_of: Option<&'a str>,
    tools: Option<&'a str>,
    functions: Option<&'a str>,
    messages: Option<&'a str>,
    prompt: Option<&'a str>,
}

impl<'a> From<Fields<'a>> for Found<'a> {
    fn from(f: Fields<'a>) -> Self {
        let text = |raw: Option<&'a RawValue>| raw.map(RawValue::get);
        Self {
            model: text(f.model),
            stream: f.stream,
            stream_options: text(f.stream_options),
            max_tokens: text(f.max_tokens),
            max_completion_tokens: text(f.max_completion_tokens),
            max_output_tokens: text(f.max_output_tokens),
            n: text(f.n),
            best_of: text(f.best_of),
            tools: text(f.tools),
            functions: text(f.functions),
            messages: text(f.messages),
            prompt: text(f.prompt),
        }
    }
}

/// Searches a body for an image part. Made once: `memmem::find` builds its searcher on every
/// call (about 400 instructions, more than the search of a small body).
static IMAGE_URL: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"image_url\""));

/// [`Fields`]' names, in [`Found`]'s order.
const NAMES: [&[u8]; 12] = [
    b"model",
    b"stream",
    b"stream_options",
    b"max_tokens",
    b"max_completion_tokens",
    b"max_output_tokens",
    b"n",
    b"best_of",
    b"tools",
    b"functions",
    b"messages",
    b"prompt",
];

/// The fields read by [`crate::json_scan`] instead of serde (about half of serde's
/// instructions for a small chat body), when the scan decides and every value reads as serde reads it: a
/// `RawValue` must be UTF-8, `stream` a boolean or `null`. `None` leaves the body to serde,
/// which then answers as it always did (its error, or the same fields: a property test below
/// holds the two to each other).
fn scanned(body: &[u8]) -> Option<Found<'_>> {
    fn not_null(raw: Option<&str>) -> Option<&str> {
        raw.filter(|text| *text != "null")
    }
    let crate::json_scan::Scan::Object(spans) = crate::json_scan::fields(body, NAMES) else {
        return None;
    };
    let mut raw: [Option<&str>; 12] = [None; 12];
    for (slot, span) in raw.iter_mut().zip(spans) {
        if let Some(span) = span {
            *slot = Some(std::str::from_utf8(body.get(span)?).ok()?);
        }
    }
    let stream = match raw[1] {
        None | Some("null") => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => return None,
    };
    // In `NAMES`' order.
    Some(Found {
        model: not_null(raw[0]),
        stream,
        stream_options: raw[2],
        max_tokens: raw[3],
        max_completion_tokens: raw[4],
        max_output_tokens: raw[5],
        n: raw[6],
        best_of: raw[7],
        tools: not_null(raw[8]),
        functions: not_null(raw[9]),
        messages: not_null(raw[10]),
        prompt: not_null(raw[11]),
    })
}

fn raw_even_if_null<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

/// One chat message, for [`RequestView::last_user_text`]: its role and raw content.
#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

/// One content part; only its `text` is read.
#[derive(Deserialize)]
struct Part<'a> {
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

/// A message content's text: the string itself, or its parts' texts joined by newlines.
fn text_of(content: &RawValue) -> Option<String> {
    if let Ok(text) = serde_json::from_str::<Cow<'_, str>>(content.get()) {
        return Some(text.into_owned());
    }
    let parts = serde_json::from_str::<Vec<Part<'_>>>(content.get()).ok()?;
    let texts: Vec<&str> = parts.iter().filter_map(|p| p.text.as_deref()).collect();
    Some(texts.join("\n"))
}

#[derive(Deserialize)]
struct StreamOptions {
    #[serde(default)]
    include_usage: Option<bool>,
}

impl RequestView {
    /// Parses the body. Errors are 400s in OpenAI's shape naming the bad field.
    pub fn parse(body: Bytes) -> Result<Self, ApiError> {
        Self::parse_inner(body, None)
    }

    /// Parses a body whose model is named elsewhere (a Gemini path) as `model`: the body's
    /// own `model`, if any, is neither read nor changed.
    pub fn parse_named(body: Bytes, model: String) -> Result<Self, ApiError> {
        Self::parse_inner(body, Some(model))
    }

    fn parse_inner(body: Bytes, named: Option<String>) -> Result<Self, ApiError> {
        let fields = match scanned(&body) {
            Some(found) => found,
            None => Found::from(
                serde_json::from_slice::<Fields<'_>>(&body).map_err(|e| body_error(&body, &e))?,
            ),
        };
        let (model, model_span) = match named {
            Some(model) => (model, 0..0),
            None => {
                let model = model_of(fields.model)?;
                let span = fields.model.map_or(0..0, |raw| span_of(&body, raw));
                (model, span)
            }
        };
        let client_wants_usage = match fields.stream_options {
            None => false,
            Some("null") => false,
            Some(raw) => serde_json::from_str::<StreamOptions>(raw)
                .map_err(|e| {
                    ApiError::bad_request(
                        format!("invalid `stream_options`: {e}"),
                        Some("stream_options"),
                    )
                })?
                .include_usage
                .unwrap_or(false),
        };
        let max_tokens = match whole_number(
            fields.max_completion_tokens,
            "max_completion_tokens",
            MAX_TOKENS_CAP,
        )? {
            Some(n) => Some(n),
            None => match whole_number(fields.max_tokens, "max_tokens", MAX_TOKENS_CAP)? {
                Some(n) => Some(n),
                None => whole_number(
                    fields.max_output_tokens,
                    "max_output_tokens",
                    MAX_TOKENS_CAP,
                )?,
            },
        };
        // `best_of` (legacy completions) generates that many answers and bills them all.
        let choices = whole_number(fields.n, "n", MAX_CHOICES)?
            .unwrap_or(1)
            .max(whole_number(fields.best_of, "best_of", MAX_CHOICES)?.unwrap_or(1));
        let stream_options_span = fields.stream_options.map(|raw| span_of(&body, raw));
        let object_start = body.iter().position(|&b| b == b'{').map_or(0, |p| p + 1);
        let present = |raw: Option<&str>| raw.is_some_and(|r| !matches!(r, "null" | "[]"));
        let uses_tools = present(fields.tools) || present(fields.functions);
        let has_images = IMAGE_URL.find(&body).is_some();
        let prompt_span = fields
            .messages
            .or(fields.prompt)
            .map(|raw| span_of(&body, raw));
        Ok(Self {
            anthropic_headers: Vec::new(),
            passthrough: None,
            content_type: None,
            uses_tools,
            has_images,
            prompt_span,
            model,
            stream: fields.stream.unwrap_or(false),
            client_wants_usage,
            max_tokens,
            choices,
            model_span,
            stream_options_span,
            object_start,
            body,
        })
    }

    /// A view of a body that is not JSON (a multipart upload of `content_type`) whose model
    /// name sits at `model_span`: nothing streams, no prompt, one answer.
    pub fn with_model_at(
        body: Bytes,
        model: String,
        model_span: Range<usize>,
        content_type: http::HeaderValue,
    ) -> Self {
        Self {
            anthropic_headers: Vec::new(),
            passthrough: None,
            content_type: Some(content_type),
            uses_tools: false,
            has_images: false,
            prompt_span: None,
            model,
            stream: false,
            client_wants_usage: false,
            max_tokens: None,
            choices: 1,
            model_span,
            stream_options_span: None,
            object_start: 0,
            body,
        }
    }

    /// The prompt's bytes as sent (`messages` or `prompt`), if any.
    pub fn prompt_bytes(&self) -> &[u8] {
        self.prompt_span
            .as_ref()
            .and_then(|span| self.body.get(span.clone()))
            .unwrap_or_default()
    }

    /// The text of the last `user` message (its string content, or its parts' `text`s joined
    /// by newlines), or the legacy `prompt` string; `None` when there is none. Reads only the
    /// prompt's span, and is called only by content rules that match on text.
    pub fn last_user_text(&self) -> Option<String> {
        let raw = self.prompt_bytes();
        if let Ok(messages) = serde_json::from_slice::<Vec<Message<'_>>>(raw) {
            let last = messages
                .iter()
                .rev()
                .find(|m| m.role.as_deref() == Some("user"))?;
            return last.content.and_then(text_of);
        }
        serde_json::from_slice::<Cow<'_, str>>(raw)
            .ok()
            .map(Cow::into_owned)
    }

    /// The view an attempt sends after `transforms` (a model policy's, then a deployment's),
    /// or `None` when they change nothing. The body is rebuilt and parsed again; the
    /// endpoint's adjustments (`stream`, usage reporting) and the handler's fields are kept.
    /// A passthrough's body is never changed.
    pub fn transformed(&self, transforms: &[&Transforms]) -> Result<Option<Self>, ApiError> {
        if self.passthrough.is_some() || transforms.iter().all(|t| t.is_empty()) {
            return Ok(None);
        }
        let mut body: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&self.body).map_err(|e| body_error(&self.body, &e))?;
        for t in transforms {
            t.apply(&mut body);
        }
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let mut view = Self::parse(Bytes::from(bytes))?;
        view.stream = self.stream;
        view.client_wants_usage = self.client_wants_usage;
        view.anthropic_headers.clone_from(&self.anthropic_headers);
        Ok(Some(view))
    }

    /// A rough prompt size for the token-limit estimate: about four bytes a token.
    pub fn estimated_prompt_tokens(&self) -> u64 {
        if self.content_type.is_some() {
            // An upload (audio), not prompt text.
            return 0;
        }
        (self.body.len() as u64).div_ceil(4)
    }

    /// The body to send upstream: the model replaced by `upstream_model_json` (a JSON string
    /// literal, quotes included; nothing when the model was named outside the body) and, for
    /// streams, usage reporting switched on.
    pub fn upstream_body(&self, upstream_model_json: &[u8]) -> Bytes {
        let model: &[u8] = if self.model_span.is_empty() {
            b""
        } else {
            upstream_model_json
        };
        let mut edits: [(Range<usize>, Cow<'_, [u8]>); 2] = [
            (self.model_span.clone(), Cow::Borrowed(model)),
            (0..0, Cow::Borrowed(b"")),
        ];
        if self.stream && !self.client_wants_usage {
            edits[1] = match &self.stream_options_span {
                Some(span) => (span.clone(), with_include_usage(&self.body[span.clone()])),
                None => (
                    self.object_start..self.object_start,
                    Cow::Borrowed(b"\"stream_options\":{\"include_usage\":true},"),
                ),
            };
        }
        edits.sort_by_key(|(range, _)| range.start);
        let extra: usize = edits.iter().map(|(_, text)| text.len()).sum();
        let mut out = BytesMut::with_capacity(self.body.len() + extra);
        let mut at = 0;
        for (range, text) in &edits {
            if range.is_empty() && text.is_empty() {
                continue;
            }
            out.extend_from_slice(&self.body[at..range.start]);
            out.extend_from_slice(text);
            at = range.end;
        }
        out.extend_from_slice(&self.body[at..]);
        out.freeze()
    }
}

/// The body's `model`: a non-empty string, else a 400 naming it.
fn model_of(raw_model: Option<&str>) -> Result<String, ApiError> {
    let Some(raw_model) = raw_model else {
        return Err(ApiError::bad_request(
            "you must provide a model parameter",
            Some("model"),
        ));
    };
    match serde_json::from_str::<String>(raw_model) {
        Ok(m) if !m.is_empty() => Ok(m),
        Ok(_) => Err(ApiError::bad_request(
            "`model` must not be empty",
            Some("model"),
        )),
        Err(_) => Err(ApiError::bad_request(
            format!("`model` must be a string, got {raw_model}"),
            Some("model"),
        )),
    }
}

/// The most completion tokens any request may ask for (`max_tokens`, `max_completion_tokens`),
/// whatever its model: above every model's output limit, far below any overflow.
pub const MAX_TOKENS_CAP: u64 = 1_000_000;

/// The most answers (`n`, `best_of`) a request may ask for, as OpenAI allows for `n`.
pub const MAX_CHOICES: u64 = 128;

/// A client-supplied count: absent is `None`; present, it must be a JSON integer (no fraction,
/// no exponent, not a string, not `null`) in `1..=max`, else a 400 naming `field`.
fn whole_number(raw: Option<&str>, field: &'static str, max: u64) -> Result<Option<u64>, ApiError> {
    let Some(text) = raw else {
        return Ok(None);
    };
    let refuse = |what: &str| {
        Err(ApiError::bad_request(
            format!("`{field}` must be a whole number from 1 to {max}; got {what}"),
            Some(field),
        ))
    };
    if !text.bytes().all(|b| b.is_ascii_digit() || b == b'-') {
        let shown: String = text.chars().take(40).collect();
        return refuse(&shown);
    }
    match text.parse::<u64>() {
        Ok(n) if (1..=max).contains(&n) => Ok(Some(n)),
        _ if text.len() > 40 => refuse("a number too large"),
        _ => refuse(text),
    }
}

/// The client's `stream_options` with `include_usage` forced on, other options kept.
fn with_include_usage(raw: &[u8]) -> Cow<'static, [u8]> {
    const ONLY_USAGE: &[u8] = b"{\"include_usage\":true}";
    match serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(raw) {
        Ok(mut options) => {
            options.insert("include_usage".into(), serde_json::Value::Bool(true));
            serde_json::to_vec(&options).map_or(Cow::Borrowed(ONLY_USAGE), Cow::Owned)
        }
        // `null`: no options to keep.
        Err(_) => Cow::Borrowed(ONLY_USAGE),
    }
}

/// A 400 for a body that did not parse: which field, when the JSON was valid but a field had
/// the wrong type (found by a second, path-tracking parse — only on this error path).
fn body_error(body: &[u8], error: &serde_json::Error) -> ApiError {
    if !error.is_data() {
        return ApiError::bad_request(format!("the request body is not valid JSON: {error}"), None);
    }
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return ApiError::bad_request("the request body must be a JSON object", None);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let path = match serde_path_to_error::deserialize::<_, Fields<'_>>(&mut de) {
        Err(e) => e.path().to_string(),
        Ok(_) => String::new(),
    };
    match path.as_str() {
        "" | "." => ApiError::bad_request(
            format!("the request body must be a JSON object: {error}"),
            None,
        ),
        field => {
            let param = field.split('.').next().unwrap_or(field);
            ApiError::bad_request(format!("invalid `{field}`: {error}"), Some(param))
        }
    }
}

/// The byte range of `part` inside `whole`; `part` must borrow from `whole`.
fn span_of(whole: &[u8], part: &str) -> Range<usize> {
    let start = (part.as_ptr() as usize).saturating_sub(whole.as_ptr() as usize);
    start..start + part.len()
}

/// `name` as a JSON string literal, quotes included, for [`RequestView::upstream_body`].
pub fn json_string_literal(name: &str) -> Bytes {
    Bytes::from(serde_json::to_vec(name).unwrap_or_else(|_| b"\"\"".to_vec()))
}

/// Checks [`scanned`] against serde on one body: wherever the scan decides, serde reads the
/// same fields. `Err` says how they differ (for the property test and the fuzz target).
pub fn scanned_fields_agree(body: &[u8]) -> Result<(), String> {
    let Some(found) = scanned(body) else {
        return Ok(());
    };
    match serde_json::from_slice::<Fields<'_>>(body).map(Found::from) {
        Ok(read) if read == found => Ok(()),
        Ok(read) => Err(format!("scan {found:?}, serde {read:?}")),
        Err(e) => Err(format!("scan {found:?}, serde refuses: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn view(body: &str) -> RequestView {
        RequestView::parse(Bytes::from(body.to_owned())).unwrap()
    }

    fn upstream(body: &str) -> Value {
        serde_json::from_slice(&view(body).upstream_body(&json_string_literal("up-model"))).unwrap()
    }

    #[test]
    fn only_the_model_changes_for_a_plain_request() {
        let body = r#"{"messages":[{"role":"user","content":"model \"x\""}],"model":"gpt-4o","temperature":0.5,"extra":{"model":"keep"}}"#;
        let out = view(body).upstream_body(&json_string_literal("up-model"));
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            body.replacen(r#""model":"gpt-4o""#, r#""model":"up-model""#, 1)
        );
    }

    #[test]
    fn whitespace_and_escapes_survive() {
        let body = "{ \"model\" :\n \"gpt-4o\" , \"stream\": false }";
        let out = view(body).upstream_body(&json_string_literal("a\"b"));
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            "{ \"model\" :\n \"a\\\"b\" , \"stream\": false }"
        );
    }

    #[test]
    fn streams_get_usage_reporting_switched_on() {
        let v = upstream(r#"{"model":"m","stream":true,"messages":[]}"#);
        assert_eq!(v["stream_options"], json!({"include_usage": true}));
        assert_eq!(v["model"], "up-model");
        let v = upstream(
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":false,"other":1}}"#,
        );
        assert_eq!(
            v["stream_options"],
            json!({"include_usage": true, "other": 1})
        );
        let v = upstream(r#"{"stream_options":null,"model":"m","stream":true}"#);
        assert_eq!(v["stream_options"], json!({"include_usage": true}));
    }

    #[test]
    fn a_client_that_asked_for_usage_is_left_alone() {
        let body = r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#;
        let v = view(body);
        assert!(v.client_wants_usage);
        let out = v.upstream_body(&json_string_literal("m"));
        assert_eq!(&out[..], body.as_bytes());
    }

    #[test]
    fn non_streams_are_not_given_stream_options() {
        let v = upstream(r#"{"model":"m","messages":[]}"#);
        assert!(v.get("stream_options").is_none());
    }

    #[test]
    fn reads_max_tokens_of_either_name() {
        assert_eq!(view(r#"{"model":"m","max_tokens":7}"#).max_tokens, Some(7));
        assert_eq!(
            view(r#"{"model":"m","max_completion_tokens":9,"max_tokens":7}"#).max_tokens,
            Some(9)
        );
        assert_eq!(
            view(r#"{"model":"m","max_output_tokens":11}"#).max_tokens,
            Some(11)
        );
        assert_eq!(view(r#"{"model":"m","n":3}"#).choices, 3);
        assert_eq!(view(r#"{"model":"m","n":2,"best_of":5}"#).choices, 5);
        assert_eq!(view(r#"{"model":"m"}"#).choices, 1);
        assert_eq!(
            view(r#"{"model":"m","max_tokens":1000000}"#).max_tokens,
            Some(MAX_TOKENS_CAP)
        );
    }

    #[test]
    fn bad_bodies_are_400s_naming_the_field() {
        let cases = [
            ("not json", None),
            ("[1,2]", None),
            ("{\"messages\":[]}", Some("model")),
            ("{\"model\":42}", Some("model")),
            ("{\"model\":\"\"}", Some("model")),
            ("{\"model\":\"m\",\"stream\":\"yes\"}", Some("stream")),
            (
                "{\"model\":\"m\",\"stream_options\":5}",
                Some("stream_options"),
            ),
            ("{\"model\":\"m\",\"max_tokens\":-1}", Some("max_tokens")),
            ("{\"model\":\"m\",\"max_tokens\":0}", Some("max_tokens")),
            ("{\"model\":\"m\",\"max_tokens\":1e18}", Some("max_tokens")),
            (
                "{\"model\":\"m\",\"max_tokens\":1000000000000000000}",
                Some("max_tokens"),
            ),
            (
                "{\"model\":\"m\",\"max_tokens\":99999999999999999999999}",
                Some("max_tokens"),
            ),
            ("{\"model\":\"m\",\"max_tokens\":1.5}", Some("max_tokens")),
            ("{\"model\":\"m\",\"max_tokens\":\"5\"}", Some("max_tokens")),
            ("{\"model\":\"m\",\"max_tokens\":null}", Some("max_tokens")),
            (
                "{\"model\":\"m\",\"max_completion_tokens\":-3}",
                Some("max_completion_tokens"),
            ),
            ("{\"model\":\"m\",\"n\":0}", Some("n")),
            ("{\"model\":\"m\",\"n\":1000}", Some("n")),
            ("{\"model\":\"m\",\"n\":null}", Some("n")),
            ("{\"model\":\"m\",\"best_of\":0.5}", Some("best_of")),
            ("{\"model\":\"m\"", None),
        ];
        for (body, param) in cases {
            let err = RequestView::parse(Bytes::from(body)).unwrap_err();
            let v: Value = serde_json::from_slice(&err.body()).unwrap();
            assert_eq!(err.status(), http::StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(v["error"]["param"].as_str(), param, "{body}: {v}");
        }
    }

    #[test]
    fn transforms_rebuild_the_body_and_keep_the_endpoints_choices() {
        let mut v = view(r#"{"model":"m","stream":true,"max_tokens":900,"seed":3}"#);
        v.client_wants_usage = true;
        let none = Transforms::default();
        assert!(v.transformed(&[&none]).unwrap().is_none());
        let policy: Transforms = serde_yaml_ng::from_str("max_tokens: 100").unwrap();
        let deployment: Transforms = serde_yaml_ng::from_str("drop: [seed]").unwrap();
        let t = v.transformed(&[&policy, &deployment]).unwrap().unwrap();
        assert_eq!(t.max_tokens, Some(100));
        assert!(t.stream && t.client_wants_usage);
        let sent: Value = serde_json::from_slice(&t.upstream_body(b"\"u\"")).unwrap();
        assert_eq!(
            sent,
            json!({"model": "u", "stream": true, "max_tokens": 100})
        );
    }

    #[test]
    fn last_user_text_reads_strings_parts_and_prompts() {
        let chat = view(
            r#"{"model":"m","messages":[{"role":"user","content":"one"},{"role":"assistant","content":"x"},{"role":"user","content":[{"type":"text","text":"two"},{"type":"image_url","image_url":{"url":"u"}},{"type":"text","text":"three"}]}]}"#,
        );
        assert_eq!(chat.last_user_text().as_deref(), Some("two\nthree"));
        let legacy = view(r#"{"model":"m","prompt":"say \"hi\""}"#);
        assert_eq!(legacy.last_user_text().as_deref(), Some("say \"hi\""));
        let no_user = view(r#"{"model":"m","messages":[{"role":"system","content":"s"}]}"#);
        assert_eq!(no_user.last_user_text(), None);
    }

    mod scanned_against_serde {
        use super::super::scanned_fields_agree;
        use proptest::prelude::*;

        const KEYS: &[&str] = &[
            "model",
            "stream",
            "stream_options",
            "max_tokens",
            "max_completion_tokens",
            "max_output_tokens",
            "n",
            "best_of",
            "tools",
            "functions",
            "messages",
            "prompt",
            "temperature",
            "user",
            "mode\\u006c",
            "",
        ];

        fn value() -> impl Strategy<Value = String> {
            let leaf = prop::sample::select(vec![
                "null",
                "true",
                "false",
                "0",
                "1",
                "-1",
                "2.5",
                "1e2",
                "128",
                "1000001",
                "\"gpt-4o\"",
                "\"\"",
                "\"g\\u0070t\"",
                "\"h\u{e9}\"",
                "\"\\ud800\"",
                "[]",
                "{}",
                "{\"include_usage\":true}",
                "[{\"role\":\"user\",\"content\":\"hi\"}]",
            ])
            .prop_map(String::from);
            let nested = leaf.clone().prop_recursive(2, 8, 3, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..3)
                        .prop_map(|items| format!("[{}]", items.join(","))),
                    prop::collection::vec((prop::sample::select(KEYS), inner), 0..3).prop_map(
                        |fields| {
                            let fields: Vec<String> =
                                fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                            format!("{{{}}}", fields.join(","))
                        }
                    ),
                ]
            });
            prop_oneof![3 => leaf, 1 => nested]
        }

        /// Distinct top-level keys (a repeated one is left to serde), each with a value.
        fn fields() -> impl Strategy<Value = Vec<(&'static str, String)>> {
            prop::sample::subsequence(KEYS, 0..8).prop_flat_map(|keys| {
                let n = keys.len();
                (Just(keys), prop::collection::vec(value(), n))
                    .prop_map(|(keys, values)| keys.into_iter().zip(values).collect())
            })
        }

        fn body() -> impl Strategy<Value = Vec<u8>> {
            (
                fields(),
                prop::collection::vec(
                    (
                        any::<prop::sample::Index>(),
                        prop::sample::select(vec![
                            &b"\xff"[..],
                            b"}",
                            b"\"",
                            b"nul",
                            b"\\",
                            b"\x01",
                            b" ",
                            b"{",
                            b"]",
                            b":",
                            b"\xc3",
                            b",",
                            b"\"n\":2,",
                            b"\"stream\":\"yes\",",
                        ]),
                    ),
                    0..2,
                ),
            )
                .prop_map(|(fields, edits)| {
                    let fields: Vec<String> = fields
                        .iter()
                        .map(|(k, v)| format!("\"{k}\" : {v}"))
                        .collect();
                    let mut body = format!(" {{{}}} ", fields.join(",")).into_bytes();
                    for (at, snippet) in edits {
                        let at = at.index(body.len() + 1);
                        body.splice(at..at, snippet.iter().copied());
                    }
                    body
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(3000))]

            /// Generated request bodies, intact and edited: wherever the scan reads the
            /// fields, serde reads the same ones.
            #[test]
            fn the_scan_reads_what_serde_reads(body in body()) {
                let shown = String::from_utf8_lossy(&body);
                prop_assert_eq!(scanned_fields_agree(&body), Ok(()), "{}", shown);
            }
        }

        #[test]
        fn a_plain_chat_body_is_read_by_the_scan() {
            let body = br#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"stream":null,"n":null}"#;
            let found = super::super::scanned(body).expect("the scan decides");
            assert_eq!(found.model, Some("\"gpt-4o\""));
            assert_eq!(found.stream, None);
            assert_eq!(found.n, Some("null"));
            assert_eq!(scanned_fields_agree(body), Ok(()));
        }
    }
}
