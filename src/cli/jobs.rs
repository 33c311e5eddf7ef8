//! `enqueue`, `jobs list|show|cancel|rejected` and `status`.

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use etlq::configuration::Settings;
use etlq::etl::artifact;
use etlq::etl::submit::{self, Submission};
use etlq::etl::{ETL_KIND, EtlPayload};
use etlq::fleet::FleetStore;
use etlq::queue::{Actor, JobState, JobStore, ListFilter, NewJob};
use etlq::startup::kind_names;
use etlq::storage::BlobStore;

use super::{exit, output};

#[derive(Args)]
pub struct EnqueueArgs {
    /// The job kind: one this build runs.
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(kind_names()))]
    kind: String,
    /// The payload, as JSON. For `etl`: {"bu_id", "connector", "source_blob"} naming a
    /// workbook already in the blob store.
    #[arg(long, default_value = "{}")]
    payload: String,
    /// A key that makes the enqueue idempotent: the same key returns the same job.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Lower runs first (default 0; negative is more urgent).
    #[arg(long, allow_negative_numbers = true)]
    priority: Option<i16>,
    /// Attempts before the job is dead-lettered (default: retry.default_max_attempts).
    #[arg(long)]
    max_attempts: Option<i32>,
    /// Milliseconds before the job may run.
    #[arg(long)]
    delay_ms: Option<u64>,
    /// Enqueue this many copies in one statement (prints a summary).
    #[arg(long, default_value_t = 1)]
    count: usize,
}

#[derive(Subcommand)]
pub enum JobsCmd {
    /// Jobs, newest first.
    List {
        /// Only jobs in this state (queued, running, retrying, succeeded, dead, cancelled).
        #[arg(long)]
        state: Option<JobState>,
        /// Only jobs of this kind.
        #[arg(long)]
        kind: Option<String>,
        /// Only this business unit's jobs.
        #[arg(long)]
        bu_id: Option<String>,
        /// Most rows shown (1 to 500).
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// Show jobs older than this job id (the `next` line of the previous page).
        #[arg(long)]
        cursor: Option<i64>,
    },
    /// One job: state, stages, checkpoint, report and history.
    Show {
        /// The job id.
        id: i64,
    },
    /// Follow a job until it ends: exit 0 succeeded, 4 dead, 5 cancelled, 3 timed out.
    Wait {
        /// The job id.
        id: i64,
        /// Seconds to wait (exit 3 past it; the job keeps running).
        #[arg(long, default_value_t = 600, value_name = "SECONDS")]
        timeout: u64,
    },
    /// Cancel a queued, retrying or running job.
    Cancel {
        /// The job id.
        id: i64,
    },
    /// An ETL job's rejected rows (sheet, row, column, value, reason).
    Rejected {
        /// The job id.
        id: i64,
        /// Most rows shown.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Rows to skip.
        #[arg(long, default_value_t = 0)]
        offset: usize,
    },
}

fn cli_actor() -> Actor {
    Actor::new("cli", format!("etlq-cli/{}", env!("CARGO_PKG_VERSION")))
}

