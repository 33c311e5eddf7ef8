//! Process-local counters, rendered in Prometheus text format by `/metrics`.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub jobs_claimed: AtomicU64,
    pub stages_completed: AtomicU64,
    pub jobs_succeeded: AtomicU64,
    pub jobs_retried: AtomicU64,
    pub jobs_dead: AtomicU64,
    pub jobs_released: AtomicU64,
    /// Writes refused because the job's fencing token had moved on (lease lost, cancelled).
    pub stale_writes_rejected: AtomicU64,
    pub leases_lost: AtomicU64,
    pub jobs_rescued: AtomicU64,
}

impl Metrics {
    pub fn inc(counter: &AtomicU64, by: u64) {
        counter.fetch_add(by, Ordering::Relaxed);
    }

    pub fn render(&self, out: &mut String) {
        let counters: [(&str, &AtomicU64, &str); 9] = [
            (
                "etlq_jobs_claimed_total",
                &self.jobs_claimed,
                "Jobs claimed by this process.",
            ),
            (
                "etlq_stages_completed_total",
                &self.stages_completed,
                "Stages checkpointed by this process.",
            ),
            (
                "etlq_jobs_succeeded_total",
                &self.jobs_succeeded,
                "Jobs this process completed.",
            ),
            (
                "etlq_jobs_retried_total",
                &self.jobs_retried,
                "Stage failures scheduled for retry.",
            ),
            (
                "etlq_jobs_dead_total",
                &self.jobs_dead,
                "Jobs this process dead-lettered.",
            ),
            (
                "etlq_jobs_released_total",
                &self.jobs_released,
                "Jobs released at a checkpoint during a drain.",
            ),
            (
                "etlq_stale_writes_rejected_total",
                &self.stale_writes_rejected,
                "Checkpoints or completions rejected by the fencing token.",
            ),
            (
                "etlq_leases_lost_total",
                &self.leases_lost,
                "Jobs whose lease this process lost while holding them.",
            ),
            (
                "etlq_jobs_rescued_total",
                &self.jobs_rescued,
                "Expired leases this process re-queued.",
            ),
        ];
        for (name, value, help) in counters {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
    }
}
