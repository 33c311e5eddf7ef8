//! Re-queues jobs whose lease expired: their worker was killed, hung, or cut off.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::queue::{Actor, JobStore};

/// How often to look for expired leases. Rescue latency is lease + at most this.
pub const DEFAULT_RESCUE_INTERVAL: Duration = Duration::from_secs(2);
/// Most jobs rescued per statement.
pub const DEFAULT_RESCUE_BATCH: i64 = 1000;

#[derive(Debug, Clone)]
pub struct RescuerConfig {
    pub interval: Duration,
    pub batch: i64,
}

impl Default for RescuerConfig {
    fn default() -> Self {
        RescuerConfig {
            interval: DEFAULT_RESCUE_INTERVAL,
            batch: DEFAULT_RESCUE_BATCH,
        }
    }
}

pub struct Rescuer {
    store: JobStore,
    actor: Actor,
    metrics: Arc<Metrics>,
    config: RescuerConfig,
}

impl Rescuer {
    pub fn new(
        store: JobStore,
        actor: Actor,
        metrics: Arc<Metrics>,
        config: RescuerConfig,
    ) -> Self {
        Rescuer {
            store,
            actor,
            metrics,
            config,
        }
    }

    pub async fn run(self, stop: CancellationToken) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.config.interval) => {}
            }
            match self
                .store
                .rescue_expired(&self.actor, self.config.batch)
                .await
            {
                Ok(0) => {}
                Ok(n) => {
                    Metrics::inc(&self.metrics.jobs_rescued, n);
                    tracing::warn!(jobs = n, "rescued jobs with expired leases");
                }
                Err(e) => tracing::warn!(error = %e, "rescue failed"),
            }
        }
    }
}
