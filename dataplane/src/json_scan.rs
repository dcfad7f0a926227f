//! One pass over a JSON document that checks it is well formed and finds one member of its
//! top-level object, without building anything.
//!
//! Why: every non-streamed answer is read for its `usage`, and a 2xx whose body is not JSON
//! must become a 502. Deserialising the whole answer with serde to reach one member cost about
//! 17 instructions per byte (matching and skipping every field through the visitor machinery);
//! this scanner checks the grammar (RFC 8259: strings with their escapes and no raw control
//! characters, numbers, literals, nesting) byte by byte with no allocation, and serde then reads
//! only the member's bytes. Nesting deeper than [`MAX_DEPTH`] is refused, like serde_json's own
//! recursion limit, so a hostile body costs at most one pass and no stack.

use std::ops::Range;

/// The deepest nesting accepted, the top-level object included (serde_json's own limit is
/// 127).
pub const MAX_DEPTH: usize = 128;

/// Not one well-formed JSON value, or nested deeper than [`MAX_DEPTH`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// Checks that `body` is one well-formed JSON object and returns the byte range of the value
/// of its top-level member named `key` (the last one, if repeated; `key` is compared as
/// written, without unescaping). Any other JSON value is [`Malformed`] too.
pub fn top_level_member(body: &[u8], key: &[u8]) -> Result<Option<Range<usize>>, Malformed> {
    // Outside strings the grammar allows only ASCII: one check of the whole body covers the
    // strings' UTF-8 (the standard library's check runs a word at a time over ASCII).
    std::str::from_utf8(body).map_err(|_| Malformed)?;
    let mut scan = Scan { body, at: 0 };
    scan.space();
    if scan.peek() != Some(b'{') {
        return Err(Malformed);
    }
    let found = scan.top_object(key)?;
    scan.space();
    if scan.at != body.len() {
        return Err(Malformed);
    }
    Ok(found)
}

/// The containers open inside the top-level object, innermost in the lowest bit.
#[derive(Default)]
struct Open {
    bits: u128,
    depth: usize,
}

impl Open {
    /// The top-level object is one level: [`MAX_DEPTH`] - 1 are left for its members.
    fn push(&mut self, object: bool) -> Result<(), Malformed> {
        if self.depth + 1 >= MAX_DEPTH {
            return Err(Malformed);
        }
        self.bits = (self.bits << 1) | u128::from(object);
        self.depth += 1;
        Ok(())
    }

    fn pop(&mut self) {
        self.bits >>= 1;
        self.depth -= 1;
    }

    /// Whether the innermost open container is an object; `None` when none is open.
    fn last(&self) -> Option<bool> {
        (self.depth > 0).then_some(self.bits & 1 == 1)
    }
}

struct Scan<'a> {
    body: &'a [u8],
    at: usize,
}

