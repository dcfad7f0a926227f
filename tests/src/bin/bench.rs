//! `bench`: measures the gateway's overhead against the mock upstream and peer proxies in
//! one run and prints a markdown table (see `tests/src/bench` and `scripts/bench`).

// The report table is this binary's output, so it goes to stdout.
#![allow(clippy::print_stdout)]

use clap::Parser;
use switchboard_tests::bench::{self, cli::BenchArgs, procs::Pinning};

fn main() -> anyhow::Result<()> {
    let args = BenchArgs::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    // Count cores and pin before the runtime exists: afterwards this process sees only its
    // own core, and threads started later inherit the pinning.
    let nproc = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pinning = Pinning::decide(nproc);
    // One thread: the load generator must stay on its core, beside the mock.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let report = runtime.block_on(async {
        // On Ctrl-C or SIGTERM the run future is dropped, and with it every child's guard.
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            report = bench::run(&args, pinning, nproc) => report,
            _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted"),
            _ = terminate.recv() => anyhow::bail!("terminated"),
        }
    })?;
    println!("{}", report.markdown());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
        println!("figures written to {}", path.display());
    }
    Ok(())
}
