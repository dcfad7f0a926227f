//! Scenarios: how a test tells the mock upstream to misbehave, through the URL alone.
//!
//! A scenario is the path segment after `/s/`, a comma-separated list of `key=value` knobs
//! (`/s/chunks=5,interval_ms=100/v1/chat/completions`). Putting it in the URL means a gateway
//! under test needs no special support: a provider's `base_url` selects the behaviour. Unknown
//! knobs and bad values are errors, answered with a 400, so a typo in a test is loud.

use std::fmt;
use std::str::FromStr;

/// Content chunks in a stream when the scenario does not say.
pub const DEFAULT_STREAM_CHUNKS: usize = 20;

/// Seconds in a 429's `Retry-After` when the scenario does not say.
pub const DEFAULT_RETRY_AFTER_SECS: u64 = 1;

/// What the mock does instead of answering normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 429 with `Retry-After` and a `rate_limit_error` body.
    RateLimited,
    /// 500 with a `server_error` body.
    ServerError,
    /// 503 with an "overloaded" `server_error` body.
    Unavailable,
    /// 400 `invalid_request_error` / `context_length_exceeded`.
    BadRequest,
    /// 401 `invalid_api_key`.
    Unauthorized,
    /// 429 `insufficient_quota` (OpenAI's "out of credit", which no retry fixes; a plain
    /// rate limit for the other formats).
    QuotaExhausted,
    /// Never answers; the request stays open until the client goes away.
    Hang,
    /// Closes the connection without any response.
    Reset,
    /// Sends the head and about half of the body, then drops the connection.
    ResetMidStream,
    /// 200 with a body that is not valid JSON (or a stream event that is not).
    Malformed,
}

impl FromStr for Fault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "429" => Self::RateLimited,
            "500" => Self::ServerError,
            "503" => Self::Unavailable,
            "400" => Self::BadRequest,
            "401" => Self::Unauthorized,
            "quota" => Self::QuotaExhausted,
            "hang" => Self::Hang,
            "reset" => Self::Reset,
            "reset_mid_stream" => Self::ResetMidStream,
            "malformed" => Self::Malformed,
            other => {
                return Err(format!(
                    "unknown fault {other:?}: expected one of 429, 500, 503, 400, 401, quota, hang, \
                     reset, reset_mid_stream, malformed"
                ));
            }
        })
    }
}

/// The parsed knobs of one scenario string. `Scenario::default()` is the empty scenario.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scenario {
    /// `latency_ms`: wait this long before the response head.
    pub latency_ms: u64,
    /// `chunks`: content chunks in a stream; `None` means [`DEFAULT_STREAM_CHUNKS`].
    pub chunks: Option<usize>,
    /// `interval_ms`: pause between consecutive stream events (0: write them all at once).
    pub interval_ms: u64,
    /// `fault`: the misbehaviour, if any.
    pub fault: Option<Fault>,
    /// `fail_first`: apply `fault` only to the first N requests under this scenario string.
    pub fail_first: Option<u64>,
    /// `retry_after`: seconds in the 429's `Retry-After`; `None` means
    /// [`DEFAULT_RETRY_AFTER_SECS`].
    pub retry_after: Option<u64>,
    /// `cached`: cached prompt tokens to report in usage.
    pub cached: u64,
    /// `prompt`: prompt tokens to report in OpenAI-format usage; `None` means
    /// [`super::PROMPT_TOKENS`].
    pub prompt: Option<u64>,
    /// `line_ends`: line ends of OpenAI streams: `lf` (default), `crlf` or `cr`.
    pub line_ends: LineEnds,
    /// `oversize`: an OpenAI answer of this many bytes: a JSON body padded to it, or a stream
    /// whose one `data:` line never ends.
    pub oversize: Option<u64>,
    /// `litellm_usage`: LiteLLM's shape — the usage rides on a final chunk with
    /// `choices: [{"index":0,"delta":{}}]`, sent whether or not the request asked for usage.
    pub litellm_usage: bool,
    /// `stream_as_json`: a streamed OpenAI request is answered with one complete JSON body.
    pub stream_as_json: bool,
    /// `ratelimit_reset`: sent as written in `x-ratelimit-reset-requests` and
    /// `x-ratelimit-reset-tokens` on OpenAI answers.
    pub ratelimit_reset: Option<String>,
    /// `api_key`: the OpenAI routes refuse any other bearer token with 401 `invalid_api_key`
    /// (by default they take any).
    pub api_key: Option<String>,
    /// `event_text`: Gemini and Bedrock streams become `chunks` events of this many bytes of
    /// text each (then their finish and usage events), instead of the fixture's transcript.
    pub event_text: Option<u64>,
    /// `token_ttl`: `expires_in` seconds of the access tokens the Vertex AI token endpoint
    /// issues; `None` means 3599, as Google's.
    pub token_ttl: Option<u64>,
}

