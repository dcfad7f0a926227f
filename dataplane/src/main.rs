//! The `dataplane` binary: reads the command line, sets up logging, calls the library.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dataplane::config::{Config, LogFormat, LoggingConfig, process_env, redacted_url};
use switchboard_shared::keys::{display_prefix, hash_key_hex};

/// mimalloc instead of the system allocator: the request path allocates small, short-lived
/// buffers, where glibc's malloc spent a tenth of the gateway's CPU in the benchmark.
#[global_allocator]
static GLOBAL: switchboard_alloc::Mimalloc = switchboard_alloc::Mimalloc;

#[derive(Parser)]
#[command(
    name = "dataplane",
    version,
    about = "Switchboard's data plane: an OpenAI-compatible LLM gateway"
)]
struct Cli {
    /// Config file (YAML or JSON) with a `server` section and either `snapshot` (standalone)
    /// or `cluster` (cluster mode).
    #[arg(
        long,
        env = "SWITCHBOARD_CONFIG",
        default_value = "deploy/standalone.yaml",
        global = true
    )]
    config: PathBuf,
    /// Address to listen on; overrides `server.listen`. Accepted before or after `serve`.
    #[arg(long, env = "SWITCHBOARD_LISTEN", global = true)]
    listen: Option<SocketAddr>,
    /// Cluster mode: the control plane's gRPC URL; overrides `cluster.controlplane_grpc`.
    #[arg(long, value_name = "GRPC_URL", global = true)]
    controlplane: Option<String>,
    /// Cluster mode: the NATS URL; overrides `cluster.nats_url`.
    #[arg(long, value_name = "URL", global = true)]
    nats: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve requests (the default).
    Serve,
    /// Validate the config file and list every problem.
    Check,
    /// Read a virtual key from standard input and print its `key_hash` and `display_prefix`
    /// under the config's pepper, for adding the key to a snapshot.
    HashKey,
    /// Check the config, master keys, Redis, NATS, the control plane's gRPC endpoint, the
    /// snapshot's credentials and every upstream; print a report with fixes; exit 1 on a
    /// failure.
    Doctor,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => run_server(dataplane::Options {
            config_path: cli.config,
            listen: cli.listen,
            controlplane: cli.controlplane,
            nats: cli.nats,
            master_keys: std::env::var(dataplane::server::MASTER_KEYS_ENV).ok(),
        }),
        Command::Check => check(&cli.config, cli.controlplane, cli.nats),
        Command::HashKey => hash_key(&cli.config),
        Command::Doctor => doctor(&cli.config, cli.controlplane, cli.nats),
    }
}

fn run_server(options: dataplane::Options) -> ExitCode {
    let config = LoggingConfig::load(&options.config_path, &process_env());
    let format = config
        .as_ref()
        .map(|c| c.server.log_format)
        .unwrap_or_default();
    // On one core (e.g. pinned with taskset) the work-stealing scheduler only adds overhead.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let built = if cores == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    let runtime = match built {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The gRPC exporter is built inside the runtime; the guard flushes spans at exit.
    let telemetry = {
        let _entered = runtime.enter();
        init_logging(config.as_ref().map(|c| &c.telemetry), format)
    };
    let telemetry = match telemetry {
        Ok(t) => t,
        Err(e) => {
            eprintln!("telemetry: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(dataplane::serve(options));
    drop(telemetry);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Log lines to stderr and, when configured (`telemetry:` or the `OTEL_*` variables), trace
/// export.
fn init_logging(
    file: Option<&switchboard_shared::telemetry::TelemetryConfig>,
    format: LogFormat,
) -> Result<Option<switchboard_shared::telemetry::Telemetry>, String> {
    use switchboard_shared::telemetry as otel;
    let env = |name: &str| std::env::var(name).ok();
    let mut traces = file
        .cloned()
        .unwrap_or_default()
        .resolve(&env, "switchboard-dataplane")?;
    if let Some(traces) = traces.as_mut() {
        // The request path samples at each request's head (`telemetry::request`).
        traces.head_sampled = true;
    }
    let format = match format {
        LogFormat::Text => otel::LogFormat::Text,
        LogFormat::Json => otel::LogFormat::Json,
    };
    otel::init(traces.as_ref(), format)
}

fn check(path: &std::path::Path, controlplane: Option<String>, nats: Option<String>) -> ExitCode {
    let loaded = Config::load(path, &process_env())
        .map(|mut c| {
            c.override_cluster(controlplane, nats);
            c
        })
        .map_err(|e| e.to_string());
    let keys = dataplane::server::master_keys_from(
        std::env::var(dataplane::server::MASTER_KEYS_ENV)
            .ok()
            .as_deref(),
    );
    if let Err(e) = keys {
        eprintln!("{e:#}");
        return ExitCode::FAILURE;
    }
    match loaded.and_then(|c| {
        c.validate()
            .map(|()| c)
            .map_err(|p| format!("{}: {p}", path.display()))
    }) {
        Ok(c) => {
            match (&c.snapshot, &c.cluster) {
                (Some(s), _) => eprintln!(
                    "{}: ok (revision {}, {} keys, {} deployments)",
                    path.display(),
                    s.revision,
                    s.virtual_keys.len(),
                    s.deployments.len()
                ),
                (None, Some(cl)) => eprintln!(
                    "{}: ok (cluster mode, namespace {}, nats {}, grpc {})",
                    path.display(),
                    cl.namespace,
                    cl.nats_url.as_deref().map_or("-".into(), redacted_url),
                    cl.controlplane_grpc
                        .as_deref()
                        .map_or("-".into(), redacted_url)
                ),
                (None, None) => {}
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout)] // The report is this command's output.
fn doctor(path: &std::path::Path, controlplane: Option<String>, nats: Option<String>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let _ = rustls::crypto::ring::default_provider().install_default();
    let keys = std::env::var(dataplane::server::MASTER_KEYS_ENV).ok();
    let report = runtime.block_on(dataplane::doctor::run(
        path,
        &process_env(),
        keys.as_deref(),
        (controlplane, nats),
    ));
    print!("{report}");
    if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

#[allow(clippy::print_stdout)] // The hash is this command's output.
fn hash_key(path: &std::path::Path) -> ExitCode {
    let pepper = match Config::load(path, &process_env()).map(|c| c.server.key_pepper.resolve()) {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            eprintln!("server.key_pepper: {e}");
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let mut secret = String::new();
    if std::io::stdin().read_to_string(&mut secret).is_err() || secret.trim().is_empty() {
        eprintln!(
            "pipe the virtual key on standard input, e.g. `echo -n sk-... | dataplane hash-key`"
        );
        return ExitCode::FAILURE;
    }
    let secret = secret.trim();
    println!("key_hash: \"{}\"", hash_key_hex(pepper.as_bytes(), secret));
    println!("display_prefix: \"{}\"", display_prefix(secret));
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests report failure by panicking.
    use super::*;

    #[test]
    fn listen_is_accepted_before_or_after_serve() {
        let addr: SocketAddr = "127.0.0.1:4123".parse().unwrap();
        for args in [
            &["dataplane", "serve", "--listen", "127.0.0.1:4123"][..],
            &["dataplane", "--listen", "127.0.0.1:4123", "serve"][..],
            &["dataplane", "--listen", "127.0.0.1:4123"][..],
        ] {
            let cli = Cli::try_parse_from(args).unwrap();
            assert_eq!(cli.listen, Some(addr), "{args:?}");
        }
    }
}