impl Scan<'_> {
    fn peek(&self) -> Option<u8> {
        self.body.get(self.at).copied()
    }

    fn space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    fn expect(&mut self, byte: u8) -> Result<(), Malformed> {
        self.space();
        if self.peek() != Some(byte) {
            return Err(Malformed);
        }
        self.at += 1;
        Ok(())
    }

    /// The top-level object, remembering where `key`'s value is.
    fn top_object(&mut self, key: &[u8]) -> Result<Option<Range<usize>>, Malformed> {
        self.at += 1;
        let mut found = None;
        self.space();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(None);
        }
        loop {
            self.space();
            let name = self.string()?;
            self.expect(b':')?;
            self.space();
            let start = self.at;
            self.value()?;
            if &self.body[name.start + 1..name.end - 1] == key {
                found = Some(start..self.at);
            }
            self.space();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(found);
                }
                _ => return Err(Malformed),
            }
        }
    }

    /// A member's value, nested containers included, inside the top-level object. What is
    /// open is a stack of bits (1 for an object, 0 for an array): no allocation.
    fn value(&mut self) -> Result<(), Malformed> {
        let mut open = Open::default();
        loop {
            self.space();
            match self.peek().ok_or(Malformed)? {
                b'{' | b'[' => {
                    let object = self.peek() == Some(b'{');
                    self.at += 1;
                    open.push(object)?;
                    self.space();
                    let close = if object { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.at += 1;
                        open.pop();
                    } else {
                        if object {
                            self.string()?;
                            self.expect(b':')?;
                        }
                        continue;
                    }
                }
                b'"' => {
                    self.string()?;
                }
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                b'-' | b'0'..=b'9' => self.number()?,
                _ => return Err(Malformed),
            }
            // A value ended: close what ends here, or go on to the next member or element.
            loop {
                let Some(object) = open.last() else {
                    return Ok(());
                };
                self.space();
                match self.peek() {
                    Some(b',') => {
                        self.at += 1;
                        if object {
                            self.space();
                            self.string()?;
                            self.expect(b':')?;
                        }
                        break;
                    }
                    Some(b'}') if object => {
                        self.at += 1;
                        open.pop();
                    }
                    Some(b']') if !object => {
                        self.at += 1;
                        open.pop();
                    }
                    _ => return Err(Malformed),
                }
            }
        }
    }

    /// A string, quotes included; its range. The body was checked to be UTF-8 as a whole;
    /// here `memchr` finds the next quote or backslash, and the bytes before it are checked
    /// for raw control characters (a loop the compiler vectorises).
    fn string(&mut self) -> Result<Range<usize>, Malformed> {
        let start = self.at;
        if self.peek() != Some(b'"') {
            return Err(Malformed);
        }
        self.at += 1;
        loop {
            let rest = &self.body[self.at..];
            let stop = memchr::memchr2(b'"', b'\\', rest).ok_or(Malformed)?;
            if rest[..stop].iter().any(|&b| b < 0x20) {
                return Err(Malformed);
            }
            self.at += stop;
            if self.body[self.at] == b'"' {
                self.at += 1;
                return Ok(start..self.at);
            }
            self.escape()?;
        }
    }

    fn escape(&mut self) -> Result<(), Malformed> {
        match self.body.get(self.at + 1).ok_or(Malformed)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 2,
            b'u' => {
                let hex = self.body.get(self.at + 2..self.at + 6).ok_or(Malformed)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return Err(Malformed);
                }
                self.at += 6;
            }
            _ => return Err(Malformed),
        }
        Ok(())
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Malformed> {
        if !self.body[self.at..].starts_with(word) {
            return Err(Malformed);
        }
        self.at += word.len();
        Ok(())
    }

    /// `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`
    fn number(&mut self) -> Result<(), Malformed> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(Malformed),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            self.at_least_one_digit()?;
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.at += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.at += 1;
            }
            self.at_least_one_digit()?;
        }
        Ok(())
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.at += 1;
        }
    }

    fn at_least_one_digit(&mut self) -> Result<(), Malformed> {
        if !matches!(self.peek(), Some(b'0'..=b'9')) {
            return Err(Malformed);
        }
        self.digits();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn usage(body: &str) -> Result<Option<&str>, Malformed> {
        top_level_member(body.as_bytes(), b"usage").map(|r| r.map(|r| &body[r]))
    }

    #[test]
    fn finds_the_top_level_member_only() {
        let body = r#"{"choices":[{"message":{"usage":"no"}}],"usage":{"prompt_tokens":19} }"#;
        assert_eq!(usage(body), Ok(Some(r#"{"prompt_tokens":19}"#)));
        assert_eq!(usage(r#"{"a":"\"usage\":1"}"#), Ok(None));
        assert_eq!(usage(" {} "), Ok(None));
    }

    #[test]
    fn refuses_what_is_not_one_json_value() {
        for bad in [
            "",
            "{",
            r#"{"usage":}"#,
            r#"{"a":1,}"#,
            "[1,]",
            "01",
            "1.",
            "-",
            "1e",
            r#""\x""#,
            "\"a\u{1}\"",
            r#"{"a" 1}"#,
            "{} {}",
            "tru",
            "nul",
            r#"{1:2}"#,
            r#""\u12g4""#,
            "[}",
            // JSON, but not an object: no answer of the APIs we read.
            "[]",
            "null",
            "1",
            r#""usage""#,
        ] {
            assert_eq!(usage(bad), Err(Malformed), "{bad:?}");
        }
    }

    #[test]
    fn refuses_nesting_deeper_than_the_limit() {
        // The top-level object counts as one level.
        let deep = |n: usize| format!(r#"{{"a":{}{}}}"#, "[".repeat(n), "]".repeat(n));
        assert_eq!(usage(&deep(MAX_DEPTH - 1)), Ok(None));
        assert_eq!(usage(&deep(MAX_DEPTH)), Err(Malformed));
    }

    fn json_ish() -> impl Strategy<Value = String> {
        let atom = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| f.to_string()),
            ".*".prop_map(|s| serde_json::to_string(&s).unwrap()),
        ];
        atom.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec(("(usage|[a-z]{1,3})", inner), 0..5).prop_map(|m| {
                    let members: Vec<String> =
                        m.into_iter().map(|(k, v)| format!("{k:?}:{v}")).collect();
                    format!("{{ {} }}", members.join(" , "))
                }),
            ]
        })
    }

    proptest! {
        /// The scanner and serde_json agree on what is JSON, on valid documents and on the
        /// same documents cut short or with one byte changed.
        #[test]
        fn agrees_with_serde_json(doc in json_ish(), cut in any::<prop::sample::Index>(), byte in any::<u8>(), at in any::<prop::sample::Index>()) {
            let mut variants = vec![doc.clone().into_bytes(), format!(r#"{{"id":1,"usage":{doc}}}"#).into_bytes()];
            variants.push(doc.as_bytes()[..cut.index(doc.len() + 1)].to_vec());
            let mut changed = doc.clone().into_bytes();
            if !changed.is_empty() {
                let i = at.index(changed.len());
                changed[i] = byte;
            }
            variants.push(changed);
            for bytes in variants {
                let serde = serde_json::from_slice::<serde_json::Value>(&bytes);
                let ours = top_level_member(&bytes, b"usage");
                let object = matches!(serde, Ok(serde_json::Value::Object(_)));
                prop_assert_eq!(object, ours.is_ok(), "{:?}", String::from_utf8_lossy(&bytes));
                if let (Ok(serde_json::Value::Object(map)), Ok(found)) = (serde, ours) {
                    let theirs = map.get("usage").cloned();
                    let mine = found.map(|r| serde_json::from_slice::<serde_json::Value>(&bytes[r]).unwrap());
                    prop_assert_eq!(theirs, mine);
                }
            }
        }
    }
}
