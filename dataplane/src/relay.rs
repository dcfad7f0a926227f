//! Streaming relay: upstream SSE bytes to the client as they arrive.
//!
//! The relay never waits for data that has not arrived. What it does with what has arrived:
//! - **Coalesces** frames that are already there: after one frame it drains every frame the
//!   upstream body has ready and writes them in one go. Each write to the client costs a
//!   syscall and an HTTP chunk header; a burst of twenty small events should not cost twenty.
//! - **Aligns to events**: it forwards only complete SSE events (up to the last blank line,
//!   with CRLF, LF or CR line ends as the spec allows) and keeps a partial tail until its end
//!   arrives. A client cannot use half an event, so this delays nothing usable, and it lets
//!   the relay look at whole events. Events are found by one [`EventScanner`] that sees every
//!   byte once (a tail without line ends is never rescanned); the transport caps an event's
//!   size ([`crate::providers::UpstreamCaps`]), which bounds the tail.
//! - **Reads usage** from the events that carry it (found with a byte search, parsed only when
//!   found; Anthropic's stream reports input in `message_start` and output in
//!   `message_delta`, so reports are merged) and, when the gateway, not the client, asked for
//!   it, **strips** it: OpenAI's usage-only chunk is dropped, and a chunk that also has
//!   choices (LiteLLM's final `delta: {}`) keeps them without its `usage` field.
//! - **Counts the events and the generated text** it relays ([`Generated`]), so that a stream
//!   cut short is charged what was generated (see [`crate::accounting`]).
//! - **Closes the ledger** when the stream ends, fails, times out, or is dropped because the
//!   client went away — and dropping the relay drops the upstream body, which closes the
//!   upstream connection: a client disconnect cancels the upstream request.
//!
//! An upstream failure after the first byte cannot be retried (the client has the head
//! already); the relay then ends the body with an error, so the client sees a broken stream
//! rather than a clean end it would mistake for a complete answer.

use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use http::StatusCode;
use http_body::Body;
use memchr::memmem;
use switchboard_shared::usage::{Outcome, Usage};
use tokio::time::Sleep;

use crate::accounting::{Generated, Ledger, UsageChunk, usage_from_chunk};
use crate::providers::UpstreamBody;
use crate::sse::{self, EventScanner};

/// The client-facing body of a streamed answer.
pub struct SseRelay {
    upstream: UpstreamBody,
    /// Bytes already read from upstream but not yet given to the client.
    pending: Option<Bytes>,
    /// An incomplete event waiting for its end.
    tail: BytesMut,
    /// Where events end, fed every byte once.
    scanner: EventScanner,
    strip_usage_event: bool,
    usage: Option<Usage>,
    /// What was passed to the client so far.
    generated: Generated,
    ledger: Option<Ledger>,
    deadline: Pin<Box<Sleep>>,
    finished: bool,
}

/// Why a relayed stream ended badly (surfaces to hyper, which aborts the response).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the upstream stream failed: {0}")]
    Upstream(String),
    #[error("the request's total time limit ran out mid-stream")]
    Timeout,
}

impl SseRelay {
    /// `first` holds the first bytes, read before the answer was committed to the client.
    /// The usage-only event is stripped unless the client asked for it (the request's
    /// context, which the ledger shares, says).
    pub fn new(
        upstream: UpstreamBody,
        first: Bytes,
        ledger: Ledger,
        deadline: tokio::time::Instant,
    ) -> Self {
        let mut relay = Self::unaccounted(upstream, !ledger.request().client_wants_usage, deadline);
        relay.pending = Some(first);
        relay.ledger = Some(ledger);
        relay
    }

    /// A relay that charges nothing: the same event processing with no ledger behind it (the
    /// fuzz targets in `fuzz/` drive it; every relay on the request path has a ledger).
    pub fn unaccounted(
        upstream: UpstreamBody,
        strip_usage_event: bool,
        deadline: tokio::time::Instant,
    ) -> Self {
        Self {
            upstream,
            pending: None,
            tail: BytesMut::new(),
            scanner: EventScanner::default(),
            strip_usage_event,
            usage: None,
            generated: Generated::default(),
            ledger: None,
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            finished: false,
        }
    }

    /// Hands what goes to the client to the ledger's content capture (a no-op for tenants
    /// that did not opt in).
    fn capture(&mut self, out: Option<&Bytes>) {
        if let (Some(bytes), Some(ledger)) = (out, self.ledger.as_mut()) {
            ledger.capture_answer(bytes);
        }
    }

    fn close(&mut self, outcome: Outcome, status: StatusCode) {
        self.finished = true;
        if let Some(ledger) = self.ledger.take() {
            ledger.stream_closed(outcome, status, self.usage, self.generated);
        }
    }

