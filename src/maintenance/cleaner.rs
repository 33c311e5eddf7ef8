//! Deletes finished jobs (with their history) and stale worker rows past retention.

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::configuration::MaintenanceSettings;
use crate::queue::JobStore;

pub const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_secs(600);
pub const DEFAULT_SUCCEEDED_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
pub const DEFAULT_DEAD_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
pub const DEFAULT_WORKER_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Jobs deleted per statement, so one pass never holds long locks.
pub const DEFAULT_CLEANUP_BATCH: i64 = 5000;

#[derive(Debug, Clone)]
pub struct CleanerConfig {
    pub interval: Duration,
    pub succeeded_retention: Duration,
    pub dead_retention: Duration,
    pub worker_retention: Duration,
    pub batch: i64,
}

impl Default for CleanerConfig {
    fn default() -> Self {
        CleanerConfig {
            interval: DEFAULT_CLEANUP_INTERVAL,
            succeeded_retention: DEFAULT_SUCCEEDED_RETENTION,
            dead_retention: DEFAULT_DEAD_RETENTION,
            worker_retention: DEFAULT_WORKER_RETENTION,
            batch: DEFAULT_CLEANUP_BATCH,
        }
    }
}

impl CleanerConfig {
    pub fn from_settings(m: &MaintenanceSettings) -> Self {
        let hours = |h: u64| Duration::from_secs(h * 3600);
        CleanerConfig {
            interval: Duration::from_millis(m.cleanup_interval_ms),
            succeeded_retention: hours(m.succeeded_retention_hours),
            dead_retention: hours(m.dead_retention_hours),
            worker_retention: hours(m.worker_retention_hours),
            ..CleanerConfig::default()
        }
    }
}

pub struct Cleaner {
    store: JobStore,
    config: CleanerConfig,
}

impl Cleaner {
    pub fn new(store: JobStore, config: CleanerConfig) -> Self {
        Cleaner { store, config }
    }

    /// One full pass; returns the number of jobs deleted.
    pub async fn clean_once(&self) -> Result<u64, crate::queue::QueueError> {
        let now = Utc::now();
        let succeeded_before =
            now - chrono::Duration::from_std(self.config.succeeded_retention).unwrap_or_default();
        let dead_before =
            now - chrono::Duration::from_std(self.config.dead_retention).unwrap_or_default();
        let mut total = 0;
        loop {
            let n = self
                .store
                .delete_finished(succeeded_before, dead_before, self.config.batch)
                .await?;
            total += n;
            if n < self.config.batch as u64 {
                break;
            }
        }
        crate::fleet::delete_stale(self.store.pool(), self.config.worker_retention).await?;
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
