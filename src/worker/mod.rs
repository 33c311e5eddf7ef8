//! The worker runtime: claims jobs, runs their stages, keeps their leases, and follows the
//! process's mode. One `CancellationToken` (the shutdown signal) is passed down explicitly.

mod completer;
mod runner;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use completer::Completer;

use crate::configuration::Settings;
use crate::fleet::{self, Command, WorkerInfo};
use crate::lifecycle::{Lifecycle, Mode};
use crate::maintenance::{Cleaner, CleanerConfig, Rescuer, RescuerConfig};
use crate::metrics::Metrics;
use crate::pipeline::Registry;
use crate::queue::{Actor, Backoff, CANCEL_CHANNEL, CONTROL_CHANNEL, JOBS_CHANNEL, JobStore};

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
    pub lease: Duration,
    pub heartbeat: Duration,
    pub backoff: Backoff,
    pub rescuer: RescuerConfig,
    pub cleaner: CleanerConfig,
}

impl WorkerConfig {
    pub fn from_settings(s: &Settings) -> Self {
        WorkerConfig {
            concurrency: s.worker.concurrency,
            fetch_batch: s.worker.fetch_batch,
            fetchers: s.worker.fetchers,
            poll_interval: Duration::from_millis(s.worker.poll_interval_ms),
            lease: s.worker.lease(),
            heartbeat: Duration::from_millis(s.worker.heartbeat_ms),
            backoff: Backoff::from_settings(&s.retry),
            rescuer: RescuerConfig {
                interval: Duration::from_millis(s.maintenance.rescue_interval_ms),
                ..RescuerConfig::default()
            },
            cleaner: CleanerConfig::from_settings(&s.maintenance),
        }
    }
}

pub(crate) struct Shared {
    pub(crate) actor: Actor,
    info: WorkerInfo,
    pub(crate) store: JobStore,
    /// Lease renewals and worker heartbeats use connections of their own, so a pool busy with
    /// claims and completions cannot delay them past the lease (a test caught exactly that).
    control: JobStore,
    pub(crate) registry: Arc<Registry>,
    pub(crate) lifecycle: Lifecycle,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) config: WorkerConfig,
    kinds: Vec<String>,
    pub(crate) held: Mutex<HashMap<i64, Held>>,
    wake: Notify,
    pub(crate) slot_freed: Notify,
    fleet_wake: Notify,
}

pub struct Worker {
    shared: Arc<Shared>,
}

impl Worker {
    pub fn new(
        settings: &Settings,
        pool: PgPool,
        registry: Arc<Registry>,
        lifecycle: Lifecycle,
        metrics: Arc<Metrics>,
        info: WorkerInfo,
    ) -> Self {
        let config = WorkerConfig::from_settings(settings);
        let kinds = registry.names().map(str::to_owned).collect();
        let control_pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(config.lease / 3)
            .connect_lazy_with((*pool.connect_options()).clone());
        Worker {
            shared: Arc::new(Shared {
                actor: Actor {
                    id: info.id.clone(),
                    version: info.version.clone(),
                },
                info,
                store: JobStore::new(pool, settings.retry.default_max_attempts),
                control: JobStore::new(control_pool, settings.retry.default_max_attempts),
                registry,
                lifecycle,
                metrics,
                config,
                kinds,
                held: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                slot_freed: Notify::new(),
                fleet_wake: Notify::new(),
            }),
        }
    }

    pub fn id(&self) -> &str {
        &self.shared.actor.id
    }

    pub fn version(&self) -> &str {
        &self.shared.actor.version
    }

    /// Runs until `shutdown` fires, then drains (finishing or releasing every in-flight job),
    /// records the process as stopped, and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let s = self.shared;
        tracing::info!(worker_id = %s.actor.id, version = %s.actor.version, concurrency = s.config.concurrency, "worker starting");
        let background = CancellationToken::new();
        let completer = Completer::spawn(
            s.store.clone(),
            s.actor.clone(),
            s.metrics.clone(),
            s.config.lease,
        );
        let mut tasks = JoinSet::new();
        tasks.spawn(listen(s.clone(), background.clone()));
        tasks.spawn(keep_leases(s.clone(), background.clone()));
        tasks.spawn(fleet_heartbeat(s.clone(), background.clone()));
        tasks.spawn(
            Rescuer::new(
                s.store.clone(),
                s.actor.clone(),
                s.metrics.clone(),
                s.config.rescuer.clone(),
            )
            .run(background.clone()),
        );
        tasks
            .spawn(Cleaner::new(s.store.clone(), s.config.cleaner.clone()).run(background.clone()));
        for _ in 0..s.config.fetchers {
            tasks.spawn(fetch(s.clone(), completer.clone(), background.clone()));
        }

        shutdown.cancelled().await;
        tracing::info!("stop requested: draining");
        s.lifecycle.drain();
        s.lifecycle.safe_to_stop().await;
        background.cancel();
        while tasks.join_next().await.is_some() {}
        if let Err(e) =
            fleet::mark_stopped(s.control.pool(), &s.actor.id, s.lifecycle.status()).await
        {
            tracing::warn!(error = %e, "could not record the worker as stopped");
        }
        tracing::info!(worker_id = %s.actor.id, "worker stopped");
    }
}

