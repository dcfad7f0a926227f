//! `fuzz`: Switchboard's parsers under random inputs for a bounded time, on the stable
//! toolchain (scripts/fuzz runs it in CI; docs/testing.md says how to read and replay it).
//!
//! Why not cargo-fuzz: it needs a nightly compiler for its sanitizer flags, and this project
//! builds with one stable toolchain. Without coverage feedback the search is blind, so it
//! starts from a checked-in corpus of real streams and bodies (`fuzz/corpus/<target>/`, cut
//! from the mock upstream's fixtures and the price file) and edits them the way these parsers
//! are likely to break ([`mutate`]). Each execution must not panic, must stay under an
//! allocation bound linear in its input ([`run::alloc_limit`]), and must hold its target's
//! properties ([`targets`]). A failing input is written to the artifacts directory and can be
//! replayed with `fuzz --replay TARGET FILE`.
#![allow(clippy::print_stdout)] // The run's report is this program's output.

mod drive;
mod mutate;
mod run;
mod targets;

use std::alloc::System;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use stats_alloc::{INSTRUMENTED_SYSTEM, StatsAlloc};

/// The system allocator, counting: the allocation bound is checked per execution.
#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const USAGE: &str = "usage: fuzz [--seconds S] [--target NAME]... [--max-len BYTES] [--seed N]
            [--corpus DIR] [--artifacts DIR] [--slow-ms MS]
       fuzz --replay TARGET FILE
       fuzz --list";

struct Options {
    seconds: f64,
    only: Vec<String>,
    settings: run::Settings,
    replay: Option<(String, PathBuf)>,
    list: bool,
}

fn options() -> anyhow::Result<Options> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut o = Options {
        seconds: 15.0,
        only: Vec::new(),
        settings: run::Settings {
            corpus: root.join("corpus"),
            artifacts: std::env::temp_dir().join("switchboard-fuzz"),
            max_len: 64 * 1024,
            seed: fastrand::u64(..),
            duration: Duration::ZERO,
            slow: Duration::from_secs(1),
        },
        replay: None,
        list: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || {
            args.next()
                .with_context(|| format!("{arg} needs a value\n{USAGE}"))
        };
        match arg.as_str() {
            "--seconds" => o.seconds = value()?.parse().context("--seconds")?,
            "--target" => o.only.push(value()?),
            "--max-len" => o.settings.max_len = value()?.parse().context("--max-len")?,
            "--slow-ms" => {
                o.settings.slow = Duration::from_millis(value()?.parse().context("--slow-ms")?)
            }
            "--seed" => o.settings.seed = value()?.parse().context("--seed")?,
            "--corpus" => o.settings.corpus = value()?.into(),
            "--artifacts" => o.settings.artifacts = value()?.into(),
            "--replay" => o.replay = Some((value()?, value()?.into())),
            "--list" => o.list = true,
            _ => bail!("unknown argument {arg}\n{USAGE}"),
        }
    }
    o.settings.duration = Duration::from_secs_f64(o.seconds.max(0.0));
    Ok(o)
}

fn main() -> ExitCode {
    match fuzz() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("fuzz: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the chosen targets; `Ok(false)` if any failed.
fn fuzz() -> anyhow::Result<bool> {
    let o = options()?;
    let targets = targets::all();
    if o.list {
        for t in &targets {
            println!("{}", t.name);
        }
        return Ok(true);
    }
    run::install_panic_hook();
    drive::init();
    if let Some((name, file)) = &o.replay {
        let target = targets
            .iter()
            .find(|t| t.name == name)
            .context("no such target")?;
        let input = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        return Ok(run::replay(target, &input, GLOBAL));
    }
    for name in &o.only {
        if !targets.iter().any(|t| t.name == name) {
            bail!("no target {name} (fuzz --list names them)");
        }
    }
    println!(
        "fuzz: seed {} (pass --seed to repeat this run)",
        o.settings.seed
    );
    let mut ok = true;
    let mut total = 0;
    for target in targets
        .iter()
        .filter(|t| o.only.is_empty() || o.only.iter().any(|n| n == t.name))
    {
        let report = run::target(target, &o.settings, GLOBAL)?;
        println!("{report}");
        total += report.executions;
        ok &= report.failure.is_none();
    }
    println!("fuzz: {total} executions in all");
    Ok(ok)
}
