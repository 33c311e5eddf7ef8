//! The per-process worker mode: Normal → PreparingForStop → SafeToStop (SPEC §4).
//!
//! Mode and slot counts live under one mutex so "nothing in flight" and the move to
//! SafeToStop can never disagree. Claims reserve their slots here first: a claim racing a drain
//! either reserves before it (and the drain waits for it to settle) or gets nothing. Reserved
//! slots are not shown as in flight: the status says how many jobs are running, never more.
//!
//! A job whose stages are done leaves its slot while its outcome is written (ADR 0026): it is
//! counted as `writing`, at most `worker.concurrency` of them, and the drain waits for those
//! too, so SafeToStop still means every job this process took has its outcome written.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    Normal,
    PreparingForStop,
    SafeToStop,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Normal => "Normal",
            Mode::PreparingForStop => "PreparingForStop",
            Mode::SafeToStop => "SafeToStop",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        [Mode::Normal, Mode::PreparingForStop, Mode::SafeToStop]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Status {
    pub mode: Mode,
    /// Jobs running stages here (at most `worker.concurrency`).
    pub in_flight: usize,
    /// Jobs whose stages are done here, their outcome being written (ADR 0026).
    pub writing: usize,
}

#[derive(Clone)]
pub struct Lifecycle {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    status: watch::Sender<Status>,
    /// Bumped when running stages must be cancelled and their jobs released (drain timeout,
    /// or a second stop signal). Runners watch it for changes.
    force: watch::Sender<u64>,
    /// Told when the in-flight count changes (the heartbeat's debounced write follows it).
    /// Subscribers of `status` are woken by mode changes only: a change of count per finished
    /// job woke every claim loop, the drain timer and the SafeToStop waiters each time.
    in_flight_changed: tokio::sync::Notify,
    drain_timeout: Duration,
}

struct State {
    mode: Mode,
    /// Jobs claimed and running here.
    running: usize,
    /// Slots reserved by claims still on their way to PostgreSQL.
    claiming: usize,
    /// Jobs off their slots whose outcome is being written.
    writing: usize,
    /// Identifies one drain, so a timer left over from a drain that was resumed does nothing.
    epoch: u64,
}

