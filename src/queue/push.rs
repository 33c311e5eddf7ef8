//! Push pickup (ADR 0020): an idle worker advertises free slots (`worker_parking`, one row of
//! `parking_slots` per slot); a single
//! enqueue that finds one inserts its job already running under that worker's lease and
//! notifies the worker's own channel with the job. These are the worker's side of it:
//! advertise, withdraw, and find the jobs pushed to it whose notification it missed.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::{Actor, ClaimedJob, JobStore, QueueError};

/// Largest payload pushed with its job (NOTIFY carries at most 8,000 bytes); a larger job is
/// enqueued `queued` and claimed as before.
pub(crate) const PUSH_PAYLOAD_MAX: i32 = 7000;

/// What a worker advertises: `free` slots for jobs of `kinds`, under advertisement
/// `generation`, told on `channel`, heard by the backend `listener_pid`, for `ttl`.
pub struct Advert<'a> {
    pub kinds: &'a [String],
    pub free: usize,
    pub lease: Duration,
    pub channel: &'a str,
    pub generation: u64,
    pub listener_pid: i32,
    pub ttl: Duration,
}

/// A pushed job as its notification carries it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PushedJob {
    /// The advertisement the enqueue took a slot of.
    pub generation: u64,
    pub id: i64,
    pub kind: String,
    pub payload: Value,
    pub checkpoint: Value,
    pub max_attempts: i32,
    pub token: i64,
}

impl PushedJob {
    pub fn into_claimed(self) -> ClaimedJob {
        ClaimedJob {
            id: self.id,
            kind: self.kind,
            payload: self.payload,
            checkpoint: self.checkpoint,
            attempts: 1,
            max_attempts: self.max_attempts,
            fencing_token: self.token,
            waited_s: 0.0,
        }
    }
}

/// The channel a worker hears its pushed jobs on: named by a hash of its id (a channel name
/// is at most 63 bytes; a worker id is a host name and more).
pub fn push_channel(worker_id: &str) -> String {
    // FNV-1a: stable across releases and processes, unlike std's hasher.
    let h = worker_id.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    });
    format!("etlq_push_{h:016x}")
}

// A worker's own advertisement, top-ups and withdrawal are written without waiting for the
// WAL flush (synchronous commit off for that one transaction): an enqueue skips the slots a
// withdrawal holds and queues its job, so the shorter the hold, the more jobs are pushed
// (ADR 0020). A push takes a slot row and never the advertisement's row, so a top-up (which
// only inserts slots) holds nothing a push needs. Nothing depends on the rows surviving a
// crash: after one, the worker's LISTEN backend is gone and no enqueue pushes to it.

impl JobStore {
    /// Advertises `advert.free` slots for pushed jobs, replacing any earlier advertisement of
    /// `actor` (the worker withdraws before it advertises again). Advertisements that lapsed
    /// long ago (workers that died) are removed on the way.
    pub async fn advertise(&self, actor: &Actor, advert: &Advert<'_>) -> Result<(), QueueError> {
        sqlx::query(
            r#"
            WITH lapsed AS (
                DELETE FROM worker_parking
                 WHERE until < now() - interval '10 minutes' AND worker_id <> $1
                RETURNING worker_id
            ),
            lapsed_slots AS (
                -- Also slots whose advertisement is gone without them: a worker of the
                -- previous release, during a rolling deploy, removes lapsed advertisements
                -- and knows nothing of their slots.
                DELETE FROM parking_slots s
                 WHERE s.worker_id IN (SELECT worker_id FROM lapsed)
                    OR NOT EXISTS (SELECT 1 FROM worker_parking p WHERE p.worker_id = s.worker_id)
            ),
            ad AS (
                -- `free` is 0: the slots are rows of parking_slots (migration 14), and a
                -- worker of the previous release reading `free` pushes nothing here.
                INSERT INTO worker_parking (worker_id, kinds, free, lease_s, channel,
                                            generation, listener_pid, until)
                SELECT $1, $2, 0, $4, $5, $6, $7, now() + make_interval(secs => $8)
                  FROM (SELECT set_config('synchronous_commit', 'off', true)) no_flush
                ON CONFLICT (worker_id) DO UPDATE
                   SET kinds = EXCLUDED.kinds, free = 0, lease_s = EXCLUDED.lease_s,
                       channel = EXCLUDED.channel, generation = EXCLUDED.generation,
                       listener_pid = EXCLUDED.listener_pid, until = EXCLUDED.until
            )
            INSERT INTO parking_slots (worker_id, generation)
            SELECT $1, $6 FROM generate_series(1, $3)
            "#,
        )
        .bind(&actor.id)
        .bind(advert.kinds)
        .bind(advert.free as i32)
        .bind(advert.lease.as_secs_f64())
        .bind(advert.channel)
        .bind(advert.generation as i64)
        .bind(advert.listener_pid)
        .bind(advert.ttl.as_secs_f64())
        .execute(&self.control)
        .await?;
        Ok(())
    }

    /// Adds `more` slots to `actor`'s advertisement `generation`; false if there is none.
    pub async fn offer_more(
        &self,
        actor: &Actor,
        generation: u64,
        more: usize,
    ) -> Result<bool, QueueError> {
        let done = sqlx::query(
            r#"
            INSERT INTO parking_slots (worker_id, generation)
            SELECT p.worker_id, p.generation
              FROM worker_parking p CROSS JOIN generate_series(1, $3)
             WHERE p.worker_id = $1 AND p.generation = $2
               AND set_config('synchronous_commit', 'off', true) IS NOT NULL
            "#,
        )
        .bind(&actor.id)
        .bind(generation as i64)
        .bind(more as i32)
        .execute(&self.control)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Withdraws `actor`'s advertisement and returns the slots no enqueue took (None: there
    /// was none). Deleting a slot a push holds waits for that push, so once it returns every
    /// job pushed to `actor` is committed and visible. Slots of an earlier advertisement (one
    /// whose withdrawal failed) go too, but only the current one's count as untaken.
    pub async fn withdraw(&self, actor: &Actor) -> Result<Option<usize>, QueueError> {
        let free: Option<i64> = sqlx::query_scalar(
            r#"
            WITH slots AS (
                DELETE FROM parking_slots WHERE worker_id = $1 RETURNING generation
            ),
            ad AS (
                DELETE FROM worker_parking WHERE worker_id = $1 RETURNING generation
            )
            -- Read at commit, so set anywhere in the statement.
            SELECT (SELECT count(*) FROM slots s WHERE s.generation = ad.generation)
              FROM ad, (SELECT set_config('synchronous_commit', 'off', true)) no_flush
            "#,
        )
        .bind(&actor.id)
        .fetch_optional(&self.control)
        .await?;
        Ok(free.map(|f| f as usize))
    }

    /// Jobs pushed to `actor` under advertisement `generation` that still run under the
    /// lease the push gave them, except `known` (the ones it already started).
    pub async fn pushed_to(
        &self,
        actor: &Actor,
        generation: u64,
        known: &[i64],
    ) -> Result<Vec<ClaimedJob>, QueueError> {
        Ok(sqlx::query_as::<_, ClaimedJob>(
            r#"
            SELECT id, kind, payload, checkpoint, attempts, max_attempts, fencing_token,
                   0::float8 AS waited_s
              FROM jobs
             WHERE lease_owner = $1 AND push_generation = $2 AND fencing_token = 1
               AND state = 'running' AND finished_at IS NULL AND NOT (id = ANY ($3))
             ORDER BY id
            "#,
        )
        .bind(&actor.id)
        .bind(generation as i64)
        .bind(known)
        .fetch_all(&self.control)
        .await?)
    }
}
