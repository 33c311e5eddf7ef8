//! LISTEN for new jobs, jobs pushed to this worker, cancellations and fleet commands. The
//! listener reconnects by itself; after a reconnect everyone is woken, since notifications may
//! have been missed (the claim loop then withdraws its advertisement, which starts any pushed
//! job whose notification was lost).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{CancelReason, Completer, Shared, push};
use crate::queue::{Listener, Notification};

/// Between attempts to LISTEN again after PostgreSQL dropped the connection; fetch loops poll
/// meanwhile, so this only bounds how often a down server is asked (not a setting).
const RELISTEN_PAUSE: Duration = Duration::from_secs(1);

/// Records which server process listens for this worker, so enqueues push only to a worker
/// whose connection is alive (0: unknown, nothing is advertised).
async fn note_backend(s: &Shared, listener: &mut Listener) {
    s.listener_pid.store(0, Ordering::Release);
    match listener.backend_pid().await {
        Ok(pid) => s.listener_pid.store(pid, Ordering::Release),
        Err(e) => tracing::warn!(error = %e, "LISTEN connection not back yet; not advertising"),
    }
}

pub(super) async fn listen(s: Arc<Shared>, completer: Completer, stop: CancellationToken) {
    let push_channel = s.config.push.then_some(s.push_channel.as_str());
    let mut listener = loop {
        match s.jobs.listen(push_channel).await {
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
    if s.config.push {
        note_backend(&s, &mut listener).await;
        // An idle claim loop may have passed its chance to advertise before this was known.
        s.wake.notify_one();
    }
    loop {
        let unknown = s.config.push && s.listener_pid.load(Ordering::Acquire) == 0;
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            m = listener.recv() => m,
            // Asking for the backend failed (the connection was down): ask again, or nothing
            // is ever advertised by this process.
            _ = tokio::time::sleep(RELISTEN_PAUSE), if unknown => {
                note_backend(&s, &mut listener).await;
                continue;
            }
        };
        match msg {
            Ok(Notification::JobsAvailable) => {
                s.wake.notify_one();
                s.signals.emit(super::Signal::JobsNotified);
            }
            Ok(Notification::Pushed(job)) => push::accept(&s, &completer, job),
            Ok(Notification::Cancelled(id)) => {
                if let Some(h) = s.held.lock().unwrap().get(&id) {
                    tracing::info!(job_id = id, "job cancelled: stopping its stage");
                    h.cancel(CancelReason::JobCancelled);
                }
            }
            Ok(Notification::Fleet) => s.fleet_wake.notify_one(),
            Ok(Notification::Reconnected) => {
                tracing::warn!("LISTEN connection lost; reconnecting");
                if s.config.push {
                    note_backend(&s, &mut listener).await;
                }
                s.wake.notify_one();
                s.parking.wake.notify_one();
                s.fleet_wake.notify_one();
            }
            Err(e) => {
                // Unknown until asked again (the branch above, once the pause is over).
                s.listener_pid.store(0, Ordering::Release);
                tracing::warn!(error = %e, "LISTEN failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(RELISTEN_PAUSE) => {}
                }
            }
        }
    }
}