    /// Turns what arrived into what the client gets: complete events only, usage noted, the
    /// usage-only event removed when the client did not ask for it.
    fn process(&mut self, input: Bytes) -> Option<Bytes> {
        let mut last_end = None;
        let mut ended = 0u64;
        self.scanner.feed(&input, |end| {
            last_end = Some(end);
            ended += 1;
        });
        self.generated.events += ended;
        let complete = match last_end {
            None => {
                self.tail.extend_from_slice(&input);
                return None;
            }
            Some(end) if self.tail.is_empty() => {
                self.tail.extend_from_slice(&input[end..]);
                input.slice(..end)
            }
            Some(end) => {
                self.tail.extend_from_slice(&input[..end]);
                let complete = self.tail.split().freeze();
                self.tail.extend_from_slice(&input[end..]);
                complete
            }
        };
        self.generated.text_bytes += sse::text_bytes(&complete);
        if !has_usage_object(&complete) {
            return Some(complete);
        }
        self.take_usage(complete)
    }

    /// Finds the usage event among complete events; drops it, or removes its `usage` field,
    /// if it must be stripped.
    fn take_usage(&mut self, complete: Bytes) -> Option<Bytes> {
        let mut ends = Vec::new();
        EventScanner::default().feed(&complete, |end| ends.push(end));
        if ends.last() != Some(&complete.len()) {
            ends.push(complete.len());
        }
        let mut out: Option<BytesMut> = None;
        let mut start = 0;
        for end in ends {
            let event = &complete[start..end];
            let found = if has_usage_object(event) {
                event_data(event).and_then(usage_from_chunk)
            } else {
                None
            };
            let replaced = match found {
                Some((usage, kind)) => {
                    usage.merge_into(self.usage.get_or_insert_with(Usage::default));
                    match kind {
                        _ if !self.strip_usage_event => None,
                        UsageChunk::Anthropic => None,
                        UsageChunk::UsageOnly => Some(Bytes::new()),
                        UsageChunk::WithChoices => Some(without_usage(event)),
                    }
                }
                None => None,
            };
            match replaced {
                None => {
                    if let Some(out) = out.as_mut() {
                        out.extend_from_slice(event);
                    }
                }
                Some(new) => out
                    .get_or_insert_with(|| BytesMut::from(&complete[..start]))
                    .extend_from_slice(&new),
            }
            start = end;
        }
        match out {
            None => Some(complete),
            Some(out) if out.is_empty() => None,
            Some(out) => Some(out.freeze()),
        }
    }
}

/// An OpenAI chunk event without its `usage` field (its other fields, and any other lines,
/// as they were). An event whose data is not a JSON object is kept as it is. Only the first
/// `data` line is the chunk ([`event_data`]): further `data` lines are kept as they came, so
/// the event never grows by more than the line's prefix (a chunk written once per data line
/// let a hostile upstream multiply its stream).
fn without_usage(event: &[u8]) -> Bytes {
    let Some(mut chunk) = event_data(event).and_then(|data| {
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(data).ok()
    }) else {
        return Bytes::copy_from_slice(event);
    };
    chunk.remove("usage");
    let mut out = BytesMut::with_capacity(event.len());
    let mut written = false;
    for line in sse::lines(event).filter(|line| !line.is_empty()) {
        if !written && sse::field(line, b"data").is_some() {
            written = true;
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(&serde_json::to_vec(&chunk).unwrap_or_default());
        } else {
            out.extend_from_slice(line);
        }
        out.extend_from_slice(b"\n");
    }
    out.extend_from_slice(b"\n");
    out.freeze()
}

/// The start both usage keys share: `"usage"` and Gemini's `"usageMetadata"` are found with
/// one search of each event, not one per key.
static USAGE_KEY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"usage"));

/// Whether `bytes` holds a `"usage"` (or Gemini's `"usageMetadata"`) key whose value is an
/// object. OpenAI-compatible servers put `"usage":null` in every chunk of a stream that
/// asked for usage; only the one real report is worth parsing.
fn has_usage_object(bytes: &[u8]) -> bool {
    USAGE_KEY.find_iter(bytes).any(|at| {
        let rest = &bytes[at + USAGE_KEY.needle().len()..];
        rest.strip_prefix(b"\"")
            .or_else(|| rest.strip_prefix(b"Metadata\""))
            .is_some_and(object_follows)
    })
}

/// Whether `rest` (what follows a key) is `:` then an object, whitespace aside.
fn object_follows(rest: &[u8]) -> bool {
    let mut rest = rest.iter().filter(|b| !b.is_ascii_whitespace());
    rest.next() == Some(&b':') && rest.next() == Some(&b'{')
}

/// The payload of an event's `data:` line(s), when it has exactly one (OpenAI's events do).
fn event_data(event: &[u8]) -> Option<&[u8]> {
    sse::lines(event).find_map(|line| sse::field(line, b"data"))
}

