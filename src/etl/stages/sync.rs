//! `sync`: the records artifact → the document sink, under dataset version = job id.
//!
//! The artifact is streamed: a task reads it chunk by chunk into batches of documents and
//! hands them to the sink through a small channel, so memory holds a few batches, not the
//! file. The sink writes the version whole (`DocumentSink::write_version`): a re-run after a
//! crash replaces what an earlier attempt left.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::{blob_error, extract_output, payload, sink_error, spawn_progress};
use crate::etl::EtlContext;
use crate::etl::artifact::DocumentLines;
use crate::pipeline::{StageContext, StageError};
use crate::sink::VersionItem;

/// Batches in flight between the artifact reader and the sink.
const BATCHES_IN_FLIGHT: usize = 4;

pub struct Sync(pub Arc<EtlContext>);

impl crate::pipeline::Stage for Sync {
    fn name(&self) -> &str {
        "sync"
    }

    fn run(&self, ctx: StageContext) -> BoxFuture<'static, Result<Value, StageError>> {
        let etl = self.0.clone();
        async move { sync(&etl, &ctx).await }.boxed()
    }
}

async fn sync(etl: &Arc<EtlContext>, ctx: &StageContext) -> Result<Value, StageError> {
    let p = payload(ctx)?;
    let ex = extract_output(ctx)?;
    let _slot = etl.limits.sync(ctx).await?;
    let dataset = p.dataset(ctx.job_id);
    let written = Arc::new(AtomicUsize::new(0));
    let _progress = spawn_progress(ctx, "rows_written", written.clone(), Some(ex.records));

    let (tx, mut rx) = mpsc::channel(BATCHES_IN_FLIGHT);
    // Reader and sink run side by side in this task (no detached task outlives the stage).
    // The sink owns the receiver and drops it when it returns, so a reader blocked on a
    // full channel sees it closed instead of waiting forever.
    let write = async {
        let wrote = etl.sink.write_version(&dataset, &mut rx, &written).await;
        drop(rx);
        wrote
    };
    let read = read_batches(etl, ctx, &ex.artifacts["records"], tx);
    let (wrote, read) = tokio::join!(write, read);
    // The reader's failure explains a sink that saw the stream end early: it goes first.
    let (read, batches) = read?;
    let stored = wrote.map_err(sink_error)?;
    if read != ex.records {
        return Err(StageError::Fatal(format!(
            "the records artifact holds {read} documents, extract wrote {}; retry from start to re-extract",
            ex.records
        )));
    }
    let mut out = json!({"written": read, "batches": batches, "sink": etl.sink.name()});
    if let Some(s) = stored {
        // Read back by the sink inside the write that made them (verify uses these).
        out["stored"] = json!({"count": s.count, "checksum": s.checksum.to_string()});
    }
    Ok(out)
}

/// Reads the records artifact into batches of `sync_batch` documents and sends them, then
/// `End`. Returns (documents, batches). A closed channel means the sink stopped: its error is
/// the one to report.
async fn read_batches(
    etl: &EtlContext,
    ctx: &StageContext,
    key: &str,
    tx: mpsc::Sender<VersionItem>,
) -> Result<(usize, usize), StageError> {
    let batch_size = etl.settings.sync_batch.max(1);
    let mut stream = etl
        .blobs
        .get_stream(key)
        .await
        .map_err(|e| blob_error("reading the records artifact", e))?;
    let mut lines = DocumentLines::default();
    let mut pending = Vec::with_capacity(batch_size);
    let (mut docs, mut batches) = (0usize, 0usize);
    let send = async |batch: Vec<crate::sink::Document>, docs: &mut usize, batches: &mut usize| {
        if ctx.cancel.is_cancelled() {
            return Err(StageError::Cancelled);
        }
        *docs += batch.len();
        *batches += 1;
        if tx.send(VersionItem::Batch(batch)).await.is_err() {
            return Ok(false);
        }
        if *batches == 1 {
            etl.faults.pause(ctx).await?;
        }
        Ok(true)
    };
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| blob_error("reading the records artifact", e))?;
        lines
            .feed(&chunk, &mut pending)
            .map_err(|e| StageError::Fatal(e.to_string()))?;
        while pending.len() >= batch_size {
            let rest = pending.split_off(batch_size);
            let full = std::mem::replace(&mut pending, rest);
            if !send(full, &mut docs, &mut batches).await? {
                return Ok((docs, batches));
            }
        }
    }
    lines
        .finish(&mut pending)
        .map_err(|e| StageError::Fatal(e.to_string()))?;
    if !pending.is_empty() && !send(pending, &mut docs, &mut batches).await? {
        return Ok((docs, batches));
    }
    let _ = tx.send(VersionItem::End).await;
    Ok((docs, batches))
}
