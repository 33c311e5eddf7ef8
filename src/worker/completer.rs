//! Writes worker transitions (checkpoints, completions, retries, releases) in batches.
//!
//! Runners hand their transition over and wait for the verdict. While one batch is being
//! written the next ones queue up, so under load many jobs share one statement and one commit
//! (group commit) without any added delay when idle.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::queue::{Actor, JobStore, Transition};
use crate::retry::Backoff;

/// Largest batch written in one statement.
pub const MAX_BATCH: usize = 1000;

type Request = (Transition, oneshot::Sender<bool>);

#[derive(Clone)]
pub struct Completer {
    tx: mpsc::Sender<Request>,
}

impl Completer {
    /// Spawns the writer on `tasks`. A batch that cannot be written (PostgreSQL unreachable)
    /// is retried for `give_up` (the worker's outage tolerance), or until `abandon` fires (the
    /// drain gave up on running stages): then the jobs are left for a rescuer.
    pub fn spawn(
        tasks: &TaskTracker,
        store: JobStore,
        actor: Actor,
        metrics: Arc<Metrics>,
        give_up: Duration,
        abandon: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        tasks.spawn(run(store, actor, metrics, give_up, abandon, rx));
        Completer { tx }
    }

    /// Writes `t`; true when it was applied, false when the fencing token was stale (the job was
    /// rescued or cancelled meanwhile) or PostgreSQL stayed unreachable.
    pub async fn submit(&self, t: Transition) -> bool {
        let (done, verdict) = oneshot::channel();
        if self.tx.send((t, done)).await.is_err() {
            return false;
        }
        verdict.await.unwrap_or(false)
    }
}

/// Between attempts to write a batch through an outage.
const WRITE_BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));

/// Writes one batch, retrying through connection errors. Returns the job ids applied.
async fn write(
    store: &JobStore,
    actor: &Actor,
    mut pending: Vec<Transition>,
    give_up: Duration,
    abandon: &CancellationToken,
) -> HashSet<i64> {
    let mut applied = HashSet::new();
    let started = tokio::time::Instant::now();
    let mut pauses = WRITE_BACKOFF.delays();
    let mut uncertain = false;
    loop {
        if uncertain {
            // The previous attempt may have committed before the connection broke.
            match store.already_applied(&pending).await {
                Ok(done) => {
                    applied.extend(done.iter().copied());
                    pending.retain(|t| !done.contains(&t.job_id));
                    uncertain = false;
                }
                Err(e) => tracing::warn!(error = %e, "checking a failed write; retrying"),
            }
        }
        if !uncertain {
            if pending.is_empty() {
                return applied;
            }
            match store.apply(actor, &pending).await {
                Ok(ids) => {
                    applied.extend(ids);
                    return applied;
                }
                Err(e) => {
                    tracing::warn!(error = %e, batch = pending.len(), "writing transitions failed; retrying");
                    uncertain = true;
                }
            }
        }
        if started.elapsed() >= give_up || abandon.is_cancelled() {
            tracing::error!(
                batch = pending.len(),
                "giving up on transitions; their jobs will be rescued"
            );
            return applied;
        }
        tokio::select! {
            _ = tokio::time::sleep(pauses.next().expect("endless")) => {}
            _ = abandon.cancelled() => {}
        }
    }
}

async fn run(
    store: JobStore,
    actor: Actor,
    metrics: Arc<Metrics>,
    give_up: Duration,
    abandon: CancellationToken,
    mut rx: mpsc::Receiver<Request>,
) {
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // Transitions are moved into the write, not cloned; (job, token) pairs stay for replies.
        let (transitions, replies): (Vec<Transition>, Vec<_>) = batch.drain(..).unzip();
        let keys: Vec<(i64, i64)> = transitions
            .iter()
            .map(|t| (t.job_id, t.fencing_token))
            .collect();
        let applied = write(&store, &actor, transitions, give_up, &abandon).await;
        for ((job_id, fencing_token), done) in keys.into_iter().zip(replies) {
            let ok = applied.contains(&job_id);
            if !ok {
                Metrics::inc(&metrics.stale_writes_rejected, 1);
                tracing::warn!(
                    job_id,
                    fencing_token,
                    "write rejected: the job's fencing token has moved on"
                );
            }
            let _ = done.send(ok);
        }
    }
}
