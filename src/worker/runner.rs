//! Runs one claimed job stage by stage, committing a checkpoint after each.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::FutureExt;
use serde_json::Value;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::completer::Verdict;
use super::{CancelReason, Completer, Held, Shared};
use crate::lifecycle::Mode;
use crate::metrics::Metrics;
use crate::pipeline::{StageContext, StageError};
use crate::queue::{ClaimedJob, Transition, TransitionEvent};

/// Starts jobs this process now holds, claimed or pushed (ADR 0020): counted, told to tests
/// as claimed, each run on a task of its own.
pub(crate) fn start(s: &Arc<Shared>, completer: &Completer, jobs: Vec<ClaimedJob>) {
    if jobs.is_empty() {
        return;
    }
    Metrics::inc(&s.metrics.jobs_claimed, jobs.len() as u64);
    s.signals
        .emit(super::Signal::Claimed(jobs.iter().map(|j| j.id).collect()));
    for job in jobs {
        s.metrics.picked_up(&job.kind, job.waited_s.max(0.0));
        s.tasks.spawn(run_job(s.clone(), completer.clone(), job));
    }
}

pub(crate) async fn run_job(s: Arc<Shared>, completer: Completer, job: ClaimedJob) {
    let cancel = CancellationToken::new();
    let reason = Arc::new(Mutex::new(None));
    s.held.lock().unwrap().insert(
        job.id,
        Held {
            token: job.fencing_token,
            cancel: cancel.clone(),
            reason: reason.clone(),
            renewed_at: Instant::now(),
        },
    );
    let slot = Slot {
        s: &s,
        job_id: job.id,
        handed_over: AtomicBool::new(false),
    };
    let span =
        tracing::info_span!("job", job_id = job.id, kind = %job.kind, attempt = job.attempts);
    run_stages(
        &s,
        &completer,
        &job,
        &cancel,
        &reason,
        Instant::now(),
        &slot,
    )
    .instrument(span)
    .await;
}

/// Frees the job's slot however the runner ends, even by unwinding: a leaked slot would keep
/// the process from ever reaching SafeToStop. A job whose stages are done leaves its slot
/// earlier, while its outcome is written ([`Slot::leave`], ADR 0026); it stays held (its lease
/// renewed) and counted as writing until the runner ends.
struct Slot<'a> {
    s: &'a Shared,
    job_id: i64,
    handed_over: AtomicBool,
}

impl Slot<'_> {
    /// The job's stages are done: its slot goes to the next job while the outcome is written,
    /// unless `worker.concurrency` outcomes are being written already (then it keeps it).
    fn leave(&self) {
        if !self.handed_over.load(Ordering::Relaxed)
            && self.s.lifecycle.hand_over(self.s.config.concurrency)
        {
            self.handed_over.store(true, Ordering::Relaxed);
            self.freed();
        }
    }

    fn freed(&self) {
        self.s.slot_freed.notify_one();
        // Offered to pushed jobs too, while the process advertises (ADR 0020).
        self.s.parking.slot_freed();
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Ok(mut held) = self.s.held.lock() {
            held.remove(&self.job_id);
        }
        if self.handed_over.load(Ordering::Relaxed) {
            self.s.lifecycle.written();
        } else {
            self.s.lifecycle.release(1);
            self.freed();
        }
    }
}

