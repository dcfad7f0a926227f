//! The benchmark's figures: one cell per target and mode, ratios against the direct call, and
//! their rendering as a markdown table (for the README) and JSON (for tooling).

use serde::Serialize;

use super::cli::{Mode, Target};
use super::load::LoadResult;
use super::scale::Propagation;
use super::slow::SlowResult;
use super::targets::Running;

/// The conditions of a run, printed with the table: figures from another machine or another
/// pinning are not comparable.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Context {
    pub nproc: usize,
    pub pinning: String,
    pub duration_s: u64,
    pub warmup_s: u64,
    /// Rounds measured; each figure is the median round's.
    pub rounds: usize,
    pub concurrency: usize,
    pub stream_chunks: usize,
}

/// One target in one mode.
#[derive(Debug, Clone, Serialize)]
pub struct Cell {
    pub target: Target,
    pub mode: Mode,
    /// Why there are no figures, if there are none.
    pub failed: Option<String>,
    pub requests: u64,
    pub req_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    pub error_samples: Vec<String>,
    /// The proxy's CPU time (process tree, user + system) per successful request.
    pub cpu_us_per_req: Option<f64>,
    /// The proxy's resident memory (process tree) after the cell.
    pub rss_mb: Option<f64>,
    /// `req_per_s` ÷ the direct cell's of the same mode.
    pub vs_direct: Option<f64>,
    /// `req_per_s` ÷ the nginx cell's of the same mode.
    pub vs_nginx: Option<f64>,
    /// `p50_ms` − the direct cell's of the same mode.
    pub added_p50_ms: Option<f64>,
}

impl Cell {
    pub fn failed(target: Target, mode: Mode, reason: String) -> Self {
        Self {
            failed: Some(reason),
            ..Self::measured(target, mode, &LoadResult::default(), 1.0)
        }
    }

    pub fn measured(target: Target, mode: Mode, load: &LoadResult, seconds: f64) -> Self {
        Self {
            target,
            mode,
            failed: None,
            requests: load.requests,
            req_per_s: load.requests as f64 / seconds,
            p50_ms: load.quantile_ms(0.50),
            p99_ms: load.quantile_ms(0.99),
            errors: load.errors,
            error_samples: load.error_samples.clone(),
            cpu_us_per_req: None,
            rss_mb: None,
            vs_direct: None,
            vs_nginx: None,
            added_p50_ms: None,
        }
    }
}

/// A proxy's start: how long until it answered ready, and its memory then, idle.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Startup {
    pub target: Target,
    pub ready_s: f64,
    pub idle_rss_mb: f64,
    /// Idle RSS [`super::targets::SETTLE`] later.
    pub settled_rss_mb: f64,
}

impl Startup {
    pub fn of(target: Target, running: &Running) -> Self {
        Self {
            target,
            ready_s: running.ready_after.unwrap_or_default().as_secs_f64(),
            idle_rss_mb: running.idle_rss_bytes.unwrap_or_default() as f64 / (1024.0 * 1024.0),
            settled_rss_mb: running.settled_rss_bytes.unwrap_or_default() as f64
                / (1024.0 * 1024.0),
        }
    }
}

/// Everything one run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub context: Context,
    pub cells: Vec<Cell>,
    /// Skipped targets and other remarks.
    pub notes: Vec<String>,
    /// Per mode: the Redis-mode gateway's throughput ÷ the in-process gateway's.
    pub redis_vs_in_process: Vec<(Mode, f64)>,
    /// Per traced gateway and mode: its throughput and CPU per request ÷ the untraced
    /// gateway's (tracing off), from the same run.
    pub tracing_vs_off: Vec<TracingCost>,
    /// Per proxy started for the cells: time to ready and idle memory.
    pub startups: Vec<Startup>,
    /// Per mode: the 100k-key gateway's throughput ÷ the one-key gateway's.
    pub keys_vs_one: Vec<(Mode, f64)>,
    /// The slow-streams section, one entry per proxy.
    pub slow_streams: Vec<SlowResult>,
    /// The propagation section.
    pub propagation: Option<Propagation>,
}

