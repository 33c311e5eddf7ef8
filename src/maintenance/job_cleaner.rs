//! Deletes finished jobs (with their history) and stale worker rows past retention.

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::configuration::MaintenanceSettings;
use crate::fleet::FleetStore;
use crate::queue::JobStore;

/// Jobs deleted per statement, so one pass never holds long locks.
pub const DEFAULT_CLEANUP_BATCH: i64 = 5000;

#[derive(Debug, Clone)]
pub struct JobCleanerConfig {
    pub interval: Duration,
    pub succeeded_retention: Duration,
    pub dead_retention: Duration,
    pub worker_retention: Duration,
    pub batch: i64,
}

impl JobCleanerConfig {
    pub fn from_settings(m: &MaintenanceSettings) -> Self {
        let hours = |h: u64| Duration::from_secs(h * 3600);
        JobCleanerConfig {
            interval: Duration::from_millis(m.cleanup_interval_ms),
            succeeded_retention: hours(m.succeeded_retention_hours),
            dead_retention: hours(m.dead_retention_hours),
            worker_retention: hours(m.worker_retention_hours),
            batch: DEFAULT_CLEANUP_BATCH,
        }
    }
}

pub struct JobCleaner {
    jobs: JobStore,
    fleet: FleetStore,
    config: JobCleanerConfig,
}

#[derive(Debug, thiserror::Error)]
#[error("cleanup: {0}")]
pub struct CleanupError(String);

impl JobCleaner {
    pub fn new(jobs: JobStore, fleet: FleetStore, config: JobCleanerConfig) -> Self {
        JobCleaner {
            jobs,
            fleet,
            config,
        }
    }

    /// One full pass; returns the number of jobs deleted.
    pub async fn clean_once(&self) -> Result<u64, CleanupError> {
        let err = |e: &dyn std::fmt::Display| CleanupError(e.to_string());
        let now = Utc::now();
        let succeeded_before =
            now - chrono::Duration::from_std(self.config.succeeded_retention).unwrap_or_default();
        let dead_before =
            now - chrono::Duration::from_std(self.config.dead_retention).unwrap_or_default();
        let mut total = 0;
        loop {
            let n = self
                .jobs
                .delete_finished(succeeded_before, dead_before, self.config.batch)
                .await
                .map_err(|e| err(&e))?;
            total += n;
            if n < self.config.batch as u64 {
                break;
            }
        }
        self.fleet
            .delete_stale(self.config.worker_retention)
            .await
            .map_err(|e| err(&e))?;
        Ok(total)
    }

    pub async fn run(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.config.interval) => {}
            }
            match self.clean_once().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(jobs = n, "deleted finished jobs past retention"),
                Err(e) => tracing::warn!(error = %e, "cleanup failed"),
            }
        }
    }
}
