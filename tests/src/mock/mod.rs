//! A mock LLM upstream — OpenAI, Azure OpenAI (`/openai/deployments/{d}/...?api-version=`),
//! Anthropic (`/v1/messages`, see [`anthropic`]), Gemini (`/v1beta/models/{m}:...`, see
//! [`gemini`]), Bedrock (`/model/{id}/converse[-stream]`, SigV4-checked, see [`bedrock`]) and
//! Vertex AI (a token endpoint and `/v1/projects/…/publishers/…`, see [`vertex`]) — fast
//! enough to benchmark a gateway against and scriptable enough to test its failure handling.
//!
//! Integration tests start one in-process with [`MockUpstream::start`] and point a provider's
//! `base_url` at [`MockUpstream::base_url`] or [`MockUpstream::scenario_url`]; the
//! `mock-upstream` binary runs the same server for the benchmark and for other processes
//! (`GET /mock/stats` reports its counts). Scenario knobs are described in [`scenario`].
//! `POST /v1/responses` speaks OpenAI's Responses API (see [`responses`]); the image and audio
//! endpoints (`/v1/images/generations`, `/v1/audio/transcriptions`, `/v1/audio/speech`) their
//! own shapes (see [`media`]).
//! A chat request with `tools` is answered with the tool-call fixture
//! (`tests/fixtures/openai/chat_completion_tool_calls{.json,_stream.sse}`).

pub mod anthropic;
pub mod bedrock;
mod body;
pub mod gemini;
pub mod media;
mod render;
pub mod responses;
pub mod scenario;
mod server;
mod state;
mod template;
mod upstream;
pub mod vertex;

#[cfg(test)]
mod tests;

pub use scenario::{
    DEFAULT_RETRY_AFTER_SECS, DEFAULT_STREAM_CHUNKS, Fault, Scenario, ScenarioError, split_scenario,
};
pub use state::RecordedRequest;
pub use upstream::{MockOptions, MockUpstream};

/// `usage.prompt_tokens` of every chat and completion response (streamed or not).
pub const PROMPT_TOKENS: u64 = 19;
/// `usage.completion_tokens` of a non-streamed chat or completion response. A stream reports
/// its number of content chunks instead.
pub const COMPLETION_TOKENS: u64 = 10;
/// `usage.total_tokens` of a non-streamed chat or completion response.
pub const TOTAL_TOKENS: u64 = PROMPT_TOKENS + COMPLETION_TOKENS;
/// `usage.prompt_tokens` (and `total_tokens`) of an embeddings response.
pub const EMBEDDING_PROMPT_TOKENS: u64 = 8;
/// Length of the one embedding vector returned.
pub const EMBEDDING_DIMENSIONS: usize = 8;
/// The assistant message of a non-streamed chat completion (and the legacy completion text).
pub const CHAT_CONTENT: &str = "Hello! How can I assist you today?";

/// The content of stream chunk `i` (from 0): `tok<i> `.
pub fn stream_chunk_content(i: usize) -> String {
    format!("tok{i} ")
}

/// The whole content of a stream of `chunks` chunks, concatenated.
pub fn stream_content(chunks: usize) -> String {
    (0..chunks).map(stream_chunk_content).collect()
}
