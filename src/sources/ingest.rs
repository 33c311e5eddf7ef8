//! The one way a found blob becomes a job, for every discovery path (a scheduled listing, an
//! Event Grid delivery, a reconcile listing): its ledger row (ON CONFLICT DO NOTHING), its job
//! and the job's audit row commit in one transaction. The same blob and etag again inserts
//! nothing and so enqueues nothing; an overwritten blob (a new etag) is one new job.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::json;

use super::store::{NewLedgerRow, RunCounts, SourceStore, StoreError};
use super::{FoundBy, Source};
use crate::etl::EtlContext;
use crate::etl::payload::{BlobKey, BuId};
use crate::etl::submit::{FoundBlob, SubmitError, submit_found_in};
use crate::metrics::Metrics;
use crate::queue::Actor;

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("database: {0}")]
    Database(#[from] StoreError),
    #[error(transparent)]
    Submit(#[from] SubmitError),
}

impl IngestError {
    /// PostgreSQL could not be reached (the caller retries; Event Grid redelivers).
    pub fn is_unavailable(&self) -> bool {
        match self {
            IngestError::Database(e) => crate::db::is_unavailable(e),
            IngestError::Submit(s) => s.is_unavailable(),
        }
    }
}

/// A blob that passed the source's checks.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub key: BlobKey,
    pub bu_id: BuId,
    pub etag: String,
    pub size: i64,
    pub last_modified: Option<DateTime<Utc>>,
    pub event_id: Option<String>,
}

/// Where a batch of candidates comes from.
#[derive(Debug, Clone, Copy)]
pub enum Origin {
    /// A listing's page, under its run, for its slot.
    Listing {
        run_id: i64,
        found_by: FoundBy,
        slot: DateTime<Utc>,
    },
    /// One Event Grid delivery: its run row is written with the ledger rows.
    Delivery,
}

#[derive(Clone)]
pub struct Ingest {
    store: SourceStore,
    etl: Arc<EtlContext>,
    metrics: Arc<Metrics>,
    version: String,
}

impl Ingest {
    pub fn new(
        store: SourceStore,
        etl: Arc<EtlContext>,
        metrics: Arc<Metrics>,
        version: String,
    ) -> Self {
        Ingest {
            store,
            etl,
            metrics,
            version,
        }
    }

    pub fn store(&self) -> &SourceStore {
        &self.store
    }

    /// `source:{name}`, the actor of every job a source creates.
    pub fn actor(&self, source: &Source) -> Actor {
        Actor::new(
            format!("source:{}", source.name),
            format!("etlq-source/{}", self.version),
        )
    }

    /// Records `cands` (adding `new` and `duplicate` to `counts`); returns the run id (a
    /// delivery's, or the listing's).
    pub async fn record(
        &self,
        source: &Source,
        origin: Origin,
        cands: Vec<Candidate>,
        counts: &mut RunCounts,
    ) -> Result<i64, IngestError> {
        // One row per (key, etag) in a batch: a delivery may carry the same event 100 times.
        let mut seen = HashSet::new();
        let mut rows = Vec::with_capacity(cands.len());
        let mut by_row = Vec::with_capacity(cands.len());
        for c in cands {
            if !seen.insert((c.key.as_str().to_string(), c.etag.clone())) {
                counts.duplicate += 1;
                continue;
            }
            rows.push(NewLedgerRow {
                blob_key: c.key.as_str().to_string(),
                etag: c.etag.clone(),
                size: c.size,
                last_modified: c.last_modified,
                event_id: c.event_id.clone(),
                bu_id: c.bu_id.as_str().to_string(),
            });
            by_row.push(c);
        }
        // Rows the ledger holds already are not offered again (a listing of an unchanged
        // prefix writes nothing); the insert below still guards against a concurrent finder.
        let known = if rows.is_empty() {
            HashSet::new()
        } else {
            self.store.known(&source.name, &rows).await?
        };
        let mut fresh_rows = Vec::with_capacity(rows.len());
        let mut fresh = Vec::with_capacity(rows.len());
        for (r, c) in rows.into_iter().zip(by_row) {
            if known.contains(&(r.blob_key.clone(), r.etag.clone())) {
                counts.duplicate += 1;
            } else {
                fresh_rows.push(r);
                fresh.push(c);
            }
        }
        let (found_by, listing_run, slot) = match origin {
            Origin::Listing {
                run_id,
                found_by,
                slot,
            } => (found_by, Some(run_id), Some(slot)),
            Origin::Delivery => (FoundBy::Eventgrid, None, None),
        };
        if fresh_rows.is_empty() && listing_run.is_some() {
            return Ok(listing_run.unwrap_or_default());
        }
        let mut tx = self
            .etl
            .db
            .begin()
            .await
            .map_err(|e| SubmitError::Database(e.to_string()))?;
        let run_id = match listing_run {
            Some(id) => id,
            None => {
                self.store
                    .delivery_run_in(&mut tx, &source.name, counts)
                    .await?
            }
        };
        let inserted = if fresh_rows.is_empty() {
            Vec::new()
        } else {
            self.store
                .insert_ledger_in(
                    &mut tx,
                    &source.name,
                    &source.connector,
                    found_by.as_str(),
                    Some(run_id),
                    &fresh_rows,
                )
                .await?
        };
        counts.duplicate += (fresh_rows.len() - inserted.len()) as u64;
        let actor = self.actor(source);
        let index: std::collections::HashMap<(&str, &str), &Candidate> = fresh
            .iter()
            .map(|c| ((c.key.as_str(), c.etag.as_str()), c))
            .collect();
        let find = |key: &str, etag: &str| index.get(&(key, etag)).copied();
        let found: Vec<FoundBlob> = inserted
            .iter()
            .filter_map(|(id, key, etag, _)| {
                let c = find(key, etag)?;
                let mut detail = json!({
                    "source": source.name,
                    "found_by": found_by.as_str(),
                    "etag": etag,
                    "ledger_id": id,
                    "run_id": run_id,
                });
                if let Some(ev) = &c.event_id {
                    detail["event_id"] = json!(ev);
                }
                if let Some(slot) = slot {
                    detail["slot"] = json!(slot);
                }
                Some(FoundBlob {
                    bu_id: c.bu_id.clone(),
                    source_blob: c.key.clone(),
                    idempotency_key: format!("source:{}:{id}", source.name),
                    detail,
                })
            })
            .collect();
        let job_ids = if found.is_empty() {
            Vec::new()
        } else {
            submit_found_in(&self.etl, &mut tx, &actor, &source.connector, &found).await?
        };
        let pairs: Vec<(i64, i64)> = inserted.iter().map(|r| r.0).zip(job_ids).collect();
        if !pairs.is_empty() {
            self.store.link_jobs_in(&mut tx, &pairs).await?;
        }
        counts.new += inserted.len() as u64;
        if listing_run.is_none() {
            self.store
                .set_run_counts_in(&mut tx, run_id, counts)
                .await?;
        }
        tx.commit()
            .await
            .map_err(|e| SubmitError::Uncertain(e.to_string()))?;
        for (_, key, etag, found_at) in &inserted {
            if let Some(modified) = find(key, etag).and_then(|c| c.last_modified) {
                let lag = (*found_at - modified).num_milliseconds().max(0) as f64 / 1000.0;
                self.metrics.source_lag(&source.name, lag);
            }
        }
        Ok(run_id)
    }
}
