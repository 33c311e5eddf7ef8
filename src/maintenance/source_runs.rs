//! Deletes source runs (listings and Event Grid deliveries) past retention. The ingest ledger
//! is never deleted here: it is what remembers that a blob version was taken.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::configuration::MaintenanceSettings;
use crate::sources::{SourceStore, StoreError};

#[derive(Debug, Clone)]
pub struct SourceRunCleanerConfig {
    pub interval: Duration,
    pub retention: Duration,
}

impl SourceRunCleanerConfig {
    pub fn from_settings(m: &MaintenanceSettings) -> Self {
        SourceRunCleanerConfig {
            interval: Duration::from_millis(m.cleanup_interval_ms),
            retention: Duration::from_secs(m.source_run_retention_hours * 3600),
        }
    }
}

pub struct SourceRunCleaner {
    store: SourceStore,
    config: SourceRunCleanerConfig,
}

impl SourceRunCleaner {
    pub fn new(store: SourceStore, config: SourceRunCleanerConfig) -> Self {
        SourceRunCleaner { store, config }
    }

    /// One pass; returns the runs deleted.
    pub async fn clean_once(&self) -> Result<u64, StoreError> {
        self.store.delete_old_runs(self.config.retention).await
    }

    pub async fn run(self, stop: CancellationToken) {
        loop {
            match self.clean_once().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "deleted old source runs"),
                Err(e) => tracing::warn!(error = %e, "source run cleanup failed"),
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.config.interval) => {}
            }
        }
    }
}
