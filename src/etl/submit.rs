//! The one way an ETL job is enqueued, used by both routes that create one (`POST
//! /v1/uploads` after storing the file, `POST /v1/jobs` for a blob already in the store) and
//! by the CLI: the target is checked, then the job and its audit row commit in one
//! transaction, so an accepted job always has its audit row and a refused one leaves nothing.

use serde_json::json;

use super::payload::{BlobKey, BuId, EtlPayload};
use super::workbook::{SNIFF_BYTES, sniff};
use super::{ETL_KIND, EtlContext};
use crate::audit::AuditEntry;
use crate::queue::{Actor, Enqueued, NewJob, QueueError};
use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    #[error("{0}")]
    InvalidBuId(String),
    #[error("{0}")]
    UnknownConnector(String),
    #[error("{0}")]
    InvalidSourceBlob(String),
    #[error("source_blob {0:?} is not in the blob store")]
    SourceNotFound(String),
    #[error("{0}")]
    NotAWorkbook(String),
    #[error("blob store: {0}")]
    BlobStore(StorageError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// PostgreSQL failed before anything committed.
    #[error("database: {0}")]
    Database(String),
    /// The commit's outcome is unknown (the connection broke during it): the job may exist,
    /// so its blob must be kept.
    #[error("database: the commit's outcome is unknown: {0}")]
    Uncertain(String),
}

impl SubmitError {
    /// PostgreSQL or the blob store could not be reached: the client should retry.
    pub fn is_unavailable(&self) -> bool {
        match self {
            SubmitError::BlobStore(_) | SubmitError::Uncertain(_) => true,
            SubmitError::Queue(q) => q.is_unavailable(),
            SubmitError::Database(_) => true,
            _ => false,
        }
    }
}

/// A checked target: the business unit and a configured connector.
pub fn check_target(
    etl: &EtlContext,
    bu_id: &str,
    connector: &str,
) -> Result<(BuId, String), SubmitError> {
    let bu_id = BuId::parse(bu_id).map_err(SubmitError::InvalidBuId)?;
    etl.connector(connector)
        .map_err(SubmitError::UnknownConnector)?;
    Ok((bu_id, connector.to_string()))
}

/// A blob already in the store, named by a client: a safe key, present, and a workbook.
pub async fn check_source(etl: &EtlContext, key: &str) -> Result<BlobKey, SubmitError> {
    let key = BlobKey::parse(key).map_err(SubmitError::InvalidSourceBlob)?;
    let head = match etl.blobs.head_bytes(key.as_str(), SNIFF_BYTES as u64).await {
        Ok(h) => h,
        Err(StorageError::NotFound(_)) => {
            return Err(SubmitError::SourceNotFound(key.to_string()));
        }
        Err(e) => return Err(SubmitError::BlobStore(e)),
    };
    sniff(&head).map_err(|e| SubmitError::NotAWorkbook(e.to_string()))?;
    Ok(key)
}

/// What is being submitted.
#[derive(Debug, Clone)]
pub struct Submission {
    pub bu_id: BuId,
    pub connector: String,
    pub source_blob: BlobKey,
    /// The client's file name (uploads), for humans only.
    pub file_name: Option<String>,
    pub idempotency_key: Option<String>,
    /// `upload` or `enqueue_blob` (the audit action).
    pub action: &'static str,
    /// The upload's size, for the audit row.
    pub bytes: Option<u64>,
}

/// Enqueues the job and its audit row in one transaction. With an idempotency key already in
/// use, returns that job (`created: false`) and records nothing.
pub async fn submit(
    etl: &EtlContext,
    actor: &Actor,
    s: Submission,
) -> Result<Enqueued, SubmitError> {
    let payload = EtlPayload {
        bu_id: s.bu_id,
        connector: s.connector,
        source_blob: s.source_blob,
        file_name: s.file_name,
        uploaded_by: Some(actor.id.clone()),
    };
    let mut job = NewJob::new(ETL_KIND, serde_json::to_value(&payload).expect("serialise"));
    job.idempotency_key = s.idempotency_key;
    job.check()?;
    let mut tx = etl
        .db
        .begin()
        .await
        .map_err(|e| SubmitError::Database(e.to_string()))?;
    let enq = etl.jobs.enqueue_in(&mut tx, &job).await?;
    if enq.created {
        let entry = AuditEntry {
            actor,
            action: s.action,
            job_id: Some(enq.job_id),
            bu_id: Some(payload.bu_id.as_str()),
            connector: Some(&payload.connector),
            detail: json!({
                "source_blob": payload.source_blob,
                "file_name": payload.file_name,
                "bytes": s.bytes,
            }),
        };
        etl.audit
            .record_in(&mut tx, &entry)
            .await
            .map_err(|e| SubmitError::Database(e.to_string()))?;
    }
    tx.commit()
        .await
        .map_err(|e| SubmitError::Uncertain(e.to_string()))?;
    Ok(enq)
}

/// A blob a source found, to enqueue (issue 16).
#[derive(Debug, Clone)]
pub struct FoundBlob {
    pub bu_id: BuId,
    pub source_blob: BlobKey,
    /// One key per ledger row, so a job can never be enqueued twice for it.
    pub idempotency_key: String,
    /// What the audit row says of how it was found (source, etag, event id or slot).
    pub detail: serde_json::Value,
}

/// Enqueues the jobs of blobs a source found, with their audit rows, in the caller's
/// transaction — the one that also writes their ledger rows. Returns job ids in input order.
pub async fn submit_found_in(
    etl: &EtlContext,
    tx: &mut crate::db::Tx,
    actor: &Actor,
    connector: &str,
    found: &[FoundBlob],
) -> Result<Vec<i64>, SubmitError> {
    etl.connector(connector)
        .map_err(SubmitError::UnknownConnector)?;
    let jobs: Vec<NewJob> = found
        .iter()
        .map(|f| {
            let payload = EtlPayload {
                bu_id: f.bu_id.clone(),
                connector: connector.to_string(),
                source_blob: f.source_blob.clone(),
                file_name: f
                    .source_blob
                    .as_str()
                    .rsplit('/')
                    .next()
                    .map(str::to_string),
                uploaded_by: Some(actor.id.clone()),
            };
            let mut job = NewJob::new(ETL_KIND, serde_json::to_value(&payload).expect("serialise"));
            job.idempotency_key = Some(f.idempotency_key.clone());
            job
        })
        .collect();
    let enqueued = etl.jobs.enqueue_keyed_in(tx, &jobs, actor).await?;
    let rows: Vec<(i64, &str, &str, serde_json::Value)> = enqueued
        .iter()
        .zip(found)
        .filter(|(e, _)| e.created)
        .map(|(e, f)| {
            let mut detail = f.detail.clone();
            detail["source_blob"] = json!(f.source_blob);
            (e.job_id, f.bu_id.as_str(), connector, detail)
        })
        .collect();
    etl.audit
        .record_many_in(tx, actor, "source_ingest", &rows)
        .await
        .map_err(|e| SubmitError::Database(e.to_string()))?;
    Ok(enqueued.into_iter().map(|e| e.job_id).collect())
}
