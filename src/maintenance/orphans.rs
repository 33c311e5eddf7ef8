//! Reclaims what nothing will use again: the sink version and `runs/{job}/` artifacts of ETL
//! jobs that went dead or were cancelled (after `etl.orphan_grace_ms`), work directories no live
//! process holds (`etl::work_dir`), and stored uploads no job names (a request cut off after
//! storing its file). Bounded batches per pass; counted in `etlq_reclaimed_total`.
//!
//! A job's outputs go while its row is locked, and the job is marked: a dead-letter retry waits
//! for the pass, then starts from the first stage. A promoted version is never touched here
//! (the superseded cleaner owns those).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use tokio_util::sync::CancellationToken;

use crate::configuration::EtlSettings;
use crate::datasets::DatasetStore;
use crate::db::Pools;
use crate::etl::artifact::run_prefix;
use crate::etl::work_dir;
use crate::metrics::Metrics;
use crate::queue::JobStore;
use crate::sink::{Dataset, DocumentSink};
use crate::storage::BlobStore;

/// Jobs, work directories and uploads handled per pass.
pub const DEFAULT_ORPHAN_BATCH: usize = 50;
/// Where uploads are stored (`api/uploads.rs` names them `uploads/{date}/{uuid}.{ext}`).
pub const UPLOADS_PREFIX: &str = "uploads/";

#[derive(Debug, Clone)]
pub struct OrphanCleanerConfig {
    pub interval: Duration,
    pub grace: Duration,
    pub batch: usize,
    pub work_dir: PathBuf,
}

impl OrphanCleanerConfig {
    pub fn from_settings(e: &EtlSettings) -> Self {
        OrphanCleanerConfig {
            interval: Duration::from_millis(e.superseded_cleanup_interval_ms),
            grace: Duration::from_millis(e.orphan_grace_ms),
            batch: DEFAULT_ORPHAN_BATCH,
            work_dir: e.work_dir(),
        }
    }
}

/// What one pass removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reclaimed {
    pub versions: u64,
    pub documents: u64,
    pub blobs: u64,
    pub work_dirs: u64,
    pub uploads: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("orphan cleanup: {0}")]
pub struct OrphanError(String);

fn err(e: impl std::fmt::Display) -> OrphanError {
    OrphanError(e.to_string())
}

pub struct OrphanCleaner {
    jobs: JobStore,
    datasets: DatasetStore,
    db: Pools,
    sink: Arc<dyn DocumentSink>,
    blobs: BlobStore,
    metrics: Arc<Metrics>,
    config: OrphanCleanerConfig,
}

impl OrphanCleaner {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        jobs: JobStore,
        datasets: DatasetStore,
        db: Pools,
        sink: Arc<dyn DocumentSink>,
        blobs: BlobStore,
        metrics: Arc<Metrics>,
        config: OrphanCleanerConfig,
    ) -> Self {
        OrphanCleaner {
            jobs,
            datasets,
            db,
            sink,
            blobs,
            metrics,
            config,
        }
    }

    pub async fn clean_once(&self) -> Result<Reclaimed, OrphanError> {
        let mut r = Reclaimed::default();
        self.abandoned_jobs(&mut r).await?;
        let dir = self.config.work_dir.clone();
        let (grace, batch) = (self.config.grace, self.config.batch);
        let swept = tokio::task::spawn_blocking(move || work_dir::sweep(&dir, grace, batch))
            .await
            .map_err(err)?
            .map_err(err)?;
        r.work_dirs = swept.dirs;
        self.unreferenced_uploads(&mut r).await?;
        for (what, n) in [
            ("abandoned_versions", r.versions),
            ("documents", r.documents),
            ("blobs", r.blobs),
            ("work_dirs", r.work_dirs),
            ("uploads", r.uploads),
        ] {
            self.metrics.reclaimed(what, n);
        }
        if r != Reclaimed::default() {
            tracing::info!(?r, "reclaimed what nothing will use again");
        }
        Ok(r)
    }

    async fn abandoned_jobs(&self, r: &mut Reclaimed) -> Result<(), OrphanError> {
        let due = self
            .jobs
            .abandoned(self.config.grace, self.config.batch as i64)
            .await
            .map_err(err)?;
        for job in due {
            let mut tx = self.db.begin().await.map_err(err)?;
            if !self
                .jobs
                .hold_abandoned_in(&mut tx, job.id)
                .await
                .map_err(err)?
            {
                continue; // retried meanwhile
            }
            // A version that was promoted (or recorded stale) is the superseded cleaner's.
            let promoted = self
                .datasets
                .promotion(job.id)
                .await
                .map_err(err)?
                .is_some();
            if let (false, Some(bu_id), Some(connector)) = (promoted, job.bu_id, job.connector) {
                let ds = Dataset {
                    bu_id,
                    connector,
                    version: job.id,
                };
                r.documents += self.sink.delete_version(&ds).await.map_err(err)?;
                r.blobs += self
                    .blobs
                    .delete_prefix(&run_prefix(job.id))
                    .await
                    .map_err(err)? as u64;
                r.versions += 1;
            }
            self.jobs
                .mark_reclaimed_in(&mut tx, job.id)
                .await
                .map_err(err)?;
            tx.commit().await.map_err(err)?;
        }
        Ok(())
    }

    /// Uploads older than the grace period that no job names (a job names its upload for as
    /// long as the job is kept).
    async fn unreferenced_uploads(&self, r: &mut Reclaimed) -> Result<(), OrphanError> {
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(self.config.grace).unwrap_or(chrono::Duration::MAX);
        let mut listing = self.blobs.list_meta(UPLOADS_PREFIX);
        let mut old = Vec::new();
        while let Some(m) = listing.try_next().await.map_err(err)? {
            if m.last_modified < cutoff {
                old.push(m.key);
                if old.len() >= self.config.batch {
                    break;
                }
            }
        }
        drop(listing);
        if old.is_empty() {
            return Ok(());
        }
        let named: HashSet<String> = self
            .jobs
            .referenced_sources(&old)
            .await
            .map_err(err)?
            .into_iter()
            .collect();
        for key in old.iter().filter(|k| !named.contains(*k)) {
            self.blobs.delete(key).await.map_err(err)?;
            r.uploads += 1;
        }
        Ok(())
    }

    pub async fn run(self, stop: CancellationToken) {
        loop {
            if let Err(e) = self.clean_once().await {
                tracing::warn!(error = %e, "orphan cleanup failed");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.config.interval) => {}
            }
        }
    }
}
