//! Deletes dataset versions that a newer promotion replaced, once their rollback window has
//! passed: their sink documents and their `runs/{version}/` artifacts.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::configuration::EtlSettings;
use crate::datasets::DatasetStore;
use crate::etl::artifact::run_prefix;
use crate::metrics::Metrics;
use crate::sink::{Dataset, DocumentSink};
use crate::storage::BlobStore;

/// Versions handled per pass.
pub const DEFAULT_SUPERSEDED_BATCH: i64 = 20;

#[derive(Debug, Clone)]
pub struct SupersededCleanerConfig {
    pub interval: Duration,
    pub retention: Duration,
    pub batch: i64,
}

impl SupersededCleanerConfig {
    pub fn from_settings(e: &EtlSettings) -> Self {
        SupersededCleanerConfig {
            interval: Duration::from_millis(e.superseded_cleanup_interval_ms),
            retention: Duration::from_secs(e.superseded_retention_hours * 3600),
            batch: DEFAULT_SUPERSEDED_BATCH,
        }
    }
}

pub struct SupersededCleaner {
    datasets: DatasetStore,
    sink: Arc<dyn DocumentSink>,
    blobs: BlobStore,
    metrics: Arc<Metrics>,
    config: SupersededCleanerConfig,
}

#[derive(Debug, thiserror::Error)]
#[error("superseded cleanup: {0}")]
pub struct CleanupError(String);

impl SupersededCleaner {
    pub fn new(
        datasets: DatasetStore,
        sink: Arc<dyn DocumentSink>,
        blobs: BlobStore,
        metrics: Arc<Metrics>,
        config: SupersededCleanerConfig,
    ) -> Self {
        SupersededCleaner {
            datasets,
            sink,
            blobs,
            metrics,
            config,
        }
    }

    /// One pass; returns the versions deleted. Deletes are idempotent, so two processes
    /// cleaning at once only repeat each other's work.
    pub async fn clean_once(&self) -> Result<usize, CleanupError> {
        let err = |e: &dyn std::fmt::Display| CleanupError(e.to_string());
        let due = self
            .datasets
            .due_superseded(self.config.retention, self.config.batch)
            .await
            .map_err(|e| err(&e))?;
        let mut done = 0;
        for v in &due {
            // Under the dataset's lock: a rollback that got there first keeps its version.
            if !self
                .datasets
                .claim_for_deletion(v)
                .await
                .map_err(|e| err(&e))?
            {
                continue;
            }
            let ds = Dataset {
                bu_id: v.bu_id.clone(),
                connector: v.connector.clone(),
                version: v.version,
            };
            let docs = self.sink.delete_version(&ds).await.map_err(|e| err(&e))?;
            let blobs = self
                .blobs
                .delete_prefix(&run_prefix(v.version))
                .await
                .map_err(|e| err(&e))?;
            self.datasets
                .mark_deleted(v.version)
                .await
                .map_err(|e| err(&e))?;
            tracing::info!(
                version = v.version,
                docs,
                blobs,
                "deleted superseded dataset version"
            );
            self.metrics.reclaimed("superseded_versions", 1);
            self.metrics.reclaimed("documents", docs);
            self.metrics.reclaimed("blobs", blobs as u64);
            done += 1;
        }
        Ok(done)
    }

    pub async fn run(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.config.interval) => {}
            }
            if let Err(e) = self.clean_once().await {
                tracing::warn!(error = %e, "superseded cleanup failed");
            }
        }
    }
}
