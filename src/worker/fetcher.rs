//! Claim loops: claim while Normal and slots are free; when idle, advertise the free slots
//! for pushed jobs; wait on NOTIFY, a freed slot, or the poll interval.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Completer, Shared, push, runner};
use crate::lifecycle::Mode;

/// After a failed claim (PostgreSQL unreachable): try again soon, without spinning.
const CLAIM_ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Claim loop `n` (of `worker.fetchers`).
pub(super) async fn fetch(n: usize, s: Arc<Shared>, completer: Completer, stop: CancellationToken) {
    let mut status = s.lifecycle.subscribe();
    let batch = s.config.fetch_batch.min(s.config.concurrency);
    // With a backlog, refill in chunks rather than one claim per finished job.
    let refill = (batch / 4).max(1);
    let mut backlog = false;
    // Woken because jobs were queued (not by a freed slot or the poll).
    let mut for_jobs = false;
    loop {
        if stop.is_cancelled() {
            return;
        }
        if s.lifecycle.mode() != Mode::Normal {
            // An advertisement a failed withdrawal left out holds slots: SafeToStop waits
            // for it.
            push::withdraw(&s, &completer).await;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = status.wait_for(|st| st.mode == Mode::Normal) => continue,
            }
        }
        let reserved = s.lifecycle.try_reserve(batch, s.config.concurrency);
        if reserved == 0 && for_jobs {
            s.parking.nudge();
        }
        if reserved > 0 {
            match s
                .jobs
                .claim(&s.actor, &s.kinds, reserved, s.config.lease)
                .await
            {
                Ok(jobs) => {
                    s.lifecycle.settle(reserved, jobs.len());
                    backlog = jobs.len() == reserved;
                    runner::start(&s, &completer, jobs);
                    if backlog {
                        continue;
                    }
                }
                Err(e) => {
                    s.lifecycle.settle(reserved, 0);
                    tracing::warn!(error = %e, "claim failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(CLAIM_ERROR_PAUSE) => continue,
                    }
                }
            }
        }
        for_jobs = false;
        let threshold = if backlog { refill } else { 1 };
        // Idle: offer the free slots to enqueues (push pickup, ADR 0020). The loop that
        // advertised withdraws when it wakes, whatever woke it.
        let advertised = !backlog && push::advertise(&s, n).await;
        let poll = tokio::time::sleep(s.config.poll_interval);
        tokio::pin!(poll);
        let stopping = loop {
            let offer_freed = tokio::select! {
                _ = stop.cancelled() => break true,
                _ = s.wake.notified() => {
                    for_jobs = true;
                    break false;
                }
                _ = s.parking.wake.notified(), if advertised => break false,
                _ = s.parking.freed.notified(), if advertised => true,
                _ = &mut poll => break false,
                // While advertising, a freed slot is offered to pushed jobs instead
                // (`parking.freed`); queued jobs wake the loop themselves.
                _ = s.slot_freed.notified(), if !advertised => {
                    let free = s.config.concurrency.saturating_sub(s.lifecycle.status().in_flight);
                    if free >= threshold { break false; }
                    false
                }
                _ = status.wait_for(|st| st.mode != Mode::Normal) => break false,
            };
            if offer_freed {
                push::top_up(&s).await;
            }
        };
        if advertised {
            push::withdraw(&s, &completer).await;
        }
        if stopping {
            return;
        }
    }
}
