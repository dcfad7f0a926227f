//! The mutator: turns a seed from the corpus into a new input with a few random edits.
//!
//! There is no coverage feedback on the stable toolchain, so the edits are chosen for the
//! inputs these parsers fear: JSON and SSE punctuation, line ends of all three kinds, numbers
//! at and past every integer width, splices of two seeds, and runs repeated until the input is
//! large (which is where quadratic scans and unbounded buffers show).

use fastrand::Rng;

/// Tokens every target's inputs are made of; each target adds its own.
const COMMON: &[&[u8]] = &[
    b"\"usage\"",
    b"null",
    b"true",
    b"-1",
    b"0",
    b"1e999",
    b"-1e999",
    b"1.5",
    b"4294967296",
    b"18446744073709551616",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"1e18",
    b"\"\"",
    b"[]",
    b"{}",
    b"\r\n",
    b"\r",
    b"\n\n",
    b"\r\n\r\n",
    b"data: ",
    b"event: ",
    b"data:{}\n\n",
    b"data: [DONE]\n\n",
    b"\\u0000",
    b"\\ud800",
    b"\\\"",
    "é€😀".as_bytes(),
    b"\xff\xfe",
    b"[[[[[[[[[[[[[[[[",
    b"{\"a\":{\"a\":{\"a\":",
];

/// Bytes worth writing over a random one.
const PUNCTUATION: &[u8] = b"{}[]\":,\\\r\n 0-.e\x00\xff";

/// Makes inputs from seeds.
pub struct Mutator {
    rng: Rng,
    dictionary: Vec<&'static [u8]>,
    max_len: usize,
}

impl Mutator {
    pub fn new(seed: u64, extra: &[&'static [u8]], max_len: usize) -> Self {
        let mut dictionary = COMMON.to_vec();
        dictionary.extend_from_slice(extra);
        Self {
            rng: Rng::with_seed(seed),
            dictionary,
            max_len,
        }
    }

    /// A new input: one seed, edited one to a dozen times (few edits are likelier).
    pub fn input(&mut self, seeds: &[Vec<u8>]) -> Vec<u8> {
        let mut data = seeds[self.rng.usize(..seeds.len())].clone();
        let edits = 1 + self.rng.usize(..4) * self.rng.usize(..4);
        for _ in 0..edits {
            let other = &seeds[self.rng.usize(..seeds.len())];
            self.edit(&mut data, other);
        }
        data.truncate(self.max_len);
        data
    }

    fn edit(&mut self, data: &mut Vec<u8>, other: &[u8]) {
        let rng = &mut self.rng;
        let at = rng.usize(..=data.len());
        match rng.u8(..10) {
            0 if at < data.len() => data[at] ^= 1 << rng.u8(..8),
            1 if at < data.len() => data[at] = rng.u8(..),
            2 if at < data.len() => data[at] = PUNCTUATION[rng.usize(..PUNCTUATION.len())],
            3 => {
                let end = (at + 1 + rng.usize(..64)).min(data.len());
                data.drain(at.min(end)..end);
            }
            4 => {
                let token = self.dictionary[rng.usize(..self.dictionary.len())];
                data.splice(at..at, token.iter().copied());
            }
            5 => {
                // Splice: this input's head, the other seed's tail.
                let from = rng.usize(..=other.len());
                data.truncate(at);
                data.extend_from_slice(&other[from..]);
            }
            6 => {
                // Copy a run elsewhere (duplicates events, fields, array items).
                let start = rng.usize(..=data.len());
                let end = (start + 1 + rng.usize(..256)).min(data.len());
                let run = data[start..end].to_vec();
                let to = rng.usize(..=data.len());
                data.splice(to..to, run);
            }
            7 => {
                // Repeat a run until the input is large: long lines, many events, deep nesting.
                let end = (at + 1 + rng.usize(..32)).min(data.len());
                let run = data[at.min(end)..end].to_vec();
                if !run.is_empty() {
                    // Mostly a few hundred copies; now and then up to the maximum length.
                    let most = if rng.u8(..4) == 0 {
                        usize::MAX
                    } else {
                        1 + rng.usize(..300)
                    };
                    let times = (self.max_len / run.len()).min(most);
                    let grown = run.repeat(times);
                    data.splice(at..at, grown);
                }
            }
            8 => {
                let noise: Vec<u8> = (0..1 + rng.usize(..16)).map(|_| rng.u8(..)).collect();
                data.splice(at..at, noise);
            }
            _ => {
                // Truncate: streams cut anywhere, documents cut mid-value.
                data.truncate(at);
            }
        }
    }
}