/// Claims jobs while Normal and slots are free; waits on NOTIFY, a freed slot, or the poll.
async fn fetch(s: Arc<Shared>, completer: Completer, stop: CancellationToken) {
    let mut status = s.lifecycle.subscribe();
    let batch = s.config.fetch_batch.min(s.config.concurrency);
    // With a backlog, refill in chunks rather than one claim per finished job.
    let refill = (batch / 4).max(1);
    let mut backlog = false;
    loop {
        if stop.is_cancelled() {
            return;
        }
        if s.lifecycle.mode() != Mode::Normal {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = status.wait_for(|st| st.mode == Mode::Normal) => continue,
            }
        }
        let free = s
            .config
            .concurrency
            .saturating_sub(s.lifecycle.status().in_flight);
        let reserved = s.lifecycle.try_reserve(free.min(batch));
        if reserved > 0 {
            match s
                .store
                .claim(&s.actor, &s.kinds, reserved, s.config.lease)
                .await
            {
                Ok(jobs) => {
                    s.lifecycle.release(reserved - jobs.len());
                    backlog = jobs.len() == reserved;
                    Metrics::inc(&s.metrics.jobs_claimed, jobs.len() as u64);
                    for job in jobs {
                        tokio::spawn(runner::run_job(s.clone(), completer.clone(), job));
                    }
                    if backlog {
                        continue;
                    }
                }
                Err(e) => {
                    s.lifecycle.release(reserved);
                    tracing::warn!(error = %e, "claim failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            }
        }
        let threshold = if backlog { refill } else { 1 };
        let poll = tokio::time::sleep(s.config.poll_interval);
        tokio::pin!(poll);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = s.wake.notified() => break,
                _ = &mut poll => break,
                _ = s.slot_freed.notified() => {
                    let free = s.config.concurrency.saturating_sub(s.lifecycle.status().in_flight);
                    if free >= threshold { break; }
                }
                _ = status.wait_for(|st| st.mode != Mode::Normal) => break,
            }
        }
    }
}

/// LISTEN for new jobs, cancellations and fleet commands. PgListener reconnects by itself;
/// after a reconnect everyone is woken, since notifications may have been missed.
async fn listen(s: Arc<Shared>, stop: CancellationToken) {
    let mut listener = loop {
        let attempt = async {
            let mut l = PgListener::connect_with(s.store.pool()).await?;
            l.listen_all([JOBS_CHANNEL, CANCEL_CHANNEL, CONTROL_CHANNEL])
                .await?;
            Ok::<_, sqlx::Error>(l)
        };
        match attempt.await {
            Ok(l) => break l,
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN failed; polling meanwhile");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            m = listener.try_recv() => m,
        };
        match msg {
            Ok(Some(n)) => match n.channel() {
                JOBS_CHANNEL => s.wake.notify_one(),
                CANCEL_CHANNEL => {
                    if let Ok(id) = n.payload().parse::<i64>()
                        && let Some(h) = s.held.lock().unwrap().get(&id)
                    {
                        tracing::info!(job_id = id, "job cancelled: stopping its stage");
                        h.cancel(CancelReason::JobCancelled);
                    }
                }
                _ => s.fleet_wake.notify_one(),
            },
            Ok(None) => {
                tracing::warn!("LISTEN connection lost; reconnecting");
                s.wake.notify_one();
                s.fleet_wake.notify_one();
            }
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN failed; retrying");
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
}

/// Renews the leases of held jobs every lease/3 — also while draining, so a slow final stage is
/// never rescued from under a live worker. A job whose lease was lost (or cannot be confirmed
/// before it would expire) has its stage cancelled: someone else may own it now.
async fn keep_leases(s: Arc<Shared>, stop: CancellationToken) {
    let every = s.config.lease / 3;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
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
            .store
            .renew_leases(&s.actor.id, &held, s.config.lease)
            .await
        {
            Ok(kept) => {
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
                tracing::warn!(error = %e, "lease renewal failed");
                let map = s.held.lock().unwrap();
                for (id, h) in map.iter() {
                    if h.renewed_at.elapsed() + every >= s.config.lease {
                        tracing::warn!(
                            job_id = id,
                            "lease about to expire unrenewed: stopping the stage"
                        );
                        Metrics::inc(&s.metrics.leases_lost, 1);
                        h.cancel(CancelReason::LeaseLost);
                    }
                }
            }
        }
    }
}

/// Keeps this process's `workers` row current and applies fleet commands addressed to it.
async fn fleet_heartbeat(s: Arc<Shared>, stop: CancellationToken) {
    let mut status = s.lifecycle.subscribe();
    let mut applied_seq: Option<i64> = None;
    loop {
        match fleet::heartbeat(s.control.pool(), &s.info, s.lifecycle.status()).await {
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
            Err(e) => tracing::warn!(error = %e, "worker heartbeat failed"),
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
