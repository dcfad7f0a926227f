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
    /// Request modes to measure. `non-stream` and `stream` are cells of the main table;
    /// `slow-streams` and `propagation` are sections of their own (opt-in: see
    /// docs/performance.md).
    #[arg(long, value_delimiter = ',', default_values = ["non-stream", "stream"])]
    pub modes: Vec<Mode>,
    /// Targets to measure; nginx and litellm run only when available. `gateway-100k-keys`
    /// (opt-in) is the gateway with 100,000 virtual keys in its snapshot.
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
    /// Slow-streams mode: streams held open at once through each proxy.
    #[arg(long, default_value_t = 5000)]
    pub slow_streams: usize,
    /// Slow-streams mode: milliseconds between the mock's chunks (its `interval_ms` knob).
    #[arg(long, default_value_t = 10)]
    pub slow_interval_ms: u64,
    /// Slow-streams mode: content chunks per stream (its length is about chunks × interval).
    #[arg(long, default_value_t = 300)]
    pub slow_chunks: usize,
    /// Slow-streams mode: seconds over which the streams are opened.
    #[arg(long, default_value_t = 1.0)]
    pub slow_ramp_s: f64,
    /// Virtual keys in the snapshot of `gateway-100k-keys` and of the propagation mode.
    #[arg(long, default_value_t = 100_000)]
    pub keys: usize,
    /// Propagation mode: key changes timed (each key is created, then revoked: two changes).
    #[arg(long, default_value_t = 10)]
    pub changes: usize,
    /// Propagation mode: the Postgres server (a database of the run's own is created on it
    /// and dropped at the end).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres"
    )]
    pub database_url: String,
    /// Propagation mode: the NATS server (JetStream on).
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
}

/// What is measured: non-streamed or streamed chat completions under steady load (cells of
/// the main table), or one of the sections of their own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    NonStream,
    Stream,
    /// Many slow streams held open at once through each proxy: errors and memory per stream.
    SlowStreams,
    /// One key change through a real control plane and NATS to a data plane whose snapshot
    /// holds `--keys` keys: how long until the data plane answers the new way.
    Propagation,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::NonStream => "non-stream",
            Mode::Stream => "stream",
            Mode::SlowStreams => "slow-streams",
            Mode::Propagation => "propagation",
        }
    }

    /// Whether this mode is a cell of the main table (steady load, every target, rounds).
    pub fn is_cell(self) -> bool {
        matches!(self, Mode::NonStream | Mode::Stream)
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
    /// The in-process gateway with `--keys` virtual keys in its snapshot (the load uses one).
    #[value(name = "gateway-100k-keys")]
    #[serde(rename = "gateway-100k-keys")]
    Gateway100kKeys,
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
            Target::Gateway100kKeys => "gateway-100k-keys",
            Target::Nginx => "nginx",
            Target::Litellm => "litellm",
        }
    }
}
