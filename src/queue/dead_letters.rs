//! The dead-letter table: listing, and retrying one or many dead jobs (one statement).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{Actor, JobStore, Page, QueueError};

/// One dead-lettered job.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeadLetter {
    /// Internal (the pagination cursor): a job has at most one open dead letter, so the job id
    /// is the one id operators see and pass to `/v1/dead-letters/{job_id}/retry`.
    #[serde(skip_serializing)]
    pub dead_letter_id: i64,
    pub job_id: i64,
    pub kind: String,
    pub bu_id: Option<String>,
    pub connector: Option<String>,
    pub failed_stage: Option<String>,
    pub attempts: i32,
    pub reason: String,
    pub dead_at: DateTime<Utc>,
    pub retried_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct DeadLetterFilter {
    pub kind: Option<String>,
    pub bu_id: Option<String>,
    pub connector: Option<String>,
    pub since: Option<DateTime<Utc>>,
}

impl DeadLetterFilter {
    /// Refuses what PostgreSQL would (NUL characters, timestamps outside its range), naming
    /// the field.
    pub fn check(&self) -> Result<(), QueueError> {
        super::check_filter_text(&[
            ("kind", &self.kind),
            ("bu_id", &self.bu_id),
            ("connector", &self.connector),
        ])?;
        if let Some(since) = self.since {
            super::check_timestamp("since", since)?;
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.kind.is_none()
            && self.bu_id.is_none()
            && self.connector.is_none()
            && self.since.is_none()
    }
}

/// Where a retried job starts again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RetryFrom {
    /// The first stage not in its checkpoint.
    #[default]
    Checkpoint,
    /// The first stage, with the checkpoint cleared.
    Start,
}

const RETRY_SQL: &str = r#"
    WITH dl AS (
        UPDATE dead_letters d SET retried_at = now()
        FROM jobs j
        WHERE d.job_id = j.id AND j.state = 'dead' AND d.retried_at IS NULL
          AND ($1::int8[] IS NULL OR d.job_id = ANY($1))
          AND ($2::text IS NULL OR d.kind = $2)
          AND ($3::text IS NULL OR d.bu_id = $3)
          AND ($4::text IS NULL OR d.connector = $4)
          AND ($5::timestamptz IS NULL OR d.dead_at >= $5)
        RETURNING d.job_id
    ),
    upd AS (
        UPDATE jobs j
        SET state = 'queued', run_at = now(), finished_at = NULL,
            -- Attempt history is kept; an exhausted job gets one more attempt (as River does).
            max_attempts = greatest(j.max_attempts, j.attempts + 1),
            fencing_token = j.fencing_token + 1, updated_at = now(), rescue_streak = 0,
            -- Outputs the cleaner reclaimed can't be resumed from: those start over.
            checkpoint = CASE WHEN $6 OR j.outputs_reclaimed_at IS NOT NULL THEN '{}'::jsonb
                              ELSE j.checkpoint END,
            stage = CASE WHEN $6 OR j.outputs_reclaimed_at IS NOT NULL THEN NULL ELSE j.stage END,
            outputs_reclaimed_at = NULL
        WHERE j.id IN (SELECT job_id FROM dl) AND j.finished_at IS NOT NULL
        RETURNING j.id, j.stage, j.attempts, j.fencing_token
    ),
    ev AS (
        INSERT INTO job_event_log (job_id, event, from_state, to_state, stage, attempt, fencing_token, worker_id, error)
        SELECT id, 'retried', 'dead', 'queued', stage, attempts, fencing_token, $7,
               CASE WHEN $6 THEN 'retry from start' ELSE 'retry from checkpoint' END
        FROM upd
    )
    SELECT id FROM upd ORDER BY id
"#;