/// How the mock ends the lines of an OpenAI stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LineEnds {
    #[default]
    Lf,
    CrLf,
    Cr,
}

impl LineEnds {
    pub fn as_bytes(self) -> &'static [u8] {
        match self {
            LineEnds::Lf => b"\n",
            LineEnds::CrLf => b"\r\n",
            LineEnds::Cr => b"\r",
        }
    }
}

impl FromStr for LineEnds {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "lf" => Ok(Self::Lf),
            "crlf" => Ok(Self::CrLf),
            "cr" => Ok(Self::Cr),
            other => Err(format!("expected lf, crlf or cr, not {other:?}")),
        }
    }
}

/// Why a scenario string was refused; the message names the offending knob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScenarioError(pub String);

impl fmt::Display for ScenarioError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ScenarioError {}

impl Scenario {
    /// Parses a scenario path segment; `""` is the empty scenario.
    pub fn parse(text: &str) -> Result<Self, ScenarioError> {
        let mut scenario = Self::default();
        for knob in text.split(',').filter(|k| !k.is_empty()) {
            let Some((key, value)) = knob.split_once('=') else {
                return Err(ScenarioError(format!(
                    "mock scenario knob {knob:?} is not key=value"
                )));
            };
            let bad = |e: &dyn fmt::Display| {
                ScenarioError(format!(
                    "mock scenario knob {key:?} has bad value {value:?}: {e}"
                ))
            };
            let number = || value.parse::<u64>().map_err(|e| bad(&e));
            match key {
                "latency_ms" => scenario.latency_ms = number()?,
                "chunks" => scenario.chunks = Some(value.parse().map_err(|e| bad(&e))?),
                "interval_ms" => scenario.interval_ms = number()?,
                "fault" => scenario.fault = Some(value.parse().map_err(|e| bad(&e))?),
                "fail_first" => scenario.fail_first = Some(number()?),
                "retry_after" => scenario.retry_after = Some(number()?),
                "cached" => scenario.cached = number()?,
                "prompt" => scenario.prompt = Some(number()?),
                "line_ends" => scenario.line_ends = value.parse().map_err(|e| bad(&e))?,
                "oversize" => scenario.oversize = Some(number()?),
                "litellm_usage" => scenario.litellm_usage = value.parse().map_err(|e| bad(&e))?,
                "stream_as_json" => scenario.stream_as_json = value.parse().map_err(|e| bad(&e))?,
                "ratelimit_reset" => scenario.ratelimit_reset = Some(value.to_owned()),
                "event_text" => scenario.event_text = Some(number()?),
                "token_ttl" => scenario.token_ttl = Some(number()?),
                "api_key" => scenario.api_key = Some(value.to_owned()),
                _ => {
                    return Err(ScenarioError(format!(
                        "unknown mock scenario knob {key:?} (known: latency_ms, chunks, \
                         interval_ms, fault, fail_first, retry_after, cached, prompt, line_ends, \
                         oversize, litellm_usage, stream_as_json, ratelimit_reset, event_text, \
                         token_ttl, api_key)"
                    )));
                }
            }
        }
        Ok(scenario)
    }