async fn run_stages(
    s: &Shared,
    completer: &Completer,
    job: &ClaimedJob,
    cancel: &CancellationToken,
    reason: &Mutex<Option<CancelReason>>,
    claimed: Instant,
    slot: &Slot<'_>,
) {
    let transition = |event, stage: Option<&str>, duration_ms| Transition {
        job_id: job.id,
        fencing_token: job.fencing_token,
        event,
        stage: stage.map(str::to_owned),
        attempt: job.attempts,
        duration_ms,
    };
    // A failed attempt: retried after the backoff, or dead when it was the last.
    let failed = |error: String| {
        if job.attempts >= job.max_attempts {
            TransitionEvent::Dead {
                error: format!("{error} (attempt {} of {})", job.attempts, job.max_attempts),
            }
        } else {
            TransitionEvent::RetryScheduled {
                error,
                delay_ms: s
                    .config
                    .backoff
                    .delay(job.attempts.max(1) as u32)
                    .as_millis() as u64,
            }
        }
    };
    let Some(kind) = s.registry.get(&job.kind).cloned() else {
        // Claims only ask for registered kinds; this is a bug, not bad input.
        let t = transition(
            TransitionEvent::Dead {
                error: format!("unknown job kind {:?}", job.kind),
            },
            None,
            None,
        );
        completer.submit(t).await;
        return;
    };
    let payload = Arc::new(job.payload.clone());
    let kind_name: Arc<str> = Arc::from(kind.name.as_str());
    let worker_id: Arc<str> = Arc::from(s.actor.id.as_str());
    let mut checkpoint = job.checkpoint.clone();
    let mut force = s.lifecycle.force_release_signal();

    loop {
        let Some(idx) = kind.next_stage(&checkpoint) else {
            tracing::error!("job claimed with every stage checkpointed; marking it dead");
            let error = "every stage is checkpointed but the job was not completed".to_string();
            completer
                .submit(transition(TransitionEvent::Dead { error }, None, None))
                .await;
            return;
        };
        let stage = kind.stages[idx].clone();
        let stage_name = stage.name().to_string();

        // Draining: the job goes back to the queue at this checkpoint, attempt not consumed.
        if s.lifecycle.mode() != Mode::Normal {
            let event = TransitionEvent::Released {
                reason: "released at checkpoint: worker draining".into(),
            };
            if completer
                .submit(transition(event, Some(&stage_name), None))
                .await
                .applied()
            {
                Metrics::inc(&s.metrics.jobs_released, 1);
                tracing::info!(stage = %stage_name, "released at checkpoint (draining)");
            }
            return;
        }

        let ctx = StageContext::new(
            job.id,
            kind_name.clone(),
            Arc::from(stage_name.as_str()),
            job.attempts,
            payload.clone(),
            Arc::new(checkpoint.clone()),
            cancel.clone(),
            worker_id.clone(),
            job.fencing_token,
            s.jobs.clone(),
        );
        let started = Instant::now();
        let run = AssertUnwindSafe(stage.run(ctx)).catch_unwind();
        let result: Result<Value, StageError> = tokio::select! {
            r = run => match r {
                Ok(r) => r,
                Err(panic) => Err(StageError::Retryable(format!("stage panicked: {}", panic_message(&panic)))),
            },
            _ = cancel.cancelled() => Err(StageError::Cancelled),
            _ = force.changed() => {
                reason.lock().unwrap().get_or_insert(CancelReason::ForceRelease);
                cancel.cancel();
                Err(StageError::Cancelled)
            }
        };
        let elapsed = started.elapsed();
        let duration_ms = Some(elapsed.as_secs_f64() * 1000.0);
        s.metrics
            .stage_finished(&kind_name, &stage_name, elapsed, outcome_of(&result));

        let event = match result {
            Ok(output) => {
                let next = kind.stages.get(idx + 1).map(|st| st.name().to_string());
                let last = next.is_none();
                if last {
                    slot.leave();
                }
                let t = transition(
                    TransitionEvent::StageCompleted {
                        output: output.clone(),
                        next_stage: next,
                    },
                    Some(&stage_name),
                    duration_ms,
                );
                match completer.submit(t).await {
                    Verdict::Applied => {
                        Metrics::inc(&s.metrics.stages_completed, 1);
                        if last {
                            Metrics::inc(&s.metrics.jobs_succeeded, 1);
                            job_finished(s, job, claimed, "succeeded", None);
                            return;
                        }
                        if let Value::Object(m) = &mut checkpoint {
                            m.insert(stage_name, output);
                        }
                        continue;
                    }
                    // The attempt fails with what happened; the worker's log has the server's
                    // text (a job's error never carries database text).
                    Verdict::Refused { code, .. } => failed(format!(
                        "{stage_name}: PostgreSQL refused the stage's checkpoint (SQLSTATE {}; the worker's log has its text)",
                        code.as_deref().unwrap_or("none")
                    )),
                    Verdict::Stale => {
                        tracing::warn!(stage = %stage_name, "checkpoint rejected: the job is no longer ours");
                        return;
                    }
                    Verdict::Abandoned => return,
                }
            }
            Err(StageError::Cancelled) => match *reason.lock().unwrap() {
                Some(CancelReason::LeaseLost) | Some(CancelReason::JobCancelled) => {
                    tracing::info!(stage = %stage_name, "stage stopped: the job is no longer ours");
                    return;
                }
                Some(CancelReason::ForceRelease) | None => TransitionEvent::Released {
                    reason: "released at checkpoint: stage cancelled by drain timeout".into(),
                },
            },
            Err(StageError::Fatal(error)) => TransitionEvent::Dead {
                error: format!("{stage_name}: {error}"),
            },
            Err(StageError::Retryable(error)) => failed(format!("{stage_name}: {error}")),
        };
        let counter = match &event {
            TransitionEvent::Released { .. } => &s.metrics.jobs_released,
            TransitionEvent::Dead { .. } => &s.metrics.jobs_dead,
            _ => &s.metrics.jobs_retried,
        };
        match &event {
            TransitionEvent::Dead { error } => {
                tracing::warn!(stage = %stage_name, %error, "job dead")
            }
            TransitionEvent::RetryScheduled { error, delay_ms } => {
                tracing::info!(stage = %stage_name, %error, delay_ms, "stage failed; retry scheduled")
            }
            _ => tracing::info!(stage = %stage_name, "released at checkpoint (drain timeout)"),
        }
        let outcome = match &event {
            TransitionEvent::Dead { error } => Some(("dead", Some(error.clone()))),
            _ => None,
        };
        slot.leave();
        if completer
            .submit(transition(event, Some(&stage_name), duration_ms))
            .await
            .applied()
        {
            Metrics::inc(counter, 1);
            if let Some((outcome, error)) = outcome {
                job_finished(s, job, claimed, outcome, error.as_deref());
            }
        }
        return;
    }
}

fn outcome_of(r: &Result<Value, StageError>) -> &'static str {
    match r {
        Ok(_) => "completed",
        Err(StageError::Retryable(_)) => "failed",
        Err(StageError::Fatal(_)) => "fatal",
        Err(StageError::Cancelled) => "cancelled",
    }
}

/// One INFO line per job that finished here, with how long this run took, and the job
/// duration histogram.
fn job_finished(
    s: &Shared,
    job: &ClaimedJob,
    claimed: Instant,
    outcome: &str,
    error: Option<&str>,
) {
    let took = claimed.elapsed();
    s.metrics.job_finished(&job.kind, outcome, took);
    match error {
        None => tracing::info!(outcome, run_ms = took.as_millis() as u64, "job finished"),
        Some(error) => {
            tracing::info!(outcome, run_ms = took.as_millis() as u64, %error, "job finished")
        }
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
