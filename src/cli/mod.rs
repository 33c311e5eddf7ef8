//! Command-line parsing and dispatch. Operator commands talk to PostgreSQL directly (they
//! need no running server); `upload`, and `drain`/`resume` of one process, go through its
//! REST API.

mod connectors;
mod datasets;
mod dlq;
mod jobs;
mod lifecycle;
mod output;
mod remote;
mod sources;
mod upload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use etlq::configuration::Settings;
use etlq::db::Pools;
use etlq::startup::CheckedSettings;
use etlq::startup::{Application, Role};

/// Exit codes, documented in `etlq --help`.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const TIMEOUT: u8 = 3;
    pub const JOB_DEAD: u8 = 4;
    pub const JOB_CANCELLED: u8 = 5;
}

const EXIT_CODES: &str = "\
Exit codes:
  0  success (for `upload --wait`: the job succeeded)
  1  failure (PostgreSQL or the server unreachable, an operation refused, ...)
  2  usage or configuration error
  3  timed out (`drain --wait`, `upload --wait`, `jobs wait`, `sources tick --wait`)
  4  the job ended dead (`upload --wait`, `jobs wait`), or would (`connectors preview`)
  5  the job was cancelled (`upload --wait`, `jobs wait`)
The shell shows 141 (SIGPIPE) when the output's reader stopped reading (`| head`).";

