//! The `etl` job kind: extract → sync → verify → promote (SPEC §2). Each stage is idempotent,
//! keyed by job id, and reads what earlier stages produced from the checkpoint and the blob
//! store, never from this process's memory.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::PgPool;

use super::artifact::{self, MANIFEST, RECORDS, REJECTED, REPORT};
use super::coerce::{Cell, Value as CellValue};
use super::connector::{Connector, Rejection};
use super::extract::{RejectedRow, Report, Verdict, extract_stream};
use super::workbook::open_sheet;
use crate::configuration::EtlSettings;
use crate::pipeline::{JobKind, Stage, StageContext, StageError};
use crate::sink::{Dataset, DocumentSink, SinkError};
use crate::storage::{BlobStore, StorageError};

pub const ETL_KIND: &str = "etl";
pub const ETL_STAGES: [&str; 4] = ["extract", "sync", "verify", "promote"];
/// Rows handed from the parsing thread to the mapping thread at a time.
const ROW_BATCH: usize = 1024;
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// What the ETL stages share: the stores, the sink and the connectors.
pub struct Etl {
    pub blobs: BlobStore,
    pub sink: Arc<dyn DocumentSink>,
    pub connectors: BTreeMap<String, Connector>,
    pub settings: EtlSettings,
    pub pool: PgPool,
}

/// An ETL job's payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EtlPayload {
    pub bu_id: String,
    pub connector: String,
    pub source_blob: String,
    /// The client's file name, for humans only (never used as a path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    /// The token name that enqueued the job (audit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uploaded_by: Option<String>,
}

impl EtlPayload {
    fn dataset(&self, job_id: i64) -> Dataset {
        Dataset {
            bu_id: self.bu_id.clone(),
            connector: self.connector.clone(),
            version: job_id,
        }
    }
}

/// Business unit ids become blob path segments and document-id inputs: keep them plain.
pub fn validate_bu_id(bu_id: &str) -> Result<(), String> {
    let ok = !bu_id.is_empty()
        && bu_id.len() <= 64
        && bu_id
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && bu_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid bu_id {bu_id:?}: expected 1 to 64 characters from A-Z, a-z, 0-9, '_', '-', '.', starting with a letter or digit"
        ))
    }
}

/// A blob key given by a client (`POST /v1/jobs`): relative, no `..`, no backslashes.
pub fn validate_blob_key(key: &str) -> Result<(), String> {
    let bad = key.is_empty()
        || key.len() > 1024
        || key.starts_with('/')
        || key.contains('\\')
        || key.chars().any(char::is_control)
        || key
            .split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..");
    if bad {
        Err(format!(
            "invalid source_blob {key:?}: expected a relative key like uploads/2026/file.xlsx, without '..', empty segments or backslashes"
        ))
    } else {
        Ok(())
    }
}

impl Etl {
    pub fn connector(&self, name: &str) -> Result<&Connector, String> {
        self.connectors.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.connectors.keys().map(String::as_str).collect();
            format!(
                "unknown connector {name:?}; configured connectors: {}",
                known.join(", ")
            )
        })
    }

    /// The `etl` job kind, its stages sharing this context.
    pub fn kind(self: &Arc<Self>) -> JobKind {
        let mut kind = JobKind::new(ETL_KIND);
        for name in ETL_STAGES {
            kind = kind.stage(EtlStage {
                name,
                etl: self.clone(),
            });
        }
        kind
    }

    /// Fault-injection point for tests (`etl.pause_in_stage_ms`); free when it is 0.
    async fn pause(&self, ctx: &StageContext) -> Result<(), StageError> {
        let ms = self.settings.pause_in_stage_ms;
        let only = &self.settings.pause_stage;
        if ms == 0 || !(only.is_empty() || only.as_str() == &*ctx.stage) {
            return Ok(());
        }
        tracing::info!(stage = %ctx.stage, ms, "pausing inside the stage (etl.pause_in_stage_ms)");
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(()),
            _ = ctx.cancel.cancelled() => Err(StageError::Cancelled),
        }
    }
}

