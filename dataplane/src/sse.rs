//! Server-sent events as the spec frames them, scanned in linear time.
//!
//! Lines end with CRLF, LF or a lone CR; an event ends at a blank line. Upstreams are
//! untrusted, so the one scanner here is shared by everything that cuts an upstream stream
//! into events — the transport's per-event size cap ([`crate::providers::client`]), the
//! passthrough relay ([`crate::relay`]) and the stream translators
//! ([`crate::providers::translate`]):
//! - [`EventScanner`] is fed bytes as they arrive and reports where each event ends. It keeps
//!   its state between feeds (a CR at the end of one read and the LF that starts the next are
//!   one line end), so every byte is looked at once: no rescanning of a growing tail.
//! - [`lines`] splits one event into its lines with the same three line ends.
//! - [`text_bytes`] measures the generated text an event carries, for charging a stream that
//!   was cut before its usage report ([`crate::accounting`]).

use std::sync::LazyLock;

use memchr::memmem;

/// Where events end in a byte stream fed piece by piece.
#[derive(Debug, Clone, Default)]
pub struct EventScanner {
    /// The last byte fed ended a line (or nothing was fed yet, or the last event just ended).
    mid_line: bool,
    /// The last byte fed was a CR: an LF right after it belongs to the same line end.
    after_cr: bool,
    /// The event being scanned has bytes besides line ends.
    has_bytes: bool,
    /// Bytes of the event being scanned so far.
    event_len: usize,
}

impl EventScanner {
    /// Scans `bytes`, the next piece of the stream, and calls `on_end` with the offset (in
    /// `bytes`) just past each event's end. Blank lines before an event belong to it; an LF
    /// completing a CRLF that ends an event is included when it is in the same piece.
    pub fn feed(&mut self, bytes: &[u8], mut on_end: impl FnMut(usize)) {
        let mut at = 0;
        if self.after_cr && bytes.first() == Some(&b'\n') {
            at = 1;
        }
        self.after_cr = false;
        while at < bytes.len() {
            let Some(found) = memchr::memchr2(b'\r', b'\n', &bytes[at..]) else {
                self.mid_line = true;
                self.has_bytes = true;
                self.event_len += bytes.len() - at;
                return;
            };
            if found > 0 {
                self.mid_line = true;
                self.has_bytes = true;
            }
            let mut end = at + found + 1;
            if bytes[at + found] == b'\r' {
                match bytes.get(end) {
                    Some(b'\n') => end += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            self.event_len += end - at;
            at = end;
            if self.mid_line {
                self.mid_line = false;
            } else if self.has_bytes {
                self.has_bytes = false;
                self.event_len = 0;
                on_end(at);
            }
        }
    }

    /// Bytes of the unfinished event so far (its leading blank lines included).
    pub fn pending_len(&self) -> usize {
        self.event_len
    }

    /// Whether an unfinished event has anything besides line ends.
    pub fn has_pending_event(&self) -> bool {
        self.has_bytes
    }
}

/// The lines of an event, without their line ends (CRLF, LF or CR).
pub fn lines(event: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = event;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some(at) = memchr::memchr2(b'\r', b'\n', rest) else {
            return Some(std::mem::take(&mut rest));
        };
        let line = &rest[..at];
        let skip = if rest[at] == b'\r' && rest.get(at + 1) == Some(&b'\n') {
            2
        } else {
            1
        };
        rest = &rest[at + skip..];
        Some(line)
    })
}

/// The value of a field line (`data:`, `event:`), one leading space removed.
pub fn field<'a>(line: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let value = line.strip_prefix(name)?.strip_prefix(b":")?;
    Some(value.strip_prefix(b" ").unwrap_or(value))
}

/// JSON keys whose string values are generated text, in the client protocols a relayed
/// stream speaks (OpenAI chunks, Anthropic events), each with its opening quote.
const TEXT_KEYS: [&[u8]; 6] = [
    b"\"content",
    b"\"text",
    b"\"arguments",
    b"\"partial_json",
    b"\"thinking",
    b"\"reasoning_content",
];

/// A key's end and a string value's start: `":"`.
static KEY_THEN_STRING: LazyLock<memmem::Finder<'static>> =
    LazyLock::new(|| memmem::Finder::new(b"\":\""));

