//! Test support for Switchboard: the mock OpenAI upstream that integration tests and the
//! benchmark run against, the benchmark itself (`bench` binary, `scripts/bench`), and
//! throwaway Redis and NATS servers for outage tests.

pub mod bench;
pub mod cluster_keys;
pub mod jetstream;
pub mod mock;
pub mod otlp;
pub mod services;

pub use mock::{MockOptions, MockUpstream, RecordedRequest};
