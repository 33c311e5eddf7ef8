//! `JobStore`'s statements: enqueue, claim, apply transitions, leases, rescue, cancel, cleanup
//! (reads are in `reads.rs`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::{
    Actor, CANCEL_CHANNEL, ClaimedJob, JobState, QueueError, RescuePass, RescueRules, Rescued,
    Transition, TransitionEvent,
};
use crate::db::{Pools, Tx};

/// The PostgreSQL job store: the only owner of `jobs`, `job_events` (`job_event_log`) and `dead_letters`.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct JobStore {
    pub(super) pool: PgPool,
    /// Lease renewals run here, never queued behind job traffic on `pool`.
    pub(super) control: PgPool,
    pub(super) default_max_attempts: i32,
    /// `testing.pause_in_finish_ms`: transitions that finish a job commit this much later.
    #[cfg(feature = "test-aids")]
    finish_pause: Duration,
}

#[derive(Debug, Clone, Serialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass back as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// `rows` were fetched with `LIMIT limit + 1`: an extra row means there is a next page,
    /// which starts after the last row kept.
    pub(crate) fn from_rows(mut rows: Vec<T>, limit: i64, id: impl Fn(&T) -> i64) -> Self {
        let next_cursor = if rows.len() as i64 > limit {
            rows.truncate(limit as usize);
            rows.last().map(|r| id(r).to_string())
        } else {
            None
        };
        Page {
            items: rows,
            next_cursor,
        }
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl JobStore {
    pub fn new(pools: &Pools, default_max_attempts: i32) -> Self {
        JobStore {
            pool: pools.main.clone(),
            control: pools.control.clone(),
            default_max_attempts,
            #[cfg(feature = "test-aids")]
            finish_pause: Duration::ZERO,
        }
    }

    /// Test aid: transitions that finish a job hold their transaction open this long before
    /// committing (`testing.pause_in_finish_ms`).
    #[cfg(feature = "test-aids")]
    pub fn pause_in_finish(mut self, pause: Duration) -> Self {
        self.finish_pause = pause;
        self
    }

    /// Answers when PostgreSQL does (readiness).
    pub async fn ping(&self) -> Result<(), QueueError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// The database's clock: the one every lease, rescue and schedule decision is made by.
    pub async fn clock(&self) -> Result<DateTime<Utc>, QueueError> {
        Ok(sqlx::query_scalar("SELECT now()")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Claims up to `limit` claimable jobs for `actor`, highest priority and earliest `run_at` first.
    pub async fn claim(
        &self,
        actor: &Actor,
        kinds: &[String],
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, QueueError> {
        // A claim whose snapshot still shows a job queued that another claim took, ran and
        // finished meanwhile follows the row to its new partition and fails (40001); the next
        // statement's snapshot no longer sees it. Seen at 2,000 jobs/s in the soak.
        super::again_if_moved(|| self.claim_once(actor, kinds, limit, lease)).await
    }

    async fn claim_once(
        &self,
        actor: &Actor,
        kinds: &[String],
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, QueueError> {
        // The statement is etlq_claim's (migration 15): a function, so that its plan is
        // generic and cached per connection, not planned again at every claim (ADR 0024).
        let jobs = sqlx::query_as::<_, ClaimedJob>(
            "SELECT id, kind, payload, checkpoint, attempts, max_attempts, fencing_token, waited_s
             FROM etlq_claim($1, $2, $3, $4, $5)",
        )
        .bind(limit as i64)
        .bind(&actor.id)
        .bind(secs(lease))
        .bind(&actor.version)
        .bind(kinds)
        .fetch_all(&self.pool)
        .await?;
        Ok(jobs)
    }

    /// Applies worker transitions in one statement. Each is fenced: it applies only while the job
    /// is still `running` under the same token. Returns the ids that were applied.
    pub async fn apply(
        &self,
        actor: &Actor,
        transitions: &[Transition],
    ) -> Result<Vec<i64>, QueueError> {
        super::again_if_moved(|| self.apply_once(actor, transitions)).await
    }

    async fn apply_once(
        &self,
        actor: &Actor,
        transitions: &[Transition],
    ) -> Result<Vec<i64>, QueueError> {
        let n = transitions.len();
        let mut ids = Vec::with_capacity(n);
        let mut tokens = Vec::with_capacity(n);
        let mut events = Vec::with_capacity(n);
        let mut to_states = Vec::with_capacity(n);
        let mut stages: Vec<Option<&str>> = Vec::with_capacity(n);
        let mut next_stages: Vec<Option<&str>> = Vec::with_capacity(n);
        let mut outputs: Vec<Option<String>> = Vec::with_capacity(n);
        let mut attempt_deltas = Vec::with_capacity(n);
        let mut delays: Vec<Option<f64>> = Vec::with_capacity(n);
        let mut errors: Vec<Option<&str>> = Vec::with_capacity(n);
        let mut attempts = Vec::with_capacity(n);
        let mut durations = Vec::with_capacity(n);
        for t in transitions {
            ids.push(t.job_id);
            tokens.push(t.fencing_token);
            attempts.push(t.attempt);
            durations.push(t.duration_ms);
            stages.push(t.stage.as_deref());
            events.push(t.event.name());
            match &t.event {
                TransitionEvent::StageCompleted { output, next_stage } => {
                    to_states.push(if next_stage.is_some() {
                        "running"
                    } else {
                        "succeeded"
                    });
                    next_stages.push(next_stage.as_deref());
                    outputs.push(Some(output.to_string()));
                    attempt_deltas.push(0);
                    delays.push(None);
                    errors.push(None);
                }
                TransitionEvent::Released { reason } => {
                    to_states.push("queued");
                    next_stages.push(t.stage.as_deref());
                    outputs.push(None);
                    attempt_deltas.push(-1);
                    delays.push(None);
                    errors.push(Some(reason));
                }
                TransitionEvent::RetryScheduled { error, delay_ms } => {
                    to_states.push("retrying");
                    next_stages.push(t.stage.as_deref());
                    outputs.push(None);
                    attempt_deltas.push(0);
                    delays.push(Some(*delay_ms as f64 / 1000.0));
                    errors.push(Some(error));
                }
                TransitionEvent::Dead { error } => {
                    to_states.push("dead");
                    next_stages.push(t.stage.as_deref());
                    outputs.push(None);
                    attempt_deltas.push(0);
                    delays.push(None);
                    errors.push(Some(error));
                }
            }
        }
        // The statement is etlq_apply_transitions' (migration 17): a function, so that it can
        // count the transitions it makes itself, which the counting triggers would otherwise
        // read back through their transition tables (ADR 0024). Every transition is fenced:
        // it applies only while the job is `running` under the same token.
        let query = sqlx::query_scalar(
            "SELECT id FROM etlq_apply_transitions($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11,
                                                   $12, $13, $14)",
        )
        .bind(&ids)
        .bind(&tokens)
        .bind(&events)
        .bind(&to_states)
        .bind(&stages)
        .bind(&next_stages)
        .bind(&outputs)
        .bind(&attempt_deltas)
        .bind(&delays)
        .bind(&errors)
        .bind(&attempts)
        .bind(&durations)
        .bind(&actor.id)
        .bind(&actor.version);
        #[cfg(feature = "test-aids")]
        if !self.finish_pause.is_zero() && to_states.iter().any(|s| *s != "running") {
            let mut tx = self.pool.begin().await?;
            let applied: Vec<i64> = query.fetch_all(&mut *tx).await?;
            tokio::time::sleep(self.finish_pause).await;
            tx.commit().await?;
            return Ok(applied);
        }
        let applied: Vec<i64> = query.fetch_all(&self.pool).await?;
        Ok(applied)
    }

    /// Which of `transitions` are already recorded. After a connection error the outcome of a
    /// commit is unknown; this makes the retry idempotent (a committed write is not repeated).
    pub async fn already_applied(
        &self,
        transitions: &[Transition],
    ) -> Result<Vec<i64>, QueueError> {
        let ids: Vec<i64> = transitions.iter().map(|t| t.job_id).collect();
        let tokens: Vec<i64> = transitions.iter().map(|t| t.fencing_token).collect();
        let events: Vec<&str> = transitions.iter().map(|t| t.event.name()).collect();
        let stages: Vec<Option<&str>> = transitions.iter().map(|t| t.stage.as_deref()).collect();
        Ok(sqlx::query_scalar(
            r#"
            SELECT i.id
            FROM unnest($1::int8[], $2::int8[], $3::text[], $4::text[]) AS i(id, token, event, stage)
            WHERE EXISTS (SELECT 1 FROM job_event_log e
                          WHERE e.job_id = i.id AND e.fencing_token = i.token
                            AND e.event = i.event AND e.stage IS NOT DISTINCT FROM i.stage)
               -- The stage that finished the job is recorded in its row (ADR 0018).
               OR (i.event = 'stage_completed'
                   AND EXISTS (SELECT 1 FROM jobs j
                               WHERE j.id = i.id AND j.fencing_token = i.token
                                 AND j.state = 'succeeded'
                                 AND j.final_stage IS NOT DISTINCT FROM i.stage))
            "#,
        )
        .bind(&ids)
        .bind(&tokens)
        .bind(&events)
        .bind(&stages)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Extends the leases of jobs still held under their tokens; returns the ids still held.
    /// Runs on the control pool. A lease that expired while PostgreSQL was unreachable is
    /// renewed too, as long as nobody rescued the job meanwhile (the token says so).
    pub async fn renew_leases(
        &self,
        owner: &str,
        held: &[(i64, i64)],
        lease: Duration,
    ) -> Result<Vec<i64>, QueueError> {
        super::again_if_moved(|| self.renew_leases_once(owner, held, lease)).await
    }

    async fn renew_leases_once(
        &self,
        owner: &str,
        held: &[(i64, i64)],
        lease: Duration,
    ) -> Result<Vec<i64>, QueueError> {
        let ids: Vec<i64> = held.iter().map(|h| h.0).collect();
        let tokens: Vec<i64> = held.iter().map(|h| h.1).collect();
        // Rows another transaction has locked are skipped, not waited for: most are this
        // worker's own jobs being finished, whose move to history would make a waiting
        // UPDATE fail with 40001 (and one slow row would hold up every renewal in the batch);
        // the rest are a promote's hold (FOR SHARE) or a cancel or rescue in flight. A
        // skipped job still held under its token counts as held; the next renewal settles it.
        let kept = sqlx::query_scalar(
            r#"
            -- The owner is tested on the joined pair (it names h), not estimated on jobs_live
            -- alone: see apply — statistics taken while nothing ran make the owner look rare.
            -- The ANY reads the held rows by id, not by a scan of the whole backlog (apply).
            WITH mine AS (
                SELECT j.id FROM jobs j
                JOIN unnest($1::int8[], $2::int8[]) AS h(id, token)
                  ON j.id = h.id AND j.fencing_token = h.token
                WHERE j.id = ANY ($1) AND (j.lease_owner = $3 OR h.id IS NULL)
                  AND j.finished_at IS NULL
            ),
            free AS (
                SELECT j.id FROM jobs j
                JOIN unnest($1::int8[], $2::int8[]) AS h(id, token)
                  ON j.id = h.id AND j.fencing_token = h.token
                WHERE j.id = ANY ($1) AND (j.lease_owner = $3 OR h.id IS NULL)
                  AND j.finished_at IS NULL
                FOR NO KEY UPDATE OF j SKIP LOCKED
            ),
            renewed AS (
                UPDATE jobs j SET lease_expires_at = now() + make_interval(secs => $4)
                WHERE j.id = ANY (ARRAY(SELECT id FROM free)) AND j.finished_at IS NULL
                RETURNING j.id
            )
            SELECT id FROM renewed
            UNION
            SELECT id FROM mine WHERE id <> ALL (ARRAY(SELECT id FROM free))
            "#,
        )
        .bind(&ids)
        .bind(&tokens)
        .bind(owner)
        .bind(secs(lease))
        .fetch_all(&self.control)
        .await?;
        Ok(kept)
    }

    /// Inside `tx`, holds job `job_id` still under `token` (running, not rescued or cancelled)
    /// until the transaction ends; false when the token has moved on. A stage whose writes
    /// must commit only while it still owns the job (promote) checks this first.
    pub async fn hold_in(&self, tx: &mut Tx, job_id: i64, token: i64) -> Result<bool, QueueError> {
        let held = sqlx::query_scalar::<_, i64>(
            "SELECT id FROM jobs WHERE id = $1 AND fencing_token = $2 AND lease_owner IS NOT NULL AND finished_at IS NULL FOR SHARE",
        )
        .bind(job_id)
        .bind(token)
        .fetch_optional(tx.conn())
        .await
        .map_err(QueueError::from);
        match held {
            Ok(held) => Ok(held.is_some()),
            // The job finished or was cancelled meanwhile: not held (the transaction is
            // aborted; the caller rolls it back).
            Err(e) if e.moved_meanwhile() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Records progress of a running stage (fenced; ignored when the job moved on).
    pub async fn set_progress(
        &self,
        job_id: i64,
        token: i64,
        progress: &serde_json::Value,
    ) -> Result<bool, QueueError> {
        let r = sqlx::query(
            "UPDATE jobs SET progress = $3 WHERE id = $1 AND fencing_token = $2 AND state = 'running' AND finished_at IS NULL",
        )
        .bind(job_id)
        .bind(token)
        .bind(progress)
        .execute(&self.pool)
        .await
        .map_err(QueueError::from);
        match r {
            Ok(r) => Ok(r.rows_affected() == 1),
            Err(e) if e.moved_meanwhile() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Re-queues jobs whose lease expired because their worker died, froze or was cut off.
    /// The claim that started the lost run already counted its attempt; jobs out of attempts
    /// go dead, and so does a job whose worker died in the same stage `rules.max_streak` times
    /// in a row (a poison pill that takes down whoever runs it).
    ///
    /// A job is left alone while its owner's heartbeat is newer than the lease's expiry: the
    /// owner is alive and was only cut off from PostgreSQL, and renews within moments. Nothing
    /// is rescued within `rules.grace` of PostgreSQL starting, so owners get to reconnect
    /// after a restart; the caller applies the same grace after its own reconnect.
    pub async fn rescue_expired(
        &self,
        actor: &Actor,
        rules: &RescueRules,
        limit: i64,
    ) -> Result<Rescued, QueueError> {
        Ok(self.rescue_pass(actor, rules, limit, None).await?.rescued)
    }

    /// `rescue_expired` as one pass of a rescuer that ran its previous pass at `previous`
    /// (the `at` it returned). When the two are more than `rules.stall` apart, PostgreSQL or
    /// this process stood still in between: every owner's renewals and heartbeats waited as
    /// well and are landing now, in whatever order, so nothing is rescued and the caller
    /// gives the owners its grace — as after a reconnect.
    pub async fn rescue_pass(
        &self,
        actor: &Actor,
        rules: &RescueRules,
        limit: i64,
        previous: Option<DateTime<Utc>>,
    ) -> Result<RescuePass, QueueError> {
        super::again_if_moved(|| self.rescue_statement(actor, rules, limit, previous)).await
    }

    async fn rescue_statement(
        &self,
        by: &Actor,
        rules: &RescueRules,
        limit: i64,
        previous_pass: Option<DateTime<Utc>>,
    ) -> Result<RescuePass, QueueError> {
        let (requeued, dead, at, stalled): (i64, i64, DateTime<Utc>, bool) = sqlx::query_as(
            r#"
            WITH pass AS (
                SELECT coalesce(now() - $7::timestamptz > make_interval(secs => $8), false)
                       AS stalled
            ),
            expired AS (
                SELECT j.id, j.lease_owner FROM jobs j
                WHERE j.state = 'running' AND j.lease_expires_at < now() AND j.finished_at IS NULL
                  AND NOT (SELECT stalled FROM pass)
                  AND now() - pg_postmaster_start_time() > make_interval(secs => $4)
                  AND (j.lease_expires_at < now() - make_interval(secs => $5)
                       OR NOT EXISTS (
                           SELECT 1 FROM workers w
                           WHERE w.id = j.lease_owner AND w.stopped_at IS NULL
                             AND w.heartbeat_at > j.lease_expires_at))
                ORDER BY j.lease_expires_at
                LIMIT $1
                FOR UPDATE OF j SKIP LOCKED
            ),
            upd AS (
                UPDATE jobs j
                SET state = CASE WHEN j.attempts >= j.max_attempts OR j.rescue_streak + 1 >= $6
                                 THEN 'dead' ELSE 'queued' END,
                    rescue_streak = j.rescue_streak + 1,
                    lease_owner = NULL, lease_expires_at = NULL,
                    fencing_token = j.fencing_token + 1,
                    run_at = now(),
                    progress = NULL,
                    last_error = CASE
                        WHEN j.rescue_streak + 1 >= $6 AND j.attempts < j.max_attempts THEN
                            'poison pill: the worker running stage ' || coalesce(j.stage, '?')
                            || ' stopped without finishing it ' || (j.rescue_streak + 1)
                            || ' times in a row (last: ' || coalesce(e.lease_owner, '?')
                            || '); dead-lettered so it cannot take down more workers'
                            || ' (worker.max_consecutive_rescues)'
                        ELSE 'lease expired: worker ' || coalesce(e.lease_owner, '?')
                             || ' stopped renewing it'
                             || CASE WHEN j.attempts >= j.max_attempts
                                     THEN ' (attempts exhausted)' ELSE '' END
                    END,
                    finished_at = CASE WHEN j.attempts >= j.max_attempts OR j.rescue_streak + 1 >= $6
                                       THEN now() END,
                    ran_by = j.lease_owner,
                    updated_at = now()
                FROM expired e
                WHERE j.id = e.id AND j.id = ANY (ARRAY(SELECT id FROM expired))
                  AND j.finished_at IS NULL
                RETURNING j.id, j.kind, j.payload, j.state, j.stage, j.attempts, j.fencing_token,
                          j.last_error, j.started_at, j.first_claim_in_row, j.ran_by
            ),
            ev AS (
                -- A first claim kept in the row (ADR 0018) is written out before the rescue.
                INSERT INTO job_event_log (at, job_id, event, from_state, to_state, stage, attempt,
                                        fencing_token, worker_id, worker_version, error)
                SELECT started_at, id, 'claimed', 'queued', 'running', NULL, 1, fencing_token - 1,
                       ran_by, (SELECT w.version FROM workers w WHERE w.id = upd.ran_by), NULL
                FROM upd WHERE first_claim_in_row
                UNION ALL
                SELECT now(), id, 'rescued', 'running', state, stage, attempts, fencing_token, $2,
                       $3, last_error
                FROM upd
            ),
            dl AS (
                INSERT INTO dead_letters (job_id, kind, bu_id, connector, failed_stage, attempts, reason)
                SELECT id, kind, payload ->> 'bu_id', payload ->> 'connector', stage, attempts,
                       last_error
                FROM upd WHERE state = 'dead'
            )
            SELECT count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE state = 'dead'),
                   now(), (SELECT stalled FROM pass)
            FROM upd
            "#,
        )
        .bind(limit)
        .bind(&by.id)
        .bind(&by.version)
        .bind(secs(rules.grace))
        .bind(secs(rules.overdue))
        .bind(rules.max_streak)
        .bind(previous_pass)
        .bind(secs(rules.stall))
        .fetch_one(&self.pool)
        .await?;
        Ok(RescuePass {
            rescued: Rescued {
                requeued: requeued as u64,
                dead: dead as u64,
            },
            at,
            stalled,
        })
    }

    /// Cancels a queued, retrying or running job. A running job's token is bumped so its worker's
    /// next checkpoint is rejected; the worker is told through NOTIFY and stops the stage.
    pub async fn cancel(&self, job_id: i64, actor: &Actor) -> Result<JobState, QueueError> {
        super::again_if_moved(|| self.cancel_once(job_id, actor)).await
    }

    async fn cancel_once(&self, job_id: i64, actor: &Actor) -> Result<JobState, QueueError> {
        let mut tx = self.pool.begin().await?;
        let prev: Option<String> =
            sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1 FOR UPDATE")
                .bind(job_id)
                .fetch_optional(&mut *tx)
                .await?;
        let prev: JobState = prev
            .ok_or(QueueError::NotFound(job_id))?
            .parse()
            .map_err(QueueError::Invalid)?;
        if prev.is_final() {
            return Err(QueueError::Conflict(format!(
                "job {job_id} is {prev}; only queued, retrying or running jobs can be cancelled"
            )));
        }
        sqlx::query(
            r#"
            WITH upd AS (
                UPDATE jobs SET state = 'cancelled', lease_owner = NULL, lease_expires_at = NULL,
                       fencing_token = fencing_token + 1, finished_at = now(), updated_at = now(),
                       last_error = coalesce(last_error, 'cancelled by ' || $2),
                       ran_by = coalesce(lease_owner, ran_by)
                WHERE id = $1 AND finished_at IS NULL
                RETURNING id, stage, attempts, fencing_token, started_at, first_claim_in_row, ran_by
            )
            -- A running job's first claim kept in the row (ADR 0018) is written out first.
            INSERT INTO job_event_log (at, job_id, event, from_state, to_state, stage, attempt,
                                    fencing_token, worker_id, worker_version)
            SELECT started_at, id, 'claimed', 'queued', 'running', NULL, 1, fencing_token - 1,
                   ran_by, (SELECT w.version FROM workers w WHERE w.id = upd.ran_by)
            FROM upd WHERE first_claim_in_row AND $3 = 'running'
            UNION ALL
            SELECT now(), id, 'cancelled', $3, 'cancelled', stage, attempts, fencing_token, $2, NULL
            FROM upd
            "#,
        )
        .bind(job_id)
        .bind(&actor.id)
        .bind(prev.as_str())
        .execute(&mut *tx)
        .await?;
        if prev == JobState::Running {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CANCEL_CHANNEL)
                .bind(job_id.to_string())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(prev)
    }
}
