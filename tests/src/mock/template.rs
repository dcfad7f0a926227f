//! A JSON document rendered once, with holes for the few values that change per request.
//!
//! The mock must stay far faster than any gateway it measures, so it never serialises JSON on
//! the request path. A template is built at start-up from a `serde_json::Value` in which some
//! values are sentinel strings (`"@@MODEL@@"`); rendering copies the literal pieces and lets the
//! caller write each hole's raw JSON value.

use std::fmt::Write as _;

use anyhow::{Context as _, bail};
use bytes::{BufMut as _, BytesMut};
use serde_json::Value;

/// A value that differs between requests; the caller writes it as raw JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hole {
    /// The request's `model`, as a JSON string literal.
    Model,
    /// The response id, as a JSON string literal.
    Id,
    /// Unix seconds.
    Created,
    /// A chat chunk's `delta` object.
    Delta,
    /// A legacy completion chunk's `text` string literal.
    Text,
    /// `finish_reason`: `null` or a string literal.
    Finish,
    /// `usage.prompt_tokens`.
    Prompt,
    /// `usage.prompt_tokens_details.cached_tokens`.
    Cached,
    /// `usage.completion_tokens`.
    Completion,
    /// `usage.total_tokens`.
    Total,
}

impl Hole {
    const ALL: [Hole; 10] = [
        Hole::Model,
        Hole::Id,
        Hole::Created,
        Hole::Delta,
        Hole::Text,
        Hole::Finish,
        Hole::Prompt,
        Hole::Cached,
        Hole::Completion,
        Hole::Total,
    ];

    /// The sentinel string to put in a `Value` where this hole goes.
    pub fn sentinel(self) -> &'static str {
        match self {
            Hole::Model => "@@MODEL@@",
            Hole::Id => "@@ID@@",
            Hole::Created => "@@CREATED@@",
            Hole::Delta => "@@DELTA@@",
            Hole::Text => "@@TEXT@@",
            Hole::Finish => "@@FINISH@@",
            Hole::Prompt => "@@PROMPT@@",
            Hole::Cached => "@@CACHED@@",
            Hole::Completion => "@@COMPLETION@@",
            Hole::Total => "@@TOTAL@@",
        }
    }

    /// `Value` form of the sentinel, for building templates.
    pub fn value(self) -> Value {
        Value::String(self.sentinel().to_owned())
    }
}

#[derive(Debug)]
enum Piece {
    Literal(Box<[u8]>),
    Hole(Hole),
}

/// A pre-rendered JSON document with holes.
#[derive(Debug)]
pub struct Template {
    pieces: Vec<Piece>,
    literal_len: usize,
}

impl Template {
    /// Renders `value` once and cuts it at every quoted sentinel.
    pub fn build(value: &Value) -> anyhow::Result<Self> {
        let text = serde_json::to_string(value).context("rendering a mock template")?;
        let mut pieces = Vec::new();
        let mut literal_len = 0;
        let mut rest = text.as_str();
        while let Some(start) = rest.find("\"@@") {
            let after = &rest[start + 1..];
            let Some(end) = after[2..].find("@@\"") else {
                bail!("unterminated sentinel in mock template: {rest}");
            };
            let name = &after[..end + 4];
            let Some(hole) = Hole::ALL.into_iter().find(|h| h.sentinel() == name) else {
                bail!("unknown sentinel {name} in mock template");
            };
            literal_len += start;
            pieces.push(Piece::Literal(rest.as_bytes()[..start].into()));
            pieces.push(Piece::Hole(hole));
            rest = &after[end + 5..];
        }
        literal_len += rest.len();
        pieces.push(Piece::Literal(rest.as_bytes().into()));
        Ok(Self {
            pieces,
            literal_len,
        })
    }

    /// Length of the literal parts, for sizing buffers.
    pub fn literal_len(&self) -> usize {
        self.literal_len
    }

    /// Appends the document to `out`, calling `fill` to write each hole.
    pub fn render(&self, out: &mut BytesMut, mut fill: impl FnMut(Hole, &mut BytesMut)) {
        for piece in &self.pieces {
            match piece {
                Piece::Literal(bytes) => out.put_slice(bytes),
                Piece::Hole(hole) => fill(*hole, out),
            }
        }
    }
}

/// Writes a number in decimal.
pub fn put_u64(out: &mut BytesMut, n: u64) {
    // Writing to a BytesMut grows it and cannot fail.
    let _ = write!(out, "{n}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cuts_at_sentinels_and_fills_them() {
        let t = Template::build(&json!({"a": Hole::Model.value(), "b": [1, Hole::Total.value()]}))
            .unwrap();
        let mut out = BytesMut::new();
        t.render(&mut out, |hole, out| match hole {
            Hole::Model => out.put_slice(b"\"m\""),
            Hole::Total => put_u64(out, 42),
            _ => unreachable!(),
        });
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v, json!({"a": "m", "b": [1, 42]}));
    }

    #[test]
    fn rejects_unknown_sentinels() {
        assert!(Template::build(&json!({"a": "@@NOPE@@"})).is_err());
    }
}