impl Stream for SseRelay {
    type Item = Result<Bytes, RelayError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        if this.deadline.as_mut().poll(cx).is_ready() {
            this.close(Outcome::UpstreamError, StatusCode::GATEWAY_TIMEOUT);
            return Poll::Ready(Some(Err(RelayError::Timeout)));
        }
        // Gather everything that is ready right now (the first bytes, read before the answer
        // was committed, come first).
        let mut first = this.pending.take();
        let mut gathered: Option<BytesMut> = None;
        let mut ended = false;
        loop {
            match Pin::new(&mut this.upstream).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers: nothing to relay
                    };
                    match (&mut first, &mut gathered) {
                        (None, None) => first = Some(data),
                        (Some(f), None) => {
                            let mut buf = BytesMut::with_capacity(f.len() + data.len());
                            buf.extend_from_slice(f);
                            buf.extend_from_slice(&data);
                            first = None;
                            gathered = Some(buf);
                        }
                        (_, Some(buf)) => buf.extend_from_slice(&data),
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.close(Outcome::UpstreamError, StatusCode::BAD_GATEWAY);
                    return Poll::Ready(Some(Err(RelayError::Upstream(e.to_string()))));
                }
                Poll::Ready(None) => {
                    ended = true;
                    break;
                }
                Poll::Pending => break,
            }
        }
        let arrived = gathered.map(BytesMut::freeze).or(first);
        let out = arrived.and_then(|bytes| {
            if let Some(ledger) = this.ledger.as_mut() {
                ledger.first_byte();
            }
            this.process(bytes)
        });
        if ended {
            // Whatever is left in the tail is an unterminated last event: pass it on.
            let rest = std::mem::take(&mut this.tail).freeze();
            // The unterminated tail counts as an event too.
            this.generated.events += u64::from(this.scanner.has_pending_event());
            this.generated.text_bytes += sse::text_bytes(&rest);
            let out = match (out, rest.is_empty()) {
                (out, true) => out,
                (Some(out), false) => {
                    let mut joined = BytesMut::from(&out[..]);
                    joined.extend_from_slice(&rest);
                    Some(joined.freeze())
                }
                (None, false) => Some(rest),
            };
            this.capture(out.as_ref());
            this.close(Outcome::Success, StatusCode::OK);
            return Poll::Ready(out.map(Ok));
        }
        this.capture(out.as_ref());
        match out {
            Some(bytes) => Poll::Ready(Some(Ok(bytes))),
            // Nothing complete yet: the upstream returned `Pending`, so its waker is set.
            None => Poll::Pending,
        }
    }
}

