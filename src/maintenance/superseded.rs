//! Deletes dataset versions that a newer promotion replaced, once their rollback window has
//! passed: their sink documents and their `runs/{version}/` artifacts.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::configuration::EtlSettings;
use crate::etl::Etl;
use crate::etl::artifact::run_prefix;
use crate::sink::Dataset;

pub const DEFAULT_SUPERSEDED_RETENTION: Duration = Duration::from_secs(24 * 3600);
pub const DEFAULT_SUPERSEDED_INTERVAL: Duration = Duration::from_secs(60);
/// Versions handled per pass.
pub const DEFAULT_SUPERSEDED_BATCH: i64 = 20;

#[derive(Debug, Clone)]
pub struct SupersededCleanerConfig {
    pub interval: Duration,
    pub retention: Duration,
    pub batch: i64,
}

impl Default for SupersededCleanerConfig {
    fn default() -> Self {
        SupersededCleanerConfig {
            interval: DEFAULT_SUPERSEDED_INTERVAL,
            retention: DEFAULT_SUPERSEDED_RETENTION,
            batch: DEFAULT_SUPERSEDED_BATCH,
        }
    }
}

impl SupersededCleanerConfig {
    pub fn from_settings(e: &EtlSettings) -> Self {
        SupersededCleanerConfig {
            interval: Duration::from_millis(e.superseded_cleanup_interval_ms),
            retention: Duration::from_secs(e.superseded_retention_hours * 3600),
            ..Self::default()
        }
    }
}

pub struct SupersededCleaner {
    etl: Arc<Etl>,
    config: SupersededCleanerConfig,
}

#[derive(Debug, thiserror::Error)]
#[error("superseded cleanup: {0}")]
pub struct CleanupError(String);

impl SupersededCleaner {
    pub fn new(etl: Arc<Etl>, config: SupersededCleanerConfig) -> Self {
        SupersededCleaner { etl, config }
    }

    /// One pass; returns the versions deleted. Deletes are idempotent, so two processes
    /// cleaning at once only repeat each other's work.
    pub async fn clean_once(&self) -> Result<usize, CleanupError> {
        let err = |e: &dyn std::fmt::Display| CleanupError(e.to_string());
        let due: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT s.version, s.bu_id, s.connector FROM superseded_versions s
              WHERE s.deleted_at IS NULL
                AND s.superseded_at < now() - make_interval(secs => $1)
                AND NOT EXISTS (SELECT 1 FROM dataset_manifests m WHERE m.version = s.version)
              ORDER BY s.superseded_at LIMIT $2",
        )
        .bind(self.config.retention.as_secs_f64())
        .bind(self.config.batch)
        .fetch_all(&self.etl.pool)
        .await
        .map_err(|e| err(&e))?;
        for (version, bu_id, connector) in &due {
            let ds = Dataset {
                bu_id: bu_id.clone(),
                connector: connector.clone(),
                version: *version,
            };
            let docs = self
                .etl
                .sink
                .delete_version(&ds)
                .await
                .map_err(|e| err(&e))?;
            let blobs = self
                .etl
                .blobs
                .delete_prefix(&run_prefix(*version))
                .await
                .map_err(|e| err(&e))?;
            sqlx::query("UPDATE superseded_versions SET deleted_at = now() WHERE version = $1")
                .bind(version)
                .execute(&self.etl.pool)
                .await
                .map_err(|e| err(&e))?;
            tracing::info!(version, docs, blobs, "deleted superseded dataset version");
        }
        Ok(due.len())
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
