//! Rolls the per-minute deltas (`job_minute_deltas`) up into `job_event_minutes` once each minute has
//! settled, so the console's overview reads sixty rows instead of an hour of events; folds the
//! finished-job counts' deltas (`job_counts`) on the same beat.

use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::configuration::MaintenanceSettings;
use crate::queue::JobStore;

/// A minute is rolled up once it is this far in the past: an event's `at` is its
/// transaction's start, and a transition's transaction commits well within this.
pub const SETTLE_LAG: Duration = Duration::from_secs(120);
/// How far back the rollup is kept: the overview's hour and a minute.
pub const WINDOW: Duration = Duration::from_secs(61 * 60);

#[derive(Debug, Clone)]
pub struct StatsRollupConfig {
    pub interval: Duration,
    pub settle_lag: Duration,
    pub window: Duration,
}

impl StatsRollupConfig {
    pub fn from_settings(m: &MaintenanceSettings) -> Self {
        StatsRollupConfig {
            interval: Duration::from_millis(m.stats_rollup_interval_ms),
            settle_lag: SETTLE_LAG,
            window: WINDOW,
        }
    }
}

pub struct StatsRollup {
    jobs: JobStore,
    config: StatsRollupConfig,
}

impl StatsRollup {
    pub fn new(jobs: JobStore, config: StatsRollupConfig) -> Self {
        StatsRollup { jobs, config }
    }

    /// One pass; returns the minutes added.
    pub async fn roll_up_once(&self) -> Result<i64, crate::queue::QueueError> {
        let now = Utc::now();
        let ago = |d: Duration| now - chrono::Duration::from_std(d).unwrap_or_default();
        // The finished-job counts' deltas are folded on the same beat.
        self.jobs.compact_counts().await?;
        self.jobs
            .roll_up_minutes(ago(self.config.window), ago(self.config.settle_lag))
            .await
    }

    pub async fn run(self, stop: CancellationToken) {
        loop {
            if let Err(e) = self.roll_up_once().await {
                tracing::warn!(error = %e, "stats rollup failed");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.config.interval) => {}
            }
        }
    }
}