pub async fn enqueue(settings: &Settings, a: EnqueueArgs, json: bool) -> anyhow::Result<u8> {
    let kinds = kind_names();
    if !kinds.contains(&a.kind.as_str()) {
        bail!(
            "unknown job kind {:?}; this build runs: {}",
            a.kind,
            kinds.join(", ")
        );
    }
    let payload: Value = serde_json::from_str(&a.payload).context("--payload is not JSON")?;
    if a.count == 0 {
        bail!("--count must be at least 1");
    }
    if a.count > 1 && a.idempotency_key.is_some() {
        bail!("--idempotency-key cannot be combined with --count");
    }
    let pools = super::pools(settings).await?;
    if a.kind == ETL_KIND {
        if a.count > 1 {
            bail!("etl jobs are enqueued one at a time (one source workbook each)");
        }
        let p: EtlPayload =
            serde_json::from_value(payload).context("--payload is not an etl payload")?;
        let etl = etlq::startup::etl_context(settings, &pools).await?;
        let (bu_id, connector) = submit::check_target(&etl, p.bu_id.as_str(), &p.connector)?;
        let source_blob = submit::check_source(&etl, p.source_blob.as_str()).await?;
        let e = submit::submit(
            &etl,
            &cli_actor(),
            Submission {
                bu_id,
                connector,
                source_blob,
                file_name: None,
                idempotency_key: a.idempotency_key,
                action: "enqueue_blob",
                bytes: None,
            },
        )
        .await?;
        if json {
            output::json(&e);
        } else {
            println!(
                "job {} {}",
                e.job_id,
                if e.created {
                    "enqueued"
                } else {
                    "already existed (same idempotency key)"
                }
            );
        }
        return Ok(exit::OK);
    }
    let job = NewJob {
        kind: a.kind,
        payload,
        idempotency_key: a.idempotency_key,
        priority: a.priority,
        max_attempts: a.max_attempts,
        delay_ms: a.delay_ms,
    };
    let store = JobStore::new(&pools, settings.retry.default_max_attempts);
    let out = store.enqueue_many(&vec![job; a.count]).await?;
    if json {
        output::json(&out);
    } else if out.len() == 1 {
        let e = out[0];
        println!(
            "job {} {}",
            e.job_id,
            if e.created {
                "enqueued"
            } else {
                "already existed (same idempotency key)"
            }
        );
    } else {
        let first = out.iter().map(|e| e.job_id).min().unwrap_or(0);
        let last = out.iter().map(|e| e.job_id).max().unwrap_or(0);
        println!("enqueued {} jobs (ids {first} to {last})", out.len());
    }
    Ok(exit::OK)
}

pub async fn jobs(settings: &Settings, action: JobsCmd, json: bool) -> anyhow::Result<u8> {
    let pools = super::pools(settings).await?;
    let store = JobStore::new(&pools, settings.retry.default_max_attempts);
    match action {
        JobsCmd::List {
            state,
            kind,
            bu_id,
            limit,
            cursor,
        } => {
            let page = store
                .list(
                    &ListFilter {
                        state,
                        kind,
                        bu_id,
                        ..ListFilter::default()
                    },
                    cursor,
                    limit.clamp(1, 500),
                )
                .await?;
            if json {
                output::json(&json!({"jobs": page.items, "next_cursor": page.next_cursor}));
                return Ok(exit::OK);
            }
            if page.items.is_empty() {
                println!("no jobs");
                return Ok(exit::OK);
            }
            let rows: Vec<Vec<String>> = page
                .items
                .iter()
                .map(|j| {
                    vec![
                        j.id.to_string(),
                        j.kind.clone(),
                        j.state.to_string(),
                        output::opt(&j.stage),
                        format!("{}/{}", j.attempts, j.max_attempts),
                        j.payload["bu_id"].as_str().unwrap_or("").to_string(),
                        output::time(&j.created_at),
                        output::cell(j.last_error.as_deref().unwrap_or(""), 60),
                    ]
                })
                .collect();
            output::table(
                &[
                    "id",
                    "kind",
                    "state",
                    "stage",
                    "attempts",
                    "bu_id",
                    "created (UTC)",
                    "last error",
                ],
                &rows,
            );
            if let Some(c) = page.next_cursor {
                println!("next: --cursor {c}");
            }
        }
        JobsCmd::Show { id } => {
            let job = store.get(id).await?;
            let events = store.events(id).await?;
            let report = if job.kind == ETL_KIND {
                etlq::etl::summary(&job.checkpoint)
            } else {
                None
            };
            if json {
                output::json(&json!({"job": job, "report": report, "history": events}));
                return Ok(exit::OK);
            }
            println!("job {}  kind {}  state {}", job.id, job.kind, job.state);
            println!(
                "stage: {}  attempts: {}/{}",
                output::opt(&job.stage),
                job.attempts,
                job.max_attempts
            );
            if let Some(e) = &job.last_error {
                println!("last error: {e}");
            }
            if let Some(p) = &job.progress {
                println!("progress: {p}");
            }
            println!("payload: {}", job.payload);
            if let Some(r) = report {
                println!("report: {r}");
            }
            let rows: Vec<Vec<String>> = events
                .iter()
                .map(|e| {
                    vec![
                        output::time(&e.at),
                        e.event.clone(),
                        output::opt(&e.stage),
                        output::opt(&e.worker_id),
                        output::opt(&e.worker_version),
                        e.duration_ms.map(|d| format!("{d:.0}")).unwrap_or_default(),
                        output::cell(e.error.as_deref().unwrap_or(""), 60),
                    ]
                })
                .collect();
            println!();
            output::table(
                &["at (UTC)", "event", "stage", "by", "version", "ms", "error"],
                &rows,
            );
        }
        JobsCmd::Wait { id, timeout } => {
            let store = &store;
            return super::upload::follow(id, timeout, json, || async move {
                let job = store.get(id).await?;
                let report = (job.kind == ETL_KIND)
                    .then(|| etlq::etl::summary(&job.checkpoint))
                    .flatten();
                let mut v = serde_json::to_value(&job)?;
                v["report"] = report.unwrap_or(Value::Null);
                Ok(v)
            })
            .await;
        }
        JobsCmd::Cancel { id } => {
            let prev = store.cancel(id, &cli_actor()).await?;
            if json {
                output::json(&json!({"job_id": id, "state": "cancelled", "previous_state": prev}));
            } else {
                println!("job {id} cancelled (was {prev})");
            }
        }
        JobsCmd::Rejected { id, limit, offset } => {
            let job = store.get(id).await?;
            if job.kind != ETL_KIND {
                bail!(
                    "job {id} is a {} job; only etl jobs have rejected rows",
                    job.kind
                );
            }
            let blobs = BlobStore::open(&settings.blob).await?;
            let (rows, total) = match blobs.get(&artifact::rejected_key(id)).await {
                Ok(bytes) => artifact::rejected_page(&bytes, offset, limit),
                Err(etlq::storage::StorageError::NotFound(_)) => {
                    bail!("job {id} has no rejected-rows artifact yet (extract has not finished)")
                }
                Err(e) => return Err(e.into()),
            };
            if json {
                output::json(&json!({"rejected": rows, "total": total, "offset": offset}));
            } else if total == 0 {
                println!("job {id}: no rejected rows");
            } else {
                let table: Vec<Vec<String>> = rows
                    .iter()
                    .map(|r| {
                        vec![
                            r.sheet.clone(),
                            r.row.to_string(),
                            r.column.clone(),
                            output::cell(&r.value, 30),
                            output::cell(&r.reason, 60),
                        ]
                    })
                    .collect();
                output::table(&["sheet", "row", "column", "value", "reason"], &table);
                println!("{} of {total} rejected rows (from {offset})", rows.len());
            }
        }
    }
    Ok(exit::OK)
}

