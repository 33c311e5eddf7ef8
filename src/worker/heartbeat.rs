//! Keeps this process's `workers` row current (control pool) and applies fleet commands
//! addressed to it.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::Shared;
use crate::fleet::Command;

pub(super) async fn fleet_heartbeat(s: Arc<Shared>, stop: CancellationToken) {
    let mut status = s.lifecycle.subscribe();
    let mut applied_seq: Option<i64> = None;
    loop {
        match s.fleet.heartbeat(&s.info, s.lifecycle.status()).await {
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
        let mode = s.lifecycle.mode();
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(s.config.heartbeat) => {}
            _ = s.fleet_wake.notified() => {}
            _ = status.wait_for(|st| st.mode != mode) => {}
        }
    }
}
