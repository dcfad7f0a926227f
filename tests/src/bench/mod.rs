//! The overhead benchmark: the same load, in one run, straight at the mock upstream, through
//! the gateway, and through peer proxies (nginx, LiteLLM), reported as ratios to the direct
//! call. On a shared 2-core machine only figures from the same run are comparable, so the
//! peers are always measured beside the gateway.
//!
//! Layout: the load generator and the mock share core 0, the proxies have core 1 (see
//! [`procs::Pinning`]). All proxies start first and idle while another is measured; the cells
//! then run in rounds (every target and mode once per round, in turn) and each reported figure
//! is the median round's, so that drift on a shared machine does not favour whoever ran
//! first. Each child process is killed, with its descendants, when its guard drops — at the
//! end of the run, on error, or on Ctrl-C.

pub mod cli;
pub mod http;
pub mod load;
pub mod procs;
pub mod report;
pub mod scale;
pub mod slow;
pub mod targets;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;

use cli::{BenchArgs, Mode, Target};
use load::LoadSpec;
use procs::{Pinning, TempDir};
use report::{Cell, Context, Report, Startup};
use targets::{BENCH_KEY, BENCH_MODEL, Env, Running};

/// How long a child may take to exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// Runs every requested cell and returns the figures. `pinning` has already been applied to
/// this process (it must be, before the runtime's threads exist).
pub async fn run(args: &BenchArgs, pinning: Pinning, nproc: usize) -> anyhow::Result<Report> {
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => bin_dir()?,
    };
    let temp = TempDir::new()?;
    let (mut mock, mock_addr) = targets::start_mock(&bin_dir, &temp.0, &pinning).await?;
    // Redis and the OTLP receiver serve only the cells' targets.
    let cells = args.modes.iter().any(|m| m.is_cell());
    let redis = if cells
        && args.targets.contains(&Target::GatewayRedis)
        && skip_reason(Target::GatewayRedis, args).is_none()
    {
        Some(targets::start_redis(&temp.0, &pinning).await?)
    } else {
        None
    };
    let traced = cells && args.targets.iter().any(|t| t.sampling().is_some());
    let otlp = if traced {
        Some(crate::otlp::OtlpReceiver::start_discarding().await)
    } else {
        None
    };
    let env = Env {
        bin_dir,
        dir: temp.0.clone(),
        pinning: pinning.clone(),
        mock_addr,
        scenario: format!("chunks={}", args.chunks),
        redis_url: redis.as_ref().map(|(_, url)| url.clone()),
        otlp_endpoint: otlp.as_ref().map(crate::otlp::OtlpReceiver::endpoint),
        keys: args.keys.max(1),
        nginx_connections: None,
    };
    let mut report = Report {
        context: Context {
            nproc,
            pinning: pinning.note,
            duration_s: args.duration,
            warmup_s: args.warmup,
            rounds: args.rounds.max(1),
            concurrency: args.concurrency,
            stream_chunks: args.chunks,
        },
        ..Report::default()
    };
    let ticks_per_second = procs::clock_ticks_per_second();
    let cell_modes: Vec<Mode> = args.modes.iter().copied().filter(|m| m.is_cell()).collect();
    if cells {
        run_cells(args, &env, &cell_modes, ticks_per_second, &mut report).await;
    }
    if args.modes.contains(&Mode::SlowStreams) {
        run_slow_streams(args, &env, ticks_per_second, &mut report).await;
    }
    if args.modes.contains(&Mode::Propagation) {
        report.propagation = Some(
            scale::run(
                &env,
                args.keys.max(1),
                args.changes.max(1),
                &args.database_url,
                &args.nats_url,
            )
            .await,
        );
    }
    if let Some(status) = mock.exited() {
        report
            .notes
            .push(format!("the mock upstream died during the run ({status})"));
    }
    mock.stop(STOP_GRACE).await;
    if let Some((redis, _)) = redis {
        redis.stop(STOP_GRACE).await;
    }
    report.compare_with_direct();
    report.compare_redis_with_in_process();
    report.compare_tracing_with_off();
    report.compare_keys_with_one();
    if let Some(otlp) = otlp {
        report.notes.push(format!(
            "the OTLP receiver got {} export requests from the traced gateways",
            otlp.exports()
        ));
    }
    Ok(report)
}

