//! Renews the leases of held jobs every lease/3 on the control pool — also while draining, so
//! a slow final stage is never rescued from under a live worker, and never queued behind job
//! traffic on the main pool.
//!
//! A job whose renewal says it is no longer ours (rescued, cancelled) has its stage cancelled.
//! While PostgreSQL is unreachable the jobs are kept: the rescuers cannot reach it either, and
//! spare an owner that shows up alive once it is back (`JobStore::rescue_expired`). Only past
//! `outage_tolerance` without a renewal are stages given up.

use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{CancelReason, Shared};
use crate::metrics::Metrics;

pub(super) async fn keep_leases(s: Arc<Shared>, stop: CancellationToken) {
    let every = s.config.lease / 3;
    let mut failing = false;
    loop {
        // Right after an outage, renew at once instead of waiting for the next tick.
        let pause = if failing { every / 4 } else { every };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        let held: Vec<(i64, i64)> = s
            .held
            .lock()
            .unwrap()
            .iter()
            .map(|(id, h)| (*id, h.token))
            .collect();
        if held.is_empty() {
            continue;
        }
        match s
            .jobs
            .renew_leases(&s.actor.id, &held, s.config.lease)
            .await
        {
            Ok(kept) => {
                if failing {
                    tracing::info!(jobs = held.len(), "PostgreSQL is back: leases renewed");
                }
                failing = false;
                Metrics::inc(&s.metrics.lease_renewals, kept.len() as u64);
                let now = Instant::now();
                let mut map = s.held.lock().unwrap();
                for (id, token) in held {
                    let Some(h) = map.get_mut(&id) else { continue };
                    if h.token != token {
                        continue;
                    }
                    if kept.contains(&id) {
                        h.renewed_at = now;
                    } else {
                        tracing::warn!(job_id = id, "lease lost: stopping the stage");
                        Metrics::inc(&s.metrics.leases_lost, 1);
                        h.cancel(CancelReason::LeaseLost);
                    }
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "lease renewal failed; holding the jobs");
                }
                failing = true;
                let map = s.held.lock().unwrap();
                for (id, h) in map.iter() {
                    if h.renewed_at.elapsed() >= s.config.outage_tolerance {
                        tracing::warn!(
                            job_id = id,
                            "PostgreSQL unreachable for longer than worker.outage_tolerance_ms: giving up the job"
                        );
                        Metrics::inc(&s.metrics.leases_lost, 1);
                        h.cancel(CancelReason::LeaseLost);
                    }
                }
            }
        }
    }
}
