//! The four stages of the `etl` kind, one `Stage` each. Each is idempotent, keyed by job id,
//! and reads what earlier stages produced from the checkpoint and the blob store, never from
//! this process's memory.

pub(crate) mod extract;
pub(crate) mod promote;
mod sync;
mod verify;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;

pub use extract::{Extract, ExtractOutput};
pub use promote::Promote;
pub use sync::Sync;
pub use verify::Verify;

use super::EtlPayload;
use crate::pipeline::{StageContext, StageError};
use crate::sink::SinkError;
use crate::storage::StorageError;

const PROGRESS_EVERY: Duration = Duration::from_millis(500);

fn payload(ctx: &StageContext) -> Result<EtlPayload, StageError> {
    EtlPayload::from_value(&ctx.payload).map_err(StageError::Fatal)
}

fn blob_error(what: &str, e: StorageError) -> StageError {
    match e {
        StorageError::NotFound(key) => StageError::Fatal(format!("{what}: blob {key} not found")),
        other => StageError::Retryable(format!("{what}: {other}")),
    }
}

fn sink_error(e: SinkError) -> StageError {
    match e {
        SinkError::Unavailable(_) => StageError::Retryable(e.to_string()),
        SinkError::Rejected(_) => StageError::Fatal(e.to_string()),
    }
}

/// Extract's committed output, read by the later stages.
fn extract_output(ctx: &StageContext) -> Result<ExtractOutput, StageError> {
    let v = ctx
        .output_of("extract")
        .ok_or_else(|| StageError::Fatal("no extract output in the checkpoint".into()))?;
    ExtractOutput::deserialize(v)
        .map_err(|e| StageError::Fatal(format!("extract output in the checkpoint: {e}")))
}

/// Reports `(stage, counter)` into `jobs.progress` every 0.5 s until dropped.
fn spawn_progress(
    ctx: &StageContext,
    key: &'static str,
    counter: Arc<AtomicUsize>,
    total: Option<usize>,
) -> tokio_util::sync::DropGuard {
    let done = tokio_util::sync::CancellationToken::new();
    let ctx = ctx.clone();
    let stop = done.clone();
    tokio::spawn(async move {
        let mut last = usize::MAX;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(PROGRESS_EVERY) => {}
                _ = stop.cancelled() => return,
            }
            let n = counter.load(Ordering::Relaxed);
            if n != last {
                last = n;
                let mut p = json!({"stage": &*ctx.stage, key: n});
                if let Some(t) = total {
                    p["rows_total"] = json!(t);
                }
                ctx.report_progress(&p).await;
            }
        }
    });
    done.drop_guard()
}

/// The parser's cost, kept in the checkpoint for operators and the benchmark.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct ParserCost {
    pub peak_rss_kb: u64,
    pub millis: u64,
}