/// The targets to measure, in the table's order.
const ORDER: [Target; 8] = [
    Target::Direct,
    Target::Gateway,
    Target::GatewayTraced1pct,
    Target::GatewayTraced100pct,
    Target::GatewayRedis,
    Target::Gateway100kKeys,
    Target::Nginx,
    Target::Litellm,
];

/// The steady-load cells: every requested target in every cell mode, in rounds; the median
/// round of each goes into the report, with each proxy's start-up figures.
async fn run_cells(
    args: &BenchArgs,
    env: &Env,
    modes: &[Mode],
    ticks_per_second: u64,
    report: &mut Report,
) {
    let mut started: Vec<(Target, Result<Running, String>)> = Vec::new();
    for target in ORDER {
        if !args.targets.contains(&target) {
            continue;
        }
        if let Some(note) = skip_reason(target, args) {
            report.notes.push(note);
            continue;
        }
        let running = targets::start(target, env, args.litellm.as_deref()).await;
        if let Ok(running) = &running
            && running.proc.is_some()
        {
            report.startups.push(Startup::of(target, running));
        }
        started.push((target, running));
    }
    // samples[target index][mode index]: one cell per round.
    let mut samples: Vec<Vec<Vec<Cell>>> = vec![vec![Vec::new(); modes.len()]; started.len()];
    for _ in 0..args.rounds.max(1) {
        for (m, &mode) in modes.iter().enumerate() {
            for (t, (target, running)) in started.iter_mut().enumerate() {
                let cell = match running {
                    Ok(running) => measure(running, *target, mode, args, ticks_per_second).await,
                    Err(reason) => Cell::failed(*target, mode, reason.clone()),
                };
                samples[t][m].push(cell);
            }
        }
    }
    for per_mode in samples {
        for cells in per_mode {
            if let Some(cell) = median(cells) {
                report.cells.push(cell);
            }
        }
    }
    for (_, running) in started {
        if let Ok(Running {
            proc: Some(proc), ..
        }) = running
        {
            proc.stop(STOP_GRACE).await;
        }
    }
}

/// The slow-streams section: for the gateway and nginx (when requested and available), a
/// fresh proxy whose upstream paces its chunks, `--slow-streams` streams through it at once.
async fn run_slow_streams(args: &BenchArgs, env: &Env, ticks_per_second: u64, report: &mut Report) {
    let streams = args.slow_streams.max(1);
    // The bench holds one socket a stream, a proxy two (client and upstream) and nginx up
    // to its worker_connections.
    if let Some(note) = slow::ensure_open_files(4 * streams as u64 + 256) {
        report.notes.push(note);
    }
    let mut env = env.clone();
    env.scenario = format!(
        "chunks={},interval_ms={}",
        args.slow_chunks, args.slow_interval_ms
    );
    // nginx warned "worker_connections are not enough, reusing connections" (and dropped
    // streams) at 2 × streams + 256 already; it counts more than the two sockets a stream.
    env.nginx_connections = Some((4 * streams + 256).max(4096));
    for target in [Target::Gateway, Target::Nginx] {
        if !args.targets.contains(&target) || skip_reason(target, args).is_some() {
            continue;
        }
        let result = match targets::start(target, &env, None).await {
            Ok(mut running) => {
                let spec = slow::SlowSpec {
                    addr: running.addr,
                    path: running.path.clone(),
                    body: body(Mode::Stream),
                    bearer: format!("Bearer {BENCH_KEY}"),
                    streams,
                    ramp: Duration::from_secs_f64(args.slow_ramp_s.max(0.0)),
                    stream_timeout: Duration::from_secs(300),
                    nominal: Duration::from_millis(args.slow_interval_ms)
                        * u32::try_from(args.slow_chunks).unwrap_or(u32::MAX),
                };
                let proc = running.proc.take();
                let result = match &proc {
                    Some(proc) => slow::run(&spec, target, proc, ticks_per_second).await,
                    None => slow::SlowResult::failed(target, streams, "no process".into()),
                };
                if let Some(proc) = proc {
                    proc.stop(STOP_GRACE).await;
                }
                result
            }
            Err(reason) => slow::SlowResult::failed(target, streams, reason),
        };
        report.slow_streams.push(result);
    }
}

/// The round with the median throughput; a failed round wins, so failures are never hidden.
fn median(mut cells: Vec<Cell>) -> Option<Cell> {
    if let Some(i) = cells.iter().position(|c| c.failed.is_some()) {
        return Some(cells.swap_remove(i));
    }
    cells.sort_by(|a, b| a.req_per_s.total_cmp(&b.req_per_s));
    let middle = cells.len() / 2;
    (!cells.is_empty()).then(|| cells.swap_remove(middle))
}

