//! Finished jobs by day (ADR 0017): `jobs` is partitioned on `finished_at`, live jobs in its
//! default partition `jobs_live`, each UTC day's finished jobs in `jobs_pYYYYMMDD`, and
//! `job_event_log` (the stored rows of `job_events`) the same on `at`. This file keeps the
//! days ahead, drops the days past retention, and reads the finished-job counts the moving
//! statements keep in `job_counts`.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{JobStore, QueueError, StateKindCount};

use crate::db::PARTITIONS_AHEAD_DAYS;

/// How long partition maintenance waits for its short ACCESS EXCLUSIVE lock on `jobs` before
/// giving up until the next pass (it would otherwise queue every job statement behind it).
const PARTITION_LOCK_TIMEOUT: &str = "2s";

/// A day partition dropped past retention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DroppedPartition {
    pub table: String,
    /// Finished jobs it held (0 for a `job_event_log` partition).
    pub jobs: i64,
}

impl JobStore {
    /// Creates the missing day partitions of `jobs` and `job_event_log` from today to
    /// [`PARTITIONS_AHEAD_DAYS`] ahead; returns how many it created.
    pub async fn ensure_partitions(&self) -> Result<i32, QueueError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT set_config('lock_timeout', $1, true)")
            .bind(PARTITION_LOCK_TIMEOUT)
            .execute(&mut *tx)
            .await?;
        let made: i32 = sqlx::query_scalar("SELECT etlq_ensure_history_partitions($1)")
            .bind(PARTITIONS_AHEAD_DAYS)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(made)
    }

    /// Drops, oldest first, every day partition of `jobs` and `job_event_log` that ended more
    /// than `keep` ago, each in its own transaction (`etlq_drop_history_partition`, which also
    /// removes what only its jobs used: their idempotency keys, dead letters and counts).
    /// Never a `DELETE` over history.
    pub async fn drop_expired_partitions(
        &self,
        keep: Duration,
    ) -> Result<Vec<DroppedPartition>, QueueError> {
        let expired: Vec<(String,)> = sqlx::query_as(
            "SELECT partition FROM etlq_expired_history_partitions(make_interval(secs => $1))",
        )
        .bind(keep.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        let mut dropped = Vec::new();
        for (partition,) in expired {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT set_config('lock_timeout', $1, true)")
                .bind(PARTITION_LOCK_TIMEOUT)
                .execute(&mut *tx)
                .await?;
            let jobs: Option<i64> = sqlx::query_scalar("SELECT etlq_drop_history_partition($1)")
                .bind(&partition)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            dropped.push(DroppedPartition {
                table: partition,
                jobs: jobs.unwrap_or(0),
            });
        }
        Ok(dropped)
    }

    /// Jobs by state and kind: live ones counted in `jobs_live`, finished ones read from
    /// `job_counts` (a few rows per day), so the figure costs the same at a million finished
    /// jobs as at none.
    pub async fn counts_by_state_kind(&self) -> Result<Vec<StateKindCount>, QueueError> {
        let rows: Vec<StateKindCount> = sqlx::query_as(
            r#"
            SELECT state, kind, sum(n)::int8 AS count FROM (
                SELECT state, kind, count(*) AS n FROM jobs WHERE finished_at IS NULL
                 GROUP BY state, kind
                UNION ALL
                SELECT state, kind, sum(n) FROM job_counts GROUP BY state, kind
            ) c
            GROUP BY state, kind
            HAVING sum(n) <> 0
            ORDER BY state, kind
            "#,
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// [`JobStore::counts_by_state_kind`] summed by state.
    pub async fn counts(&self) -> Result<Vec<(String, i64)>, QueueError> {
        let mut by_state: BTreeMap<String, i64> = BTreeMap::new();
        for c in self.counts_by_state_kind().await? {
            *by_state.entry(c.state).or_default() += c.count;
        }
        Ok(by_state.into_iter().collect())
    }

    /// Sums `job_counts`' deltas into one row per day, kind and state; returns the rows it
    /// folded. Safe in several processes at once: a row is deleted by one of them.
    pub async fn compact_counts(&self) -> Result<u64, QueueError> {
        let mut tx = self.pool.begin().await?;
        // Held by a partition drop too (`etlq_drop_history_partition`).
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('etlq_job_counts'))")
            .execute(&mut *tx)
            .await?;
        let folded: i64 = sqlx::query_scalar(
            r#"
            WITH gone AS (DELETE FROM job_counts RETURNING day, kind, state, n),
            kept AS (
                INSERT INTO job_counts (day, kind, state, n)
                SELECT day, kind, state, sum(n) FROM gone GROUP BY 1, 2, 3 HAVING sum(n) <> 0
            )
            SELECT count(*) FROM gone
            "#,
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(folded as u64)
    }
}
