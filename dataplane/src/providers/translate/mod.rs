//! Protocol translation: the one place where the gateway rewrites bodies.
//!
//! Where the client's protocol and the deployment's differ, an adaptor translates the request
//! on the way out and wraps the upstream body so that what reaches the proxy is already in the
//! client's protocol. The proxy, relay and accounting then work as for a passthrough.
//!
//! - [`openai_anthropic`]: an OpenAI client in front of Anthropic's Messages API.
//! - [`anthropic_openai`]: an Anthropic client (`/v1/messages`) in front of an
//!   OpenAI-compatible API.
//! - [`openai_gemini`]: an OpenAI client in front of Gemini.
//! - [`openai_bedrock`]: an OpenAI client in front of Bedrock's Converse API.
//! - [`responses_openai`]: a Responses API client (`/v1/responses`) in front of an
//!   OpenAI-compatible chat API (and through it, every other provider).
//! - [`fields`]: what each translation does with every OpenAI request field (translated,
//!   refused with a 400, or ignored as documented), enforced and shown from one table.
//! - [`openai`]: OpenAI's side of all of them — the request content and tool calls they read,
//!   and the answers, chunks, usage and errors they build.
//!
//! Translations compose: a `/v1/messages` client in front of Gemini goes Anthropic → OpenAI →
//! Gemini on the way out and back through both on the way in, so each provider needs only
//! its OpenAI translation.
//!
//! The body wrappers here are shared by both directions:
//! - [`whole`] converts a complete JSON answer (or error) once its last byte arrived;
//! - [`Translated`] converts a stream event by event (SSE: [`SseTranslate`]; Bedrock's binary
//!   event stream through the same body with another [`Framing`]): each complete upstream event
//!   becomes client events in the same poll, so translation adds no buffering beyond the
//!   partial event still on the wire.

pub mod anthropic_openai;
pub mod fields;
pub mod openai;
pub mod openai_anthropic;
pub mod openai_bedrock;
pub mod openai_gemini;
pub mod responses_openai;

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode, header::CONTENT_TYPE};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full, StreamBody};
use serde_json::Value;

use super::{BodyError, UpstreamBody, UpstreamResponse};
use crate::sse::{self, EventScanner};

/// Converts one SSE stream into another, one upstream event at a time.
pub trait StreamTranslator: Send + Sync + Unpin + 'static {
    /// One complete upstream event: its `event:` name, if any, and its `data:` payload.
    fn event(&mut self, name: Option<&str>, data: &[u8], out: &mut BytesMut);
    /// The upstream stream ended cleanly: write whatever must close the client's stream.
    fn finish(&mut self, out: &mut BytesMut);
}

/// Where a [`Framing`] hands each complete event: its name, if any, and its payload.
pub type Events<'a> = &'a mut dyn FnMut(Option<&str>, &[u8]);

/// How an upstream stream is cut into events: SSE ([`Sse`]) or AWS's binary event stream
/// ([`crate::providers::bedrock::eventstream::EventStream`]). A framing may keep state between
/// reads (where it stopped scanning), so that no byte is scanned twice.
pub trait Framing: Default + Send + Sync + Unpin + 'static {
    /// Hands every complete event at the front of `buf` on, removing it; `Err` for bytes that
    /// cannot be a stream of this framing. `buf` holds what the last call left, then new bytes.
    fn drain(&mut self, buf: &mut BytesMut, events: Events<'_>) -> Result<(), BodyError>;

    /// The upstream ended cleanly with `rest` not yet consumed: hand on what is left, or
    /// `Err` if the stream ended inside an event.
    fn end(&mut self, rest: &[u8], events: Events<'_>) -> Result<(), BodyError>;
}

/// A body that converts an upstream stream, framed by `F`, with a [`StreamTranslator`]:
/// each complete upstream event becomes client events in the same poll.
pub struct Translated<F, T> {
    upstream: UpstreamBody,
    buf: BytesMut,
    translator: T,
    done: bool,
    framing: F,
}

/// A body that converts an upstream SSE stream with a [`StreamTranslator`].
pub type SseTranslate<T> = Translated<Sse, T>;

impl<F: Framing, T: StreamTranslator> Translated<F, T> {
    pub fn boxed(upstream: UpstreamBody, translator: T) -> UpstreamBody {
        Self {
            upstream,
            buf: BytesMut::new(),
            translator,
            done: false,
            framing: F::default(),
        }
        .boxed()
    }
}

impl<F: Framing, T: StreamTranslator> Body for Translated<F, T> {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        // Every field is `Unpin` (the upstream is boxed).
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            let mut out = BytesMut::new();
            match ready!(Pin::new(&mut this.upstream).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    this.buf.extend_from_slice(&data);
                    let translator = &mut this.translator;
                    let mut events = |name: Option<&str>, data: &[u8]| {
                        translator.event(name, data, &mut out);
                    };
                    if let Err(e) = this.framing.drain(&mut this.buf, &mut events) {
                        this.done = true;
                        return Poll::Ready(Some(Err(e)));
                    }
                    if !out.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(out.freeze()))));
                    }
                }
                Some(Err(e)) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                None => {
                    this.done = true;
                    let translator = &mut this.translator;
                    let mut events = |name: Option<&str>, data: &[u8]| {
                        translator.event(name, data, &mut out);
                    };
                    if let Err(e) = this.framing.end(&this.buf, &mut events) {
                        return Poll::Ready(Some(Err(e)));
                    }
                    this.translator.finish(&mut out);
                    return Poll::Ready((!out.is_empty()).then(|| Ok(Frame::data(out.freeze()))));
                }
            }
        }
    }
}