#[derive(Parser)]
#[command(
    name = "etlq",
    version,
    about = "Durable ETL job queue on PostgreSQL",
    after_help = EXIT_CODES
)]
pub struct Cli {
    /// Settings file overlaid on the embedded defaults (also ETLQ_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print JSON instead of tables (for scripts).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// API and workers in one process.
    Serve(ServeArgs),
    /// Workers only (plus lifecycle/fleet/health endpoints for draining).
    Worker(ServeArgs),
    /// REST API only.
    Api(ServeArgs),
    /// Apply database migrations and exit.
    Migrate,
    /// Check the settings (file, environment, connectors) and print the effective ones.
    Config {
        #[command(subcommand)]
        action: ConfigCmd,
    },
    /// Enqueue jobs of a kind (ETL jobs: see `upload`, or pass an etl payload).
    Enqueue(jobs::EnqueueArgs),
    /// Upload a workbook to a running server and (with --wait) follow its job.
    Upload(upload::UploadArgs),
    /// List, show, follow and cancel jobs; show an ETL job's rejected rows.
    Jobs {
        #[command(subcommand)]
        action: jobs::JobsCmd,
    },
    /// Job counts by state and the fleet's modes.
    Status,
    /// Ask a process (over REST) or the whole fleet (through PostgreSQL) to drain.
    Drain(lifecycle::DrainArgs),
    /// Return a process or the fleet to Normal.
    Resume {
        #[command(flatten)]
        target: remote::Target,
    },
    /// The dead-letter table: list, and retry one or by filter.
    Dlq {
        #[command(subcommand)]
        action: dlq::DlqCmd,
    },
    /// Sources (watched prefixes, Event Grid): list, show, tick, ledger, pause, resume.
    Sources {
        #[command(subcommand)]
        action: sources::SourcesCmd,
    },
    /// Datasets over a running server: list, show, diff two versions, roll back.
    Datasets {
        #[command(subcommand)]
        action: datasets::DatasetsCmd,
    },
    /// Connectors: list them, preview a file with one, suggest one from a file's header.
    Connectors {
        #[command(subcommand)]
        action: connectors::ConnectorsCmd,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate everything and print the effective settings, secrets masked.
    Check,
}

#[derive(Args)]
struct ServeArgs {
    /// Overrides api.port (0 picks a free port).
    #[arg(long)]
    port: Option<u16>,
}

/// Connects for an operator command. Operator commands never create databases: a typo in the
/// URL should fail loudly.
pub async fn pools(settings: &Settings) -> anyhow::Result<Pools> {
    let mut db = settings.database.clone();
    db.create_if_missing = false;
    Ok(etlq::db::connect(&db, Duration::from_secs(5)).await?)
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    // Commands that print end quietly when their reader goes away (`etlq jobs list | head`),
    // as Unix tools do, instead of panicking on the closed pipe. Not the serving commands:
    // there a client closing its connection must be an error to handle, not a signal.
    if !matches!(cli.command, Cmd::Serve(_) | Cmd::Worker(_) | Cmd::Api(_)) {
        // SAFETY: restoring the default disposition of one signal, before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    if let Cmd::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "etlq", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    // Connectors and sources are checked here too: a mistake in them fails every command,
    // `config check` included, before anything starts.
    let settings = match Settings::load(cli.config.as_deref()).and_then(|s| s.check().map(|()| s)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("etlq: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    if let Cmd::Config {
        action: ConfigCmd::Check,
    } = cli.command
    {
        println!("{}", settings.to_masked_toml());
        eprintln!(
            "etlq: settings are valid ({} connector(s): {})",
            settings.connectors.len(),
            settings
                .connectors
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
        return ExitCode::SUCCESS;
    }
    etlq::telemetry::init(&settings.log);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("etlq: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = cli.json;
    let code = match runtime.block_on(run(cli.command, settings, json)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("etlq: {e:#}");
            ExitCode::from(exit::FAILURE)
        }
    };
    // Everything the application started has finished; bound what is left (a clean-up
    // blocked on a dead disk must not hold the exit).
    runtime.shutdown_timeout(Duration::from_secs(10));
    code
}

async fn run(cmd: Cmd, settings: Settings, json: bool) -> anyhow::Result<u8> {
    match cmd {
        Cmd::Serve(a) => serve(settings, Role::Serve, a).await,
        Cmd::Worker(a) => serve(settings, Role::Worker, a).await,
        Cmd::Api(a) => serve(settings, Role::Api, a).await,
        Cmd::Migrate => {
            let pools = etlq::db::connect(
                &settings.database,
                Duration::from_millis(settings.database.startup_wait_ms),
            )
            .await?;
            pools.migrate().await?;
            println!("migrations applied");
            Ok(exit::OK)
        }
        Cmd::Enqueue(a) => jobs::enqueue(&settings, a, json).await,
        Cmd::Upload(a) => upload::upload(&settings, a, json).await,
        Cmd::Jobs { action } => jobs::jobs(&settings, action, json).await,
        Cmd::Status => jobs::status(&settings, json).await,
        Cmd::Drain(a) => lifecycle::drain(&settings, a, json).await,
        Cmd::Resume { target } => lifecycle::resume(&settings, target, json).await,
        Cmd::Dlq { action } => dlq::dlq(&settings, action, json).await,
        Cmd::Sources { action } => sources::sources(&settings, action, json).await,
        Cmd::Connectors { action } => connectors::connectors(&settings, action, json).await,
        Cmd::Datasets { action } => datasets::datasets(&settings, action, json).await,
        Cmd::Config { .. } | Cmd::Completions { .. } => unreachable!("handled before"),
    }
}

async fn serve(mut settings: Settings, role: Role, args: ServeArgs) -> anyhow::Result<u8> {
    if let Some(port) = args.port {
        settings.api.port = port;
    }
    let drain = CancellationToken::new();
    let app = Application::build(settings, role, drain.clone()).await?;
    // Kubernetes and deploy scripts read this line to find the port when it was 0.
    println!("etlq listening on http://{}", app.addr);
    let lifecycle = app.state.lifecycle.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        let mut first = true;
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if first {
                tracing::info!("stop signal: draining (send again to release running jobs now)");
                drain.cancel();
                first = false;
            } else {
                tracing::warn!(
                    "second stop signal: cancelling running stages and releasing their jobs"
                );
                lifecycle.force_release();
            }
        }
    });
    app.wait().await;
    Ok(exit::OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand and every argument says what it is for in `--help`.
    #[test]
    fn every_command_and_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for a in cmd.get_arguments() {
                let builtin = matches!(a.get_id().as_str(), "help" | "version");
                if !builtin && a.get_help().is_none() && a.get_long_help().is_none() {
                    missing.push(format!("{path} {}", a.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                let name = format!("{path} {}", sub.get_name());
                if sub.get_name() != "help" && sub.get_about().is_none() {
                    missing.push(name.clone());
                }
                walk(sub, &name, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "etlq", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
        Cli::command().debug_assert();
    }
}
