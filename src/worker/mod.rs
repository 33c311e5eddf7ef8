//! The worker runtime: claims jobs, runs their stages, keeps their leases, and follows the
//! process's mode. One drain signal comes in; every task the worker starts is tracked and
//! awaited before `run` returns.
//!
//! - `fetcher.rs`: claim loops (slots reserved in `Lifecycle` first).
//! - `runner.rs`: one job, stage by stage; `completer.rs`: batched, fenced writes (ADR 0002).
//! - `leases.rs`: lease renewals (control pool), `heartbeat.rs`: the `workers` row and fleet
//!   commands (control pool), `listener.rs`: LISTEN/NOTIFY wake-ups.

mod completer;
mod fetcher;
mod heartbeat;
mod leases;
mod listener;
mod push;
mod runner;
mod signals;

use std::collections::HashMap;
use std::sync::atomic::AtomicI32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use completer::Completer;
pub use signals::{Signal, Signals};

use crate::configuration::Settings;
use crate::fleet::{FleetStore, WorkerInfo};
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::pipeline::Registry;
use crate::queue::{Actor, Backoff, JobStore};

/// Why a running stage was cancelled; decides what the runner writes afterwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CancelReason {
    /// Drain timeout or a second stop signal: release the job at its last checkpoint.
    ForceRelease,
    /// Someone else owns the job now (rescued, or cancelled by an operator): write nothing.
    LeaseLost,
    JobCancelled,
}

pub(crate) struct Held {
    token: i64,
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<CancelReason>>>,
    renewed_at: Instant,
}

impl Held {
    fn cancel(&self, reason: CancelReason) {
        self.reason.lock().unwrap().get_or_insert(reason);
        self.cancel.cancel();
    }
}

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub concurrency: usize,
    pub fetch_batch: usize,
    pub fetchers: usize,
    pub poll_interval: Duration,
    /// Push pickup (ADR 0020).
    pub push: bool,
    /// Test aid: notifications of pushed jobs are ignored (`testing.drop_push_notices`).
    #[cfg(feature = "test-aids")]
    pub drop_push_notices: bool,
    pub lease: Duration,
    pub heartbeat: Duration,
    /// How long a job is held while PostgreSQL is unreachable before it is given up (and left
    /// for a rescuer). Outages shorter than this cost no job and no attempt.
    pub outage_tolerance: Duration,
    /// How long a small batch of transitions waits for more before it is written (ADR 0023).
    pub completion_wait: Duration,
    pub backoff: Backoff,
}

impl WorkerConfig {
    pub fn from_settings(s: &Settings) -> Self {
        WorkerConfig {
            concurrency: s.worker.concurrency,
            fetch_batch: s.worker.fetch_batch,
            fetchers: s.worker.fetchers,
            poll_interval: Duration::from_millis(s.worker.poll_interval_ms),
            push: s.worker.push,
            #[cfg(feature = "test-aids")]
            drop_push_notices: s.testing.drop_push_notices,
            lease: s.worker.lease(),
            heartbeat: Duration::from_millis(s.worker.heartbeat_ms),
            outage_tolerance: Duration::from_millis(s.worker.outage_tolerance_ms),
            completion_wait: Duration::from_millis(s.worker.completion_wait_ms),
            backoff: crate::queue::job_backoff(&s.retry),
        }
    }
}

pub(crate) struct Shared {
    pub(crate) actor: Actor,
    info: WorkerInfo,
    pub(crate) jobs: JobStore,
    fleet: FleetStore,
    pub(crate) registry: Arc<Registry>,
    pub(crate) lifecycle: Lifecycle,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) config: WorkerConfig,
    kinds: Vec<String>,
    pub(crate) held: Mutex<HashMap<i64, Held>>,
    wake: Notify,
    pub(crate) slot_freed: Notify,
    fleet_wake: Notify,
    /// Push pickup: the advertisement of free slots, and the listening connection's server
    /// process (0 while not connected: nothing is advertised then).
    pub(crate) parking: push::Parking,
    listener_pid: AtomicI32,
    push_channel: String,
    /// Every task the worker starts, runners included.
    pub(crate) tasks: TaskTracker,
    pub(crate) signals: Signals,
}

