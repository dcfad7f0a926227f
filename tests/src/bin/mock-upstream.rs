//! `mock-upstream`: the mock OpenAI upstream as a process, for the benchmark and for anything
//! that cannot start it in-process. Prints `listening on http://ADDR` once it accepts
//! connections, so scripts can wait for that line (and learn the port when given port 0).

// The ready line is this binary's interface to scripts, so it goes to stdout.
#![allow(clippy::print_stdout)]

use std::io::Write as _;
use std::net::SocketAddr;

use clap::Parser;
use switchboard_tests::mock::{MockOptions, MockUpstream};

#[derive(Debug, Parser)]
#[command(about = "A mock OpenAI upstream (see tests/src/mock for the scenario knobs)")]
struct Args {
    /// Address to listen on; port 0 picks a free port (printed in the ready line).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Keep only request counts, not the requests themselves (for benchmarks).
    #[arg(long)]
    no_record: bool,
    /// Tokio worker threads; 1 uses a current-thread runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let runtime = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(args.threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(async {
        let options = MockOptions {
            record: !args.no_record,
        };
        let mock = MockUpstream::start_with(args.listen, options).await?;
        println!("listening on http://{}", mock.addr());
        std::io::stdout().flush()?;
        shutdown_signal().await?;
        drop(mock);
        Ok(())
    })
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result?,
        _ = terminate.recv() => {}
    }
    Ok(())
}
