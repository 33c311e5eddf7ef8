//! Writes worker transitions (checkpoints, completions, retries, releases) in batches.
//!
//! Runners hand their transition over and wait for the verdict. While one batch is being
//! written the next ones queue up, so under load many jobs share one statement and one commit
//! (group commit). Under light load a batch that is still small waits a moment for more
//! (`worker.completion_wait_ms`, ADR 0023): one completion per job, each committing beside the
//! next enqueue, cost a single enqueue's pickup about a quarter of its time.

use std::collections::{HashMap, HashSet};
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

/// A batch this large is written at once: under load the writes themselves gather the next
/// batch, and waiting would only hold the jobs' slots (ADR 0023).
pub const GATHERED: usize = 32;

type Request = (Transition, oneshot::Sender<Verdict>);

/// What became of one submitted transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Applied,
    /// The fencing token moved on: the job was rescued or cancelled meanwhile.
    Stale,
    /// PostgreSQL refused the statement (not a connection problem): waiting would not help.
    /// The text is the server's, for the log; `code` its SQLSTATE.
    Refused {
        code: Option<String>,
        error: String,
    },
    /// PostgreSQL stayed unreachable for the outage tolerance, or the drain gave up: the job
    /// is left to its lease and a rescuer.
    Abandoned,
}

impl Verdict {
    pub fn applied(&self) -> bool {
        *self == Verdict::Applied
    }
}

#[derive(Clone)]
pub struct Completer {
    tx: mpsc::Sender<Request>,
}

impl Completer {
    /// Spawns the writer on `tasks`. A batch that cannot be written because PostgreSQL is
    /// unreachable is retried for `give_up` (the worker's outage tolerance), or until `abandon`
    /// fires (the drain gave up on running stages): then the jobs are left for a rescuer. A
    /// statement PostgreSQL refuses is not retried. A batch smaller than [`GATHERED`] waits up
    /// to `gather` for more before it is written.
    pub fn spawn(
        tasks: &TaskTracker,
        store: JobStore,
        actor: Actor,
        metrics: Arc<Metrics>,
        give_up: Duration,
        gather: Duration,
        abandon: CancellationToken,
    ) -> Self {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        tasks.spawn(run(store, actor, metrics, give_up, gather, abandon, rx));
        Completer { tx }
    }

    /// Writes `t` and says what became of it.
    pub async fn submit(&self, t: Transition) -> Verdict {
        let (done, verdict) = oneshot::channel();
        if self.tx.send((t, done)).await.is_err() {
            return Verdict::Abandoned;
        }
        verdict.await.unwrap_or(Verdict::Abandoned)
    }
}

/// Between attempts to write a batch through an outage.
const WRITE_BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));

/// What a batch's write came to: the job ids applied, refused (with why) and abandoned; the
/// rest were stale.
#[derive(Default)]
struct Written {
    applied: HashSet<i64>,
    refused: HashMap<i64, (Option<String>, String)>,
    abandoned: HashSet<i64>,
}