struct EtlStage {
    name: &'static str,
    etl: Arc<Etl>,
}

impl Stage for EtlStage {
    fn name(&self) -> &str {
        self.name
    }

    fn run(&self, ctx: StageContext) -> BoxFuture<'static, Result<Value, StageError>> {
        let etl = self.etl.clone();
        let name = self.name;
        async move {
            let payload: EtlPayload = serde_json::from_value((*ctx.payload).clone())
                .map_err(|e| StageError::Fatal(format!("invalid etl payload: {e}")))?;
            match name {
                "extract" => extract(&etl, &ctx, &payload).await,
                "sync" => sync(&etl, &ctx, &payload).await,
                "verify" => verify(&etl, &ctx, &payload).await,
                _ => promote(&etl, &ctx, &payload).await,
            }
        }
        .boxed()
    }
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

/// What extract commits: where its artifacts are and what verify must find in the sink.
#[derive(Debug, Serialize, Deserialize)]
struct ExtractOutput {
    records: usize,
    rejected_rows: usize,
    /// Sum of the records' content hashes, as text (it exceeds 64 bits).
    checksum: String,
    artifacts: BTreeMap<String, String>,
    report: Report,
}

fn extract_output(ctx: &StageContext) -> Result<ExtractOutput, StageError> {
    let v = ctx
        .output_of("extract")
        .ok_or_else(|| StageError::Fatal("no extract output in the checkpoint".into()))?;
    serde_json::from_value(v.clone())
        .map_err(|e| StageError::Fatal(format!("extract output in the checkpoint: {e}")))
}

/// Runs a progress reporter until `done` fires: `(stage, counter)` → `jobs.progress`.
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

/// The records artifact (NDJSON), its checksum, the rejected rows and the report.
pub struct ExtractedArtifact {
    pub records: Vec<u8>,
    pub checksum: i128,
    pub rejected: Vec<RejectedRow>,
    pub report: Report,
}

/// The CPU half of extract (blocking): parses the workbook and writes the records artifact.
/// Duplicate keys are rejected rows. `None` when `cancelled` turned true midway.
pub fn extract_artifact(
    connector: &Connector,
    source: Vec<u8>,
    bu_id: &str,
    max_inflated_bytes: u64,
    rows_read: &AtomicUsize,
    cancelled: &dyn Fn() -> bool,
) -> Result<Option<ExtractedArtifact>, StageError> {
    let sheet = open_sheet(source, &connector.spec.sheet, max_inflated_bytes)
        .map_err(|e| StageError::Fatal(e.to_string()))?;
    let name = sheet.name.clone();
    let mut out = Vec::with_capacity(1 << 20);
    let mut checksum: i128 = 0;
    let mut seen: HashMap<String, usize> = HashMap::new();
    let key_headers: Vec<&str> = connector
        .spec
        .columns
        .iter()
        .filter(|c| c.key)
        .map(|c| c.header.as_str())
        .collect();
    let on_record = |row: usize, rec: BTreeMap<String, CellValue>| {
        if row.is_multiple_of(1024) {
            if cancelled() {
                return Verdict::Stop;
            }
            rows_read.store(row, Ordering::Relaxed);
        }
        let key = connector.key_of(&rec);
        let id = artifact::doc_id(bu_id, &connector.name, &key);
        if let Some(first) = seen.get(&id) {
            return Verdict::Reject(Rejection {
                column: key_headers.join(", "),
                value: serde_json::to_string(&key).unwrap_or_default(),
                reason: format!("duplicate key: row {first} has the same"),
            });
        }
        checksum += i128::from(artifact::write_line(&mut out, &id, row, &rec));
        seen.insert(id, row);
        Verdict::Keep
    };
    // Two threads: one parses the sheet (streaming), this one maps, types and serialises.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<(usize, Vec<Cell>)>>(8);
    let (parsed, streamed) = std::thread::scope(|scope| {
        let producer = scope.spawn(move || {
            let mut batch = Vec::with_capacity(ROW_BATCH);
            let r = sheet.for_each_row(|i, row| {
                batch.push((i, row));
                if batch.len() == ROW_BATCH {
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(ROW_BATCH));
                    // A closed channel means the consumer stopped: stop reading.
                    return tx.send(full).is_ok();
                }
                true
            });
            if !batch.is_empty() {
                let _ = tx.send(batch);
            }
            r
        });
        let streamed = extract_stream(connector, &name, rx.iter().flatten(), on_record);
        drop(rx);
        (producer.join(), streamed)
    });
    // A parse error midway ends the row stream early: it wins over whatever was extracted.
    parsed
        .map_err(|_| StageError::Retryable("the workbook reader panicked".into()))?
        .map_err(|e| StageError::Fatal(e.to_string()))?;
    let streamed = streamed.map_err(|e| StageError::Fatal(e.to_string()))?;
    Ok(streamed.map(|(rejected, report)| ExtractedArtifact {
        records: out,
        checksum,
        rejected,
        report,
    }))
}

