//! `sources list|show|tick|ledger|pause|resume`, through PostgreSQL like the other operator
//! commands. A tick is asked for here and run by a worker process, through the source's slot.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::json;

use etlq::configuration::Settings;
use etlq::sources::{LedgerFilter, RunRow, Source, SourceStore};
use etlq::startup::CheckedSettings;

use super::{exit, output};

#[derive(Subcommand)]
pub enum SourcesCmd {
    /// Every configured source: kind, schedule, next tick, last run and its counts.
    List,
    /// One source and its recent runs (listings and Event Grid deliveries).
    Show {
        /// The source's name.
        name: String,
    },
    /// Ask for a listing now; a worker takes it through the slot (two asks, one listing).
    Tick {
        /// The source's name.
        name: String,
        /// Wait for the listing to finish and print its counts.
        #[arg(long)]
        wait: bool,
        /// Seconds to wait with --wait.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// The ingest ledger: every blob a source took, its etag and the job it became.
    Ledger {
        /// The source's name.
        name: String,
        /// Only blobs found by watch, eventgrid or reconcile.
        #[arg(long)]
        found_by: Option<String>,
        /// Only this business unit's blobs.
        #[arg(long)]
        bu_id: Option<String>,
        /// Most rows shown.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Stop scheduled listings (and answer Event Grid with 503 so it redelivers later).
    Pause {
        /// The source's name.
        name: String,
    },
    /// Undo `pause`.
    Resume {
        /// The source's name.
        name: String,
    },
}

fn source<'a>(
    sources: &'a std::collections::BTreeMap<String, Source>,
    name: &str,
) -> anyhow::Result<&'a Source> {
    sources.get(name).with_context(|| {
        format!(
            "no source named {name:?} (configured: {})",
            sources.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })
}

fn run_cells(r: &RunRow) -> Vec<String> {
    vec![
        r.id.to_string(),
        r.trigger.clone(),
        r.slot.as_ref().map(output::time).unwrap_or_default(),
        output::opt(&r.outcome),
        r.listed.to_string(),
        r.new.to_string(),
        r.duplicate.to_string(),
        r.skipped.to_string(),
        output::cell(&output::opt(&r.error), 60),
    ]
}

const RUN_HEADERS: [&str; 9] = [
    "run",
    "trigger",
    "slot",
    "outcome",
    "listed",
    "new",
    "duplicate",
    "skipped",
    "error",
];

pub async fn sources(settings: &Settings, action: SourcesCmd, json: bool) -> anyhow::Result<u8> {
    let configured = settings.sources()?;
    let store = SourceStore::new(&super::pools(settings).await?);
    let actor = "cli";
    match action {
        SourcesCmd::List => {
            let names: Vec<String> = configured.keys().cloned().collect();
            let rows = store.sources(&names).await?;
            if json {
                output::json(&json!({"sources": rows}));
                return Ok(exit::OK);
            }
            let table: Vec<Vec<String>> = configured
                .values()
                .map(|s| {
                    let row = rows.iter().find(|r| r.source == s.name);
                    let last = row.and_then(|r| r.last_run.as_ref());
                    vec![
                        s.name.clone(),
                        s.kind.as_str().into(),
                        s.matcher.prefix().into(),
                        s.connector.clone(),
                        s.listing
                            .as_ref()
                            .map(|l| l.text().to_string())
                            .unwrap_or_default(),
                        if !s.enabled {
                            "disabled".into()
                        } else if row.is_some_and(|r| r.paused) {
                            "paused".into()
                        } else {
                            "active".into()
                        },
                        row.and_then(|r| r.next_slot.as_ref())
                            .map(output::time)
                            .unwrap_or_default(),
                        last.map(|l| output::time(&l.started_at))
                            .unwrap_or_default(),
                        last.map(|l| {
                            format!("{}/{}/{}/{}", l.listed, l.new, l.duplicate, l.skipped)
                        })
                        .unwrap_or_default(),
                        row.map(|r| r.ledger_rows.to_string())
                            .unwrap_or_else(|| "0".into()),
                    ]
                })
                .collect();
            output::table(
                &[
                    "source",
                    "kind",
                    "prefix",
                    "connector",
                    "schedule",
                    "state",
                    "next tick",
                    "last run",
                    "listed/new/dup/skipped",
                    "ledger",
                ],
                &table,
            );
            Ok(exit::OK)
        }
        SourcesCmd::Show { name } => {
            source(&configured, &name)?;
            let runs = store.runs(&name, None, 20).await?;
            if json {
                let row = store.sources(std::slice::from_ref(&name)).await?;
                output::json(&json!({"source": row.first(), "runs": runs}));
                return Ok(exit::OK);
            }
            output::table(
                &RUN_HEADERS,
                &runs.iter().map(run_cells).collect::<Vec<_>>(),
            );
            Ok(exit::OK)
        }
        SourcesCmd::Tick {
            name,
            wait,
            timeout,
        } => {
            let s = source(&configured, &name)?;
            if !s.enabled {
                bail!("source {name} is disabled in config (enabled = false)");
            }
            etlq::sources::ensure_schedule(&store, s).await?;
            if store.is_paused(&name).await? {
                bail!("source {name} is paused; `etlq sources resume {name}` first");
            }
            let after = store.latest_run_id(&name).await?;
            let at = store
                .request_tick(&name, actor)
                .await?
                .context("the source has no schedule row")?;
            if !wait {
                if json {
                    output::json(&json!({"source": name, "requested_at": at}));
                } else {
                    println!("listing of {name} requested at {}", output::time(&at));
                }
                return Ok(exit::OK);
            }
            let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
            loop {
                if let Some(run) = store.listing_after(&name, after).await?
                    && run.finished_at.is_some()
                {
                    if json {
                        output::json(&run);
                    } else {
                        output::table(&RUN_HEADERS, &[run_cells(&run)]);
                    }
                    return Ok(if run.outcome.as_deref() == Some("ok") {
                        exit::OK
                    } else {
                        exit::FAILURE
                    });
                }
                if tokio::time::Instant::now() >= deadline {
                    eprintln!(
                        "etlq: no worker finished a listing of {name} within {timeout} s (is a worker running, in Normal mode?)"
                    );
                    return Ok(exit::TIMEOUT);
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        SourcesCmd::Ledger {
            name,
            found_by,
            bu_id,
            limit,
        } => {
            source(&configured, &name)?;
            if !(1..=1000).contains(&limit) {
                bail!("--limit must be between 1 and 1000");
            }
            let rows = store
                .ledger(
                    &name,
                    &LedgerFilter {
                        found_by,
                        bu_id,
                        limit,
                        ..Default::default()
                    },
                )
                .await?;
            if json {
                output::json(&json!({"ledger": rows}));
                return Ok(exit::OK);
            }
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        r.id.to_string(),
                        output::cell(&r.blob_key, 60),
                        output::cell(&r.etag, 24),
                        r.size.to_string(),
                        r.found_by.clone(),
                        output::time(&r.found_at),
                        r.bu_id.clone(),
                        output::opt(&r.job_id),
                        output::opt(&r.job_state),
                    ]
                })
                .collect();
            output::table(
                &[
                    "id", "blob", "etag", "bytes", "found by", "found at", "bu_id", "job", "state",
                ],
                &table,
            );
            Ok(exit::OK)
        }
        SourcesCmd::Pause { name } => set_paused(&store, &configured, &name, true, json).await,
        SourcesCmd::Resume { name } => set_paused(&store, &configured, &name, false, json).await,
    }
}

async fn set_paused(
    store: &SourceStore,
    configured: &std::collections::BTreeMap<String, Source>,
    name: &str,
    paused: bool,
    json: bool,
) -> anyhow::Result<u8> {
    let s = source(configured, name)?;
    etlq::sources::ensure_schedule(store, s).await?;
    store.set_paused(name, paused, "cli").await?;
    let word = if paused { "paused" } else { "resumed" };
    if json {
        output::json(&json!({"source": name, "paused": paused}));
    } else {
        println!("source {name} {word}");
    }
    Ok(exit::OK)
}
