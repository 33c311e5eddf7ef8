//! `JobStore`'s reads: one job, its history, the filtered list, counts.

use super::filter::{ListFilter, bind_filter, filter_sql};
use super::store::{JobStore, Page};
use super::{Job, JobEvent, QueueError};

impl JobStore {
    pub async fn get(&self, job_id: i64) -> Result<Job, QueueError> {
        sqlx::query_as::<_, Job>("SELECT * FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(QueueError::NotFound(job_id))
    }

    pub async fn events(&self, job_id: i64) -> Result<Vec<JobEvent>, QueueError> {
        Ok(
            // Events and the transitions kept in the job's row (ADR 0018), in order. A pushed
            // job's enqueue and claim share an instant (ADR 0020): the enqueue comes first.
            sqlx::query_as::<_, JobEvent>(
                "SELECT * FROM job_events WHERE job_id = $1
                  ORDER BY at, id NULLS FIRST,
                           CASE event WHEN 'enqueued' THEN 0 WHEN 'claimed' THEN 1 ELSE 2 END",
            )
            .bind(job_id)
            .fetch_all(&self.pool)
            .await?,
        )
    }

    /// Newest first; the cursor is the last id of the previous page.
    pub async fn list(
        &self,
        filter: &ListFilter,
        cursor: Option<i64>,
        limit: i64,
    ) -> Result<Page<Job>, QueueError> {
        filter.check()?;
        let sql = concat!(
            "SELECT * FROM jobs WHERE ",
            filter_sql!(),
            " AND ($7::int8 IS NULL OR id < $7) ORDER BY id DESC LIMIT $8"
        );
        let jobs = bind_filter!(sqlx::query_as::<_, Job>(sql), filter)
            .bind(cursor)
            .bind(limit + 1)
            .fetch_all(&self.pool)
            .await?;
        Ok(Page::from_rows(jobs, limit, |j| j.id))
    }

    /// Dead letters not yet retried (metrics).
    pub async fn open_dead_letter_count(&self) -> Result<i64, QueueError> {
        Ok(
            sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE retried_at IS NULL")
                .fetch_one(&self.pool)
                .await?,
        )
    }
}