/// Writes one batch, retrying through connection errors. A refused batch is written again a
/// transition at a time, so one bad transition fails alone.
async fn write(
    store: &JobStore,
    actor: &Actor,
    mut pending: Vec<Transition>,
    give_up: Duration,
    abandon: &CancellationToken,
) -> Written {
    let mut out = Written::default();
    let started = tokio::time::Instant::now();
    let mut pauses = WRITE_BACKOFF.delays();
    let mut uncertain = false;
    loop {
        if uncertain {
            // The previous attempt may have committed before the connection broke.
            match store.already_applied(&pending).await {
                Ok(done) => {
                    out.applied.extend(done.iter().copied());
                    pending.retain(|t| !done.contains(&t.job_id));
                    uncertain = false;
                }
                Err(e) => tracing::warn!(error = %e, "checking a failed write; retrying"),
            }
        }
        if !uncertain {
            if pending.is_empty() {
                return out;
            }
            match store.apply(actor, &pending).await {
                Ok(ids) => {
                    out.applied.extend(ids);
                    return out;
                }
                Err(e) => match e.refusal() {
                    Some(why) if pending.len() == 1 => {
                        out.refused.insert(pending[0].job_id, why);
                        return out;
                    }
                    Some(_) => {
                        // Refused statements commit nothing: split the batch and write each
                        // on its own (a connection lost meanwhile is handled per piece).
                        for t in std::mem::take(&mut pending) {
                            let one = Box::pin(write(
                                store,
                                actor,
                                vec![t],
                                give_up.saturating_sub(started.elapsed()),
                                abandon,
                            ))
                            .await;
                            out.applied.extend(one.applied);
                            out.refused.extend(one.refused);
                            out.abandoned.extend(one.abandoned);
                        }
                        return out;
                    }
                    None => {
                        tracing::warn!(error = %e, batch = pending.len(), "PostgreSQL unreachable writing transitions; retrying");
                        uncertain = true;
                    }
                },
            }
        }
        if started.elapsed() >= give_up || abandon.is_cancelled() {
            tracing::error!(
                batch = pending.len(),
                "giving up on transitions (PostgreSQL unreachable); their jobs will be rescued"
            );
            out.abandoned.extend(pending.iter().map(|t| t.job_id));
            return out;
        }
        tokio::select! {
            _ = tokio::time::sleep(pauses.next().expect("endless")) => {}
            _ = abandon.cancelled() => {}
        }
    }
}

/// Adds what arrives within `gather` to a batch smaller than [`GATHERED`], until it is that
/// large; at once when the drain gives up on pending writes.
async fn gather_more(
    rx: &mut mpsc::Receiver<Request>,
    batch: &mut Vec<Request>,
    gather: Duration,
    abandon: &CancellationToken,
) {
    if gather.is_zero() || batch.len() >= GATHERED {
        return;
    }
    let until = tokio::time::Instant::now() + gather;
    while batch.len() < GATHERED {
        tokio::select! {
            got = rx.recv_many(batch, MAX_BATCH - batch.len()) => if got == 0 { return },
            _ = tokio::time::sleep_until(until) => return,
            _ = abandon.cancelled() => return,
        }
    }
}

async fn run(
    store: JobStore,
    actor: Actor,
    metrics: Arc<Metrics>,
    give_up: Duration,
    gather: Duration,
    abandon: CancellationToken,
    mut rx: mpsc::Receiver<Request>,
) {
    let mut batch: Vec<Request> = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        gather_more(&mut rx, &mut batch, gather, &abandon).await;
        // Transitions are moved into the write, not cloned; (job, token, event) stay for
        // replies.
        let (transitions, replies): (Vec<Transition>, Vec<_>) = batch.drain(..).unzip();
        let keys: Vec<(i64, i64, &'static str)> = transitions
            .iter()
            .map(|t| (t.job_id, t.fencing_token, t.event.name()))
            .collect();
        let mut written = write(&store, &actor, transitions, give_up, &abandon).await;
        for ((job_id, fencing_token, event), done) in keys.into_iter().zip(replies) {
            let verdict = if written.applied.contains(&job_id) {
                Verdict::Applied
            } else if let Some((code, error)) = written.refused.remove(&job_id) {
                Metrics::inc(&metrics.transitions_refused, 1);
                tracing::error!(
                    job_id,
                    event,
                    code = code.as_deref().unwrap_or(""),
                    %error,
                    "PostgreSQL refused the transition"
                );
                Verdict::Refused { code, error }
            } else if written.abandoned.contains(&job_id) {
                Verdict::Abandoned
            } else {
                Metrics::inc(&metrics.stale_writes_rejected, 1);
                tracing::warn!(
                    job_id,
                    fencing_token,
                    "write rejected: the job's fencing token has moved on"
                );
                Verdict::Stale
            };
            let _ = done.send(verdict);
        }
    }
}