    /// Stream content chunks, the default applied.
    pub fn stream_chunks(&self) -> usize {
        self.chunks.unwrap_or(DEFAULT_STREAM_CHUNKS)
    }

    /// Prompt tokens to report, the default applied.
    pub fn prompt_tokens(&self) -> u64 {
        self.prompt.unwrap_or(super::PROMPT_TOKENS)
    }

    /// `Retry-After` seconds, the default applied.
    pub fn retry_after_secs(&self) -> u64 {
        self.retry_after.unwrap_or(DEFAULT_RETRY_AFTER_SECS)
    }

    /// The fault that applies to the request that is the `index`-th (from 0) received under
    /// this scenario string: `fail_first` limits it to the first N.
    pub fn fault_for(&self, index: u64) -> Option<Fault> {
        match self.fail_first {
            Some(n) if index >= n => None,
            _ => self.fault,
        }
    }
}

/// Splits a request path into its scenario string and the path without the prefix:
/// `/s/chunks=3/v1/models` gives `("chunks=3", "/v1/models")`, `/v1/models` gives `("", ...)`.
pub fn split_scenario(path: &str) -> (&str, &str) {
    let Some(rest) = path.strip_prefix("/s/") else {
        return ("", path);
    };
    match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_knob() {
        let s = Scenario::parse(
            "latency_ms=5,chunks=3,interval_ms=100,fault=429,fail_first=2,retry_after=7,cached=4,prompt=250000",
        )
        .unwrap();
        assert_eq!(
            s,
            Scenario {
                latency_ms: 5,
                chunks: Some(3),
                interval_ms: 100,
                fault: Some(Fault::RateLimited),
                fail_first: Some(2),
                retry_after: Some(7),
                cached: 4,
                prompt: Some(250_000),
                ..Scenario::default()
            }
        );
        assert_eq!(s.prompt_tokens(), 250_000);
        assert_eq!(
            Scenario::default().prompt_tokens(),
            super::super::PROMPT_TOKENS
        );
        assert_eq!(s.fault_for(0), Some(Fault::RateLimited));
        assert_eq!(s.fault_for(1), Some(Fault::RateLimited));
        assert_eq!(s.fault_for(2), None);
        assert_eq!(Scenario::parse("").unwrap(), Scenario::default());
        assert_eq!(Scenario::default().stream_chunks(), DEFAULT_STREAM_CHUNKS);
        assert_eq!(Scenario::default().retry_after_secs(), 1);
        for (text, fault) in [
            ("500", Fault::ServerError),
            ("503", Fault::Unavailable),
            ("400", Fault::BadRequest),
            ("401", Fault::Unauthorized),
            ("hang", Fault::Hang),
            ("reset", Fault::Reset),
            ("reset_mid_stream", Fault::ResetMidStream),
            ("malformed", Fault::Malformed),
        ] {
            let s = Scenario::parse(&format!("fault={text}")).unwrap();
            assert_eq!(s.fault, Some(fault));
            assert_eq!(s.fault_for(1000), Some(fault), "no fail_first: always");
        }
    }

    #[test]
    fn unknown_knobs_and_bad_values_are_named() {
        let err = Scenario::parse("chunks=3,chunkz=4")
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"chunkz\""), "{err}");
        let err = Scenario::parse("chunks=many").unwrap_err().to_string();
        assert!(err.contains("\"chunks\"") && err.contains("many"), "{err}");
        let err = Scenario::parse("fault=418").unwrap_err().to_string();
        assert!(err.contains("418"), "{err}");
        let err = Scenario::parse("latency").unwrap_err().to_string();
        assert!(err.contains("key=value"), "{err}");
    }

    #[test]
    fn splits_the_prefix() {
        assert_eq!(
            split_scenario("/s/chunks=3/v1/models"),
            ("chunks=3", "/v1/models")
        );
        assert_eq!(split_scenario("/v1/models"), ("", "/v1/models"));
        assert_eq!(split_scenario("/s/x"), ("x", "/"));
    }
}