impl JobStore {
    pub async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        include_retried: bool,
        cursor: Option<i64>,
        limit: i64,
    ) -> Result<Page<DeadLetter>, QueueError> {
        filter.check()?;
        let rows = sqlx::query_as::<_, DeadLetter>(
            r#"
            SELECT id AS dead_letter_id, job_id, kind, bu_id, connector, failed_stage, attempts,
                   reason, dead_at, retried_at
            FROM dead_letters
            WHERE ($1 OR retried_at IS NULL)
              AND ($2::text IS NULL OR kind = $2)
              AND ($3::text IS NULL OR bu_id = $3)
              AND ($4::text IS NULL OR connector = $4)
              AND ($5::timestamptz IS NULL OR dead_at >= $5)
              AND ($6::int8 IS NULL OR id < $6)
            ORDER BY id DESC
            LIMIT $7
            "#,
        )
        .bind(include_retried)
        .bind(filter.kind.as_deref())
        .bind(filter.bu_id.as_deref())
        .bind(filter.connector.as_deref())
        .bind(filter.since)
        .bind(cursor)
        .bind(limit + 1)
        .fetch_all(&self.pool)
        .await?;
        Ok(Page::from_rows(rows, limit, |r| r.dead_letter_id))
    }

    /// How many dead letters the filter matches, with the list's predicate (an open dead
    /// letter's job is dead until a retry closes the letter, so this is also what a bulk retry
    /// of the filter retries).
    pub async fn dead_letter_count(
        &self,
        filter: &DeadLetterFilter,
        include_retried: bool,
    ) -> Result<i64, QueueError> {
        filter.check()?;
        Ok(sqlx::query_scalar(
            r#"
            SELECT count(*) FROM dead_letters
            WHERE ($1 OR retried_at IS NULL)
              AND ($2::text IS NULL OR kind = $2)
              AND ($3::text IS NULL OR bu_id = $3)
              AND ($4::text IS NULL OR connector = $4)
              AND ($5::timestamptz IS NULL OR dead_at >= $5)
            "#,
        )
        .bind(include_retried)
        .bind(filter.kind.as_deref())
        .bind(filter.bu_id.as_deref())
        .bind(filter.connector.as_deref())
        .bind(filter.since)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Re-enqueues one dead job (by job id); an exhausted job gets one more attempt.
    pub async fn retry_dead(
        &self,
        job_id: i64,
        from: RetryFrom,
        actor: &Actor,
    ) -> Result<(), QueueError> {
        let ids = self.retry_dead_ids(&[job_id], from, actor).await?;
        if ids.is_empty() {
            let job = self.get(job_id).await?;
            return Err(QueueError::Conflict(format!(
                "job {job_id} is {}; only dead jobs can be retried (the id is a job id: `job_id` in the dead-letter list)",
                job.state
            )));
        }
        Ok(())
    }

    /// Re-enqueues every open dead letter matching `filter`; returns the job ids.
    pub async fn retry_dead_bulk(
        &self,
        filter: &DeadLetterFilter,
        from: RetryFrom,
        actor: &Actor,
    ) -> Result<Vec<i64>, QueueError> {
        self.retry_dead_where(None, filter, from, actor).await
    }

    /// Re-enqueues those of `ids` that are dead; returns the ones it did.
    pub(super) async fn retry_dead_ids(
        &self,
        ids: &[i64],
        from: RetryFrom,
        actor: &Actor,
    ) -> Result<Vec<i64>, QueueError> {
        self.retry_dead_where(Some(ids), &DeadLetterFilter::default(), from, actor)
            .await
    }

    async fn retry_dead_where(
        &self,
        job_ids: Option<&[i64]>,
        filter: &DeadLetterFilter,
        from: RetryFrom,
        actor: &Actor,
    ) -> Result<Vec<i64>, QueueError> {
        filter.check()?;
        super::again_if_moved(|| async {
            let mut tx = self.pool.begin().await?;
            let ids: Vec<i64> = sqlx::query_scalar(RETRY_SQL)
                .bind(job_ids)
                .bind(filter.kind.as_deref())
                .bind(filter.bu_id.as_deref())
                .bind(filter.connector.as_deref())
                .bind(filter.since)
                .bind(from == RetryFrom::Start)
                .bind(&actor.id)
                .fetch_all(&mut *tx)
                .await?;
            // The jobs moved back into jobs_live, which fires no UPDATE row trigger: wake
            // the workers here.
            if !ids.is_empty() {
                sqlx::query("SELECT pg_notify($1, '')")
                    .bind(super::JOBS_CHANNEL)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(ids)
        })
        .await
    }
}