impl Drop for SseRelay {
    /// Dropped before the stream ended: the client went away. It is charged what was relayed.
    fn drop(&mut self) {
        if self.ledger.is_some() {
            self.close(
                Outcome::ClientDisconnected,
                StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(strip: bool) -> SseRelayHarness {
        SseRelayHarness {
            tail: BytesMut::new(),
            scanner: EventScanner::default(),
            strip,
            usage: None,
            generated: Generated::default(),
        }
    }

    /// The event-processing half of the relay, without a ledger or an upstream.
    struct SseRelayHarness {
        tail: BytesMut,
        scanner: EventScanner,
        strip: bool,
        usage: Option<Usage>,
        generated: Generated,
    }

    impl SseRelayHarness {
        fn feed(&mut self, input: &str) -> String {
            let mut r = SseRelay {
                upstream: http_body_util::BodyExt::boxed(
                    http_body_util::Empty::new()
                        .map_err(|never: std::convert::Infallible| match never {}),
                ),
                pending: None,
                tail: std::mem::take(&mut self.tail),
                scanner: std::mem::take(&mut self.scanner),
                strip_usage_event: self.strip,
                usage: self.usage,
                generated: self.generated,
                ledger: None,
                deadline: Box::pin(tokio::time::sleep(std::time::Duration::from_secs(60))),
                finished: false,
            };
            let out = r.process(Bytes::from(input.to_owned()));
            self.tail = std::mem::take(&mut r.tail);
            self.scanner = std::mem::take(&mut r.scanner);
            self.usage = r.usage;
            self.generated = r.generated;
            out.map(|b| String::from_utf8(b.to_vec()).unwrap())
                .unwrap_or_default()
        }
    }

    use http_body_util::BodyExt as _;

    const CONTENT: &str =
        "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n";
    const USAGE: &str =
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7}}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    #[tokio::test]
    async fn complete_events_pass_through_unchanged() {
        let mut r = relay(true);
        assert_eq!(r.feed(CONTENT), CONTENT);
        assert_eq!(
            r.feed(&format!("{CONTENT}{CONTENT}")),
            format!("{CONTENT}{CONTENT}")
        );
    }

    #[tokio::test]
    async fn partial_events_wait_for_their_end() {
        let mut r = relay(false);
        let (a, b) = CONTENT.split_at(20);
        assert_eq!(r.feed(a), "");
        assert_eq!(r.feed(b), CONTENT);
        let (a, b) = CONTENT.split_at(CONTENT.len() - 1);
        assert_eq!(r.feed(&format!("{CONTENT}{a}")), CONTENT);
        assert_eq!(r.feed(b), CONTENT);
    }

    #[tokio::test]
    async fn the_usage_event_is_read_and_stripped_when_not_asked_for() {
        let mut r = relay(true);
        assert_eq!(
            r.feed(&format!("{CONTENT}{USAGE}{DONE}")),
            format!("{CONTENT}{DONE}")
        );
        assert_eq!(r.usage.unwrap().total_tokens(), 12);
        let mut r = relay(true);
        assert_eq!(r.feed(USAGE), "");
        assert_eq!(r.usage.unwrap().completion_tokens, 7);
    }

    #[tokio::test]
    async fn the_usage_event_stays_when_the_client_asked() {
        let mut r = relay(false);
        let all = format!("{CONTENT}{USAGE}{DONE}");
        assert_eq!(r.feed(&all), all);
        assert_eq!(r.usage.unwrap().prompt_tokens, 5);
    }

    #[tokio::test]
    async fn usage_riding_on_a_chunk_with_choices_is_removed_from_it_not_dropped() {
        let mut r = relay(true);
        let mixed = "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n";
        assert_eq!(
            r.feed(mixed),
            "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n"
        );
        assert_eq!(r.usage.unwrap().total_tokens(), 2);
        // LiteLLM's final chunk, CRLF-terminated, between two others.
        let mut r = relay(true);
        let litellm = "data: {\"id\":\"c\",\"choices\":[{\"index\":0,\"delta\":{}}],\"usage\":{\"prompt_tokens\":4,\"completion_tokens\":3}}\r\n\r\n";
        assert_eq!(
            r.feed(&format!("{CONTENT}{litellm}{DONE}")),
            format!(
                "{CONTENT}data: {{\"choices\":[{{\"delta\":{{}},\"index\":0}}],\"id\":\"c\"}}\n\n{DONE}"
            )
        );
        assert_eq!(r.usage.unwrap().total_tokens(), 7);
        // Asked for: untouched.
        let mut r = relay(false);
        assert_eq!(r.feed(mixed), mixed);
    }

    #[tokio::test]
    async fn crlf_and_cr_streams_are_cut_into_events() {
        for end in ["\r\n", "\r"] {
            let event =
                format!("data: {{\"choices\":[{{\"delta\":{{\"content\":\"hi\"}}}}]}}{end}{end}");
            let mut r = relay(true);
            assert_eq!(
                r.feed(&format!("{event}{event}")),
                format!("{event}{event}")
            );
            let (a, b) = event.split_at(20);
            assert_eq!(r.feed(a), "");
            assert_eq!(r.feed(b), event);
            assert_eq!(r.generated.events, 3, "{end:?}");
            assert_eq!(r.generated.text_bytes, 6);
        }
    }

    #[test]
    fn only_usage_objects_count() {
        assert!(has_usage_object(br#"{"usage":{"prompt_tokens":1}}"#));
        assert!(has_usage_object(
            br#"{"usageMetadata": {"promptTokenCount":1}}"#
        ));
        assert!(!has_usage_object(br#"{"usageMetadata":null}"#));
        assert!(has_usage_object(b"{\"usage\" :\n {}}"));
        assert!(!has_usage_object(br#"{"usage":null}"#));
        assert!(!has_usage_object(br#"{"usages":{},"usageMeta":{}}"#));
        assert!(has_usage_object(br#"{"usage":null,"usageMetadata":{}}"#));
        assert!(!has_usage_object(br#"{"finish_reason":"usage","x":{}}"#));
        // Escaped inside a string, the key is not a key.
        assert!(!has_usage_object(br#"{"content":"\"usage\": {"}"#));
    }

    #[test]
    fn only_the_chunk_line_is_rewritten_when_an_event_has_several_data_lines() {
        let event =
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":1}}\r\ndata: [DONE]\rdata: x\n\n";
        let out = without_usage(event);
        assert_eq!(
            &out[..],
            &b"data: {\"choices\":[]}\ndata: [DONE]\ndata: x\n\n"[..]
        );
        assert!(out.len() <= event.len());
    }

    #[test]
    fn event_data_reads_the_data_line() {
        assert_eq!(event_data(b"data: {}\n\n"), Some(&b"{}"[..]));
        assert_eq!(event_data(b"event: x\ndata:{}\r\n\n"), Some(&b"{}"[..]));
        assert_eq!(event_data(b": comment\n\n"), None);
    }
}
