//! `extract`: the source workbook → records, rejected rows and report under `runs/{job}/`.
//! The parsing runs in an isolated child process (ADR 0006); this side fetches the source,
//! follows the child, and stores what it wrote.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{ParserCost, blob_error, payload, spawn_progress};
use crate::etl::EtlContext;
use crate::etl::artifact::{self, RECORDS, REJECTED, REPORT};
use crate::etl::child::{self, ChildJob, ChildOutcome};
use crate::etl::isolate::IsolateError;
use crate::etl::mapping::Report;
use crate::etl::work_dir::WorkDir;
use crate::pipeline::{Stage, StageContext, StageError};

/// Rejected rows quoted in the report, so it alone tells an operator what went wrong.
const REJECTED_SAMPLE: usize = 20;

/// What extract commits: where its artifacts are and what verify must find in the sink.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExtractOutput {
    pub records: usize,
    pub rejected_rows: usize,
    /// Sum of the records' content hashes, as text (it exceeds 64 bits).
    pub checksum: String,
    pub artifacts: BTreeMap<String, String>,
    pub report: Report,
    #[serde(default)]
    pub parser: ParserCost,
}

pub struct Extract(pub Arc<EtlContext>);

impl Stage for Extract {
    fn name(&self) -> &str {
        "extract"
    }

    fn run(&self, ctx: StageContext) -> BoxFuture<'static, Result<Value, StageError>> {
        let etl = self.0.clone();
        async move { extract(&etl, &ctx).await }.boxed()
    }
}

/// `source` plus the original extension when it is a plain one (`source.xlsx`).
pub fn source_name(original: &str) -> String {
    let ext = std::path::Path::new(original)
        .extension()
        .and_then(|e| e.to_str())
        .filter(|e| e.len() <= 8 && e.bytes().all(|b| b.is_ascii_alphanumeric()));
    match ext {
        Some(e) => format!("source.{}", e.to_ascii_lowercase()),
        None => "source".into(),
    }
}

async fn extract(etl: &EtlContext, ctx: &StageContext) -> Result<Value, StageError> {
    let p = payload(ctx)?;
    let connector = etl.connector(&p.connector).map_err(StageError::Fatal)?;
    let _slot = etl.limits.extract(ctx).await?;
    let work = WorkDir::create(
        &etl.work_dir,
        "extract-",
        &format!("{}-{}", ctx.job_id, uuid::Uuid::new_v4().simple()),
    )
    .map_err(|e| {
        StageError::Retryable(format!("creating the work directory (etl.work_dir): {e}"))
    })?;
    // The file keeps its extension: a command extractor may go by it.
    let source = work.path().join(source_name(
        p.file_name.as_deref().unwrap_or(p.source_blob.as_str()),
    ));
    etl.blobs
        .get_to_file(p.source_blob.as_str(), &source)
        .await
        .map_err(|e| blob_error("reading the source workbook", e))?;

    let rows_read = Arc::new(AtomicUsize::new(0));
    let _progress = spawn_progress(ctx, "rows_read", rows_read.clone(), None);
    let job = ChildJob {
        connector_name: connector.name.clone(),
        connector: connector.spec.clone(),
        bu_id: p.bu_id.to_string(),
        source,
        out_dir: work.path().to_path_buf(),
        max_inflated_bytes: etl.settings.max_inflated_bytes,
        preview: false,
    };
    let started = Instant::now();
    let ran = etl
        .isolation
        .run(&job, rows_read, &ctx.cancel)
        .await
        .map_err(|e| match e {
            IsolateError::Fatal(m) => StageError::Fatal(m),
            IsolateError::Retryable(m) => StageError::Retryable(m),
            IsolateError::Cancelled => StageError::Cancelled,
        })?;
    let parser = ParserCost {
        peak_rss_kb: ran.peak_rss_kb,
        millis: started.elapsed().as_millis() as u64,
    };
    let ChildOutcome::Done {
        records,
        checksum,
        rejected_rows,
        report,
    } = ran.outcome
    else {
        unreachable!("the isolation layer returns only finished outcomes");
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
    etl.blobs
        .put_file(&keys["records"], &work.path().join(child::RECORDS_FILE))
        .await
        .map_err(|e| blob_error("writing artifacts", e))?;
    etl.faults.pause(ctx).await?;
    let sample =
        child::read_rejected_sample(&work.path().join(child::REJECTED_FILE), REJECTED_SAMPLE);
    etl.blobs
        .put_file(&keys["rejected"], &work.path().join(child::REJECTED_FILE))
        .await
        .map_err(|e| blob_error("writing artifacts", e))?;
    let output = ExtractOutput {
        records,
        rejected_rows,
        checksum,
        artifacts: keys.clone(),
        report: *report,
        parser,
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
        "rejected_sample": sample,
    });
    etl.blobs
        .put(
            &keys["report"],
            serde_json::to_vec_pretty(&report_doc).expect("serialise"),
        )
        .await
        .map_err(|e| blob_error("writing artifacts", e))?;
    tracing::info!(
        records = output.records,
        rejected = output.rejected_rows,
        parser_ms = output.parser.millis,
        parser_peak_rss_kb = output.parser.peak_rss_kb,
        "extracted"
    );
    Ok(serde_json::to_value(output).expect("serialise"))
}
