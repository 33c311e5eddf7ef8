//! Re-queues jobs whose lease expired: their worker was killed, froze, or was cut off — and
//! dead-letters poison pills (jobs whose worker died in the same stage repeatedly).
//!
//! A rescuer that has just (re)gained PostgreSQL waits `grace` before rescuing anything: the
//! owners of leases that expired during the outage are reconnecting too, and renew within
//! moments. `JobStore::rescue_expired` applies the same grace after PostgreSQL itself
//! restarts, and spares owners whose heartbeat shows them alive. So does a rescuer whose
//! passes were further apart than `rules.stall` on the database's clock: PostgreSQL or this
//! process stood still, and the owners' renewals held up with it are only now landing.

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
                // Owners renew every lease / 3: a pause longer than that on top of the
                // interval may have held back a renewal that is only now landing.
                stall: Duration::from_millis(s.maintenance.rescue_interval_ms) + lease / 3,
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
        let stall =
            chrono::Duration::from_std(self.config.rules.stall).unwrap_or(chrono::Duration::MAX);
        // Starting counts as (re)connecting: owners of leases that expired while nobody could
        // rescue get `grace` to show up first.
        let mut quiet_until = Instant::now() + grace;
        let mut down = false;
        // The database's clock at this rescuer's previous contact with it (a pass or a
        // ping), to see a stall between two.
        let mut previous = None;
        let stood_still = |since: Option<chrono::DateTime<chrono::Utc>>| {
            tracing::warn!(
                ?since,
                "PostgreSQL or this process stood still: rescuing nothing until the owners \
                 have had the grace to renew"
            );
            Instant::now() + grace
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.config.interval) => {}
            }
            if down || Instant::now() < quiet_until {
                // Only watch connectivity and stalls, either of which restarts the grace.
                match self.store.clock().await {
                    Ok(_) if down => {
                        down = false;
                        previous = None;
                        quiet_until = Instant::now() + grace;
                    }
                    Ok(at) => {
                        if previous.is_some_and(|p| at - p > stall) {
                            quiet_until = stood_still(previous);
                        }
                        previous = Some(at);
                    }
                    Err(_) => down = true,
                }
                continue;
            }
            match self
                .store
                .rescue_pass(&self.actor, &self.config.rules, self.config.batch, previous)
                .await
            {
                Ok(pass) if pass.stalled => {
                    quiet_until = stood_still(previous);
                    previous = Some(pass.at);
                }
                Ok(pass) => {
                    previous = Some(pass.at);
                    let r = pass.rescued;
                    if r.total() > 0 {
                        self.metrics.jobs_rescued(r.requeued, r.dead);
                        tracing::warn!(
                            requeued = r.requeued,
                            dead = r.dead,
                            "rescued jobs with expired leases"
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rescue failed");
                    down = true;
                }
            }
        }
    }
}