impl Lifecycle {
    pub fn new(drain_timeout: Duration) -> Self {
        let initial = Status {
            mode: Mode::Normal,
            in_flight: 0,
            writing: 0,
        };
        Lifecycle {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    mode: Mode::Normal,
                    running: 0,
                    claiming: 0,
                    writing: 0,
                    epoch: 0,
                }),
                status: watch::channel(initial).0,
                force: watch::channel(0).0,
                in_flight_changed: tokio::sync::Notify::new(),
                drain_timeout,
            }),
        }
    }

    pub fn status(&self) -> Status {
        *self.inner.status.borrow()
    }

    pub fn mode(&self) -> Mode {
        self.status().mode
    }

    /// Wakes on mode changes; the counts it holds are current whenever read, but a change of
    /// count alone wakes nobody (see [`Lifecycle::in_flight_changed`]).
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.inner.status.subscribe()
    }

    /// Resolves after the in-flight count changed (at once if it changed since the last
    /// call). For one waiter: the heartbeat.
    pub async fn in_flight_changed(&self) {
        self.inner.in_flight_changed.notified().await
    }

    /// Changes of this value ask every running stage to stop and release its job.
    pub fn force_release_signal(&self) -> watch::Receiver<u64> {
        self.inner.force.subscribe()
    }

    fn publish(&self, st: &State) -> Status {
        let status = Status {
            mode: st.mode,
            in_flight: st.running,
            writing: st.writing,
        };
        let mut counted = false;
        self.inner.status.send_if_modified(|shown| {
            let mode_changed = shown.mode != status.mode;
            counted = shown.in_flight != status.in_flight;
            *shown = status;
            mode_changed
        });
        if counted {
            self.inner.in_flight_changed.notify_one();
        }
        status
    }

    /// Reserves up to `want` of the slots `cap` leaves free, for jobs about to be claimed;
    /// none unless Normal. The free count is read under the lock that takes the slots: claim
    /// loops reserving at once can never pass `cap` together (reading the count first and
    /// reserving after did, with several loops on a multi-threaded runtime). Every reservation
    /// is settled with [`Lifecycle::settle`].
    pub fn try_reserve(&self, want: usize, cap: usize) -> usize {
        let mut st = self.inner.state.lock().unwrap();
        let n = want.min(cap.saturating_sub(st.running + st.claiming));
        if st.mode != Mode::Normal || n == 0 {
            return 0;
        }
        st.claiming += n;
        n
    }

    /// A claim of `reserved` slots came back with `got` jobs (0 when it failed): those run,
    /// the rest of the slots are free again.
    pub fn settle(&self, reserved: usize, got: usize) {
        let mut st = self.inner.state.lock().unwrap();
        st.claiming = st.claiming.saturating_sub(reserved);
        st.running += got.min(reserved);
        self.settled(&mut st);
    }

    /// Frees `n` slots of running jobs (they finished, failed or were released).
    pub fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let mut st = self.inner.state.lock().unwrap();
        st.running = st.running.saturating_sub(n);
        self.settled(&mut st);
    }

    /// A running job's stages are done and its outcome goes to be written: it leaves its slot
    /// (true) unless `cap` outcomes are being written already, when it keeps the slot until
    /// its outcome is written (false). Each job handed over is ended with
    /// [`Lifecycle::written`], not [`Lifecycle::release`].
    pub fn hand_over(&self, cap: usize) -> bool {
        let mut st = self.inner.state.lock().unwrap();
        if st.running == 0 || st.writing >= cap {
            return false;
        }
        st.running -= 1;
        st.writing += 1;
        self.publish(&st);
        true
    }

    /// The outcome of a job handed over is written (or given up on).
    pub fn written(&self) {
        let mut st = self.inner.state.lock().unwrap();
        st.writing = st.writing.saturating_sub(1);
        self.settled(&mut st);
    }

    fn settled(&self, st: &mut State) {
        if st.mode == Mode::PreparingForStop && st.running + st.claiming + st.writing == 0 {
            st.mode = Mode::SafeToStop;
            tracing::info!("drained: SafeToStop");
        }
        self.publish(st);
    }

    /// Normal → PreparingForStop (or straight to SafeToStop when idle). Idempotent. The drain
    /// timeout is enforced by [`Lifecycle::drain_timer`], which the worker runs.
    pub fn drain(&self) -> Status {
        let mut st = self.inner.state.lock().unwrap();
        if st.mode != Mode::Normal {
            return self.publish(&st);
        }
        st.epoch += 1;
        if st.running + st.claiming + st.writing == 0 {
            st.mode = Mode::SafeToStop;
            tracing::info!("drain requested while idle: SafeToStop");
        } else {
            st.mode = Mode::PreparingForStop;
            tracing::info!(
                in_flight = st.running,
                claiming = st.claiming,
                writing = st.writing,
                "drain requested: PreparingForStop"
            );
        }
        self.publish(&st)
    }

    /// Enforces the drain timeout until `stop`: each drain that is still PreparingForStop
    /// `drain_timeout` after it began has its running stages cancelled (their jobs are
    /// released at their last checkpoint). A drain that was resumed is forgotten.
    pub async fn drain_timer(self, stop: tokio_util::sync::CancellationToken) {
        let mut rx = self.subscribe();
        let mut handled = 0u64;
        loop {
            let draining = {
                let st = self.inner.state.lock().unwrap();
                (st.mode == Mode::PreparingForStop && st.epoch != handled).then_some(st.epoch)
            };
            let Some(epoch) = draining else {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    r = rx.changed() => if r.is_err() { return },
                }
                continue;
            };
            handled = epoch;
            let deadline = tokio::time::Instant::now() + self.inner.drain_timeout;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep_until(deadline) => {
                        let st = self.inner.state.lock().unwrap();
                        if st.epoch == epoch && st.mode == Mode::PreparingForStop {
                            tracing::warn!(
                                in_flight = st.running,
                                "drain timeout: cancelling running stages and releasing their jobs"
                            );
                            self.inner.force.send_modify(|v| *v += 1);
                        }
                        break;
                    }
                    r = rx.changed() => {
                        if r.is_err() {
                            return;
                        }
                        let st = self.inner.state.lock().unwrap();
                        // Resumed, finished, or a new drain: this one's timer is void.
                        if st.epoch != epoch || st.mode != Mode::PreparingForStop {
                            break;
                        }
                    }
                }
            }
        }
    }

    /// Back to Normal from either draining mode. Idempotent.
    pub fn resume(&self) -> Status {
        let mut st = self.inner.state.lock().unwrap();
        if st.mode != Mode::Normal {
            st.epoch += 1;
            st.mode = Mode::Normal;
            tracing::info!("resumed: Normal");
        }
        self.publish(&st)
    }

    /// Cancels running stages now and releases their jobs (a second stop signal).
    pub fn force_release(&self) {
        self.inner.force.send_modify(|v| *v += 1);
    }

    /// Resolves once the process reaches SafeToStop.
    pub async fn safe_to_stop(&self) {
        let mut rx = self.subscribe();
        let _ = rx.wait_for(|s| s.mode == Mode::SafeToStop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_drain_is_immediately_safe_and_resume_returns_to_normal() {
        let l = Lifecycle::new(Duration::from_secs(5));
        assert_eq!(l.drain().mode, Mode::SafeToStop);
        assert_eq!(l.try_reserve(3, 10), 0, "no claims while drained");
        assert_eq!(l.resume().mode, Mode::Normal);
        assert_eq!(l.try_reserve(3, 10), 3);
        assert_eq!(l.try_reserve(9, 10), 7, "only what the cap leaves");
        assert_eq!(l.try_reserve(1, 10), 0);
        assert_eq!(l.status().in_flight, 0, "reserved is not running");
        l.settle(7, 2);
        assert_eq!(l.status().in_flight, 2);
        assert_eq!(l.try_reserve(9, 10), 5, "3 still claiming, 2 running");
    }

    #[test]
    fn reservations_from_many_threads_never_pass_the_cap() {
        let l = Lifecycle::new(Duration::from_secs(5));
        let barrier = std::sync::Barrier::new(8);
        let taken: usize = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        (0..1000).map(|_| l.try_reserve(3, 10)).sum::<usize>()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(taken, 10);
        l.settle(10, 10);
        assert_eq!(l.status().in_flight, 10);
    }

    #[tokio::test]
    async fn drain_waits_for_in_flight_jobs() {
        let l = Lifecycle::new(Duration::from_secs(5));
        l.try_reserve(3, 10);
        assert_eq!(
            l.drain().mode,
            Mode::PreparingForStop,
            "a claim is on its way"
        );
        l.settle(3, 2);
        assert_eq!(l.mode(), Mode::PreparingForStop);
        l.release(1);
        assert_eq!(l.mode(), Mode::PreparingForStop);
        l.release(1);
        assert_eq!(l.mode(), Mode::SafeToStop);
    }

    #[test]
    fn a_job_handed_over_leaves_its_slot_and_the_drain_waits_for_its_outcome() {
        let l = Lifecycle::new(Duration::from_secs(5));
        l.try_reserve(2, 2);
        l.settle(2, 2);
        assert_eq!(l.try_reserve(1, 2), 0, "both slots run jobs");
        assert!(l.hand_over(1), "the first outcome to write");
        assert_eq!(l.status().in_flight, 1);
        assert_eq!(l.status().writing, 1);
        assert!(
            !l.hand_over(1),
            "one outcome is being written already: the cap"
        );
        assert_eq!(l.try_reserve(5, 2), 1, "the slot handed over is free");
        l.settle(1, 0);
        assert_eq!(l.drain().mode, Mode::PreparingForStop);
        l.release(1);
        assert_eq!(l.status().in_flight, 0);
        assert_eq!(
            l.mode(),
            Mode::PreparingForStop,
            "an outcome is still being written"
        );
        l.written();
        assert_eq!(l.mode(), Mode::SafeToStop);
        assert_eq!(l.status().writing, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_timeout_fires_force_release_only_for_the_current_drain() {
        let l = Lifecycle::new(Duration::from_secs(10));
        let stop = tokio_util::sync::CancellationToken::new();
        let timer = tokio::spawn(l.clone().drain_timer(stop.clone()));
        let mut force = l.force_release_signal();
        l.try_reserve(1, 10);
        l.settle(1, 1);
        l.drain();
        tokio::time::sleep(Duration::from_secs(5)).await;
        l.resume();
        l.drain();
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert!(
            !force.has_changed().unwrap(),
            "the resumed drain's timer must not fire"
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(force.has_changed().unwrap());
        assert_eq!(
            *force.borrow_and_update(),
            1,
            "the current drain's timer fired once"
        );
        stop.cancel();
        timer.await.unwrap();
    }
}
