//! `dlq list` and `dlq retry`.

use anyhow::bail;
use clap::{Args, Subcommand};

use etlq::configuration::Settings;
use etlq::queue::{Actor, DeadLetterFilter, JobStore, RetryFrom};

use super::{exit, output};

#[derive(Subcommand)]
pub enum DlqCmd {
    /// List open (not yet retried) dead letters, newest first.
    List {
        #[command(flatten)]
        filter: DlqFilter,
        /// Most rows shown.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Re-enqueue one dead job (by job id), or every open dead letter matching a filter.
    Retry {
        /// The job id (the `job` column of `dlq list`).
        job_id: Option<i64>,
        #[command(flatten)]
        filter: DlqFilter,
        /// With no job id and no filter: retry every open dead letter.
        #[arg(long)]
        all: bool,
        /// Clear the checkpoint and start from the first stage (default: resume at the
        /// checkpoint).
        #[arg(long)]
        from_start: bool,
    },
}

#[derive(Args)]
pub struct DlqFilter {
    /// Only jobs of this kind.
    #[arg(long)]
    kind: Option<String>,
    /// Only this business unit's jobs.
    #[arg(long)]
    bu_id: Option<String>,
    /// Only jobs of this connector.
    #[arg(long)]
    connector: Option<String>,
    /// Only jobs that died at or after this RFC 3339 time (e.g. 2026-11-22T00:00:00Z).
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

pub async fn dlq(settings: &Settings, action: DlqCmd, json: bool) -> anyhow::Result<u8> {
    let store = JobStore::new(
        &super::pools(settings).await?,
        settings.retry.default_max_attempts,
    );
    let actor = Actor::new("cli", format!("etlq-cli/{}", env!("CARGO_PKG_VERSION")));
    match action {
        DlqCmd::List { filter, limit } => {
            let page = store
                .dead_letters(&filter.into(), false, None, limit.clamp(1, 500))
                .await?;
            if json {
                output::json(&page.items);
            } else if page.items.is_empty() {
                println!("no open dead letters");
            } else {
                let rows: Vec<Vec<String>> = page
                    .items
                    .iter()
                    .map(|d| {
                        vec![
                            d.job_id.to_string(),
                            d.kind.clone(),
                            output::opt(&d.bu_id),
                            output::opt(&d.connector),
                            output::opt(&d.failed_stage),
                            d.attempts.to_string(),
                            output::time(&d.dead_at),
                            output::cell(&d.reason, 70),
                        ]
                    })
                    .collect();
                output::table(
                    &[
                        "job",
                        "kind",
                        "bu_id",
                        "connector",
                        "stage",
                        "attempts",
                        "dead at (UTC)",
                        "reason",
                    ],
                    &rows,
                );
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
            let ids = if let Some(id) = job_id {
                store.retry_dead(id, from, &actor).await?;
                vec![id]
            } else if filter.is_empty() && !all {
                bail!("give a job id, a filter (--kind, --bu-id, --connector, --since) or --all");
            } else {
                store.retry_dead_bulk(&filter, from, &actor).await?
            };
            if json {
                output::json(&serde_json::json!({"retried": ids.len(), "job_ids": ids}));
            } else if ids.is_empty() {
                println!("no open dead letters matched");
            } else {
                println!("{} job(s) re-enqueued: {ids:?}", ids.len());
            }
        }
    }
    Ok(exit::OK)
}
