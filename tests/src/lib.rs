//! Test support for Switchboard: the mock OpenAI upstream that integration tests and the
//! benchmark run against, and the benchmark itself (`bench` binary, `scripts/bench`).

pub mod bench;
pub mod mock;

pub use mock::{MockOptions, MockUpstream, RecordedRequest};
