//! Keeps this process's `workers` row current (control pool) and applies fleet commands
//! addressed to it.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::fleet::Command;

/// After the in-flight count changes, the row is written this soon (not at the next beat):
/// the fleet view follows the process within this, and a busy worker writes its row at most
/// this often.
pub const IN_FLIGHT_DEBOUNCE: Duration = Duration::from_millis(200);

pub(super) async fn fleet_heartbeat(s: Arc<Shared>, stop: CancellationToken) {
    let mut status = s.lifecycle.subscribe();
    let mut applied_seq: Option<i64> = None;
    loop {
        let written = s.lifecycle.status();
        match s.fleet.heartbeat(&s.info, written).await {
            Ok(cmd) => {
                let seq = cmd.map(|c| c.1).unwrap_or(0);
                match (applied_seq, cmd) {
                    // First beat: commands issued before this process existed are not for it.
                    (None, _) => applied_seq = Some(seq),
                    (Some(done), Some((command, seq))) if seq > done => {
                        applied_seq = Some(seq);
                        tracing::info!(?command, "fleet command received");
                        match command {
                            Command::Drain => s.lifecycle.drain(),
                            Command::Resume => s.lifecycle.resume(),
                        };
                        continue;
                    }
                    _ => {}
                }
            }
            Err(e) => {
                crate::metrics::Metrics::inc(&s.metrics.heartbeat_failures, 1);
                tracing::warn!(error = %e, "worker heartbeat failed")
            }
        }
        // A mode change is written at once; a changed count after the debounce.
        let count_changed = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(s.config.heartbeat) => false,
            _ = s.fleet_wake.notified() => false,
            _ = status.wait_for(|st| st.mode != written.mode) => false,
            _ = s.lifecycle.in_flight_changed() => true,
        };
        if count_changed {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(IN_FLIGHT_DEBOUNCE) => {}
            }
        }
    }
}
