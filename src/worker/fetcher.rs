//! Claim loops: claim while Normal and slots are free; when idle, advertise the free slots
//! for pushed jobs; wait on NOTIFY, a freed slot, or the poll interval.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
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
    // While this loop's advertisement is out (push pickup, ADR 0020): when it is renewed, a
    // fixed time after it went out, not after the loop's last wake-up, or wake-ups for
    // queued jobs would keep putting it off until it lapsed.
    let mut renew_at: Option<Instant> = None;
    loop {
        if stop.is_cancelled() {
            return;
        }
        if s.lifecycle.mode() != Mode::Normal {
            // An advertisement a failed withdrawal left out holds slots: SafeToStop waits
            // for it.
            push::withdraw(&s, &completer).await;
            renew_at = None;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = status.wait_for(|st| st.mode == Mode::Normal) => continue,
            }
        }
        let mut reserved = s.lifecycle.try_reserve(batch, s.config.concurrency);
        // Woken for queued jobs with no slot to claim them: claim when one frees.
        let starved = reserved == 0 && for_jobs;
        if starved {
            if renew_at.is_some() {
                // Queued jobs and every free slot offered to pushes: take the slots back.
                withdraw_own(&s, &completer, &mut renew_at).await;
                reserved = s.lifecycle.try_reserve(batch, s.config.concurrency);
            } else {
                s.parking.nudge();
            }
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
                        // A backlog is claimed with every slot, not pushed.
                        withdraw_own(&s, &completer, &mut renew_at).await;
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
        // Idle: offer the free slots to enqueues (push pickup, ADR 0020). A wake-up for
        // queued jobs is claimed beside the advertisement with the slots it does not hold: a
        // withdrawal there would queue the enqueues that come meanwhile.
        // (An advertisement still out is kept; one closed meanwhile is made again.)
        let poll_at = Instant::now() + s.config.poll_interval;
        if !backlog && push::advertise(&s, n).await {
            renew_at.get_or_insert(poll_at);
        } else {
            renew_at = None;
        }
        let advertised = renew_at.is_some();
        let poll = tokio::time::sleep_until(renew_at.unwrap_or(poll_at));
        tokio::pin!(poll);
        // Withdraw: renewed at each poll, and when asked (a lost LISTEN connection, or
        // another loop needing the slots).
        let (withdraw, stopping) = loop {
            let offer_freed = tokio::select! {
                _ = stop.cancelled() => break (true, true),
                _ = s.wake.notified() => {
                    for_jobs = true;
                    break (false, false);
                }
                _ = s.parking.wake.notified(), if advertised => break (true, false),
                _ = s.parking.freed.notified(), if advertised => true,
                _ = &mut poll => break (true, false),
                // While advertising, a freed slot is offered to pushed jobs instead
                // (`parking.freed`), and queued jobs wake the loop themselves; so while any
                // loop advertises, a freed slot wakes only a loop with jobs to claim (an
                // empty claim per finished job slowed the enqueues beside it).
                _ = s.slot_freed.notified(),
                    if !advertised && (backlog || starved || !s.parking.is_open()) => {
                    let free = s.config.concurrency.saturating_sub(s.lifecycle.status().in_flight);
                    if free >= threshold { break (false, false); }
                    false
                }
                _ = status.wait_for(|st| st.mode != Mode::Normal) => break (true, false),
            };
            if offer_freed {
                push::top_up(&s).await;
            }
        };
        if withdraw {
            withdraw_own(&s, &completer, &mut renew_at).await;
        }
        if stopping {
            return;
        }
    }
}

/// Withdraws this loop's advertisement, if it has one out.
async fn withdraw_own(s: &Arc<Shared>, completer: &Completer, renew_at: &mut Option<Instant>) {
    if renew_at.take().is_some() {
        push::withdraw(s, completer).await;
    }
}
