//! The `etlq` binary: argument parsing and process edges (signals, exit codes).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use etlq::configuration::Settings;
use etlq::fleet::{self, Command as FleetCommand};
use etlq::lifecycle::Mode;
use etlq::queue::{DeadLetterFilter, JobStore, NewJob, RetryFrom};
use etlq::startup::{Application, Role, default_registry};

#[derive(Parser)]
#[command(name = "etlq", version, about = "Durable ETL job queue on PostgreSQL")]
struct Cli {
    /// Settings file overlaid on the embedded defaults (also ETLQ_CONFIG).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
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
    /// Enqueue a job.
    Enqueue {
        #[arg(long)]
        kind: String,
        /// JSON payload.
        #[arg(long, default_value = "{}")]
        payload: String,
        #[arg(long)]
        idempotency_key: Option<String>,
        #[arg(long)]
        priority: Option<i16>,
        #[arg(long)]
        max_attempts: Option<i32>,
        /// Enqueue this many copies in one statement.
        #[arg(long, default_value_t = 1)]
        count: usize,
    },
    /// Job counts by state and the fleet's modes.
    Status,
    /// Ask a process (over REST) or the whole fleet (through PostgreSQL) to drain.
    Drain {
        #[command(flatten)]
        target: Target,
        /// Wait until SafeToStop; exit non-zero on timeout.
        #[arg(long)]
        wait: bool,
        /// Seconds to wait with --wait.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
    },
    /// Return a process or the fleet to Normal.
    Resume {
        #[command(flatten)]
        target: Target,
    },
    /// Dead-letter table.
    Dlq {
        #[command(subcommand)]
        action: DlqCmd,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Overrides api.port (0 picks a free port).
    #[arg(long)]
    port: Option<u16>,
}

#[derive(Args)]
struct Target {
    /// Every live worker, through PostgreSQL, instead of one process over REST.
    #[arg(long)]
    fleet: bool,
    /// The process's base URL (default: http://127.0.0.1:<api.port>).
    #[arg(long)]
    url: Option<String>,
    /// Bearer token for the REST call.
    #[arg(long, env = "ETLQ_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand)]
enum DlqCmd {
    /// List open dead letters.
    List {
        #[command(flatten)]
        filter: DlqFilter,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Re-enqueue one dead job, or every one matching the filter.
    Retry {
        /// Job id to retry.
        job_id: Option<i64>,
        #[command(flatten)]
        filter: DlqFilter,
        /// With no job id and no filter: retry every dead letter.
        #[arg(long)]
        all: bool,
        /// Clear the checkpoint and start from the first stage.
        #[arg(long)]
        from_start: bool,
    },
}

#[derive(Args)]
struct DlqFilter {
    #[arg(long)]
    kind: Option<String>,
    #[arg(long)]
    bu_id: Option<String>,
    #[arg(long)]
    connector: Option<String>,
    /// RFC 3339 timestamp: only jobs that died at or after it.
    #[arg(long)]
    since: Option<chrono::DateTime<chrono::Utc>>,
}

impl From<DlqFilter> for DeadLetterFilter {
    fn from(f: DlqFilter) -> Self {
        DeadLetterFilter {
            kind: f.kind,
            bu_id: f.bu_id,
            connector: f.connector,
            since: f.since,
        }
    }
}

/// Exit code of `drain --wait` when SafeToStop is not reached in time.
const EXIT_TIMEOUT: u8 = 3;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("etlq: {e}");
            return ExitCode::from(2);
        }
    };
    etlq::telemetry::init(&settings.log);
    match run(cli.command, settings).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("etlq: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cmd: Cmd, mut settings: Settings) -> anyhow::Result<ExitCode> {
    match cmd {
        Cmd::Serve(a) => serve(settings, Role::Serve, a).await,
        Cmd::Worker(a) => serve(settings, Role::Worker, a).await,
        Cmd::Api(a) => serve(settings, Role::Api, a).await,
        Cmd::Migrate => {
            let pool = etlq::db::connect(&settings.database, Duration::from_secs(30)).await?;
            etlq::db::migrate(&pool).await?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Enqueue {
            kind,
            payload,
            idempotency_key,
            priority,
            max_attempts,
            count,
        } => {
            if default_registry().get(&kind).is_none() {
                bail!("unknown job kind {kind:?}");
            }
            let payload: Value = serde_json::from_str(&payload).context("--payload is not JSON")?;
            if count > 1 && idempotency_key.is_some() {
                bail!("--idempotency-key cannot be combined with --count");
            }
            let job = NewJob {
                kind,
                payload,
                idempotency_key,
                priority,
                max_attempts,
                delay_ms: None,
            };
            let store = store(&mut settings).await?;
            let jobs = vec![job; count.max(1)];
            for e in store.enqueue_many(&jobs).await? {
                println!("{}", serde_json::to_string(&e)?);
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status => {
            let store = store(&mut settings).await?;
            let counts = store.counts().await?;
            let fleet = fleet::status(store.pool(), ttl(&settings)).await?;
            let out = serde_json::json!({
                "jobs": counts.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
                "fleet": fleet,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Drain {
            target,
            wait,
            timeout,
        } => drain(settings, target, wait, Duration::from_secs(timeout)).await,
        Cmd::Resume { target } => {
            if target.fleet {
                let store = store(&mut settings).await?;
                let n = fleet::command(store.pool(), FleetCommand::Resume, ttl(&settings)).await?;
                println!("resume sent to {n} workers");
            } else {
                let body = rest(
                    &settings,
                    &target,
                    reqwest::Method::POST,
                    "/v1/lifecycle/resume",
                )
                .await?;
                println!("{body}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Dlq { action } => {
            let store = store(&mut settings).await?;
            match action {
                DlqCmd::List { filter, limit } => {
                    let page = store
                        .dead_letters(&filter.into(), false, None, limit)
                        .await?;
                    for d in page.items {
                        println!("{}", serde_json::to_string(&d)?);
                    }
                }
                DlqCmd::Retry {
                    job_id,
                    filter,
                    all,
                    from_start,
                } => {
                    let from = if from_start {
                        RetryFrom::Start
                    } else {
                        RetryFrom::Checkpoint
                    };
                    let filter: DeadLetterFilter = filter.into();
                    if let Some(id) = job_id {
                        store.retry_dead(id, from, "cli").await?;
                        println!("job {id} re-enqueued");
                    } else if filter.is_empty() && !all {
                        bail!(
                            "give a job id, a filter (--kind, --bu-id, --connector, --since) or --all"
                        );
                    } else {
                        let ids = store.retry_dead_bulk(&filter, from, "cli").await?;
                        println!("{} jobs re-enqueued: {ids:?}", ids.len());
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn ttl(settings: &Settings) -> Duration {
    Duration::from_millis(settings.worker.worker_ttl_ms)
}

async fn store(settings: &mut Settings) -> anyhow::Result<JobStore> {
    // Operator commands never create databases: a typo in the URL should fail loudly.
    settings.database.create_if_missing = false;
    let pool = etlq::db::connect(&settings.database, Duration::from_secs(5)).await?;
    Ok(JobStore::new(pool, settings.retry.default_max_attempts))
}

async fn serve(mut settings: Settings, role: Role, args: ServeArgs) -> anyhow::Result<ExitCode> {
    if let Some(port) = args.port {
        settings.api.port = port;
    }
    let shutdown = CancellationToken::new();
    let app = Application::build(settings, role, default_registry(), shutdown.clone()).await?;
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
                shutdown.cancel();
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
    Ok(ExitCode::SUCCESS)
}

async fn rest(
    settings: &Settings,
    target: &Target,
    method: reqwest::Method,
    path: &str,
) -> anyhow::Result<Value> {
    let base = target
        .url
        .clone()
        .unwrap_or_else(|| format!("http://127.0.0.1:{}", settings.api.port));
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?;
    let mut req = client.request(method, &url);
    if let Some(t) = &target.token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("request to {url}"))?;
    let status = resp.status();
    let body: Value = resp
        .json()
        .await
        .with_context(|| format!("reading {url}"))?;
    if !status.is_success() {
        bail!("{url}: {status}: {body}");
    }
    Ok(body)
}

/// Starts a drain of one process (REST) or the fleet (PostgreSQL); with `wait`, polls until
/// SafeToStop or the deadline.
async fn drain(
    mut settings: Settings,
    target: Target,
    wait: bool,
    timeout: Duration,
) -> anyhow::Result<ExitCode> {
    let deadline = Instant::now() + timeout;
    let pool = if target.fleet {
        let pool = store(&mut settings).await?.pool().clone();
        let n = fleet::command(&pool, FleetCommand::Drain, ttl(&settings)).await?;
        eprintln!("drain sent to {n} workers");
        Some(pool)
    } else {
        rest(
            &settings,
            &target,
            reqwest::Method::POST,
            "/v1/lifecycle/drain",
        )
        .await?;
        None
    };
    loop {
        let status = match &pool {
            Some(pool) => serde_json::to_value(fleet::status(pool, ttl(&settings)).await?)?,
            None => rest(&settings, &target, reqwest::Method::GET, "/v1/lifecycle").await?,
        };
        let mode = status["mode"].as_str().and_then(Mode::parse);
        if !wait || mode == Some(Mode::SafeToStop) {
            println!("{status}");
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() >= deadline {
            eprintln!("etlq: timed out after {timeout:?} waiting for SafeToStop: {status}");
            return Ok(ExitCode::from(EXIT_TIMEOUT));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
