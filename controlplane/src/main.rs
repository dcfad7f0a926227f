//! The `controlplane` binary: reads the command line and config, sets up logging, calls the
//! library (`controlplane::serve`, `controlplane::db::migrate`, ...).

use std::io::{BufRead, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use controlplane::config::{Config, Settings, process_env};
use controlplane::service::admins::{self, CreateAdmin};
use controlplane::service::{Actor, Ctx, Error, Role};

/// mimalloc instead of glibc's malloc: every login runs argon2id over a 19 MiB buffer, and
/// glibc (its mmap threshold rises to the size of the first such buffer freed) then serves
/// those from per-thread arenas that keep them resident, so a login flood left the process
/// hundreds of MB larger. mimalloc gives huge blocks back (`docs/security.md`, the flood
/// measurement).
#[global_allocator]
static GLOBAL: switchboard_alloc::Mimalloc = switchboard_alloc::Mimalloc;

#[derive(Parser)]
#[command(
    name = "controlplane",
    version,
    about = "Switchboard's control plane: admin API, Postgres truth, snapshot publishing"
)]
struct Cli {
    /// Config file (YAML). Optional: everything can come from `SWITCHBOARD__*` variables.
    #[arg(long, env = "SWITCHBOARD_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Apply pending database migrations.
    Migrate,
    /// Serve the admin API and the gRPC ConfigService (migrates first).
    Serve,
    /// Manage admin users.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Master-key rotation.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Print the admin API's OpenAPI document (checked in as openapi/controlplane.json).
    Openapi,
    /// Model prices (LiteLLM's price file).
    Prices {
        #[command(subcommand)]
        command: PricesCommand,
    },
    /// Check the config, Postgres, NATS/JetStream, Redis, the master keys, the gRPC endpoint,
    /// clocks and every provider's upstream; print a report with fixes; exit 1 on a failure.
    Doctor,
    /// Import another gateway's configuration.
    Import {
        #[command(subcommand)]
        command: ImportCommand,
    },
}

