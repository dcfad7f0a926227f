//! Streaming relay: upstream SSE bytes to the client as they arrive.
//!
//! The relay never waits for data that has not arrived. What it does with what has arrived:
//! - **Coalesces** frames that are already there: after one frame it drains every frame the
//!   upstream body has ready and writes them in one go. Each write to the client costs a
//!   syscall and an HTTP chunk header; a burst of twenty small events should not cost twenty.
//! - **Aligns to events**: it forwards only complete SSE events (up to the last `\n\n`) and
//!   keeps a partial tail until its end arrives. A client cannot use half an event, so this
//!   delays nothing usable, and it lets the relay look at whole events.
//! - **Reads usage** from the events that carry it (found with a byte search, parsed only when
//!   found; Anthropic's stream reports input in `message_start` and output in
//!   `message_delta`, so reports are merged) and **strips** OpenAI's usage-only event when the
//!   gateway, not the client, asked for it.
//! - **Counts the events** it relays, so that a stream cut short is charged what was generated
//!   (see [`crate::accounting`]): one `\n\n` search over bytes the relay scans anyway.
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

use crate::accounting::{Ledger, usage_from_chunk};
use crate::providers::UpstreamBody;

/// The client-facing body of a streamed answer.
pub struct SseRelay {
    upstream: UpstreamBody,
    /// Bytes already read from upstream but not yet given to the client.
    pending: Option<Bytes>,
    /// An incomplete event waiting for its end.
    tail: BytesMut,
    strip_usage_event: bool,
    usage: Option<Usage>,
    /// Events passed to the client so far.
    events: u64,
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
        Self {
            upstream,
            pending: Some(first),
            tail: BytesMut::new(),
            strip_usage_event: !ledger.request().client_wants_usage,
            usage: None,
            events: 0,
            ledger: Some(ledger),
            deadline: Box::pin(tokio::time::sleep_until(deadline)),
            finished: false,
        }
    }

    fn close(&mut self, outcome: Outcome, status: StatusCode) {
        self.finished = true;
        if let Some(ledger) = self.ledger.take() {
            ledger.stream_closed(outcome, status, self.usage, self.events);
        }
    }

    /// Counts the complete events in bytes about to go to the client.
    fn relayed(&mut self, bytes: Bytes) -> Bytes {
        self.events += EVENT_END.find_iter(&bytes).count() as u64;
        bytes
    }

    /// Turns what arrived into what the client gets: complete events only, usage noted, the
    /// usage-only event removed when the client did not ask for it.
    fn process(&mut self, input: Bytes) -> Option<Bytes> {
        let complete = if self.tail.is_empty() {
            match last_event_end(&input) {
                Some(end) if end == input.len() => input,
                Some(end) => {
                    self.tail.extend_from_slice(&input[end..]);
                    input.slice(..end)
                }
                None => {
                    self.tail.extend_from_slice(&input);
                    return None;
                }
            }
        } else {
            self.tail.extend_from_slice(&input);
            let end = last_event_end(&self.tail)?;
            self.tail.split_to(end).freeze()
        };
        if !has_usage_object(&complete) {
            return Some(complete);
        }
        self.take_usage(complete)
    }

    /// Finds the usage event among complete events; drops it if it must be stripped.
    fn take_usage(&mut self, complete: Bytes) -> Option<Bytes> {
        let mut out: Option<BytesMut> = None;
        let mut start = 0;
        for end in EVENT_END.find_iter(&complete).map(|i| i + 2) {
            let event = &complete[start..end];
            let found = if has_usage_object(event) {
                event_data(event).and_then(usage_from_chunk)
            } else {
                None
            };
            let keep = match found {
                Some((usage, only_usage)) => {
                    usage.merge_into(self.usage.get_or_insert_with(Usage::default));
                    !(self.strip_usage_event && only_usage)
                }
                None => true,
            };
            if !keep && out.is_none() {
                out = Some(BytesMut::from(&complete[..start]));
            } else if keep && let Some(out) = out.as_mut() {
                out.extend_from_slice(event);
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

static EVENT_END: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\n\n"));
static LAST_EVENT_END: LazyLock<memmem::FinderRev<'static>> =
    LazyLock::new(|| memmem::FinderRev::new(b"\n\n"));
static USAGE_KEY: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\"usage\""));

/// Offset just past the last `\n\n` in `bytes`.
fn last_event_end(bytes: &[u8]) -> Option<usize> {
    LAST_EVENT_END.rfind(bytes).map(|i| i + 2)
}

/// Whether `bytes` holds a `"usage"` key whose value is an object. OpenAI-compatible servers
/// put `"usage":null` in every chunk of a stream that asked for usage; only the one real
/// report is worth parsing.
fn has_usage_object(bytes: &[u8]) -> bool {
    USAGE_KEY.find_iter(bytes).any(|at| {
        let mut rest = bytes[at + b"\"usage\"".len()..]
            .iter()
            .filter(|b| !b.is_ascii_whitespace());
        rest.next() == Some(&b':') && rest.next() == Some(&b'{')
    })
}

/// The payload of an event's `data:` line(s), when it has exactly one (OpenAI's events do).
fn event_data(event: &[u8]) -> Option<&[u8]> {
    let line = event
        .split(|&b| b == b'\n')
        .find(|line| line.starts_with(b"data:"))?;
    let data = &line[5..];
    let data = data.strip_prefix(b" ").unwrap_or(data);
    Some(data.strip_suffix(b"\r").unwrap_or(data))
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
            this.events += u64::from(!rest.is_empty());
            let out = match (out, rest.is_empty()) {
                (out, true) => out,
                (Some(out), false) => {
                    let mut joined = BytesMut::from(&out[..]);
                    joined.extend_from_slice(&rest);
                    Some(joined.freeze())
                }
                (None, false) => Some(rest),
            };
            let out = out.map(|bytes| this.relayed(bytes));
            this.close(Outcome::Success, StatusCode::OK);
            return Poll::Ready(out.map(Ok));
        }
        match out {
            Some(bytes) => Poll::Ready(Some(Ok(this.relayed(bytes)))),
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
            strip,
            usage: None,
        }
    }

    /// The event-processing half of the relay, without a ledger or an upstream.
    struct SseRelayHarness {
        tail: BytesMut,
        strip: bool,
        usage: Option<Usage>,
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
                strip_usage_event: self.strip,
                usage: self.usage,
                events: 0,
                ledger: None,
                deadline: Box::pin(tokio::time::sleep(std::time::Duration::from_secs(60))),
                finished: false,
            };
            let out = r.process(Bytes::from(input.to_owned()));
            self.tail = std::mem::take(&mut r.tail);
            self.usage = r.usage;
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
    async fn usage_riding_on_a_content_chunk_is_never_stripped() {
        let mut r = relay(true);
        let mixed = "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1}}\n\n";
        assert_eq!(r.feed(mixed), mixed);
        assert_eq!(r.usage.unwrap().total_tokens(), 2);
    }

    #[test]
    fn only_usage_objects_count() {
        assert!(has_usage_object(br#"{"usage":{"prompt_tokens":1}}"#));
        assert!(has_usage_object(b"{\"usage\" :\n {}}"));
        assert!(!has_usage_object(br#"{"usage":null}"#));
        assert!(!has_usage_object(br#"{"finish_reason":"usage","x":{}}"#));
        // Escaped inside a string, the key is not a key.
        assert!(!has_usage_object(br#"{"content":"\"usage\": {"}"#));
    }

    #[test]
    fn event_data_reads_the_data_line() {
        assert_eq!(event_data(b"data: {}\n\n"), Some(&b"{}"[..]));
        assert_eq!(event_data(b"event: x\ndata:{}\r\n\n"), Some(&b"{}"[..]));
        assert_eq!(event_data(b": comment\n\n"), None);
    }
}