async fn extract(etl: &Arc<Etl>, ctx: &StageContext, p: &EtlPayload) -> Result<Value, StageError> {
    let connector = etl
        .connector(&p.connector)
        .map_err(StageError::Fatal)?
        .clone();
    let source = etl
        .blobs
        .get(&p.source_blob)
        .await
        .map_err(|e| blob_error("reading the source workbook", e))?;
    let rows_read = Arc::new(AtomicUsize::new(0));
    let _progress = spawn_progress(ctx, "rows_read", rows_read.clone(), None);

    let (bu_id, limit, cancel) = (
        p.bu_id.clone(),
        etl.settings.max_inflated_bytes,
        ctx.cancel.clone(),
    );
    let parsed = tokio::task::spawn_blocking(move || {
        extract_artifact(
            &connector,
            source.into(),
            &bu_id,
            limit,
            &rows_read,
            &|| cancel.is_cancelled(),
        )
    })
    .await
    .map_err(|e| StageError::Retryable(format!("extract task failed: {e}")))??;
    let Some(ExtractedArtifact {
        records,
        checksum,
        rejected,
        report,
    }) = parsed
    else {
        return Err(StageError::Cancelled);
    };

    let prefix = artifact::run_prefix(ctx.job_id);
    let keys: BTreeMap<String, String> = [
        ("records", RECORDS),
        ("rejected", REJECTED),
        ("report", REPORT),
    ]
    .into_iter()
    .map(|(k, f)| (k.to_string(), format!("{prefix}/{f}")))
    .collect();
    let put = async |key: &str, bytes: Vec<u8>| {
        etl.blobs
            .put(key, bytes)
            .await
            .map_err(|e| blob_error("writing artifacts", e))
    };
    put(&keys["records"], records).await?;
    etl.pause(ctx).await?;
    let mut rej = Vec::new();
    for r in &rejected {
        serde_json::to_writer(&mut rej, r).expect("serialise");
        rej.push(b'\n');
    }
    put(&keys["rejected"], rej).await?;
    let output = ExtractOutput {
        records: report.records,
        rejected_rows: report.rejected_rows,
        checksum: checksum.to_string(),
        artifacts: keys.clone(),
        report,
    };
    let report_doc = json!({
        "job_id": ctx.job_id,
        "bu_id": p.bu_id,
        "connector": p.connector,
        "source_blob": p.source_blob,
        "records": output.records,
        "rejected_rows": output.rejected_rows,
        "checksum": output.checksum,
        "report": output.report,
        // The first rejections, so the report alone tells an operator what went wrong.
        "rejected_sample": rejected.iter().take(20).collect::<Vec<_>>(),
    });
    put(
        &keys["report"],
        serde_json::to_vec_pretty(&report_doc).expect("serialise"),
    )
    .await?;
    tracing::info!(
        records = output.records,
        rejected = output.rejected_rows,
        "extracted"
    );
    Ok(serde_json::to_value(output).expect("serialise"))
}

