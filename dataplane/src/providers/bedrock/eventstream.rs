//! AWS's event-stream binary framing (`application/vnd.amazon.eventstream`), as ConverseStream
//! sends it.
//!
//! A message is: total length (u32, big-endian), headers length (u32), a CRC-32 of those eight
//! bytes, the headers, the payload, and a CRC-32 of everything before it. A header is a name
//! (u8 length + bytes), a type byte and a typed value; Bedrock uses strings (type 7) for
//! `:event-type`, `:content-type`, `:message-type` and `:exception-type`.
//!
//! [`EventStreamTranslate`] (the shared [`Translated`] body with this [`EventStream`] framing)
//! decodes frames as they arrive and hands each message to a
//! [`StreamTranslator`](crate::providers::translate::StreamTranslator) at once; [`encode`]
//! builds messages (the mock upstream and the tests use it).

use bytes::{Buf, Bytes, BytesMut};

use crate::providers::BodyError;
use crate::providers::translate::{Events, Framing, Translated};

/// Largest message accepted; Bedrock's are a few KiB.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// CRC-32 (IEEE 802.3, reflected, as zlib computes it).
pub fn crc32(bytes: &[u8]) -> u32 {
    static TABLE: std::sync::LazyLock<[u32; 256]> = std::sync::LazyLock::new(|| {
        let mut table = [0u32; 256];
        for (i, slot) in table.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 == 1 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        table
    });
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc = TABLE[((crc ^ u32::from(b)) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

/// One decoded message: its string headers and payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub headers: Vec<(String, String)>,
    pub payload: Bytes,
}

impl Message {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("event-stream prelude checksum mismatch")]
    PreludeCrc,
    #[error("event-stream message checksum mismatch")]
    MessageCrc,
    #[error("event-stream message malformed: {0}")]
    Malformed(&'static str),
}

/// Decodes the first complete message in `buf`, consuming it; `Ok(None)` if more bytes are
/// needed.
pub fn decode(buf: &mut BytesMut) -> Result<Option<Message>, DecodeError> {
    if buf.len() < 12 {
        return Ok(None);
    }
    let total = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let headers_len = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
    let prelude_crc = u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
    if crc32(&buf[..8]) != prelude_crc {
        return Err(DecodeError::PreludeCrc);
    }
    if !(16..=MAX_MESSAGE_BYTES).contains(&total) || headers_len > total - 16 {
        return Err(DecodeError::Malformed("bad lengths"));
    }
    if buf.len() < total {
        return Ok(None);
    }
    let message = buf.split_to(total).freeze();
    let crc = u32::from_be_bytes([
        message[total - 4],
        message[total - 3],
        message[total - 2],
        message[total - 1],
    ]);
    if crc32(&message[..total - 4]) != crc {
        return Err(DecodeError::MessageCrc);
    }
    let mut raw = message.slice(12..12 + headers_len);
    let mut headers = Vec::new();
    while raw.has_remaining() {
        let name_len = usize::from(raw.get_u8());
        if raw.remaining() < name_len + 1 {
            return Err(DecodeError::Malformed("header name"));
        }
        let name = String::from_utf8_lossy(&raw.split_to(name_len)).into_owned();
        let kind = raw.get_u8();
        let fixed = match kind {
            0 | 1 => Some(0),
            2 => Some(1),
            3 => Some(2),
            4 => Some(4),
            5 | 8 => Some(8),
            9 => Some(16),
            6 | 7 => None,
            _ => return Err(DecodeError::Malformed("header type")),
        };
        match fixed {
            Some(n) => {
                if raw.remaining() < n {
                    return Err(DecodeError::Malformed("header value"));
                }
                raw.advance(n);
            }
            None => {
                if raw.remaining() < 2 {
                    return Err(DecodeError::Malformed("header value length"));
                }
                let len = usize::from(raw.get_u16());
                if raw.remaining() < len {
                    return Err(DecodeError::Malformed("header value"));
                }
                let value = raw.split_to(len);
                if kind == 7 {
                    headers.push((name, String::from_utf8_lossy(&value).into_owned()));
                }
            }
        }
    }
    let payload = message.slice(12 + headers_len..total - 4);
    Ok(Some(Message { headers, payload }))
}

/// Encodes one message with string headers.
pub fn encode(headers: &[(&str, &str)], payload: &[u8]) -> Bytes {
    let mut h = Vec::new();
    for (name, value) in headers {
        h.push(name.len() as u8);
        h.extend_from_slice(name.as_bytes());
        h.push(7);
        h.extend_from_slice(&(value.len() as u16).to_be_bytes());
        h.extend_from_slice(value.as_bytes());
    }
    let total = 12 + h.len() + payload.len() + 4;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(total as u32).to_be_bytes());
    out.extend_from_slice(&(h.len() as u32).to_be_bytes());
    let prelude_crc = crc32(&out);
    out.extend_from_slice(&prelude_crc.to_be_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(payload);
    let crc = crc32(&out);
    out.extend_from_slice(&crc.to_be_bytes());
    Bytes::from(out)
}

/// AWS's event-stream framing for [`Translated`]: each decoded message goes to the translator
/// named by its `:event-type`, or `exception` for exception messages.
#[derive(Debug, Default)]
pub struct EventStream;

/// A body that decodes an event stream and converts each message with a translator.
pub type EventStreamTranslate<T> = Translated<EventStream, T>;

impl Framing for EventStream {
    fn drain(&mut self, buf: &mut BytesMut, events: Events<'_>) -> Result<(), BodyError> {
        while let Some(message) = decode(buf).map_err(|e| BodyError::Failed(e.to_string()))? {
            let name = match message.header(":message-type") {
                Some("event") | None => message.header(":event-type"),
                Some(_) => Some("exception"),
            };
            events(name, &message.payload);
        }
        Ok(())
    }

    fn end(&mut self, rest: &[u8], _events: Events<'_>) -> Result<(), BodyError> {
        if rest.is_empty() {
            Ok(())
        } else {
            Err(BodyError::Failed(
                "event stream ended inside a message".into(),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn round_trips_and_waits_for_whole_messages() {
        let a = encode(
            &[(":event-type", "messageStart"), (":message-type", "event")],
            br#"{"role":"assistant"}"#,
        );
        let b = encode(
            &[(":event-type", "messageStop")],
            br#"{"stopReason":"end_turn"}"#,
        );
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&a[..10]);
        assert_eq!(decode(&mut buf), Ok(None));
        buf.extend_from_slice(&a[10..]);
        buf.extend_from_slice(&b[..20]);
        let m = decode(&mut buf).unwrap().unwrap();
        assert_eq!(m.header(":event-type"), Some("messageStart"));
        assert_eq!(&m.payload[..], br#"{"role":"assistant"}"#);
        assert_eq!(decode(&mut buf), Ok(None));
        buf.extend_from_slice(&b[20..]);
        assert_eq!(
            decode(&mut buf).unwrap().unwrap().header(":event-type"),
            Some("messageStop")
        );
        assert!(buf.is_empty());
    }

    #[test]
    fn corrupted_messages_are_refused() {
        let mut m = encode(&[(":event-type", "x")], b"{}").to_vec();
        let last = m.len() - 6;
        m[last] ^= 1;
        assert_eq!(
            decode(&mut BytesMut::from(&m[..])),
            Err(DecodeError::MessageCrc)
        );
        let mut m = encode(&[(":event-type", "x")], b"{}").to_vec();
        m[1] ^= 1;
        assert_eq!(
            decode(&mut BytesMut::from(&m[..])),
            Err(DecodeError::PreludeCrc)
        );
    }
}
