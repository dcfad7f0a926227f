//! The runner: one target for a bounded time, every execution checked for panics, for its
//! allocation bound and for the target's own properties; the first failing input is kept.

use std::alloc::System;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use stats_alloc::{Region, StatsAlloc};

use crate::mutate::Mutator;
use crate::targets::Target;

pub struct Settings {
    pub corpus: PathBuf,
    pub artifacts: PathBuf,
    pub max_len: usize,
    pub seed: u64,
    pub duration: Duration,
    /// An execution slower than this is kept (once per target) for a look; never a failure.
    pub slow: Duration,
}

/// Bytes one execution may allocate in all (not at once: every allocation counts): a fixed
/// allowance for parsers' and runtimes' first allocations, plus a multiple of the input. An
/// execution whose allocations grow faster than its input (a quadratic copy, an unbounded
/// buffer) passes it on the mutator's long inputs.
pub fn alloc_limit(input_len: usize) -> usize {
    16 * 1024 * 1024 + 1024 * input_len
}

/// What one target's run did.
pub struct Report {
    pub name: &'static str,
    pub executions: u64,
    pub seeds: usize,
    pub elapsed: Duration,
    pub largest_input: usize,
    /// The largest allocation total of one execution, and its input's length.
    pub most_allocated: (usize, usize),
    pub slowest: Duration,
    /// Where the first execution slower than [`Settings::slow`] was kept.
    pub slow_input: Option<PathBuf>,
    pub failure: Option<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<17} {:>8} executions in {:>5.1} s from {:>2} seeds; largest input {} B, most \
             allocated {:.1} MiB (input {} B), slowest {} ms",
            self.name,
            self.executions,
            self.elapsed.as_secs_f64(),
            self.seeds,
            self.largest_input,
            self.most_allocated.0 as f64 / (1024.0 * 1024.0),
            self.most_allocated.1,
            self.slowest.as_millis(),
        )?;
        if let Some(file) = &self.slow_input {
            write!(f, "\n  slow input kept in {}", file.display())?;
        }
        if let Some(failure) = &self.failure {
            write!(f, "\n  FAILED: {failure}")?;
        }
        Ok(())
    }
}

static PANIC: Mutex<Option<String>> = Mutex::new(None);

/// Keeps a panic's message and place for the report instead of printing it.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let place = info.location().map(ToString::to_string).unwrap_or_default();
        if let Ok(mut slot) = PANIC.lock() {
            *slot = Some(format!("panicked at {place}: {message}"));
        }
    }));
}

/// One execution: `Err` says why it failed.
fn execute(
    target: &Target,
    input: &[u8],
    alloc: &'static StatsAlloc<System>,
) -> Result<usize, String> {
    let region = Region::new(alloc);
    let outcome = catch_unwind(AssertUnwindSafe(|| (target.run)(input)));
    let allocated = region.change().bytes_allocated;
    match outcome {
        Ok(Ok(())) if allocated <= alloc_limit(input.len()) => Ok(allocated),
        Ok(Ok(())) => Err(format!(
            "allocated {allocated} bytes for a {} byte input (limit {})",
            input.len(),
            alloc_limit(input.len())
        )),
        Ok(Err(property)) => Err(property),
        Err(_) => Err(PANIC
            .lock()
            .ok()
            .and_then(|mut p| p.take())
            .unwrap_or_else(|| "panicked".into())),
    }
}

/// Fuzzes `target` for the settings' duration.
pub fn target(
    target: &Target,
    settings: &Settings,
    alloc: &'static StatsAlloc<System>,
) -> anyhow::Result<Report> {
    let seeds = (target.derive)(read_corpus(&settings.corpus.join(target.name))?);
    let mut report = Report {
        name: target.name,
        executions: 0,
        seeds: seeds.len(),
        elapsed: Duration::ZERO,
        largest_input: 0,
        most_allocated: (0, 0),
        slowest: Duration::ZERO,
        slow_input: None,
        failure: None,
    };
    let mut mutator = Mutator::new(settings.seed, target.tokens, settings.max_len);
    let start = Instant::now();
    let mut next = 0;
    while report.failure.is_none() && (next < seeds.len() || start.elapsed() < settings.duration) {
        // The seeds themselves first, then edits of them.
        let input = match seeds.get(next) {
            Some(seed) => seed.clone(),
            None => mutator.input(&seeds),
        };
        next += 1;
        let began = Instant::now();
        let outcome = execute(target, &input, alloc);
        let took = began.elapsed();
        report.slowest = report.slowest.max(took);
        if took > settings.slow && report.slow_input.is_none() {
            report.slow_input = Some(keep(
                &settings.artifacts,
                &format!("slow-{}", target.name),
                &input,
            )?);
        }
        report.executions += 1;
        report.largest_input = report.largest_input.max(input.len());
        match outcome {
            Ok(allocated) if allocated > report.most_allocated.0 => {
                report.most_allocated = (allocated, input.len());
            }
            Ok(_) => {}
            Err(why) => {
                let file = keep(&settings.artifacts, target.name, &input)?;
                report.failure = Some(format!(
                    "{why}\n  input kept in {} (replay: fuzz --replay {} {})",
                    file.display(),
                    target.name,
                    file.display()
                ));
            }
        }
    }
    report.elapsed = start.elapsed();
    Ok(report)
}

/// Runs one input once and prints the outcome; `true` if it passed.
pub fn replay(target: &Target, input: &[u8], alloc: &'static StatsAlloc<System>) -> bool {
    match execute(target, input, alloc) {
        Ok(allocated) => {
            println!("{}: passed ({allocated} bytes allocated)", target.name);
            true
        }
        Err(why) => {
            println!("{}: FAILED: {why}", target.name);
            false
        }
    }
}

fn read_corpus(dir: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading the corpus {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    let seeds = files
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("reading {}", p.display())))
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!seeds.is_empty(), "the corpus {} is empty", dir.display());
    Ok(seeds)
}

/// Writes a failing input to `dir/<target>-<hash>` and returns its path.
fn keep(dir: &Path, name: &str, input: &[u8]) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join(format!("{name}-{:016x}", crate::drive::hash(input)));
    std::fs::write(&file, input).with_context(|| format!("writing {}", file.display()))?;
    Ok(file)
}
