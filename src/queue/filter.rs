//! What the job list, its counts and the bulk actions match: one filter, one SQL fragment,
//! so the number an operator confirms is the number of rows the action touches.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{Actor, CANCEL_CHANNEL, JobState, JobStore, QueueError, RetryFrom};

/// A job-list filter (`GET /v1/jobs`, the console's list, bulk cancel and retry).
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    pub state: Option<JobState>,
    pub kind: Option<String>,
    pub bu_id: Option<String>,
    pub connector: Option<String>,
    /// Inclusive lower bound of `created_at`.
    pub created_after: Option<DateTime<Utc>>,
    /// Exclusive upper bound of `created_at`.
    pub created_before: Option<DateTime<Utc>>,
}

impl ListFilter {
    /// Refuses what PostgreSQL would (NUL, over-long text, timestamps outside its range),
    /// naming the field.
    pub fn check(&self) -> Result<(), QueueError> {
        super::check_filter_text(&[
            ("kind", &self.kind),
            ("bu_id", &self.bu_id),
            ("connector", &self.connector),
        ])?;
        for (name, t) in [
            ("created_after", self.created_after),
            ("created_before", self.created_before),
        ] {
            if let Some(t) = t {
                super::check_timestamp(name, t)?;
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        self.state.is_none()
            && self.kind.is_none()
            && self.bu_id.is_none()
            && self.connector.is_none()
            && self.created_after.is_none()
            && self.created_before.is_none()
    }
}

/// The filter as a WHERE fragment over `jobs` with parameters `$1`–`$6`
/// ([`bind_filter!`] binds them), a literal so statements built with `concat!` stay static
/// SQL. `bu_id` uses `jobs_bu_id_idx`; the rest rides the newest-first scan of the primary
/// key, which a page's LIMIT stops early.
macro_rules! filter_sql {
    () => {
        "($1::text IS NULL OR state = $1) \
         AND ($2::text IS NULL OR kind = $2) \
         AND ($3::text IS NULL OR (payload ? 'bu_id' AND payload ->> 'bu_id' = $3)) \
         AND ($4::text IS NULL OR payload ->> 'connector' = $4) \
         AND ($5::timestamptz IS NULL OR created_at >= $5) \
         AND ($6::timestamptz IS NULL OR created_at < $6)"
    };
}
pub(crate) use filter_sql;

/// Binds a [`ListFilter`] to `$1`–`$6` of a query built around [`FILTER_SQL`].
macro_rules! bind_filter {
    ($query:expr, $filter:expr) => {{
        let f: &$crate::queue::ListFilter = $filter;
        $query
            .bind(f.state.map($crate::queue::JobState::as_str))
            .bind(f.kind.as_deref())
            .bind(f.bu_id.as_deref())
            .bind(f.connector.as_deref())
            .bind(f.created_after)
            .bind(f.created_before)
    }};
}
pub(crate) use bind_filter;

/// What a filter matches, and how many of those a bulk action would touch.
#[derive(Debug, Clone, Copy, Serialize, sqlx::FromRow)]
pub struct FilterCount {
    pub matched: i64,
    /// Queued, retrying or running: what bulk cancel would cancel.
    pub cancellable: i64,
    /// Dead: what bulk retry would re-enqueue.
    pub retryable: i64,
}

impl JobStore {
    pub async fn count_matching(&self, filter: &ListFilter) -> Result<FilterCount, QueueError> {
        filter.check()?;
        if filter.bu_id.is_none()
            && filter.connector.is_none()
            && filter.created_after.is_none()
            && filter.created_before.is_none()
        {
            // By state and kind only: the live partition and the finished-job counts answer
            // without reading history.
            let mut c = FilterCount {
                matched: 0,
                cancellable: 0,
                retryable: 0,
            };
            for r in self.counts_by_state_kind().await? {
                if filter.state.is_some_and(|s| s.as_str() != r.state)
                    || filter.kind.as_ref().is_some_and(|k| *k != r.kind)
                {
                    continue;
                }
                c.matched += r.count;
                match r.state.as_str() {
                    "queued" | "retrying" | "running" => c.cancellable += r.count,
                    "dead" => c.retryable += r.count,
                    _ => {}
                }
            }
            return Ok(c);
        }
        let sql = concat!(
            "SELECT count(*) AS matched, \
                    count(*) FILTER (WHERE state IN ('queued', 'retrying', 'running')) AS cancellable, \
                    count(*) FILTER (WHERE state = 'dead') AS retryable \
             FROM jobs WHERE ",
            filter_sql!()
        );
        Ok(bind_filter!(sqlx::query_as::<_, FilterCount>(sql), filter)
            .fetch_one(&self.pool)
            .await?)
    }

    /// Cancels every queued, retrying or running job the filter matches, in one transaction
    /// (running ones are fenced and told, as [`JobStore::cancel`] does). Returns their ids.
    pub async fn cancel_matching(
        &self,
        filter: &ListFilter,
        actor: &Actor,
    ) -> Result<Vec<i64>, QueueError> {
        filter.check()?;
        super::again_if_moved(|| self.cancel_matching_once(filter, actor)).await
    }

    async fn cancel_matching_once(
        &self,
        filter: &ListFilter,
        actor: &Actor,
    ) -> Result<Vec<i64>, QueueError> {
        let sql = concat!(
            r#"
            WITH target AS (
                SELECT id, state AS prev FROM jobs
                WHERE state IN ('queued', 'retrying', 'running') AND finished_at IS NULL AND "#,
            filter_sql!(),
            r#"
                ORDER BY id
                FOR UPDATE
            ),
            upd AS (
                UPDATE jobs j SET state = 'cancelled', lease_owner = NULL, lease_expires_at = NULL,
                       fencing_token = j.fencing_token + 1, finished_at = now(), updated_at = now(),
                       last_error = coalesce(j.last_error, 'cancelled by ' || $7),
                       ran_by = coalesce(j.lease_owner, j.ran_by)
                FROM target t
                WHERE j.id = t.id AND j.finished_at IS NULL
                RETURNING j.id, j.stage, j.attempts, j.fencing_token, t.prev, j.started_at,
                          j.first_claim_in_row, j.ran_by
            ),
            ev AS (
                -- A running job's first claim kept in the row (ADR 0018) is written out first.
                INSERT INTO job_event_log (at, job_id, event, from_state, to_state, stage, attempt,
                                        fencing_token, worker_id, worker_version)
                SELECT started_at, id, 'claimed', 'queued', 'running', NULL, 1, fencing_token - 1,
                       ran_by, (SELECT w.version FROM workers w WHERE w.id = upd.ran_by)
                FROM upd WHERE first_claim_in_row AND prev = 'running'
                UNION ALL
                SELECT now(), id, 'cancelled', prev, 'cancelled', stage, attempts, fencing_token,
                       $7, NULL
                FROM upd
            )
            SELECT id, prev FROM upd ORDER BY id
            "#
        );
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(i64, String)> = bind_filter!(sqlx::query_as(sql), filter)
            .bind(&actor.id)
            .fetch_all(&mut *tx)
            .await?;
        let running: Vec<i64> = rows
            .iter()
            .filter(|(_, prev)| prev == JobState::Running.as_str())
            .map(|(id, _)| *id)
            .collect();
        if !running.is_empty() {
            sqlx::query("SELECT pg_notify($1, id::text) FROM unnest($2::int8[]) AS id")
                .bind(CANCEL_CHANNEL)
                .bind(&running)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(rows.into_iter().map(|(id, _)| id).collect())
    }

    /// Re-enqueues every dead job the filter matches (as a dead-letter retry). Returns their ids.
    pub async fn retry_matching(
        &self,
        filter: &ListFilter,
        from: RetryFrom,
        actor: &Actor,
    ) -> Result<Vec<i64>, QueueError> {
        filter.check()?;
        let sql = concat!(
            "SELECT id FROM jobs WHERE state = 'dead' AND ",
            filter_sql!(),
            " ORDER BY id"
        );
        let ids: Vec<i64> = bind_filter!(sqlx::query_scalar(sql), filter)
            .fetch_all(&self.pool)
            .await?;
        if ids.is_empty() {
            return Ok(ids);
        }
        self.retry_dead_ids(&ids, from, actor).await
    }
}
