//! Keeps the history's day partitions: makes the days ahead, drops the days past
//! `history.retention_days` (ADR 0017), and deletes stale worker rows.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::configuration::Settings;
use crate::fleet::FleetStore;
use crate::queue::JobStore;

#[derive(Debug, Clone)]
pub struct JobCleanerConfig {
    pub interval: Duration,
    /// Finished jobs and job events are kept this long after their day ends.
    pub retention: Duration,
    pub worker_retention: Duration,
}

impl JobCleanerConfig {
    pub fn from_settings(s: &Settings) -> Self {
        JobCleanerConfig {
            interval: Duration::from_millis(s.maintenance.cleanup_interval_ms),
            retention: Duration::from_secs(u64::from(s.history.retention_days) * 86_400),
            worker_retention: Duration::from_secs(s.maintenance.worker_retention_hours * 3600),
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

    /// One full pass; returns the finished jobs dropped with their partitions.
    pub async fn clean_once(&self) -> Result<u64, CleanupError> {
        let err = |e: &dyn std::fmt::Display| CleanupError(e.to_string());
        let made = self.jobs.ensure_partitions().await.map_err(|e| err(&e))?;
        if made > 0 {
            tracing::info!(partitions = made, "created history partitions ahead");
        }
        let dropped = self
            .jobs
            .drop_expired_partitions(self.config.retention)
            .await
            .map_err(|e| err(&e))?;
        for d in &dropped {
            tracing::info!(partition = %d.table, jobs = d.jobs, "dropped a history partition past retention");
        }
        self.fleet
            .delete_stale(self.config.worker_retention)
            .await
            .map_err(|e| err(&e))?;
        Ok(dropped.iter().map(|d| d.jobs as u64).sum())
    }

    pub async fn run(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.config.interval) => {}
            }
            if let Err(e) = self.clean_once().await {
                tracing::warn!(error = %e, "history cleanup failed; next pass in the interval");
            }
        }
    }
}