/// Server-sent events: events end at a blank line (CRLF, LF or CR line ends), `event:` names
/// them, `data:` carries them. Each byte is scanned once ([`EventScanner`]).
#[derive(Debug, Default)]
pub struct Sse {
    scanner: EventScanner,
    /// Bytes at the front of the buffer already fed to the scanner.
    scanned: usize,
    /// Event ends found in the last read (offsets in the buffer), reused.
    ends: Vec<usize>,
}

impl Framing for Sse {
    fn drain(&mut self, buf: &mut BytesMut, events: Events<'_>) -> Result<(), BodyError> {
        let scanned = self.scanned.min(buf.len());
        let ends = &mut self.ends;
        ends.clear();
        self.scanner
            .feed(&buf[scanned..], |end| ends.push(scanned + end));
        let mut taken = 0;
        for &end in ends.iter() {
            let event = buf.split_to(end - taken);
            taken = end;
            dispatch(&event, events);
        }
        self.scanned = buf.len();
        Ok(())
    }

    fn end(&mut self, rest: &[u8], events: Events<'_>) -> Result<(), BodyError> {
        if !rest.iter().all(u8::is_ascii_whitespace) {
            dispatch(rest, events);
        }
        Ok(())
    }
}

/// Hands one SSE event on (its line ends included or not).
fn dispatch(event: &[u8], events: Events<'_>) {
    let mut name = None;
    let mut data: Option<&[u8]> = None;
    for line in sse::lines(event) {
        if let Some(rest) = sse::field(line, b"event") {
            name = std::str::from_utf8(rest).ok().map(str::trim);
        } else if let Some(rest) = sse::field(line, b"data") {
            data = Some(rest);
        }
    }
    if let Some(data) = data {
        events(name, data);
    }
}

/// Wraps an answer in OpenAI's chat shape for the client's protocol: Anthropic's for a
/// `/v1/messages` client, the Responses API's for a `/v1/responses` one, unchanged otherwise.
pub fn wrap_for_client(
    response: UpstreamResponse,
    request: &super::UpstreamRequest<'_>,
) -> UpstreamResponse {
    match request.endpoint {
        super::Endpoint::Messages => anthropic_openai::wrap_answer(response, request.view.stream),
        super::Endpoint::Responses => responses_openai::wrap_answer(response, request),
        _ => response,
    }
}

/// A body that reads the whole upstream body, then yields `convert` of it as one frame.
pub fn whole(
    upstream: UpstreamBody,
    convert: impl FnOnce(Bytes) -> Bytes + Send + Sync + 'static,
) -> UpstreamBody {
    let once = futures_util::stream::once(async move {
        let bytes = upstream.collect().await?.to_bytes();
        Ok::<_, BodyError>(Frame::data(convert(bytes)))
    });
    StreamBody::new(once).boxed()
}

/// Wraps an upstream answer so that it reaches the proxy in the client's protocol: errors
/// through `error`, streams through `translator`, complete answers through `answer`.
pub fn wrap<T: StreamTranslator>(
    response: UpstreamResponse,
    stream: bool,
    translator: T,
    answer: fn(Bytes) -> Bytes,
    error: fn(StatusCode, Bytes) -> Bytes,
) -> UpstreamResponse {
    let UpstreamResponse {
        status,
        mut headers,
        body,
    } = response;
    let is_sse = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let body = if !status.is_success() {
        set_content_type(&mut headers, false);
        whole(limited(body), move |b| error(status, b))
    } else if stream && is_sse {
        set_content_type(&mut headers, true);
        SseTranslate::boxed(body, translator)
    } else {
        set_content_type(&mut headers, false);
        whole(body, answer)
    };
    UpstreamResponse {
        status,
        headers,
        body,
    }
}

/// Largest upstream error body read for translation; longer ones fail as broken bodies.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;