async fn sync(etl: &Arc<Etl>, ctx: &StageContext, p: &EtlPayload) -> Result<Value, StageError> {
    let ex = extract_output(ctx)?;
    let bytes = etl
        .blobs
        .get(&ex.artifacts["records"])
        .await
        .map_err(|e| blob_error("reading the records artifact", e))?;
    let docs = tokio::task::spawn_blocking(move || artifact::read_documents(&bytes))
        .await
        .map_err(|e| StageError::Retryable(format!("sync task failed: {e}")))?
        .map_err(|e| StageError::Fatal(e.to_string()))?;
    let dataset = p.dataset(ctx.job_id);
    let written = Arc::new(AtomicUsize::new(0));
    let _progress = spawn_progress(ctx, "rows_written", written.clone(), Some(docs.len()));
    let mut batches = 0;
    for batch in docs.chunks(etl.settings.sync_batch) {
        if ctx.cancel.is_cancelled() {
            return Err(StageError::Cancelled);
        }
        etl.sink.upsert(&dataset, batch).await.map_err(sink_error)?;
        batches += 1;
        written.fetch_add(batch.len(), Ordering::Relaxed);
        if batches == 1 {
            etl.pause(ctx).await?;
        }
    }
    Ok(json!({"written": docs.len(), "batches": batches, "sink": etl.sink.name()}))
}

async fn verify(etl: &Arc<Etl>, ctx: &StageContext, p: &EtlPayload) -> Result<Value, StageError> {
    let ex = extract_output(ctx)?;
    etl.pause(ctx).await?;
    let got = etl
        .sink
        .summary(&p.dataset(ctx.job_id))
        .await
        .map_err(sink_error)?;
    let want_sum: i128 = ex
        .checksum
        .parse()
        .map_err(|e| StageError::Fatal(format!("checksum in the checkpoint: {e}")))?;
    if got.count != ex.records as i64 || got.checksum != want_sum {
        return Err(StageError::Fatal(format!(
            "sink {} holds {} documents (checksum {}) for version {}, the records artifact has {} (checksum {}); retry from start to re-extract and re-sync",
            etl.sink.name(),
            got.count,
            got.checksum,
            ctx.job_id,
            ex.records,
            want_sum
        )));
    }
    Ok(json!({"count": got.count, "checksum": got.checksum.to_string()}))
}