#[derive(Subcommand)]
enum ImportCommand {
    /// A LiteLLM proxy config.yaml: model_list, router_settings, fallbacks -> providers,
    /// deployments and model policies. The control plane's own config comes from
    /// SWITCHBOARD_CONFIG / SWITCHBOARD__* (or `controlplane --config FILE import ...`).
    Litellm {
        /// The LiteLLM config file.
        // Named `config` like the global option so that clap does not propagate that one
        // here: after `litellm`, `--config` is the LiteLLM file.
        #[arg(long, value_name = "LITELLM_YAML")]
        config: PathBuf,
        /// Print what would be created and what cannot be mapped; write nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand)]
enum PricesCommand {
    /// Load a price file into Postgres as a new version (when its content changed).
    Sync {
        /// A local copy of model_prices_and_context_window.json.
        #[arg(long, conflicts_with = "url")]
        file: Option<PathBuf>,
        /// Where to fetch it from.
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Re-seal every provider credential with the first key of SWITCHBOARD_MASTER_KEYS.
    Reseal,
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create an admin user; the password is read from standard input.
    Create {
        #[arg(long)]
        email: String,
        /// platform_admin, tenant_admin or viewer.
        #[arg(long, default_value = "platform_admin")]
        role: String,
        /// The tenant of a tenant admin.
        #[arg(long)]
        tenant: Option<String>,
        /// Read the password from standard input (the only way: never on the command line).
        #[arg(long, required = true)]
        password_stdin: bool,
    },
}

#[allow(clippy::print_stdout)] // `import litellm --dry-run` prints its plan.
fn main() -> ExitCode {
    let mut cli = Cli::parse();
    if let Command::Import { .. } = cli.command {
        cli.config = own_config(std::env::args_os().collect());
    }
    if let Command::Openapi = cli.command {
        let mut out = std::io::stdout();
        return match out.write_all(controlplane::routes::openapi_json().as_bytes()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(_) => ExitCode::FAILURE,
        };
    }
    if let Command::Import {
        command:
            ImportCommand::Litellm {
                config: litellm_config,
                dry_run: true,
            },
    } = &cli.command
    {
        return match litellm_plan(litellm_config, &process_env()) {
            Ok(plan) => {
                print!("dry run: nothing written\n{}", plan.describe());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("controlplane: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    let env = process_env();
    let settings = match Config::load(cli.config.as_deref(), &env).and_then(|c| {
        let settings = c
            .settings(&env)
            .map_err(controlplane::config::ConfigError::Invalid)?;
        Ok((c, settings))
    }) {
        Ok(pair) => pair,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Logs, and trace export when configured; the gRPC exporter is built inside the runtime,
    // and the guard flushes spans at exit.
    let telemetry = {
        let _entered = runtime.enter();
        let lookup = |name: &str| std::env::var(name).ok();
        settings
            .0
            .telemetry
            .resolve(&lookup, "switchboard-controlplane")
            .and_then(|traces| {
                use switchboard_shared::telemetry::{LogFormat, init};
                init(traces.as_ref(), LogFormat::Text)
            })
    };
    let telemetry = match telemetry {
        Ok(t) => t,
        Err(e) => {
            eprintln!("telemetry: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(run(cli.command, settings.0, settings.1, env));
    drop(telemetry);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("controlplane: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::print_stdout)] // `doctor` prints its report.
async fn run(
    command: Command,
    config: Config,
    settings: Settings,
    env: Vec<(String, String)>,
) -> anyhow::Result<()> {
    if let Command::Doctor = command {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let pool = controlplane::db::connect_lazy(&config.database.url)?;
        let report = controlplane::doctor::run(&settings, &pool).await;
        print!("{report}");
        if report.passed() {
            return Ok(());
        }
        anyhow::bail!("doctor: failed: {}", report.failures().join(", "));
    }
    let pool =
        controlplane::db::connect(&config.database.url, config.database.max_connections).await?;
    match command {
        Command::Migrate => {
            controlplane::db::migrate(&pool).await?;
            tracing::info!("migrations applied");
        }
        Command::Serve => {
            controlplane::db::migrate(&pool).await?;
            if controlplane::bootstrap_admin(&pool, &env).await? {
                tracing::info!("bootstrap admin created");
            }
            let running = controlplane::serve(settings, pool, shutdown_signal()).await?;
            running.wait().await;
        }
        Command::Admin {
            command:
                AdminCommand::Create {
                    email,
                    role,
                    tenant,
                    password_stdin: _,
                },
        } => create_admin(&pool, email, &role, tenant).await?,
        Command::Keys {
            command: KeysCommand::Reseal,
        } => {
            let count =
                controlplane::service::providers::reseal_credentials(&pool, &settings.master_keys)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
            tracing::info!(
                count,
                key_id = settings.master_keys.sealing_key_id(),
                "credentials re-sealed"
            );
        }
        Command::Prices {
            command: PricesCommand::Sync { file, url },
        } => {
            use controlplane::service::prices;
            controlplane::db::migrate(&pool).await?;
            let (source, result) = match (file, url) {
                (Some(path), _) => (
                    path.display().to_string(),
                    prices::sync_from_file(&pool, &path).await,
                ),
                (None, Some(url)) => {
                    let _ = rustls::crypto::ring::default_provider().install_default();
                    let client = prices::http_client()?;
                    let result = prices::sync_from_url(&pool, &client, &url).await;
                    (url, result)
                }
                (None, None) => anyhow::bail!("prices sync needs --file or --url"),
            };
            let system = controlplane::service::Actor::system();
            prices::audit_sync(&pool, &system, &source, result.as_ref()).await;
            let outcome = result?;
            tracing::info!(
                version = outcome.version_id,
                new = outcome.new_version,
                entries = outcome.entries,
                "prices synced"
            );
        }
        Command::Import {
            command:
                ImportCommand::Litellm {
                    config: litellm_config,
                    ..
                },
        } => {
            controlplane::db::migrate(&pool).await?;
            import_litellm(&pool, &settings, &litellm_config, &env).await?;
        }
        Command::Openapi | Command::Doctor => {}
    }
    Ok(())
}

/// The control plane's own config file when the subcommand has a `--config` of its own (which
/// clap also hands to the global option): a `--config` before the subcommand, else
/// `SWITCHBOARD_CONFIG`.
fn own_config(args: Vec<std::ffi::OsString>) -> Option<PathBuf> {
    let mut before = args
        .iter()
        .skip(1)
        .take_while(|a| *a != "import")
        .filter_map(|a| a.to_str());
    while let Some(arg) = before.next() {
        if arg == "--config" {
            return before.next().map(PathBuf::from);
        }
        if let Some(value) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(value));
        }
    }
    std::env::var_os("SWITCHBOARD_CONFIG").map(PathBuf::from)
}

/// Reads a LiteLLM config file into a plan (`env` resolves `os.environ/NAME`).
fn litellm_plan(
    path: &std::path::Path,
    env: &[(String, String)],
) -> anyhow::Result<controlplane::service::litellm::Plan> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    Ok(controlplane::service::litellm::plan(&text, env)?)
}

/// `controlplane import litellm`: writes the plan as the system actor (a running server's
/// reconcile loop publishes the new revisions) and prints what happened; fails when a write
/// was refused.
#[allow(clippy::print_stdout)] // The import's report is its output.
async fn import_litellm(
    pool: &sqlx::PgPool,
    settings: &Settings,
    path: &std::path::Path,
    env: &[(String, String)],
) -> anyhow::Result<()> {
    use controlplane::service::litellm;
    let plan = litellm_plan(path, env)?;
    let cx = Ctx {
        pool,
        publisher: None,
    };
    let rules = controlplane::service::providers::ProviderRules {
        keys: &settings.master_keys,
        urls: &settings.providers,
    };
    let report = litellm::apply(cx, &Actor::system(), rules, &plan).await;
    for line in &report.created {
        println!("created {line}");
    }
    for line in &report.skipped {
        println!("skipped {line}");
    }
    for line in &plan.notes {
        println!("not mapped: {line}");
    }
    for line in &report.failed {
        println!("FAILED {line}");
    }
    if report.failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{} object(s) could not be imported", report.failed.len())
    }
}

/// `controlplane admin create`: the password from standard input, the admin made as the
/// process itself (a running server's reconcile loop publishes the new revision).
async fn create_admin(
    pool: &sqlx::PgPool,
    email: String,
    role: &str,
    tenant: Option<String>,
) -> anyhow::Result<()> {
    let role = Role::parse(role)
        .ok_or_else(|| anyhow::anyhow!("--role must be platform_admin, tenant_admin or viewer"))?;
    let mut password = String::new();
    std::io::stdin().lock().read_line(&mut password)?;
    let password = password.trim_end_matches(['\r', '\n']).to_owned();
    let req = CreateAdmin {
        email,
        password,
        role,
        tenant_id: tenant,
    };
    let cx = Ctx {
        pool,
        publisher: None,
    };
    let (admin, committed) =
        admins::create(cx, &Actor::system(), req)
            .await
            .map_err(|e| match e {
                Error::Invalid(problems) => anyhow::anyhow!(
                    "{}",
                    problems
                        .iter()
                        .map(|p| format!("{}: {}", p.path, p.message))
                        .collect::<Vec<_>>()
                        .join("; ")
                ),
                other => anyhow::anyhow!("{other}"),
            })?;
    tracing::info!(id = %admin.id, email = %admin.email, revision = committed.revision, "admin created");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // Tests report failure by panicking.
    use super::*;

    fn args(list: &[&str]) -> Vec<std::ffi::OsString> {
        list.iter().map(Into::into).collect()
    }

    #[test]
    fn import_litellm_takes_its_own_config_and_keeps_the_control_planes() {
        let line = [
            "controlplane",
            "--config",
            "cp.yaml",
            "import",
            "litellm",
            "--config",
            "litellm.yaml",
            "--dry-run",
        ];
        let cli = Cli::try_parse_from(line).unwrap();
        let Command::Import {
            command: ImportCommand::Litellm { config, dry_run },
        } = cli.command
        else {
            panic!("not an import");
        };
        assert_eq!((config, dry_run), (PathBuf::from("litellm.yaml"), true));
        assert_eq!(own_config(args(&line)), Some(PathBuf::from("cp.yaml")));
        let equals = [
            "controlplane",
            "--config=cp2.yaml",
            "import",
            "litellm",
            "--config",
            "l.yaml",
        ];
        assert_eq!(own_config(args(&equals)), Some(PathBuf::from("cp2.yaml")));
    }

    #[test]
    fn doctor_parses() {
        assert!(matches!(
            Cli::try_parse_from(["controlplane", "doctor"])
                .unwrap()
                .command,
            Command::Doctor
        ));
    }
}
