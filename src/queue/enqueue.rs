//! `JobStore`'s enqueue statements: one job, keyed jobs in a caller's transaction, many at
//! once (plain ones by `COPY`, ADR 0021). A keyed job claims its key in `job_keys` first
//! (unique across live and finished jobs, ADR 0017); a key already in use returns its job
//! instead.

use super::{Actor, Enqueued, JobStore, NewJob, QueueError};
use crate::db::Tx;

impl JobStore {
    /// Enqueues one job; with an idempotency key already in use, returns that job instead.
    pub async fn enqueue(&self, job: &NewJob) -> Result<Enqueued, QueueError> {
        job.check()?;
        let mut conn = self.pool.acquire().await?;
        self.enqueue_on(&mut conn, job).await
    }

    /// [`JobStore::enqueue`] inside a caller's transaction (an upload commits its job and its
    /// audit row together).
    pub async fn enqueue_in(&self, tx: &mut Tx, job: &NewJob) -> Result<Enqueued, QueueError> {
        job.check()?;
        self.enqueue_on(tx.conn(), job).await
    }

    async fn enqueue_on(
        &self,
        conn: &mut sqlx::PgConnection,
        job: &NewJob,
    ) -> Result<Enqueued, QueueError> {
        // A statement of its own: the bulk form's unnest is re-planned on every call, which
        // was half of a single enqueue's latency. A keyed job claims its key in `job_keys`
        // first (unique across live and finished jobs); a key in use inserts nothing.
        let sql = if job.idempotency_key.is_some() {
            r#"
            WITH k AS (
                INSERT INTO job_keys (key, job_id) VALUES ($3, nextval('jobs_id_seq'))
                ON CONFLICT (key) DO NOTHING
                RETURNING job_id
            ),
            ins AS (
                INSERT INTO jobs (id, kind, payload, idempotency_key, priority, max_attempts, run_at)
                OVERRIDING SYSTEM VALUE
                SELECT k.job_id, $1, $2, $3, $4, $5, now() + make_interval(secs => $6) FROM k
                RETURNING id
            )
            SELECT id FROM ins
            "#
        } else {
            // Push pickup (ADR 0020): a job due now goes straight to a worker that advertised
            // a free slot for its kind, already running under that worker's lease (its first
            // claim in the row, token 1), and the worker's channel carries it. A worker whose
            // LISTEN backend is gone (it died) or whose advertisement lapsed gets nothing;
            // without a slot the job is queued as before.
            r#"
            WITH slot AS (
                -- One slot row of a live advertisement (migration 14): held by no other push
                -- and no withdrawal. The advertisement's own row is read, not locked, so a
                -- top-up (which inserts slots) never makes a push queue its job.
                DELETE FROM parking_slots t
                 USING worker_parking p
                 WHERE t.ctid = (
                        SELECT s.ctid FROM parking_slots s
                          JOIN worker_parking a
                            ON a.worker_id = s.worker_id AND a.generation = s.generation
                         WHERE a.until > now() AND $1 = ANY (a.kinds)
                           AND $6 <= 0 AND octet_length($2::text) <= $7
                           AND EXISTS (SELECT 1 FROM pg_stat_get_activity(a.listener_pid))
                         LIMIT 1
                         FOR UPDATE OF s SKIP LOCKED)
                   AND p.worker_id = t.worker_id AND p.generation = t.generation
                RETURNING p.worker_id, p.lease_s, p.channel, p.generation
            ),
            ins AS (
                INSERT INTO jobs (kind, payload, idempotency_key, priority, max_attempts, run_at,
                                  state, attempts, fencing_token, lease_owner, lease_expires_at,
                                  started_at, push_generation)
                SELECT $1, $2, $3, $4, $5, now() + make_interval(secs => $6),
                       CASE WHEN s.worker_id IS NULL THEN 'queued' ELSE 'running' END,
                       CASE WHEN s.worker_id IS NULL THEN 0 ELSE 1 END,
                       CASE WHEN s.worker_id IS NULL THEN 0 ELSE 1 END,
                       s.worker_id, now() + make_interval(secs => s.lease_s),
                       CASE WHEN s.worker_id IS NOT NULL THEN now() END, s.generation
                  FROM (SELECT) one LEFT JOIN slot s ON true
                RETURNING id, kind, payload, checkpoint, max_attempts
            ),
            told AS (
                SELECT pg_notify(s.channel, json_build_object(
                           'generation', s.generation, 'id', i.id, 'kind', i.kind,
                           'payload', i.payload, 'checkpoint', i.checkpoint,
                           'max_attempts', i.max_attempts, 'token', 1)::text)
                  FROM ins i CROSS JOIN slot s
            )
            SELECT id FROM ins WHERE (SELECT count(*) FROM told) >= 0
            "#
        };
        let mut q = sqlx::query_scalar(sql)
            .bind(&job.kind)
            .bind(&job.payload)
            .bind(job.idempotency_key.as_deref())
            .bind(job.priority.unwrap_or(0))
            .bind(job.max_attempts.unwrap_or(self.default_max_attempts))
            .bind(job.delay_ms.unwrap_or(0) as f64 / 1000.0);
        if job.idempotency_key.is_none() {
            q = q.bind(super::push::PUSH_PAYLOAD_MAX);
        }
        let id: Option<i64> = q.fetch_optional(&mut *conn).await?;
        if let Some(job_id) = id {
            return Ok(Enqueued {
                job_id,
                created: true,
            });
        }
        let existing: Option<i64> =
            sqlx::query_scalar("SELECT job_id FROM job_keys WHERE key = $1")
                .bind(job.idempotency_key.as_deref())
                .fetch_optional(&mut *conn)
                .await?;
        existing
            .map(|job_id| Enqueued {
                job_id,
                created: false,
            })
            .ok_or_else(|| {
                QueueError::Invalid("idempotency key conflicted but its job was not found".into())
            })
    }

