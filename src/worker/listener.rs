//! LISTEN for new jobs, cancellations and fleet commands. The listener reconnects by itself;
//! after a reconnect everyone is woken, since notifications may have been missed.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{CancelReason, Shared};
use crate::queue::Notification;

/// Between attempts to LISTEN again after PostgreSQL dropped the connection; fetch loops poll
/// meanwhile, so this only bounds how often a down server is asked (not a setting).
const RELISTEN_PAUSE: Duration = Duration::from_secs(1);

pub(super) async fn listen(s: Arc<Shared>, stop: CancellationToken) {
    let mut listener = loop {
        match s.jobs.listen().await {
            Ok(l) => break l,
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN failed; polling meanwhile");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RELISTEN_PAUSE) => {}
                }
            }
        }
    };
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            m = listener.recv() => m,
        };
        match msg {
            Ok(Notification::JobsAvailable) => {
                s.wake.notify_one();
                s.signals.emit(super::Signal::JobsNotified);
            }
            Ok(Notification::Cancelled(id)) => {
                if let Some(h) = s.held.lock().unwrap().get(&id) {
                    tracing::info!(job_id = id, "job cancelled: stopping its stage");
                    h.cancel(CancelReason::JobCancelled);
                }
            }
            Ok(Notification::Fleet) => s.fleet_wake.notify_one(),
            Ok(Notification::Reconnected) => {
                tracing::warn!("LISTEN connection lost; reconnecting");
                s.wake.notify_one();
                s.fleet_wake.notify_one();
            }
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RELISTEN_PAUSE) => {}
                }
            }
        }
    }
}
