//! Re-queues jobs whose lease expired: their worker was killed, froze, or was cut off — and
//! dead-letters poison pills (jobs whose worker died in the same stage repeatedly).
//!
//! A rescuer that has just (re)gained PostgreSQL waits `grace` before rescuing anything: the
//! owners of leases that expired during the outage are reconnecting too, and renew within
//! moments. `JobStore::rescue_expired` applies the same grace after PostgreSQL itself
//! restarts, and spares owners whose heartbeat shows them alive.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::configuration::Settings;
use crate::metrics::Metrics;
use crate::queue::{Actor, JobStore, RescueRules};

/// Most jobs rescued per statement.
pub const DEFAULT_RESCUE_BATCH: i64 = 1000;

#[derive(Debug, Clone)]
pub struct RescuerConfig {
    /// How often to look for expired leases. Rescue latency is lease + at most this.
    pub interval: Duration,
    pub rules: RescueRules,
    pub batch: i64,
}

impl RescuerConfig {
    pub fn from_settings(s: &Settings) -> Self {
        let lease = s.worker.lease();
        RescuerConfig {
            interval: Duration::from_millis(s.maintenance.rescue_interval_ms),
            rules: RescueRules {
                grace: Duration::from_millis(s.maintenance.rescue_grace_ms),
                // An owner that still heartbeats but has not renewed for two more leases is
                // not coming back for this job.
                overdue: lease * 2,
                max_streak: s.worker.max_consecutive_rescues,
            },
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
        let grace = self.config.rules.grace;
        // Starting counts as (re)connecting: owners of leases that expired while nobody could
        // rescue get `grace` to show up first.
        let mut quiet_until = Instant::now() + grace;
        let mut down = false;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.config.interval) => {}
            }
            if down || Instant::now() < quiet_until {
                // Only watch connectivity, so an outage restarts the grace period.
                match self.store.ping().await {
                    Ok(()) if down => {
                        down = false;
                        quiet_until = Instant::now() + grace;
                    }
                    Ok(()) => {}
                    Err(_) => down = true,
                }
                continue;
            }
            match self
                .store
                .rescue_expired(&self.actor, &self.config.rules, self.config.batch)
                .await
            {
                Ok(r) if r.total() == 0 => {}
                Ok(r) => {
                    self.metrics.jobs_rescued(r.requeued, r.dead);
                    tracing::warn!(
                        requeued = r.requeued,
                        dead = r.dead,
                        "rescued jobs with expired leases"
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rescue failed");
                    down = true;
                }
            }
        }
    }
}