/// What exporting traces costs, against the same gateway with tracing off.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TracingCost {
    pub target: Target,
    pub mode: Mode,
    /// Throughput ÷ the untraced gateway's.
    pub throughput: f64,
    /// CPU µs per request ÷ the untraced gateway's.
    pub cpu: Option<f64>,
}

impl Report {
    /// Fills in the ratios against the direct and the nginx cell of each mode.
    pub fn compare_with_direct(&mut self) {
        let of = |target: Target| -> Vec<(Mode, f64, f64)> {
            self.cells
                .iter()
                .filter(|c| c.target == target && c.failed.is_none() && c.requests > 0)
                .map(|c| (c.mode, c.req_per_s, c.p50_ms))
                .collect()
        };
        let (direct, nginx) = (of(Target::Direct), of(Target::Nginx));
        for cell in &mut self.cells {
            if cell.failed.is_some() || cell.requests == 0 {
                continue;
            }
            let same_mode = |list: &[(Mode, f64, f64)]| {
                list.iter().find(|(mode, ..)| *mode == cell.mode).copied()
            };
            if let Some((_, rps, p50)) = same_mode(&direct)
                && cell.target != Target::Direct
            {
                cell.vs_direct = Some(cell.req_per_s / rps);
                cell.added_p50_ms = Some(cell.p50_ms - p50);
            }
            if let Some((_, rps, _)) = same_mode(&nginx)
                && cell.target != Target::Nginx
            {
                cell.vs_nginx = Some(cell.req_per_s / rps);
            }
        }
    }

    /// Fills in the 100k-key gateway's throughput against the one-key gateway's, per mode.
    pub fn compare_keys_with_one(&mut self) {
        let measured =
            |target: Target, mode: Mode| self.measured(target, mode).map(|c| c.req_per_s);
        self.keys_vs_one = [Mode::NonStream, Mode::Stream]
            .into_iter()
            .filter_map(|mode| {
                let one = measured(Target::Gateway, mode)?;
                let many = measured(Target::Gateway100kKeys, mode)?;
                Some((mode, many / one))
            })
            .collect();
    }

    /// The measured cell of `target` in `mode`, if any.
    fn measured(&self, target: Target, mode: Mode) -> Option<&Cell> {
        self.cells
            .iter()
            .find(|c| c.target == target && c.mode == mode && c.failed.is_none() && c.requests > 0)
    }

    /// Fills in each traced gateway's throughput and CPU against the untraced one's.
    pub fn compare_tracing_with_off(&mut self) {
        let mut costs = Vec::new();
        for target in [Target::GatewayTraced1pct, Target::GatewayTraced100pct] {
            for mode in [Mode::NonStream, Mode::Stream] {
                let (Some(off), Some(on)) = (
                    self.measured(Target::Gateway, mode),
                    self.measured(target, mode),
                ) else {
                    continue;
                };
                costs.push(TracingCost {
                    target,
                    mode,
                    throughput: on.req_per_s / off.req_per_s,
                    cpu: on
                        .cpu_us_per_req
                        .zip(off.cpu_us_per_req)
                        .map(|(a, b)| a / b),
                });
            }
        }
        self.tracing_vs_off = costs;
    }

    /// Fills in the Redis-mode gateway's throughput against the in-process one's, per mode.
    pub fn compare_redis_with_in_process(&mut self) {
        let measured =
            |target: Target, mode: Mode| self.measured(target, mode).map(|c| c.req_per_s);
        self.redis_vs_in_process = [Mode::NonStream, Mode::Stream]
            .into_iter()
            .filter_map(|mode| {
                let local = measured(Target::Gateway, mode)?;
                let redis = measured(Target::GatewayRedis, mode)?;
                Some((mode, redis / local))
            })
            .collect();
    }