/// Why a target is skipped without a row, if it is.
fn skip_reason(target: Target, args: &BenchArgs) -> Option<String> {
    match target {
        Target::GatewayRedis if procs::which("redis-server").is_none() => Some(
            "gateway-redis skipped: redis-server not installed (apt-get install redis-server)"
                .to_owned(),
        ),
        Target::Nginx if procs::which("nginx").is_none() => {
            Some("nginx skipped: not installed (apt-get install nginx-light)".to_owned())
        }
        Target::Litellm if args.litellm.is_none() => Some(
            "litellm skipped: pass --litellm PATH (python3 -m venv V && V/bin/pip install \
             'litellm[proxy]', then --litellm V/bin/litellm)"
                .to_owned(),
        ),
        _ => None,
    }
}

/// The directory of this executable, where cargo puts `mock-upstream` and `dataplane` too.
fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the bench executable")?;
    exe.parent()
        .map(PathBuf::from)
        .context("the bench executable has no parent directory")
}

/// The request body of a mode.
fn body(mode: Mode) -> Bytes {
    let stream = match mode {
        Mode::NonStream | Mode::Propagation => "",
        Mode::Stream | Mode::SlowStreams => r#","stream":true"#,
    };
    Bytes::from(format!(
        r#"{{"model":"{BENCH_MODEL}","messages":[{{"role":"user","content":"hello"}}]{stream}}}"#
    ))
}

async fn measure(
    running: &mut Running,
    target: Target,
    mode: Mode,
    args: &BenchArgs,
    ticks_per_second: u64,
) -> Cell {
    let spec = LoadSpec {
        addr: running.addr,
        path: running.path.clone(),
        body: body(mode),
        bearer: format!("Bearer {BENCH_KEY}"),
        stream: mode == Mode::Stream,
        concurrency: args.concurrency.max(1),
        warmup: Duration::from_secs(args.warmup),
        duration: Duration::from_secs(args.duration.max(1)),
    };
    let proc = running.proc.as_ref();
    let cpu = |p: &procs::Proc| p.tree_cpu_ticks();
    let mut cpu_start = None;
    let mut cpu_end = None;
    let load = load::run(
        &spec,
        || cpu_start = proc.map(cpu),
        || cpu_end = proc.map(cpu),
    )
    .await;
    let mut cell = Cell::measured(target, mode, &load, spec.duration.as_secs_f64());
    if let (Some(proc), Some(start), Some(end)) = (proc, cpu_start, cpu_end) {
        if load.requests > 0 {
            let micros = (end.saturating_sub(start)) as f64 * 1e6 / ticks_per_second as f64;
            cell.cpu_us_per_req = Some(micros / load.requests as f64);
        }
        cell.rss_mb = Some(proc.tree_rss_bytes() as f64 / (1024.0 * 1024.0));
    }
    if let Some(proc) = running.proc.as_mut()
        && let Some(status) = proc.exited()
    {
        cell.failed = Some(format!(
            "exited during the cell ({status}); log tail:\n{}",
            proc.log_tail(10)
        ));
    }
    cell
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_round_is_reported_and_failures_win() {
        let cell = |rps: f64| {
            let mut c = Cell::failed(Target::Gateway, Mode::Stream, String::new());
            c.failed = None;
            c.req_per_s = rps;
            c
        };
        let picked = median(vec![cell(30.0), cell(10.0), cell(20.0)]).unwrap();
        assert_eq!(picked.req_per_s, 20.0);
        let mut broken = cell(5.0);
        broken.failed = Some("exited".into());
        assert!(
            median(vec![cell(1.0), broken, cell(3.0)])
                .unwrap()
                .failed
                .is_some()
        );
        assert!(median(Vec::new()).is_none());
    }

    #[test]
    fn bodies_are_json_with_and_without_stream() {
        let plain: serde_json::Value = serde_json::from_slice(&body(Mode::NonStream)).unwrap();
        assert_eq!(plain["model"], BENCH_MODEL);
        assert!(plain.get("stream").is_none());
        let stream: serde_json::Value = serde_json::from_slice(&body(Mode::Stream)).unwrap();
        assert_eq!(stream["stream"], true);
        assert_eq!(stream["messages"][0]["content"], "hello");
    }
}