/// `body`, failing once it passes [`MAX_ERROR_BODY_BYTES`] (error bodies are read whole).
pub fn limited(body: UpstreamBody) -> UpstreamBody {
    http_body_util::Limited::new(body, MAX_ERROR_BODY_BYTES)
        .map_err(|e| match e.downcast::<BodyError>() {
            Ok(inner) => *inner,
            Err(e) => BodyError::Failed(e.to_string()),
        })
        .boxed()
}

/// A complete answer made by the gateway (e.g. "this provider cannot do embeddings").
pub fn synthetic(status: StatusCode, body: Vec<u8>) -> UpstreamResponse {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    UpstreamResponse {
        status,
        headers,
        body: Full::new(Bytes::from(body))
            .map_err(|never| match never {})
            .boxed(),
    }
}

/// A 400 for a request the gateway cannot translate, in the client's shape, sent without
/// touching the network.
pub fn refusal(endpoint: super::Endpoint, error: &TranslateError) -> UpstreamResponse {
    let body = if matches!(
        endpoint,
        super::Endpoint::Messages | super::Endpoint::CountTokens
    ) {
        crate::error::anthropic_error_body("invalid_request_error", &error.message)
    } else {
        serde_json::to_vec(&serde_json::json!({"error": {
            "message": error.message, "type": "invalid_request_error", "param": error.param, "code": null,
        }}))
        .unwrap_or_default()
    };
    synthetic(StatusCode::BAD_REQUEST, body)
}

/// Reads an error answer's body whole (up to 64 KiB), so that an adaptor can look inside it
/// before the proxy classifies the status; the body is handed on unchanged.
pub async fn read_error(response: UpstreamResponse) -> (UpstreamResponse, Bytes) {
    let UpstreamResponse {
        status,
        headers,
        body,
    } = response;
    let bytes = http_body_util::Limited::new(body, MAX_ERROR_BODY_BYTES)
        .collect()
        .await
        .map(http_body_util::Collected::to_bytes)
        .unwrap_or_default();
    let body = Full::new(bytes.clone())
        .map_err(|never| match never {})
        .boxed();
    (
        UpstreamResponse {
            status,
            headers,
            body,
        },
        bytes,
    )
}

/// Marks a response as the stream or JSON it has become.
pub fn set_content_type(headers: &mut HeaderMap, stream: bool) {
    let value = if stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(value));
    headers.remove(http::header::CONTENT_LENGTH);
}

/// Appends one SSE event (`event:` line optional) to `out`.
pub fn write_event(out: &mut BytesMut, name: Option<&str>, data: &Value) {
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"data: ");
    // Serialising a `Value` cannot fail.
    out.extend_from_slice(&serde_json::to_vec(data).unwrap_or_default());
    out.extend_from_slice(b"\n\n");
}

/// The text of a content value that is a string or a list of `{type:"text",text}` parts.
pub fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join(""),
        _ => String::new(),
    }
}

/// The current Unix time in seconds, for OpenAI's `created`.
pub fn now_secs() -> i64 {
    chrono::Utc::now().timestamp()
}

/// An error from a request the gateway could not translate: a 400 in the client's shape is
/// built by the caller from this message.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct TranslateError {
    pub message: String,
    pub param: Option<&'static str>,
}

impl TranslateError {
    pub fn new(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self {
            message: message.into(),
            param,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Echoes each event's data on its own line, and `end` at the finish.
    struct Echo;

    impl StreamTranslator for Echo {
        fn event(&mut self, name: Option<&str>, data: &[u8], out: &mut BytesMut) {
            out.extend_from_slice(name.unwrap_or("-").as_bytes());
            out.extend_from_slice(b"=");
            out.extend_from_slice(data);
            out.extend_from_slice(b";");
        }
        fn finish(&mut self, out: &mut BytesMut) {
            out.extend_from_slice(b"end");
        }
    }

    fn frames(parts: &[&'static str]) -> UpstreamBody {
        let frames: Vec<Result<Frame<Bytes>, BodyError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames)).boxed()
    }

    #[tokio::test]
    async fn events_split_across_frames_are_joined_and_each_frame_yields_at_once() {
        let mut body = SseTranslate::boxed(
            frames(&[
                "event: a\ndata: 1\n\nda",
                "ta: 2\r\n\r\n",
                "data: 2b\r\r",
                "data: 3",
            ]),
            Echo,
        );
        let mut seen = Vec::new();
        while let Some(frame) = body.frame().await {
            seen.push(String::from_utf8(frame.unwrap().into_data().unwrap().to_vec()).unwrap());
        }
        assert_eq!(seen, ["a=1;", "-=2;", "-=2b;", "-=3;end"]);
    }
}