    /// The markdown table, its context line and the notes, then the sections of the modes
    /// run.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let mut footnotes = Vec::new();
        let c = &self.context;
        if self.cells.is_empty() {
            out.push_str(&format!("nproc {}; {}\n", c.nproc, c.pinning));
        } else {
            out.push_str(&self.cells_table(&mut footnotes));
            out.push_str(&format!(
                "\nnproc {}; {}; {} s per cell after {} s warm-up; median of {} rounds; concurrency {}; {} chunks per stream\n",
                c.nproc, c.pinning, c.duration_s, c.warmup_s, c.rounds, c.concurrency, c.stream_chunks
            ));
        }
        for (i, note) in footnotes.iter().enumerate() {
            out.push_str(&format!("[{}] {note}\n", i + 1));
        }
        out.push_str(&self.comparisons());
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        if !self.slow_streams.is_empty() {
            out.push_str(&slow_streams_markdown(&self.slow_streams));
        }
        if let Some(propagation) = &self.propagation {
            out.push_str(&propagation_markdown(propagation));
        }
        out
    }

    /// The main table, one row per cell; failures and errors become numbered footnotes.
    fn cells_table(&self, footnotes: &mut Vec<String>) -> String {
        let mut out = String::new();
        out.push_str(
            "| target | mode | req/s | × direct | × nginx | p50 ms | +p50 ms | p99 ms | errors | proxy CPU µs/req | proxy RSS MB |\n",
        );
        out.push_str("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n");
        let ratio = |r: Option<f64>| r.map_or("–".to_owned(), |r| format!("{r:.2}×"));
        for cell in &self.cells {
            let (target, mode) = (cell.target.name(), cell.mode.name());
            out.push_str(&format!("| {target} | {mode} "));
            if let Some(reason) = &cell.failed {
                footnotes.push(format!("{target} {mode}: failed: {reason}"));
                out.push_str(&format!(
                    "| failed [{}] | – | – | – | – | – | – | – | – |\n",
                    footnotes.len()
                ));
                continue;
            }
            let errors = if cell.errors > 0 {
                footnotes.push(format!(
                    "{target} {mode}: {} errors, e.g. {}",
                    cell.errors,
                    cell.error_samples.join("; ")
                ));
                format!("{} [{}]", thousands(cell.errors as f64), footnotes.len())
            } else {
                "0".to_owned()
            };
            out.push_str(&format!(
                "| {} | {} | {} | {:.2} | {} | {:.2} | {} | {} | {} |\n",
                thousands(cell.req_per_s),
                ratio(cell.vs_direct),
                ratio(cell.vs_nginx),
                cell.p50_ms,
                cell.added_p50_ms
                    .map_or("–".to_owned(), |d| format!("{d:+.2}")),
                cell.p99_ms,
                errors,
                cell.cpu_us_per_req
                    .map_or("–".to_owned(), |c| format!("{c:.0}")),
                cell.rss_mb.map_or("–".to_owned(), |m| format!("{m:.0}")),
            ));
        }
        out
    }

    /// One line per comparison between targets of the same run, and the proxies' start-up.
    fn comparisons(&self) -> String {
        let mut out = String::new();
        for (mode, ratio) in &self.redis_vs_in_process {
            out.push_str(&format!(
                "Redis-mode limits vs in-process, {}: {ratio:.2}× the throughput\n",
                mode.name()
            ));
        }
        for t in &self.tracing_vs_off {
            out.push_str(&format!(
                "Tracing ({}) vs off, {}: {:.2}× the throughput, {} the CPU per request\n",
                t.target.name(),
                t.mode.name(),
                t.throughput,
                t.cpu.map_or("–".to_owned(), |c| format!("{c:.2}×")),
            ));
        }
        for (mode, ratio) in &self.keys_vs_one {
            out.push_str(&format!(
                "100k keys vs 1 key, {}: {ratio:.2}× the throughput\n",
                mode.name()
            ));
        }
        for s in &self.startups {
            out.push_str(&format!(
                "start-up, {}: ready after {:.2} s, {:.1} MB RSS idle, {:.1} MB {} s later\n",
                s.target.name(),
                s.ready_s,
                s.idle_rss_mb,
                s.settled_rss_mb,
                super::targets::SETTLE.as_secs(),
            ));
        }
        out
    }
}

