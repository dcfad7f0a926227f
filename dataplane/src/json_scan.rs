//! A validating scan of a complete JSON answer that finds a few top-level fields without
//! building anything: the byte spans of their values, to be read alone.
//!
//! Why it exists: a non-streamed 2xx whose body is not JSON is an upstream failure (a 502),
//! so every complete answer is validated in full before it is relayed. serde did that while it
//! read the answer's `usage` (about 10,900 instructions for the benchmark's 597-byte answer,
//! the largest single cost of a non-streamed request). This scan does the validation alone,
//! allocation-free and iterative (an explicit stack of at most [`MAX_DEPTH`] levels, never
//! recursion), at about ten instructions a byte. [`fields_within`] also finds the members of
//! one named object in the same pass (the answer's `usage` fields): nothing is scanned twice.
//!
//! **What it accepts is what `serde_json::from_slice` accepts** for a struct read from a
//! top-level object whose other fields are ignored: JSON's grammar, with serde_json's
//! leniencies in what it skips — a skipped string's bytes need not be UTF-8, a `\u` escape needs
//! four hex digits but not a valid code point, a number may have any size — while top-level
//! keys, which serde parses as `str`, must be UTF-8. Where that cannot be decided cheaply the
//! scan says so ([`Scan::Unsure`]) and the caller reads the body with serde as before, so the
//! outcome is serde's in every case:
//! - a top-level array (serde reads a struct from an array too);
//! - nesting deeper than [`MAX_DEPTH`] (serde's own limit is 128 levels for what it parses and
//!   none for what it skips; at most 127 here, so that a span parsed alone meets the same limit
//!   as inside the whole body);
//! - an escaped top-level key (serde matches field names after unescaping);
//! - a named field that appears twice (serde refuses a duplicate field).
//!
//! The property tests below and the fuzz target `usage_body` hold it to serde on generated and
//! mutated bodies.

use std::ops::Range;

/// Containers nested deeper than this make the scan [`Scan::Unsure`].
pub const MAX_DEPTH: usize = 127;

/// What [`fields`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan<const N: usize> {
    /// The body is a JSON object, as serde reads one; the spans of the named fields' values
    /// (each a complete JSON value), in the order the names were given.
    Object([Option<Range<usize>>; N]),
    /// The body is not JSON (serde refuses it too).
    Invalid,
    /// Not decided here (see the module's header): leave the body to serde.
    Unsure,
}

/// Scans `body` as one top-level JSON object and finds the values of the top-level fields
/// called `names` (matched on the unescaped key).
pub fn fields<const N: usize>(body: &[u8], names: [&[u8]; N]) -> Scan<N> {
    fields_within(body, names, None::<(usize, [&[u8]; 0])>).0
}

/// [`fields`], and, with `inner` = `Some((n, inner_names))`, when the value of `names[n]` is
/// an object, the spans (in `body`) of its own members called `inner_names`, found in the
/// same pass (a repeated one makes the scan [`Scan::Unsure`], as at the top level).
pub fn fields_within<const N: usize, const M: usize>(
    body: &[u8],
    names: [&[u8]; N],
    inner: Option<(usize, [&[u8]; M])>,
) -> (Scan<N>, [Option<Range<usize>>; M]) {
    let mut cursor = Cursor { b: body, i: 0 };
    let mut inner_spans = std::array::from_fn(|_| None);
    let inner = inner.map(|(n, inner_names)| (n, inner_names, &mut inner_spans));
    let scan = match cursor.document(names, inner) {
        Ok(spans) => Scan::Object(spans),
        Err(Stop::Invalid) => Scan::Invalid,
        Err(Stop::Unsure) => Scan::Unsure,
    };
    (scan, inner_spans)
}

/// Where the spans of an inner object's named members go: the index of the outer name
/// whose value it is, the inner names, their spans.
type Inner<'s, const M: usize> = Option<(usize, [&'s [u8]; M], &'s mut [Option<Range<usize>>; M])>;

