//! Process metrics for `/metrics`, through the Prometheus project's Rust client
//! (`prometheus-client`). Every metric is documented in `docs/metrics.md`.
//!
//! Counters and histograms are updated as things happen; the queue-depth and fleet gauges
//! are read from PostgreSQL at scrape time (`api/health.rs`).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StageLabels {
    pub kind: String,
    pub stage: String,
    /// completed, failed (retryable), fatal, cancelled.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub kind: String,
    /// succeeded, dead.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub mode: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RescueLabels {
    /// requeued, dead (attempts exhausted or poison pill).
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceTickLabels {
    pub source: String,
    /// schedule, manual, reconcile, resume.
    pub trigger: String,
    /// ok, failed.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceBlobLabels {
    pub source: String,
    /// listed, new, duplicate, skipped.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceEventLabels {
    pub source: String,
    pub event_type: String,
    /// new, duplicate, ignored, validated.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReclaimLabels {
    /// superseded_versions, abandoned_versions, documents, blobs, work_dirs, uploads.
    pub what: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: String,
}

fn seconds_histogram() -> Histogram {
    // 1 ms to ~9 min.
    Histogram::new(exponential_buckets(0.001, 2.0, 20))
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub jobs_claimed: Counter,
    pub stages_completed: Counter,
    pub jobs_succeeded: Counter,
    pub jobs_retried: Counter,
    pub jobs_dead: Counter,
    pub jobs_released: Counter,
    /// Writes refused because the job's fencing token had moved on (lease lost, cancelled).
    pub stale_writes_rejected: Counter,
    pub transitions_refused: Counter,
    pub leases_lost: Counter,
    pub lease_renewals: Counter,
    /// `workers` heartbeats that failed (PostgreSQL unreachable from the control pool).
    pub heartbeat_failures: Counter,
    rescued: Family<RescueLabels, Counter>,
    stage_duration: Family<StageLabels, Histogram>,
    job_duration: Family<JobLabels, Histogram>,
    pickup: Family<KindLabels, Histogram>,
    pub queue_depth: Family<StateLabels, Gauge>,
    pub dead_letters_open: Gauge,
    pub in_flight: Gauge,
    pub writing: Gauge,
    pub mode: Family<ModeLabels, Gauge>,
    source_ticks: Family<SourceTickLabels, Counter>,
    source_blobs: Family<SourceBlobLabels, Counter>,
    source_events: Family<SourceEventLabels, Counter>,
    source_lag: Family<SourceLabels, Histogram>,
    reclaimed: Family<ReclaimLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("etlq");
        let m = Metrics {
            jobs_claimed: Counter::default(),
            stages_completed: Counter::default(),
            jobs_succeeded: Counter::default(),
            jobs_retried: Counter::default(),
            jobs_dead: Counter::default(),
            jobs_released: Counter::default(),
            stale_writes_rejected: Counter::default(),
            transitions_refused: Counter::default(),
            leases_lost: Counter::default(),
            lease_renewals: Counter::default(),
            heartbeat_failures: Counter::default(),
            rescued: Family::default(),
            stage_duration: Family::new_with_constructor(seconds_histogram),
            job_duration: Family::new_with_constructor(seconds_histogram),
            pickup: Family::new_with_constructor(seconds_histogram),
            queue_depth: Family::default(),
            dead_letters_open: Gauge::default(),
            in_flight: Gauge::default(),
            writing: Gauge::default(),
            mode: Family::default(),
            source_ticks: Family::default(),
            source_blobs: Family::default(),
            source_events: Family::default(),
            source_lag: Family::new_with_constructor(seconds_histogram),
            reclaimed: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "jobs_claimed",
            "Jobs claimed by this process",
            m.jobs_claimed.clone(),
        );
        r.register(
            "stages_completed",
            "Stages checkpointed by this process",
            m.stages_completed.clone(),
        );
        r.register(
            "jobs_succeeded",
            "Jobs this process completed",
            m.jobs_succeeded.clone(),
        );
        r.register(
            "jobs_retried",
            "Stage failures scheduled for retry",
            m.jobs_retried.clone(),
        );
        r.register(
            "jobs_dead",
            "Jobs this process dead-lettered",
            m.jobs_dead.clone(),
        );
        r.register(
            "jobs_released",
            "Jobs released at a checkpoint during a drain",
            m.jobs_released.clone(),
        );
        r.register(
            "stale_writes_rejected",
            "Checkpoints or completions rejected by the fencing token",
            m.stale_writes_rejected.clone(),
        );
        r.register(
            "transitions_refused",
            "Checkpoints or completions PostgreSQL refused (not a connection problem); logged with the server's error",
            m.transitions_refused.clone(),
        );
        r.register(
            "leases_lost",
            "Jobs whose lease this process lost while holding them",
            m.leases_lost.clone(),
        );
        r.register(
            "lease_renewals",
            "Leases this process renewed",
            m.lease_renewals.clone(),
        );
        r.register(
            "heartbeat_failures",
            "Heartbeats of this process that failed (PostgreSQL unreachable)",
            m.heartbeat_failures.clone(),
        );
        r.register(
            "jobs_rescued",
            "Expired leases this process rescued, by outcome",
            m.rescued.clone(),
        );
        r.register(
            "stage_duration_seconds",
            "How long stages ran in this process, by kind, stage and outcome",
            m.stage_duration.clone(),
        );
        r.register(
            "job_duration_seconds",
            "From claim to the end of the last stage run in this process, by kind and outcome",
            m.job_duration.clone(),
        );
        r.register(
            "pickup_latency_seconds",
            "From a job becoming due (run_at) to its claim, by kind",
            m.pickup.clone(),
        );
        r.register(
            "jobs",
            "Jobs by state (all processes, read at scrape)",
            m.queue_depth.clone(),
        );
        r.register(
            "dead_letters",
            "Dead letters not yet retried (read at scrape)",
            m.dead_letters_open.clone(),
        );
        r.register(
            "in_flight",
            "Jobs running stages in this process",
            m.in_flight.clone(),
        );
        r.register(
            "writing",
            "Jobs whose stages are done here, their outcome being written",
            m.writing.clone(),
        );
        r.register(
            "mode",
            "This process's mode (1 for the current one)",
            m.mode.clone(),
        );
        r.register(
            "source_ticks",
            "Source listings this process ran, by source, trigger and outcome",
            m.source_ticks.clone(),
        );
        r.register(
            "source_blobs",
            "Blobs this process's source listings saw, by source and outcome",
            m.source_blobs.clone(),
        );
        r.register(
            "source_events",
            "Event Grid events this process received, by source, type and outcome",
            m.source_events.clone(),
        );
        r.register(
            "source_lag_seconds",
            "From a blob's last modification to its job's enqueue, by source",
            m.source_lag.clone(),
        );
        r.register(
            "reclaimed",
            "What the cleaners removed, by kind: superseded and abandoned versions, their documents and blobs, work directories, stored uploads no job names",
            m.reclaimed.clone(),
        );
        // Both outcomes exist from the start, so `rate()` sees a 0 before the first rescue.
        for outcome in ["requeued", "dead"] {
            drop(m.rescued.get_or_create(&RescueLabels {
                outcome: outcome.into(),
            }));
        }
        Metrics { registry, ..m }
    }
}