/// The slow-streams section: one row per proxy.
fn slow_streams_markdown(results: &[SlowResult]) -> String {
    let mut out = String::from(
        "\n### Many slow streams\n\n| proxy | streams | completed | errors | most open at once | idle RSS MB | peak RSS MB | KiB per open stream | stream p50 / p99 s (nominal) | wall s | proxy CPU share |\n|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n",
    );
    let mut notes = Vec::new();
    for r in results {
        if let Some(reason) = &r.failed {
            out.push_str(&format!(
                "| {} | {} | failed: {} |\n",
                r.target.name(),
                r.streams,
                reason.lines().next().unwrap_or_default()
            ));
            continue;
        }
        if r.errors > 0 {
            notes.push(format!(
                "{}: {} errors, e.g. {}",
                r.target.name(),
                r.errors,
                r.error_samples.join("; ")
            ));
        }
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.1} | {:.1} | {} | {:.2} / {:.2} ({:.2}) | {:.1} | {:.2} |\n",
            r.target.name(),
            thousands(r.streams as f64),
            thousands(r.completed as f64),
            thousands(r.errors as f64),
            thousands(r.peak_open as f64),
            r.idle_rss_mb,
            r.peak_rss_mb,
            r.kib_per_open_stream
                .map_or("–".to_owned(), |k| format!("{k:.1}")),
            r.p50_stream_s,
            r.p99_stream_s,
            r.nominal_stream_s,
            r.wall_s,
            r.proxy_cpu_share,
        ));
    }
    for note in notes {
        out.push_str(&format!("{note}\n"));
    }
    out
}

/// The propagation section.
fn propagation_markdown(p: &Propagation) -> String {
    let mut out = format!(
        "\n### One key change at {} keys (control plane → NATS → data plane)\n\n",
        thousands(p.keys as f64)
    );
    if let Some(reason) = &p.failed {
        out.push_str(&format!("failed: {reason}\n"));
        return out;
    }
    let q = |q: &super::scale::Quantiles| format!("{:.0} / {:.0} / {:.0}", q.p50, q.p99, q.max);
    out.push_str(&format!(
        "| figure | value |\n|---|--:|\n\
         | changes timed (creations + revocations) | {} ({} never shown) |\n\
         | admin call (commit, build, publish) p50 / p99 / max ms | {} |\n\
         | admin answer → data plane answers the new way, p50 / p99 / max ms | {} |\n\
         | admin call sent → data plane answers the new way, p50 / p99 / max ms | {} |\n\
         | data plane start → ready (fetch + install) s | {:.2} |\n\
         | data plane RSS idle after install / 3 s later / after the changes MB | {:.1} / {:.1} / {:.1} |\n\
         | control plane RSS MB | {:.1} |\n\
         | snapshot cache file bytes (body + signed head) | {} |\n\
         | SQL seeding of the keys s (setup, not a product figure) | {:.1} |\n",
        p.changes,
        p.lost,
        q(&p.admin_call_ms),
        q(&p.propagation_ms),
        q(&p.end_to_end_ms),
        p.dataplane_ready_s,
        p.dataplane_idle_rss_mb,
        p.dataplane_settled_rss_mb,
        p.dataplane_end_rss_mb,
        p.controlplane_rss_mb,
        thousands(p.snapshot_bytes as f64),
        p.seed_s,
    ));
    out
}