/// Why a scan stopped early.
enum Stop {
    Invalid,
    Unsure,
}

/// `0x0101…01`: one in every byte of a word.
const ONES: u64 = u64::MAX / 255;

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    /// The byte at the cursor, or 0 at the end: a NUL is invalid wherever a byte is peeked
    /// (outside strings it starts nothing, inside them it is a control character), so the end
    /// needs no case of its own except after the top-level value.
    #[inline(always)]
    fn peek(&self) -> u8 {
        self.b.get(self.i).copied().unwrap_or(0)
    }

    /// Skips JSON whitespace and returns the byte after it (0 at the end).
    #[inline(always)]
    fn ws(&mut self) -> u8 {
        loop {
            let c = self.peek();
            if c > b' ' || !matches!(c, b' ' | b'\n' | b'\t' | b'\r') {
                return c;
            }
            self.i += 1;
        }
    }

    fn document<const N: usize, const M: usize>(
        &mut self,
        names: [&[u8]; N],
        inner: Inner<'_, M>,
    ) -> Result<[Option<Range<usize>>; N], Stop> {
        match self.ws() {
            b'{' => {}
            b'[' => return Err(Stop::Unsure),
            _ => return Err(Stop::Invalid),
        }
        let spans = self.members(1, names, inner)?;
        self.ws();
        if self.i == self.b.len() {
            Ok(spans)
        } else {
            Err(Stop::Invalid)
        }
    }

    /// The object whose `{` is at the cursor, at nesting `depth`: the spans of its members
    /// called `names`, and of `inner`'s within one of them.
    fn members<const N: usize, const M: usize>(
        &mut self,
        depth: usize,
        names: [&[u8]; N],
        mut inner: Inner<'_, M>,
    ) -> Result<[Option<Range<usize>>; N], Stop> {
        let mut spans = std::array::from_fn(|_| None);
        self.i += 1;
        if self.ws() == b'}' {
            self.i += 1;
            return Ok(spans);
        }
        let b = self.b;
        loop {
            let key = b.get(self.named_key()?).unwrap_or_default();
            let named = names.iter().position(|name| *name == key);
            let first = self.ws();
            let start = self.i;
            match &mut inner {
                Some((within, inner_names, inner_spans))
                    if named == Some(*within) && first == b'{' =>
                {
                    **inner_spans =
                        self.members(depth + 1, *inner_names, None::<(usize, [&[u8]; 0], _)>)?;
                }
                _ => self.value(first, depth)?,
            }
            if let Some(n) = named {
                if spans[n].is_some() {
                    return Err(Stop::Unsure);
                }
                spans[n] = Some(start..self.i);
            }
            match self.ws() {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Ok(spans);
                }
                _ => return Err(Stop::Invalid),
            }
        }
    }

    /// The key of a member that may be named, and its colon; the key's span. serde parses
    /// these as `str`.
    #[inline(always)]
    fn named_key(&mut self) -> Result<Range<usize>, Stop> {
        let (span, escaped) = self.key()?;
        if escaped {
            return Err(Stop::Unsure);
        }
        let key = self.b.get(span.clone()).unwrap_or_default();
        if !key.is_ascii() && std::str::from_utf8(key).is_err() {
            return Err(Stop::Invalid);
        }
        Ok(span)
    }

    /// A key (after optional whitespace) and its colon; the span of the key's bytes, and
    /// whether it has an escape.
    #[inline(always)]
    fn key(&mut self) -> Result<(Range<usize>, bool), Stop> {
        if self.ws() != b'"' {
            return Err(Stop::Invalid);
        }
        self.i += 1;
        let start = self.i;
        let escaped = self.string()?;
        let end = self.i - 1;
        if self.ws() != b':' {
            return Err(Stop::Invalid);
        }
        self.i += 1;
        Ok((start..end, escaped))
    }

    /// Skips one value whose first byte, at the cursor, is `first`, inside `depth` containers.
    /// Its containers are tracked in `objects`, one bit a level (set: an object).
    fn value(&mut self, first: u8, depth: usize) -> Result<(), Stop> {
        let mut objects: u128 = 0;
        let mut open = 0usize;
        let mut c = first;
        loop {
            match c {
                b'"' => {
                    self.i += 1;
                    self.string()?;
                }
                b'{' | b'[' => {
                    if depth + open >= MAX_DEPTH {
                        return Err(Stop::Unsure);
                    }
                    self.i += 1;
                    let object = c == b'{';
                    let next = self.ws();
                    if next == if object { b'}' } else { b']' } {
                        self.i += 1;
                    } else {
                        objects = objects << 1 | u128::from(object);
                        open += 1;
                        if object {
                            self.key()?;
                        }
                        c = self.ws();
                        continue;
                    }
                }
                b'-' | b'0'..=b'9' => self.number(c)?,
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                _ => return Err(Stop::Invalid),
            }
            // A value ended: close the containers it ends, up to the next value.
            loop {
                if open == 0 {
                    return Ok(());
                }
                let object = objects & 1 == 1;
                match self.ws() {
                    b',' => {
                        self.i += 1;
                        if object {
                            self.key()?;
                        }
                        c = self.ws();
                        break;
                    }
                    b'}' if object => {}
                    b']' if !object => {}
                    _ => return Err(Stop::Invalid),
                }
                self.i += 1;
                objects >>= 1;
                open -= 1;
            }
        }
    }

    /// The rest of a string whose opening quote is behind the cursor; whether it has an
    /// escape.
    #[inline(always)]
    fn string(&mut self) -> Result<bool, Stop> {
        let mut escaped = false;
        loop {
            self.skip_plain();
            match self.peek() {
                b'"' => {
                    self.i += 1;
                    return Ok(escaped);
                }
                b'\\' => {
                    self.i += 1;
                    self.escape()?;
                    escaped = true;
                }
                // A control character, or the end.
                _ => return Err(Stop::Invalid),
            }
        }
    }

    /// Moves the cursor to the next `"`, `\\` or control character (or the end).
    #[inline(always)]
    fn skip_plain(&mut self) {
        self.i = plain_end(self.b, self.i);
    }

    /// An escape whose backslash is behind the cursor.
    #[cold]
    fn escape(&mut self) -> Result<(), Stop> {
        match self.peek() {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
            b'u' => {
                let hex = self.b.get(self.i + 1..self.i + 5).ok_or(Stop::Invalid)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return Err(Stop::Invalid);
                }
                self.i += 5;
            }
            _ => return Err(Stop::Invalid),
        }
        Ok(())
    }

    /// A number starting at the cursor with `first`: `-? (0 | [1-9][0-9]*) (.[0-9]+)?
    /// ([eE][+-]?[0-9]+)?`. What follows it is checked by the caller (`01` fails there).
    fn number(&mut self, first: u8) -> Result<(), Stop> {
        let mut c = first;
        if c == b'-' {
            self.i += 1;
            c = self.peek();
        }
        match c {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return Err(Stop::Invalid),
        }
        if self.peek() == b'.' {
            self.i += 1;
            self.some_digits()?;
        }
        if matches!(self.peek(), b'e' | b'E') {
            self.i += 1;
            if matches!(self.peek(), b'+' | b'-') {
                self.i += 1;
            }
            self.some_digits()?;
        }
        Ok(())
    }

    /// One digit or more.
    fn some_digits(&mut self) -> Result<(), Stop> {
        if !self.peek().is_ascii_digit() {
            return Err(Stop::Invalid);
        }
        self.digits();
        Ok(())
    }

    fn digits(&mut self) {
        while self.peek().is_ascii_digit() {
            self.i += 1;
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), Stop> {
        if self.b.get(self.i..self.i + word.len()) != Some(word) {
            return Err(Stop::Invalid);
        }
        self.i += word.len();
        Ok(())
    }
}

