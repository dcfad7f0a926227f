//! The benchmark's command line: what to measure, for how long, and where LiteLLM lives.

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// Measures the gateway's overhead against a direct call and against peer proxies, all on
/// the same mock upstream in one run.
#[derive(Debug, Clone, Parser)]
#[command(name = "bench", about)]
pub struct BenchArgs {
    /// Seconds of measurement per cell (after a warm-up).
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Rounds over all targets; each figure reported is the median round's. Targets take
    /// turns within a round, so a slow spell on a shared machine hits every target alike.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Seconds of warm-up per cell, not measured.
    #[arg(long, default_value_t = 1)]
    pub warmup: u64,
    /// Keep-alive connections of the load generator, one request in flight on each.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Request modes to measure.
    #[arg(long, value_delimiter = ',', default_values = ["non-stream", "stream"])]
    pub modes: Vec<Mode>,
    /// Targets to measure; nginx and litellm run only when available.
    #[arg(long, value_delimiter = ',', default_values = ["direct", "gateway", "gateway-traced-1pct", "gateway-traced-100pct", "gateway-redis", "nginx", "litellm"])]
    pub targets: Vec<Target>,
    /// The `litellm` executable (from `pip install 'litellm[proxy]'`); without it LiteLLM is
    /// skipped.
    #[arg(long)]
    pub litellm: Option<PathBuf>,
    /// Also write the figures as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Content chunks per streamed response (the mock's `chunks` knob, same for every target).
    #[arg(long, default_value_t = 20)]
    pub chunks: usize,
    /// Directory of the `mock-upstream` and `dataplane` binaries; default: next to `bench`.
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
}

/// Non-streamed or streamed chat completions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    NonStream,
    Stream,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::NonStream => "non-stream",
            Mode::Stream => "stream",
        }
    }
}

/// What the load is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    /// Straight to the mock: the ceiling.
    Direct,
    /// Switchboard's data plane, rate limits in process.
    Gateway,
    /// The gateway exporting OpenTelemetry traces (OTLP/HTTP to a receiver in the benchmark
    /// process that reads and discards them), sampling 1 % of requests.
    #[value(name = "gateway-traced-1pct")]
    #[serde(rename = "gateway-traced-1pct")]
    GatewayTraced1pct,
    /// The same, sampling every request.
    #[value(name = "gateway-traced-100pct")]
    #[serde(rename = "gateway-traced-100pct")]
    GatewayTraced100pct,
    /// Switchboard's data plane with the same limits shared through Redis (a redis-server the
    /// benchmark starts on the load core).
    GatewayRedis,
    /// nginx `proxy_pass`, no logic: the floor a gateway is held to.
    Nginx,
    /// LiteLLM proxy, one worker.
    Litellm,
}

impl Target {
    /// The trace sampling ratio of a traced gateway (`None`: tracing off).
    pub fn sampling(self) -> Option<f64> {
        match self {
            Target::GatewayTraced1pct => Some(0.01),
            Target::GatewayTraced100pct => Some(1.0),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Target::Direct => "direct",
            Target::Gateway => "gateway",
            Target::GatewayTraced1pct => "gateway-traced-1pct",
            Target::GatewayTraced100pct => "gateway-traced-100pct",
            Target::GatewayRedis => "gateway-redis",
            Target::Nginx => "nginx",
            Target::Litellm => "litellm",
        }
    }
}