/// Promotion: under a per-dataset advisory lock, copies the artifacts to `latest/…`, points the
/// manifest at this version, bumps the cache counter and records the superseded version, all
/// committed together with a `promotions` row keyed by job id. A re-run finds that row and
/// returns what it recorded, so nothing is bumped twice. Versions are ordered by job id: a job
/// older than the promoted version (a late retry) is recorded as stale and superseded instead
/// of rolling the dataset back.
async fn promote(etl: &Arc<Etl>, ctx: &StageContext, p: &EtlPayload) -> Result<Value, StageError> {
    let ex = extract_output(ctx)?;
    let db = |e: sqlx::Error| StageError::Retryable(format!("promote: {e}"));
    let mut tx = etl.pool.begin().await.map_err(db)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("etlq/dataset/{}/{}", p.bu_id, p.connector))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    let done: Option<(String, Option<i64>, i64)> = sqlx::query_as(
        "SELECT outcome, previous_version, cache_counter FROM promotions WHERE job_id = $1",
    )
    .bind(ctx.job_id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db)?;
    if let Some((outcome, previous, counter)) = done {
        tx.rollback().await.map_err(db)?;
        return Ok(promote_output(&outcome, previous, counter, p, true));
    }
    let current: Option<i64> = sqlx::query_scalar(
        "SELECT version FROM dataset_manifests WHERE bu_id = $1 AND connector = $2",
    )
    .bind(&p.bu_id)
    .bind(&p.connector)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db)?;

    let (outcome, counter) = if current.is_some_and(|v| v > ctx.job_id) {
        let newer = current.expect("checked");
        supersede(&mut tx, ctx.job_id, p, newer).await.map_err(db)?;
        let counter: i64 = sqlx::query_scalar("SELECT counter FROM cache_manifest")
            .fetch_one(&mut *tx)
            .await
            .map_err(db)?;
        ("stale", counter)
    } else {
        let latest = artifact::latest_prefix(&p.bu_id, &p.connector);
        for (name, key) in &ex.artifacts {
            let file = key.rsplit('/').next().unwrap_or(name);
            etl.blobs
                .copy(key, &format!("{latest}/{file}"))
                .await
                .map_err(|e| blob_error("copying artifacts to latest", e))?;
        }
        let manifest = json!({
            "bu_id": p.bu_id, "connector": p.connector, "version": ctx.job_id,
            "records": ex.records, "checksum": ex.checksum, "previous_version": current,
            "promoted_at": chrono::Utc::now(),
        });
        etl.blobs
            .put(
                &format!("{latest}/{MANIFEST}"),
                serde_json::to_vec_pretty(&manifest).expect("serialise"),
            )
            .await
            .map_err(|e| blob_error("writing the latest manifest", e))?;
        etl.pause(ctx).await?;
        sqlx::query(
            "INSERT INTO dataset_manifests (bu_id, connector, version, records, checksum)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (bu_id, connector) DO UPDATE
                SET version = EXCLUDED.version, records = EXCLUDED.records,
                    checksum = EXCLUDED.checksum, generation = dataset_manifests.generation + 1,
                    promoted_at = now()",
        )
        .bind(&p.bu_id)
        .bind(&p.connector)
        .bind(ctx.job_id)
        .bind(ex.records as i64)
        .bind(&ex.checksum)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        if let Some(prev) = current.filter(|v| *v != ctx.job_id) {
            supersede(&mut tx, prev, p, ctx.job_id).await.map_err(db)?;
        }
        let counter: i64 = sqlx::query_scalar(
            "UPDATE cache_manifest SET counter = counter + 1, updated_at = now() RETURNING counter",
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(db)?;
        ("promoted", counter)
    };
    sqlx::query(
        "INSERT INTO promotions (job_id, bu_id, connector, outcome, previous_version, cache_counter)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(ctx.job_id)
    .bind(&p.bu_id)
    .bind(&p.connector)
    .bind(outcome)
    .bind(current)
    .bind(counter)
    .execute(&mut *tx)
    .await
    .map_err(db)?;
    tx.commit().await.map_err(db)?;
    tracing::info!(outcome, counter, previous = ?current, "promotion committed");
    Ok(promote_output(outcome, current, counter, p, false))
}

/// Schedules `version` of the payload's dataset for cleanup, replaced by `by`.
async fn supersede(
    tx: &mut sqlx::PgConnection,
    version: i64,
    p: &EtlPayload,
    by: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO superseded_versions (version, bu_id, connector, superseded_by)
         VALUES ($1, $2, $3, $4) ON CONFLICT (version) DO NOTHING",
    )
    .bind(version)
    .bind(&p.bu_id)
    .bind(&p.connector)
    .bind(by)
    .execute(tx)
    .await?;
    Ok(())
}

fn promote_output(
    outcome: &str,
    previous: Option<i64>,
    counter: i64,
    p: &EtlPayload,
    rerun: bool,
) -> Value {
    json!({
        "outcome": outcome,
        "previous_version": previous,
        "cache_counter": counter,
        "latest": artifact::latest_prefix(&p.bu_id, &p.connector),
        "already_committed": rerun,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bu_ids_and_blob_keys_refuse_path_tricks() {
        assert!(validate_bu_id("BU-1000.de_x").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "a b", &"x".repeat(65)] {
            assert!(validate_bu_id(bad).is_err(), "{bad:?}");
        }
        assert!(validate_blob_key("uploads/2026/a.xlsx").is_ok());
        for bad in ["", "/etc/passwd", "a/../b", "..", "a//b", "a\\b", "a/./b"] {
            assert!(validate_blob_key(bad).is_err(), "{bad:?}");
        }
    }
}