    /// Enqueues keyed jobs in the caller's transaction, in one statement, recording `actor` on
    /// each `enqueued` event (a source's jobs name the source that found them). Returns the
    /// job of each key in input order; a key already in use returns its existing job.
    pub async fn enqueue_keyed_in(
        &self,
        tx: &mut Tx,
        jobs: &[NewJob],
        actor: &Actor,
    ) -> Result<Vec<Enqueued>, QueueError> {
        for j in jobs {
            j.check()?;
            if j.idempotency_key.is_none() {
                return Err(QueueError::Invalid(
                    "enqueue_keyed_in: every job needs an idempotency key".into(),
                ));
            }
        }
        let kinds: Vec<&str> = jobs.iter().map(|j| j.kind.as_str()).collect();
        let payloads: Vec<String> = jobs.iter().map(|j| j.payload.to_string()).collect();
        let keys: Vec<&str> = jobs
            .iter()
            .filter_map(|j| j.idempotency_key.as_deref())
            .collect();
        let max_attempts: Vec<i32> = jobs
            .iter()
            .map(|j| j.max_attempts.unwrap_or(self.default_max_attempts))
            .collect();
        let rows: Vec<(i64, String, bool)> = sqlx::query_as(
            r#"
            WITH input AS MATERIALIZED (
                SELECT t.*, nextval('jobs_id_seq') AS id
                FROM unnest($1::text[], $2::text[], $3::text[], $4::int4[])
                    WITH ORDINALITY AS t(kind, payload, key, max_attempts, ord)
            ),
            k AS (
                INSERT INTO job_keys (key, job_id)
                SELECT key, id FROM input ORDER BY ord
                ON CONFLICT (key) DO NOTHING
                RETURNING key, job_id
            ),
            ins AS (
                -- Its `enqueued` event names the source's actor, so it is an event (the
                -- row's own enqueue, enqueued_in_row, has none: ADR 0018).
                INSERT INTO jobs (id, kind, payload, idempotency_key, max_attempts, enqueued_in_row)
                OVERRIDING SYSTEM VALUE
                SELECT i.id, i.kind, i.payload::jsonb, i.key, i.max_attempts, false
                FROM input i JOIN k ON k.job_id = i.id ORDER BY i.ord
                RETURNING id, idempotency_key
            ),
            ev AS (
                INSERT INTO job_event_log (job_id, event, to_state, worker_id, worker_version)
                SELECT id, 'enqueued', 'queued', $5, $6 FROM ins
            )
            SELECT id, idempotency_key, true FROM ins
            UNION ALL
            SELECT jk.job_id, jk.key, false FROM job_keys jk
             WHERE jk.key = ANY($3) AND NOT EXISTS (SELECT 1 FROM k WHERE k.key = jk.key)
            "#,
        )
        .bind(&kinds)
        .bind(&payloads)
        .bind(&keys)
        .bind(&max_attempts)
        .bind(&actor.id)
        .bind(&actor.version)
        .fetch_all(tx.conn())
        .await?;
        let by_key: std::collections::HashMap<&str, (i64, bool)> =
            rows.iter().map(|r| (r.1.as_str(), (r.0, r.2))).collect();
        keys.iter()
            .map(|k| {
                by_key
                    .get(k)
                    .map(|&(job_id, created)| Enqueued { job_id, created })
                    .ok_or_else(|| QueueError::Invalid(format!("no job for key {k:?}")))
            })
            .collect()
    }