/// `70213.4` → `70,213`.
fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(requests: u64, p50_us: u32) -> LoadResult {
        LoadResult {
            requests,
            latencies_us: vec![p50_us; 10],
            ..LoadResult::default()
        }
    }

    #[test]
    fn ratios_and_table() {
        let mut report = Report {
            context: Context {
                nproc: 2,
                pinning: "pinned".into(),
                duration_s: 3,
                warmup_s: 1,
                rounds: 1,
                concurrency: 32,
                stream_chunks: 20,
            },
            cells: vec![
                Cell::measured(Target::Direct, Mode::NonStream, &load(3000, 1000), 3.0),
                Cell::measured(Target::Nginx, Mode::NonStream, &load(1500, 1500), 3.0),
                Cell::failed(Target::Gateway, Mode::NonStream, "no binary".into()),
            ],
            notes: vec!["litellm skipped".into()],
            ..Report::default()
        };
        report.compare_with_direct();
        report.compare_redis_with_in_process();
        assert!(report.redis_vs_in_process.is_empty());
        assert_eq!(report.cells[1].vs_direct, Some(0.5));
        assert_eq!(report.cells[1].added_p50_ms, Some(0.5));
        assert_eq!(report.cells[2].vs_direct, None);
        let table = report.markdown();
        assert!(
            table.contains("| nginx | non-stream | 500 | 0.50× | – | 1.50 | +0.50 |"),
            "{table}"
        );
        assert!(
            table.contains("| gateway | non-stream | failed [1] |"),
            "{table}"
        );
        assert!(
            table.contains("[1] gateway non-stream: failed: no binary"),
            "{table}"
        );
        assert!(table.contains("note: litellm skipped"), "{table}");
        report.cells.push(Cell::measured(
            Target::Gateway,
            Mode::NonStream,
            &load(2000, 1000),
            1.0,
        ));
        report.cells.push(Cell::measured(
            Target::GatewayRedis,
            Mode::NonStream,
            &load(1700, 1000),
            1.0,
        ));
        report.compare_redis_with_in_process();
        assert_eq!(report.redis_vs_in_process, [(Mode::NonStream, 0.85)]);
        report.compare_with_direct();
        assert_eq!(report.cells[3].vs_nginx, Some(4.0));
        assert_eq!(report.cells[0].vs_nginx, Some(2.0));
        assert!(
            report
                .markdown()
                .contains("| gateway | non-stream | 2,000 | 2.00× | 4.00× |"),
            "{}",
            report.markdown()
        );
        report.cells.push(Cell::measured(
            Target::Gateway100kKeys,
            Mode::NonStream,
            &load(1000, 1000),
            1.0,
        ));
        report.compare_keys_with_one();
        assert_eq!(report.keys_vs_one, [(Mode::NonStream, 0.5)]);
        assert!(
            report
                .markdown()
                .contains("100k keys vs 1 key, non-stream: 0.50× the throughput")
        );
        assert!(
            report
                .markdown()
                .contains("Redis-mode limits vs in-process, non-stream: 0.85×"),
        );
        let mut traced = Cell::measured(
            Target::GatewayTraced100pct,
            Mode::NonStream,
            &load(1800, 1000),
            1.0,
        );
        traced.cpu_us_per_req = Some(30.0);
        report.cells[3].cpu_us_per_req = Some(20.0);
        report.cells.push(traced);
        report.compare_tracing_with_off();
        assert_eq!(report.tracing_vs_off.len(), 1);
        assert_eq!(report.tracing_vs_off[0].throughput, 0.9);
        assert_eq!(report.tracing_vs_off[0].cpu, Some(1.5));
        assert!(
            report
                .markdown()
                .contains("Tracing (gateway-traced-100pct) vs off, non-stream: 0.90× the throughput, 1.50× the CPU per request"),
        );
        assert_eq!(thousands(70213.4), "70,213");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
    }
}