pub async fn status(settings: &Settings, json: bool) -> anyhow::Result<u8> {
    let pools = super::pools(settings).await?;
    let store = JobStore::new(&pools, settings.retry.default_max_attempts);
    let counts = store.counts().await?;
    let fleet = FleetStore::new(&pools)
        .status(settings.worker.worker_ttl())
        .await?;
    if json {
        output::json(&json!({
            "jobs": counts.into_iter().collect::<std::collections::BTreeMap<_, _>>(),
            "fleet": fleet,
        }));
        return Ok(exit::OK);
    }
    let rows: Vec<Vec<String>> = JobState::ALL
        .iter()
        .map(|s| {
            let n = counts.iter().find(|c| c.0 == s.as_str()).map_or(0, |c| c.1);
            vec![s.to_string(), n.to_string()]
        })
        .collect();
    output::table(&["state", "jobs"], &rows);
    println!();
    println!("fleet: {}", fleet.mode.as_str());
    if fleet.workers.is_empty() {
        println!("no live workers");
    } else {
        let rows: Vec<Vec<String>> = fleet
            .workers
            .iter()
            .map(|w| {
                vec![
                    w.id.clone(),
                    w.version.clone(),
                    w.roles.clone(),
                    w.mode.clone(),
                    format!("{}/{}", w.in_flight, w.concurrency),
                    output::time(&w.heartbeat_at),
                ]
            })
            .collect();
        output::table(
            &[
                "worker",
                "version",
                "role",
                "mode",
                "in flight",
                "heartbeat (UTC)",
            ],
            &rows,
        );
    }
    Ok(exit::OK)
}