    /// Enqueues many jobs in one statement, in input order: plain ones by `COPY`
    /// ([`JobStore::copy_many`]), a batch with keys or delays by an INSERT. The `enqueued`
    /// transition is the row itself (`created_at`, read by the `job_events` view; ADR 0018).
    pub async fn enqueue_many(&self, jobs: &[NewJob]) -> Result<Vec<Enqueued>, QueueError> {
        for j in jobs {
            j.check()?;
        }
        if jobs.is_empty() {
            // Nothing to write (and `array_agg` over no ids would be NULL).
            return Ok(Vec::new());
        }
        if jobs
            .iter()
            .all(|j| j.idempotency_key.is_none() && j.delay_ms.unwrap_or(0) == 0)
        {
            return self.copy_many(jobs).await;
        }
        let n = jobs.len();
        let mut kinds = Vec::with_capacity(n);
        let mut payloads = Vec::with_capacity(n);
        let mut keys = Vec::with_capacity(n);
        let mut priorities = Vec::with_capacity(n);
        let mut max_attempts = Vec::with_capacity(n);
        let mut delays = Vec::with_capacity(n);
        for j in jobs {
            kinds.push(j.kind.as_str());
            payloads.push(j.payload.to_string());
            keys.push(j.idempotency_key.as_deref());
            priorities.push(j.priority.unwrap_or(0));
            max_attempts.push(j.max_attempts.unwrap_or(self.default_max_attempts));
            delays.push(j.delay_ms.unwrap_or(0) as f64 / 1000.0);
        }
        // Every row draws its id first; a keyed row is inserted only when its key was free
        // in `job_keys`. Ids of keys already in use are looked up afterwards.
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            r#"
            WITH input AS MATERIALIZED (
                SELECT t.*, nextval('jobs_id_seq') AS id
                FROM unnest($1::text[], $2::text[], $3::text[], $4::int2[], $5::int4[], $6::float8[])
                    WITH ORDINALITY AS t(kind, payload, key, priority, max_attempts, delay_s, ord)
            ),
            k AS (
                INSERT INTO job_keys (key, job_id)
                SELECT key, id FROM input WHERE key IS NOT NULL ORDER BY ord
                ON CONFLICT (key) DO NOTHING
                RETURNING job_id
            ),
            ins AS (
                INSERT INTO jobs (id, kind, payload, idempotency_key, priority, max_attempts, run_at)
                OVERRIDING SYSTEM VALUE
                SELECT id, kind, payload::jsonb, key, priority, max_attempts,
                       now() + make_interval(secs => delay_s)
                FROM input WHERE key IS NULL OR id IN (SELECT job_id FROM k)
                ORDER BY ord
                RETURNING id
            )
            SELECT id, ord FROM input WHERE key IS NULL OR id IN (SELECT job_id FROM k)
            "#,
        )
        .bind(&kinds)
        .bind(&payloads)
        .bind(&keys)
        .bind(&priorities)
        .bind(&max_attempts)
        .bind(&delays)
        .fetch_all(&self.pool)
        .await?;

