//! Push pickup, the worker's side (ADR 0020). An idle claim loop reserves free slots in
//! `Lifecycle` and advertises them; enqueues hand jobs to those slots in their own
//! transaction and notify this process, whose listener starts them at once ([`accept`]).
//! When the loop wakes it withdraws the advertisement ([`withdraw`]): the withdrawal waits
//! for every enqueue that took a slot, starts the pushed jobs whose notification never came
//! (a LISTEN connection lost), and frees the slots nobody took.
//!
//! Each advertisement has a number (its generation) that its notifications carry: a job is
//! started from its notification only while that advertisement is open, and by the
//! withdrawal only if its notification was not taken, so a pushed job starts exactly once.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Completer, Shared, Signal, runner};
use crate::lifecycle::Mode;
use crate::queue::{Advert, PushedJob};

/// The advertisement lapses by itself after this many poll intervals: a claim loop renews it
/// at every poll, so only a worker cut off from PostgreSQL lets it lapse.
const TTL_POLLS: u32 = 2;
/// …and never sooner than this.
const MIN_TTL: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(crate) struct Parking {
    state: std::sync::Mutex<State>,
    /// Asks the claim loop that owns the advertisement to withdraw it: the LISTEN connection
    /// was lost (notifications may have been missed), or another loop needs the slots.
    pub(super) wake: tokio::sync::Notify,
    /// A slot was freed while an advertisement is out: the owning loop offers it too.
    pub(super) freed: tokio::sync::Notify,
    /// One advertisement or withdrawal at a time: a withdrawal that ran while an
    /// advertisement's row was on its way would find no row, close it here, and leave the row
    /// to take jobs nobody starts. A second withdrawal waits, then finds it closed.
    busy: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct State {
    /// The current (or last) advertisement's number; each new one takes the next.
    generation: u64,
    /// An advertisement is out: its slots are reserved in `Lifecycle` (`claiming`).
    open: bool,
    /// Slots the open advertisement offered.
    advertised: usize,
    /// Of those, the ones still reserved (no pushed job started in them yet).
    reserved: usize,
    /// Jobs of the open advertisement started so far.
    started: Vec<i64>,
    /// The claim loop that made it, and withdraws it. One owner: a wake-up for queued jobs
    /// that reaches another loop is claimed without withdrawing.
    owner: usize,
}

impl Parking {
    /// An advertisement of this process is out.
    pub(super) fn is_open(&self) -> bool {
        self.state.lock().unwrap().open
    }

    /// A slot was freed: if an advertisement is out, its owner adds the slot to it.
    pub(super) fn slot_freed(&self) {
        if self.is_open() {
            self.freed.notify_one();
        }
    }

    /// A claim loop woken for queued jobs found every free slot advertised: the owner
    /// withdraws, and claims.
    pub(super) fn nudge(&self) {
        if self.is_open() {
            self.wake.notify_one();
        }
    }
}

/// Claim loop `by` advertises this process's free slots ([`offered`]) if pushing is on and
/// the listener is connected. True: an advertisement of `by` is out (this one, or one its
/// failed withdrawal left), and it must [`withdraw`] it when it wakes.
pub(super) async fn advertise(s: &Shared, by: usize) -> bool {
    if !s.config.push {
        return false;
    }
    let _one = s.parking.busy.lock().await;
    let listener_pid = s.listener_pid.load(Ordering::Acquire);
    let (generation, free) = {
        let mut st = s.parking.state.lock().unwrap();
        if st.open {
            return st.owner == by;
        }
        if listener_pid == 0 {
            return false;
        }
        let free = s.lifecycle.try_reserve(offered(s), s.config.concurrency);
        if free == 0 {
            return false;
        }
        // Open before the row exists: a notification can only follow the row's commit, and
        // must find the advertisement open.
        st.generation += 1;
        st.open = true;
        st.advertised = free;
        st.reserved = free;
        st.started.clear();
        st.owner = by;
        (st.generation, free)
    };
    let ttl = (s.config.poll_interval * TTL_POLLS).max(MIN_TTL);
    let advert = Advert {
        kinds: &s.kinds,
        free,
        lease: s.config.lease,
        channel: &s.push_channel,
        generation,
        listener_pid,
        ttl,
    };
    if let Err(e) = s.jobs.advertise(&s.actor, &advert).await {
        // It may have committed: the withdrawal settles it either way.
        tracing::warn!(error = %e, "could not advertise free slots; claiming meanwhile");
    }
    true
}

/// Slots an advertisement offers: half a batch (at most half the process's slots), so the
/// other claim loops keep room to claim queued jobs without a withdrawal.
fn offered(s: &Shared) -> usize {
    (s.config.fetch_batch.min(s.config.concurrency) / 2).max(1)
}

/// Adds the slots freed since the advertisement went out to it (up to what an advertisement
/// offers), so jobs enqueued one after another keep being pushed without a withdrawal between.
pub(super) async fn top_up(s: &Shared) {
    let _one = s.parking.busy.lock().await;
    let (generation, more) = {
        let mut st = s.parking.state.lock().unwrap();
        // Topped up at every freed slot: a top-up only inserts slot rows, which no push
        // waits for or skips (migration 14). Once half was taken, as when the slots were a
        // count in the advertisement's row, the pushes of jobs enqueued one after another
        // ran the slots out before the freed ones came back: one in ten was queued.
        if !st.open || st.reserved >= offered(s) {
            return;
        }
        let want = offered(s).saturating_sub(st.reserved);
        let more = s.lifecycle.try_reserve(want, s.config.concurrency);
        if more == 0 {
            return;
        }
        // Offered here first, as when advertising: a push can only follow the row's update.
        st.advertised += more;
        st.reserved += more;
        (st.generation, more)
    };
    match s.jobs.offer_more(&s.actor, generation, more).await {
        Ok(true) => {}
        // Not ours to grow (it did not commit when advertised): take the slots back.
        Ok(false) => {
            {
                let mut st = s.parking.state.lock().unwrap();
                st.advertised -= more;
                st.reserved -= more;
            }
            s.lifecycle.settle(more, 0);
        }
        // It may have committed: the withdrawal settles it either way.
        Err(e) => tracing::warn!(error = %e, "could not offer freed slots"),
    }
}

/// Starts a job pushed to this process, if its advertisement is open and it was not started
/// yet; otherwise the withdrawal started (or starts) it.
pub(super) fn accept(s: &Arc<Shared>, completer: &Completer, job: PushedJob) {
    #[cfg(feature = "test-aids")]
    if s.config.drop_push_notices {
        return;
    }
    {
        let mut st = s.parking.state.lock().unwrap();
        if !st.open
            || job.generation != st.generation
            || st.reserved == 0
            || st.started.contains(&job.id)
        {
            tracing::debug!(
                job_id = job.id,
                "push notification after its advertisement was withdrawn"
            );
            return;
        }
        st.reserved -= 1;
        st.started.push(job.id);
        s.lifecycle.settle(1, 1);
    }
    let id = job.id;
    runner::start(s, completer, vec![job.into_claimed()]);
    s.signals.emit(Signal::Pushed(id));
}

/// Withdraws the open advertisement: afterwards no enqueue pushes here, every job pushed under
/// it has started, and its untaken slots are free. If PostgreSQL cannot be reached the
/// advertisement stays out (it lapses by itself) and this is tried again at the next wake;
/// while draining it is given up instead, and a pushed job not yet started is left to its
/// lease and a rescuer.
pub(super) async fn withdraw(s: &Arc<Shared>, completer: &Completer) {
    let _one = s.parking.busy.lock().await;
    let generation = {
        let st = s.parking.state.lock().unwrap();
        if !st.open {
            return;
        }
        st.generation
    };
    let free = match s.jobs.withdraw(&s.actor).await {
        Ok(free) => free,
        Err(e) if s.lifecycle.mode() == Mode::Normal => {
            tracing::warn!(error = %e, "could not withdraw the advertisement; trying again at the next wake");
            return;
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not withdraw the advertisement while draining: jobs pushed and not started are left to the rescuer");
            close(s);
            return;
        }
    };
    let (taken, started) = {
        let st = s.parking.state.lock().unwrap();
        // No row: the advertisement never committed, so nothing was taken.
        let free = free.unwrap_or(st.advertised).min(st.advertised);
        (st.advertised - free, st.started.clone())
    };
    if taken > started.len() {
        match s.jobs.pushed_to(&s.actor, generation, &started).await {
            Ok(jobs) => {
                let mut adopted = Vec::new();
                {
                    let mut st = s.parking.state.lock().unwrap();
                    for job in jobs {
                        // Its notification may have come while we looked.
                        if st.started.contains(&job.id) || st.reserved == 0 {
                            continue;
                        }
                        st.reserved -= 1;
                        st.started.push(job.id);
                        s.lifecycle.settle(1, 1);
                        adopted.push(job);
                    }
                }
                if !adopted.is_empty() {
                    tracing::info!(
                        jobs = adopted.len(),
                        "started pushed jobs whose notification did not arrive"
                    );
                }
                let ids: Vec<i64> = adopted.iter().map(|j| j.id).collect();
                runner::start(s, completer, adopted);
                for id in ids {
                    s.signals.emit(Signal::Adopted(id));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not look for pushed jobs whose notification did not arrive: they are left to the rescuer");
            }
        }
    }
    close(s);
}

/// Ends the open advertisement: later notifications of it are ignored, its untaken slots
/// are free again.
fn close(s: &Shared) {
    let rest = {
        let mut st = s.parking.state.lock().unwrap();
        st.open = false;
        std::mem::take(&mut st.reserved)
    };
    s.lifecycle.settle(rest, 0);
}