/// Bytes of generated text in an event's JSON: the string values of its text keys (escapes
/// counted as written). A byte search, not a parse, and one pass over the event: every place
/// where a key meets a string value (`":"`) is matched against the text keys. An escaped key
/// inside a string does not match, since its quotes are preceded by backslashes.
pub fn text_bytes(event: &[u8]) -> u64 {
    let mut total = 0u64;
    for at in KEY_THEN_STRING.find_iter(event) {
        if TEXT_KEYS.iter().any(|key| event[..at].ends_with(key)) {
            total += string_len(&event[at + 3..]) as u64;
        }
    }
    total
}

/// Length of a JSON string's contents up to its closing quote (or the end of `bytes`).
fn string_len(bytes: &[u8]) -> usize {
    let mut at = 0;
    while let Some(found) = memchr::memchr2(b'"', b'\\', &bytes[at..]) {
        if bytes[at + found] == b'"' {
            return at + found;
        }
        at += found + 2;
        if at >= bytes.len() {
            return bytes.len();
        }
    }
    bytes.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `pieces` and returns the events (as strings) the scanner cut.
    fn cut(pieces: &[&str]) -> Vec<String> {
        let mut scanner = EventScanner::default();
        let mut events = Vec::new();
        let mut pending = String::new();
        for piece in pieces {
            let mut start = 0;
            scanner.feed(piece.as_bytes(), |end| {
                pending.push_str(&piece[start..end]);
                events.push(std::mem::take(&mut pending));
                start = end;
            });
            pending.push_str(&piece[start..]);
        }
        assert_eq!(scanner.pending_len(), pending.len());
        events
    }

    #[test]
    fn every_line_end_of_the_spec_ends_events() {
        assert_eq!(
            cut(&["data: a\n\ndata: b\n\n"]),
            ["data: a\n\n", "data: b\n\n"]
        );
        assert_eq!(
            cut(&["data: a\r\n\r\ndata: b\r\n\r\n"]),
            ["data: a\r\n\r\n", "data: b\r\n\r\n"]
        );
        assert_eq!(
            cut(&["data: a\r\rdata: b\r\r"]),
            ["data: a\r\r", "data: b\r\r"]
        );
        assert_eq!(
            cut(&["data: a\r\n\n", "x: 1\n\r\n"]),
            ["data: a\r\n\n", "x: 1\n\r\n"]
        );
        assert!(cut(&["data: a\r\ndata: b\r\n"]).is_empty());
    }

    #[test]
    fn a_crlf_split_across_reads_is_one_line_end() {
        assert_eq!(
            cut(&["data: a\r", "\n\r", "\ndata: b\r\n\r\n"]),
            ["data: a\r\n\r", "\ndata: b\r\n\r\n"]
        );
        // The LF that completes the previous CRLF is not a blank line of its own.
        let mut scanner = EventScanner::default();
        let mut ends = 0;
        scanner.feed(b"data: a\r", |_| ends += 1);
        scanner.feed(b"\n", |_| ends += 1);
        assert_eq!(ends, 0);
        scanner.feed(b"\n", |_| ends += 1);
        assert_eq!(ends, 1);
    }

    #[test]
    fn blank_lines_alone_are_no_events() {
        assert!(cut(&["\n\n\r\n\r\r"]).is_empty());
        assert_eq!(cut(&["\n\ndata: a\n\n"]), ["\n\ndata: a\n\n"]);
    }

    #[test]
    fn a_line_without_end_is_counted_in_linear_time() {
        let mut scanner = EventScanner::default();
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..1024 {
            scanner.feed(&chunk, |_| panic!("no event ends"));
        }
        assert_eq!(scanner.pending_len(), 64 * 1024 * 1024);
        assert!(scanner.has_pending_event());
    }

    #[test]
    fn lines_split_on_every_line_end() {
        let got: Vec<&[u8]> = lines(b"a\r\nb\nc\rd").collect();
        assert_eq!(got, [&b"a"[..], b"b", b"c", b"d"]);
        assert_eq!(field(b"data: {}", b"data"), Some(&b"{}"[..]));
        assert_eq!(field(b"data:{}", b"data"), Some(&b"{}"[..]));
        assert_eq!(field(b"database: x", b"data"), None);
    }

    #[test]
    fn text_bytes_measure_generated_text_only() {
        let chunk = br#"{"id":"x","choices":[{"delta":{"content":"hello \"you\""}}]}"#;
        assert_eq!(text_bytes(chunk), 13);
        let anthropic =
            br#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"abcd"}}"#;
        assert_eq!(text_bytes(anthropic), 4);
        assert_eq!(text_bytes(br#"{"content":null,"x":"\"content\":\"zz"}"#), 0);
    }
}