        let mut out: Vec<Option<Enqueued>> = vec![None; n];
        for (id, ord) in &rows {
            out[(*ord - 1) as usize] = Some(Enqueued {
                job_id: *id,
                created: true,
            });
        }
        let missing: Vec<&str> = jobs
            .iter()
            .zip(&out)
            .filter(|(_, o)| o.is_none())
            .filter_map(|(j, _)| j.idempotency_key.as_deref())
            .collect();
        if !missing.is_empty() {
            let existing: Vec<(i64, String)> =
                sqlx::query_as("SELECT job_id, key FROM job_keys WHERE key = ANY($1::text[])")
                    .bind(&missing)
                    .fetch_all(&self.pool)
                    .await?;
            for (j, o) in jobs.iter().zip(out.iter_mut()) {
                if o.is_none() {
                    let key = j.idempotency_key.as_deref();
                    let id = existing
                        .iter()
                        .find(|(_, k)| Some(k.as_str()) == key)
                        .map(|(id, _)| *id)
                        .ok_or_else(|| {
                            QueueError::Invalid(format!(
                                "idempotency key {key:?} conflicted but its job was not found"
                            ))
                        })?;
                    *o = Some(Enqueued {
                        job_id: id,
                        created: false,
                    });
                }
            }
        }
        Ok(out.into_iter().map(|o| o.expect("filled")).collect())
    }

    /// Plain jobs (no key, no delay) are streamed with `COPY`, as River's `InsertManyFast`
    /// does: their ids are drawn first in one round trip, in input order, and the rows sent in
    /// COPY's text format. One statement, so all or none are enqueued, and the statement
    /// triggers on `jobs` (arrival counts, the wake-up) fire as for an INSERT. A third faster
    /// than the INSERT over `unnest` in the queue benchmark (ADR 0021).
    async fn copy_many(&self, jobs: &[NewJob]) -> Result<Vec<Enqueued>, QueueError> {
        let mut conn = self.pool.acquire().await?;
        let mut ids: Vec<i64> = sqlx::query_scalar(
            "SELECT array_agg(nextval('jobs_id_seq')) FROM generate_series(1, $1::int8)",
        )
        .bind(jobs.len() as i64)
        .fetch_one(&mut *conn)
        .await?;
        // Ascending ids in input order: the claim takes equal priorities by (run_at, id).
        ids.sort_unstable();
        let mut rows = Vec::with_capacity(jobs.len() * 64);
        for (id, j) in ids.iter().zip(jobs) {
            use std::io::Write as _;
            let _ = write!(rows, "{id}\t");
            let _ = CopyText(&mut rows).write_all(j.kind.as_bytes());
            rows.push(b'\t');
            // Serialized straight through the escaper, not into a String first.
            serde_json::to_writer(CopyText(&mut rows), &j.payload)
                .map_err(|e| QueueError::Invalid(format!("payload: {e}")))?;
            let priority = j.priority.unwrap_or(0);
            let attempts = j.max_attempts.unwrap_or(self.default_max_attempts);
            let _ = writeln!(rows, "\t{priority}\t{attempts}");
        }
        let mut copy = conn
            .copy_in_raw("COPY jobs (id, kind, payload, priority, max_attempts) FROM STDIN")
            .await?;
        copy.send(rows).await?;
        copy.finish().await?;
        Ok(ids
            .into_iter()
            .map(|job_id| Enqueued {
                job_id,
                created: true,
            })
            .collect())
    }
}

/// Writes what it is given as a column of COPY's text format: backslash, tab, newline and
/// carriage return escaped.
struct CopyText<'a>(&'a mut Vec<u8>);

impl std::io::Write for CopyText<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            match b {
                b'\\' => self.0.extend_from_slice(b"\\\\"),
                b'\t' => self.0.extend_from_slice(b"\\t"),
                b'\n' => self.0.extend_from_slice(b"\\n"),
                b'\r' => self.0.extend_from_slice(b"\\r"),
                _ => self.0.push(b),
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