/// The index of the first `"`, `\\` or control character in `b` from `i` (or `b`'s length),
/// found a word at a time: a byte is flagged when it is below 0x20 or, XORed with `"` or `\\`,
/// zero (the subtraction borrows) — and never when it is 0x80 or above (`& !v`). A borrow
/// flags only bytes above a true hit, so the lowest flagged byte is always one.
#[inline(always)]
fn plain_end(b: &[u8], mut i: usize) -> usize {
    while let Some(word) = b.get(i..i + 8) {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(word);
        let v = u64::from_le_bytes(bytes);
        let quote = v ^ (ONES * u64::from(b'"'));
        let backslash = v ^ (ONES * u64::from(b'\\'));
        let below_space = v.wrapping_sub(ONES * 0x20);
        let flagged = (below_space | quote.wrapping_sub(ONES) | backslash.wrapping_sub(ONES))
            & !v
            & (ONES << 7);
        if flagged != 0 {
            return i + (flagged.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while let Some(&c) = b.get(i) {
        if c == b'"' || c == b'\\' || c < 0x20 {
            return i;
        }
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::{usage_from_body, usage_from_body_agrees};
    use proptest::prelude::*;

    const NAMES: [&[u8]; 2] = [b"usage", b"usageMetadata"];

    /// The scan as `usage_from_body` makes it (with one of the usage object's fields).
    fn scan(body: &[u8]) -> Scan<2> {
        fields_within(body, NAMES, Some((0, [&b"prompt_tokens"[..]]))).0
    }

    #[test]
    fn finds_the_named_fields_of_provider_answers() {
        let body = br#" {"id":"x","choices":[{"message":{"content":"h\u00e9\"llo\\"},"n":-1.5e+3}],
            "usage" : {"prompt_tokens":19,"completion_tokens":10}, "z":[true,false,null,{}]}
        "#;
        let Scan::Object([Some(usage), None]) = scan(body) else {
            panic!("{:?}", scan(body));
        };
        assert_eq!(
            &body[usage],
            br#"{"prompt_tokens":19,"completion_tokens":10}"#
        );
        let gemini = br#"{"candidates":[],"usageMetadata":{"promptTokenCount":3}}"#;
        assert!(matches!(scan(gemini), Scan::Object([None, Some(_)])));
        assert_eq!(scan(b"{}"), Scan::Object([None, None]));
        assert_eq!(scan(b"\t{ }\r\n"), Scan::Object([None, None]));
    }

    #[test]
    fn refuses_what_serde_refuses() {
        for body in [
            &b""[..],
            b" ",
            b"null",
            b"1",
            b"\"usage\"",
            b"{",
            b"{\"a\":1",
            b"{\"a\":1,}",
            b"{\"a\" 1}",
            b"{\"a\":01}",
            b"{\"a\":1.}",
            b"{\"a\":-}",
            b"{\"a\":1e}",
            b"{\"a\":+1}",
            b"{\"a\":.5}",
            b"{\"a\":tru}",
            b"{\"a\":nulll}",
            b"{\"a\":\"\\x\"}",
            b"{\"a\":\"\\u12\"}",
            b"{\"a\":\"tab\there\"}",
            b"{\"a\":[1,]}",
            b"{\"a\":[1}",
            b"{\"a\":{\"b\"}}",
            b"{\"a\":1} x",
            b"{\"a\":1}{}",
            b"{\"\xff\":1}",
            b"{\"a\":1}\0",
        ] {
            assert_eq!(
                scan(body),
                Scan::Invalid,
                "{}",
                String::from_utf8_lossy(body)
            );
            assert!(usage_from_body(body).is_err());
        }
    }

    #[test]
    fn leaves_to_serde_what_it_does_not_decide() {
        for body in [
            &b"[]"[..],
            b"[{\"prompt_tokens\":1}]",
            b"{\"us\\u0061ge\":{\"prompt_tokens\":1}}",
            b"{\"usage\":null,\"usage\":null}",
        ] {
            assert_eq!(
                scan(body),
                Scan::Unsure,
                "{}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(usage_from_body_agrees(body), Ok(()));
        }
        // Serde reads a struct from an array, and matches an escaped key.
        assert!(usage_from_body(b"[]").unwrap().is_none());
        let escaped = usage_from_body(b"{\"us\\u0061ge\":{\"prompt_tokens\":1}}").unwrap();
        assert_eq!(escaped.map(|u| u.prompt_tokens), Some(1));
        assert!(usage_from_body(b"{\"usage\":null,\"usage\":null}").is_err());
    }

    #[test]
    fn skips_what_serde_skips_unchecked() {
        // Invalid UTF-8 and a lone surrogate in a skipped string, a number beyond any type.
        let body = b"{\"a\":\"\xff\xfe\",\"b\":\"\\ud800\",\"c\":1e999999,\
            \"d\":123456789012345678901234567890}";
        assert_eq!(scan(body), Scan::Object([None, None]));
        assert_eq!(usage_from_body(body).unwrap(), None);
    }

    /// The depth limit: as deep as serde parses a `usageMetadata` value inside a body, and one
    /// level more, whether the nesting is in a read field or a skipped one.
    #[test]
    fn nesting_at_the_limit_reads_as_serde_reads_it() {
        for depth in MAX_DEPTH - 3..MAX_DEPTH + 3 {
            let arrays = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
            // The usage object's members are found in the same pass, one level down.
            let usage = format!("{{\"prompt_tokens\":1,\"x\":{}}}", arrays(depth - 1));
            for (key, value) in [
                ("usageMetadata", arrays(depth)),
                ("other", arrays(depth)),
                ("usage", usage),
            ] {
                let body = format!("{{\"{key}\":{value}}}");
                assert_eq!(
                    usage_from_body_agrees(body.as_bytes()),
                    Ok(()),
                    "{key} {depth}"
                );
                let decided = !matches!(scan(body.as_bytes()), Scan::Unsure);
                assert_eq!(decided, depth < MAX_DEPTH, "{key} {depth}");
            }
        }
    }

    /// Keys that serde's usage types read, and a few others.
    const KEYS: &[&str] = &[
        "usage",
        "usageMetadata",
        "prompt_tokens",
        "completion_tokens",
        "prompt_tokens_details",
        "cached_tokens",
        "input_tokens",
        "input_tokens_details",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "promptTokenCount",
        "candidatesTokenCount",
        "thoughtsTokenCount",
        "cachedContentTokenCount",
        "id",
        "choices",
        "",
        "é",
        "us\\u0061ge",
        "\\u00e9",
    ];

    fn leaf() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "null",
                "true",
                "false",
                "0",
                "-0",
                "1",
                "-1",
                "19",
                "1.5",
                "1e3",
                "2E-2",
                "1e400",
                "18446744073709551615",
                "18446744073709551616",
                "0.0",
                "-12.5e+1",
            ])
            .prop_map(String::from),
            any::<u64>().prop_map(|n| n.to_string()),
            any::<i32>().prop_map(|n| n.to_string()),
            prop::sample::select(vec![
                "\"\"",
                "\"x\"",
                "\"héllo wörld, a longer string\"",
                "\"\\n\\t\\\"\\\\\\/\"",
                "\"\\ud83d\\ude00\"",
                "\"\\uDEAD\"",
                "\"0123456789abcdefghij\"",
            ])
            .prop_map(String::from),
        ]
    }

    fn value() -> impl Strategy<Value = String> {
        leaf().prop_recursive(5, 48, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5)
                    .prop_map(|items| format!("[{}]", items.join(","))),
                prop::collection::vec((prop::sample::select(KEYS), inner), 0..6)
                    .prop_map(|fields| object(&fields)),
            ]
        })
    }

    fn object(fields: &[(&str, String)]) -> String {
        let fields: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", fields.join(","))
    }

    /// A `usage` value: mostly objects of usage fields with counts (or details objects).
    fn usage() -> impl Strategy<Value = String> {
        let field = prop_oneof![
            leaf(),
            leaf().prop_map(|count| format!("{{\"cached_tokens\":{count}}}")),
            value(),
        ];
        prop_oneof![
            4 => prop::collection::vec((prop::sample::select(&KEYS[2..11]), field), 0..6)
                .prop_map(|fields| object(&fields)),
            1 => value(),
        ]
    }

    /// An answer-like top-level object.
    fn body() -> impl Strategy<Value = Vec<u8>> {
        let fields = prop::collection::vec((prop::sample::select(KEYS), value()), 0..6);
        (
            fields,
            prop::option::of(usage()),
            any::<prop::sample::Index>(),
        )
            .prop_map(|(mut fields, usage, at)| {
                if let Some(usage) = usage {
                    fields.insert(at.index(fields.len() + 1), ("usage", usage));
                }
                object(&fields).into_bytes()
            })
    }

    /// Edits that break JSON in the ways upstreams and the network do.
    #[derive(Debug, Clone)]
    enum Edit {
        Truncate(usize),
        Insert(usize, &'static [u8]),
        Delete(usize),
        Append(&'static [u8]),
        WrapInArray,
    }

    const SNIPPETS: &[&[u8]] = &[
        b" ",
        b"\n",
        b"\"",
        b"\\",
        b",",
        b":",
        b"{",
        b"}",
        b"[",
        b"]",
        b"0",
        b"-",
        b".",
        b"e",
        b"\x00",
        b"\x1f",
        b"\x7f",
        b"\xff",
        b"\xc3\xa9",
        b"\xc3",
        b"\\u12",
        b"\\x",
        b"01",
        b"1.",
        b"1e",
        b"nul",
        b",,",
        b"\"usage\":{\"prompt_tokens\":1},",
        b"\"usageMetadata\":{\"promptTokenCount\":2},",
        b"\"usage\":null,",
        b"[[[[",
        b"}}",
    ];

    fn edit() -> impl Strategy<Value = Edit> {
        let at = any::<prop::sample::Index>();
        prop_oneof![
            at.clone().prop_map(|i| Edit::Truncate(i.index(usize::MAX))),
            (at.clone(), prop::sample::select(SNIPPETS))
                .prop_map(|(i, s)| Edit::Insert(i.index(usize::MAX), s)),
            at.prop_map(|i| Edit::Delete(i.index(usize::MAX))),
            prop::sample::select(SNIPPETS).prop_map(Edit::Append),
            Just(Edit::WrapInArray),
        ]
    }

    fn apply(mut body: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
        for edit in edits {
            let at = |i: usize| i % (body.len() + 1);
            match *edit {
                Edit::Truncate(i) => body.truncate(at(i)),
                Edit::Insert(i, s) => {
                    let i = at(i);
                    body.splice(i..i, s.iter().copied());
                }
                Edit::Delete(i) if !body.is_empty() => {
                    body.remove(i % body.len());
                }
                Edit::Delete(_) => {}
                Edit::Append(s) => body.extend_from_slice(s),
                Edit::WrapInArray => {
                    body.insert(0, b'[');
                    body.push(b']');
                }
            }
        }
        body
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Generated answers, intact and edited: the same usage, or the same refusal, as serde
        /// over the whole body; and the scan refuses exactly what serde refuses.
        #[test]
        fn reads_every_body_as_serde_does(
            body in body(),
            edits in prop::collection::vec(edit(), 0..3),
        ) {
            let body = apply(body, &edits);
            let shown = String::from_utf8_lossy(&body);
            prop_assert_eq!(usage_from_body_agrees(&body), Ok(()), "{}", shown);
        }
    }
}