impl Metrics {
    pub fn inc(counter: &Counter, by: u64) {
        counter.inc_by(by);
    }

    /// Counts what a cleaner removed (`what`: see [`ReclaimLabels`]).
    pub fn reclaimed(&self, what: &str, n: u64) {
        if n > 0 {
            self.reclaimed
                .get_or_create(&ReclaimLabels { what: what.into() })
                .inc_by(n);
        }
    }

    pub fn stage_finished(&self, kind: &str, stage: &str, took: Duration, outcome: &str) {
        self.stage_duration
            .get_or_create(&StageLabels {
                kind: kind.into(),
                stage: stage.into(),
                outcome: outcome.into(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn job_finished(&self, kind: &str, outcome: &str, took: Duration) {
        self.job_duration
            .get_or_create(&JobLabels {
                kind: kind.into(),
                outcome: outcome.into(),
            })
            .observe(took.as_secs_f64());
    }

    pub fn picked_up(&self, kind: &str, waited_s: f64) {
        self.pickup
            .get_or_create(&KindLabels { kind: kind.into() })
            .observe(waited_s);
    }

    pub fn jobs_rescued(&self, requeued: u64, dead: u64) {
        for (outcome, n) in [("requeued", requeued), ("dead", dead)] {
            if n > 0 {
                self.rescued
                    .get_or_create(&RescueLabels {
                        outcome: outcome.into(),
                    })
                    .inc_by(n);
            }
        }
    }

    pub fn source_tick(&self, source: &str, trigger: &str, outcome: &str) {
        self.source_ticks
            .get_or_create(&SourceTickLabels {
                source: source.into(),
                trigger: trigger.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    /// Blobs a listing found, by outcome (`listed`, `new`, `duplicate`, `skipped`).
    pub fn source_blobs(&self, source: &str, by_outcome: &[(&'static str, u64)]) {
        for &(outcome, n) in by_outcome {
            self.source_blobs
                .get_or_create(&SourceBlobLabels {
                    source: source.into(),
                    outcome: outcome.into(),
                })
                .inc_by(n);
        }
    }

    pub fn source_event(&self, source: &str, event_type: &str, outcome: &str, n: u64) {
        if n > 0 {
            self.source_events
                .get_or_create(&SourceEventLabels {
                    source: source.into(),
                    event_type: event_type.into(),
                    outcome: outcome.into(),
                })
                .inc_by(n);
        }
    }

    pub fn source_lag(&self, source: &str, seconds: f64) {
        self.source_lag
            .get_or_create(&SourceLabels {
                source: source.into(),
            })
            .observe(seconds);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histograms_and_gauges_with_labels() {
        let m = Metrics::default();
        Metrics::inc(&m.jobs_claimed, 3);
        m.stage_finished("etl", "extract", Duration::from_millis(40), "completed");
        m.picked_up("noop", 0.002);
        m.queue_depth
            .get_or_create(&StateLabels {
                state: "queued".into(),
            })
            .set(7);
        let text = m.render();
        assert!(text.contains("etlq_jobs_claimed_total 3"), "{text}");
        assert!(
            text.contains(
                "etlq_stage_duration_seconds_count{kind=\"etl\",stage=\"extract\",outcome=\"completed\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("etlq_jobs{state=\"queued\"} 7"), "{text}");
        assert!(
            text.contains("# HELP etlq_pickup_latency_seconds"),
            "{text}"
        );
    }
}