pub struct Worker {
    shared: Arc<Shared>,
}

/// What a worker is built from.
pub struct WorkerParts {
    pub jobs: JobStore,
    pub fleet: FleetStore,
    pub registry: Arc<Registry>,
    pub lifecycle: Lifecycle,
    pub metrics: Arc<Metrics>,
    pub info: WorkerInfo,
    pub signals: Signals,
}

impl Worker {
    pub fn new(settings: &Settings, parts: WorkerParts) -> Self {
        let WorkerParts {
            jobs,
            fleet,
            registry,
            lifecycle,
            metrics,
            info,
            signals,
        } = parts;
        let config = WorkerConfig::from_settings(settings);
        let kinds = registry.names().map(str::to_owned).collect();
        let push_channel = crate::queue::push_channel(&info.id);
        Worker {
            shared: Arc::new(Shared {
                actor: info.actor(),
                info,
                jobs,
                fleet,
                registry,
                lifecycle,
                metrics,
                config,
                kinds,
                held: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                slot_freed: Notify::new(),
                fleet_wake: Notify::new(),
                parking: push::Parking::default(),
                listener_pid: AtomicI32::new(0),
                push_channel,
                tasks: TaskTracker::new(),
                signals,
            }),
        }
    }

    /// Runs until `drain` fires, then drains (finishing or releasing every in-flight job),
    /// waits for every task it started, records the process as stopped, and returns.
    pub async fn run(self, drain: CancellationToken) {
        let s = self.shared;
        tracing::info!(worker_id = %s.actor.id, version = %s.actor.version, concurrency = s.config.concurrency, "worker starting");
        let background = CancellationToken::new();
        // Pending writes are abandoned only when the drain gives up on running stages too
        // (drain timeout or a second signal) and PostgreSQL is still unreachable.
        let abandon = CancellationToken::new();
        let completer = Completer::spawn(
            &s.tasks,
            s.jobs.clone(),
            s.actor.clone(),
            s.metrics.clone(),
            s.config.outage_tolerance,
            s.config.completion_wait,
            abandon.clone(),
        );
        s.tasks.spawn(listener::listen(
            s.clone(),
            completer.clone(),
            background.clone(),
        ));
        s.tasks
            .spawn(leases::keep_leases(s.clone(), background.clone()));
        s.tasks
            .spawn(heartbeat::fleet_heartbeat(s.clone(), background.clone()));
        s.tasks
            .spawn(s.lifecycle.clone().drain_timer(background.clone()));
        for n in 0..s.config.fetchers {
            s.tasks.spawn(fetcher::fetch(
                n,
                s.clone(),
                completer.clone(),
                background.clone(),
            ));
        }

        drain.cancelled().await;
        tracing::info!("stop requested: draining");
        s.lifecycle.drain();
        {
            let mut force = s.lifecycle.force_release_signal();
            let abandon = abandon.clone();
            let lifecycle = s.lifecycle.clone();
            s.tasks.spawn(async move {
                tokio::select! {
                    _ = force.changed() => abandon.cancel(),
                    _ = lifecycle.safe_to_stop() => {}
                }
            });
        }
        s.lifecycle.safe_to_stop().await;
        background.cancel();
        drop(completer);
        s.tasks.close();
        s.tasks.wait().await;
        if let Err(e) = s
            .fleet
            .mark_stopped(&s.actor.id, s.lifecycle.status())
            .await
        {
            tracing::warn!(error = %e, "could not record the worker as stopped");
        }
        tracing::info!(worker_id = %s.actor.id, "worker stopped");
    }
}
