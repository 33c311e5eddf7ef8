//! `SourceStore`: the only owner of `source_schedules`, `source_runs` and `ingest_ledger`.
//! Time comes from PostgreSQL's `now()`: no decision here reads this host's clock.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;

use crate::db::{Pools, Tx};

/// The store's error (its callers outside the store name it, not the driver).
pub type StoreError = sqlx::Error;
pub type StoreResult<T> = Result<T, StoreError>;

/// Why a listing ran (`source_runs.trigger`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Schedule,
    Manual,
    Reconcile,
    Eventgrid,
    /// A listing whose process died (or stopped) before it finished, taken over.
    Resume,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Manual => "manual",
            Trigger::Reconcile => "reconcile",
            Trigger::Eventgrid => "eventgrid",
            Trigger::Resume => "resume",
        }
    }
}

/// A schedule row that is due now (its slot passed, or a tick was asked for), as read.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Due {
    pub source: String,
    pub next_slot: Option<DateTime<Utc>>,
    pub requested_at: Option<DateTime<Utc>>,
    /// Set when a listing's owner never gave its lease back (killed, or stopped mid-way):
    /// the listing is taken over as soon as the lease lapses.
    pub lease_owner: Option<String>,
}

/// A won slot: this process runs the listing, under a lease.
#[derive(Debug, Clone)]
pub struct Claim {
    pub run_id: i64,
    pub trigger: Trigger,
    pub slot: DateTime<Utc>,
    /// The database's clock when the slot was taken: `min_age` is measured against it.
    pub at: DateTime<Utc>,
}

/// Skipped blobs of one reason: how many, and the first few keys.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct ReasonCount {
    pub count: u64,
    pub examples: Vec<String>,
}

/// Examples kept per skip reason in a run's history.
pub const REASON_EXAMPLES: usize = 5;

/// What one listing or delivery saw.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RunCounts {
    pub listed: u64,
    pub new: u64,
    pub duplicate: u64,
    pub skipped: u64,
    pub reasons: BTreeMap<String, ReasonCount>,
}

impl RunCounts {
    pub fn skip(&mut self, reason: &str, key: &str) {
        self.skipped += 1;
        let r = self.reasons.entry(reason.to_string()).or_default();
        r.count += 1;
        if r.examples.len() < REASON_EXAMPLES {
            r.examples.push(key.chars().take(300).collect());
        }
    }
}

/// A row to add to the ledger.
#[derive(Debug, Clone)]
pub struct NewLedgerRow {
    pub blob_key: String,
    pub etag: String,
    pub size: i64,
    pub last_modified: Option<DateTime<Utc>>,
    pub event_id: Option<String>,
    pub bu_id: String,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LedgerEntry {
    pub id: i64,
    pub source: String,
    pub blob_key: String,
    pub etag: String,
    pub size: i64,
    pub last_modified: Option<DateTime<Utc>>,
    pub found_by: String,
    pub found_at: DateTime<Utc>,
    pub run_id: Option<i64>,
    pub event_id: Option<String>,
    pub bu_id: String,
    pub connector: String,
    pub job_id: Option<i64>,
    /// The job's state now; absent once retention deleted the job.
    pub job_state: Option<String>,
    pub lag_ms: Option<i64>,
}

#[derive(Debug, Clone, Default)]
pub struct LedgerFilter {
    pub found_by: Option<String>,
    pub bu_id: Option<String>,
    pub key_prefix: Option<String>,
    /// Entries with a smaller id (newest first).
    pub before: Option<i64>,
    pub limit: i64,
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RunRow {
    pub id: i64,
    pub source: String,
    pub trigger: String,
    pub slot: Option<DateTime<Utc>>,
    pub worker_id: Option<String>,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub outcome: Option<String>,
    pub listed: i64,
    pub new: i64,
    pub duplicate: i64,
    pub skipped: i64,
    pub reasons: Value,
    pub error: Option<String>,
}

/// A source's durable schedule row, with its latest finished run.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct SourceRow {
    pub source: String,
    pub spec: String,
    pub next_slot: Option<DateTime<Utc>>,
    pub last_slot: Option<DateTime<Utc>>,
    pub paused: bool,
    pub paused_by: Option<String>,
    pub paused_at: Option<DateTime<Utc>>,
    /// Who runs a listing now (absent when none runs).
    pub lease_owner: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    pub requested_at: Option<DateTime<Utc>>,
    pub ledger_rows: i64,
    #[sqlx(skip)]
    pub last_run: Option<RunRow>,
}

const RUN_COLUMNS: &str = "id, source, trigger, slot, worker_id, started_at, finished_at, outcome,
    listed, new, duplicate, skipped, reasons, error";

#[derive(Clone, Debug)]
pub struct SourceStore {
    pool: PgPool,
}

impl SourceStore {
    pub fn new(pools: &Pools) -> Self {
        SourceStore {
            pool: pools.main.clone(),
        }
    }

    /// The database's clock.
    pub async fn now(&self) -> StoreResult<DateTime<Utc>> {
        sqlx::query_scalar("SELECT now()")
            .fetch_one(&self.pool)
            .await
    }

    /// Makes the schedule row of `source` match its configured schedule: created when
    /// missing; its next slot recomputed by `next_after` (given the database's clock) when
    /// the schedule text changed. An unchanged schedule keeps its slot, so a slot missed while
    /// the fleet was down is still due — once.
    pub async fn sync_schedule(
        &self,
        source: &str,
        spec: &str,
        next_after: impl Fn(DateTime<Utc>) -> Option<DateTime<Utc>>,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
            .fetch_one(&mut *tx)
            .await?;
        let next = next_after(now);
        sqlx::query(
            "INSERT INTO source_schedules (source, spec, next_slot) VALUES ($1, $2, $3)
             ON CONFLICT (source) DO UPDATE
                SET spec = EXCLUDED.spec, next_slot = EXCLUDED.next_slot, updated_at = now()
              WHERE source_schedules.spec IS DISTINCT FROM EXCLUDED.spec",
        )
        .bind(source)
        .bind(spec)
        .bind(next)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    }

    /// The rows among `sources` that are due now by the database's clock, not paused, and
    /// not being listed by anyone.
    pub async fn due(&self, sources: &[String]) -> StoreResult<Vec<Due>> {
        sqlx::query_as(
            "SELECT source, next_slot, requested_at, lease_owner FROM source_schedules
              WHERE source = ANY($1) AND NOT paused
                AND (next_slot <= now() OR requested_at IS NOT NULL OR lease_owner IS NOT NULL)
                AND (lease_until IS NULL OR lease_until < now())
              ORDER BY coalesce(requested_at, next_slot)",
        )
        .bind(sources)
        .fetch_all(&self.pool)
        .await
    }

    /// Takes the slot `due` read, if nobody else did (compare-and-set on the slot and the
    /// request): the next slot comes from `next_after` on the database's clock, unfinished
    /// runs of the source are marked cut (their lease lapsed), and a run row is opened —
    /// all in one transaction.
    pub async fn claim(
        &self,
        due: &Due,
        listing_trigger: Trigger,
        next_after: impl Fn(DateTime<Utc>) -> Option<DateTime<Utc>>,
        owner: &str,
        lease: Duration,
    ) -> StoreResult<Option<Claim>> {
        let mut tx = self.pool.begin().await?;
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
            .fetch_one(&mut *tx)
            .await?;
        let scheduled = due.next_slot.is_some_and(|s| s <= now);
        let next = if scheduled {
            next_after(now)
        } else {
            due.next_slot
        };
        let won = sqlx::query(
            "UPDATE source_schedules
                SET next_slot = $4,
                    last_slot = CASE WHEN $6 THEN next_slot ELSE last_slot END,
                    requested_at = NULL, requested_by = NULL,
                    lease_owner = $5, lease_until = now() + make_interval(secs => $7),
                    updated_at = now()
              WHERE source = $1
                AND next_slot IS NOT DISTINCT FROM $2
                AND requested_at IS NOT DISTINCT FROM $3
                AND lease_owner IS NOT DISTINCT FROM $8
                AND NOT paused
                AND (lease_until IS NULL OR lease_until < now())
                AND (next_slot <= now() OR requested_at IS NOT NULL OR lease_owner IS NOT NULL)",
        )
        .bind(&due.source)
        .bind(due.next_slot)
        .bind(due.requested_at)
        .bind(next)
        .bind(owner)
        .bind(scheduled)
        .bind(lease.as_secs_f64())
        .bind(due.lease_owner.as_deref())
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !won {
            return Ok(None);
        }
        sqlx::query(
            "UPDATE source_runs SET outcome = 'cut', finished_at = now(),
                    error = 'the listing stopped before it finished (its process died or was cut off); the next listing covers it'
              WHERE source = $1 AND finished_at IS NULL",
        )
        .bind(&due.source)
        .execute(&mut *tx)
        .await?;
        let (trigger, slot) = match (scheduled, due.next_slot, due.requested_at) {
            (true, Some(s), _) => (listing_trigger, s),
            (_, _, Some(r)) => (Trigger::Manual, r),
            _ => (Trigger::Resume, now),
        };
        let run_id: i64 = sqlx::query_scalar(
            "INSERT INTO source_runs (source, trigger, slot, worker_id, started_at)
             VALUES ($1, $2, $3, $4, clock_timestamp())
             RETURNING id",
        )
        .bind(&due.source)
        .bind(trigger.as_str())
        .bind(slot)
        .bind(owner)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(Claim {
            run_id,
            trigger,
            slot,
            at: now,
        }))
    }

    /// Extends the listing's lease; false when it is no longer this owner's.
    pub async fn renew(&self, source: &str, owner: &str, lease: Duration) -> StoreResult<bool> {
        Ok(sqlx::query(
            "UPDATE source_schedules SET lease_until = now() + make_interval(secs => $3)
              WHERE source = $1 AND lease_owner = $2",
        )
        .bind(source)
        .bind(owner)
        .bind(lease.as_secs_f64())
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    /// Closes a listing's run with its counts and gives the lease back. With `hand_over`
    /// (the listing stopped part-way), the lease is left to lapse at once instead, so the
    /// next process to poll takes the listing over (trigger `resume`).
    pub async fn finish_run(
        &self,
        source: &str,
        owner: &str,
        run_id: i64,
        counts: &RunCounts,
        error: Option<&str>,
        hand_over: bool,
    ) -> StoreResult<()> {
        let mut tx = Tx(self.pool.begin().await?);
        finish_run_on(&mut tx, run_id, counts, error).await?;
        let release = if hand_over {
            "UPDATE source_schedules SET lease_until = now() - interval '1 millisecond'
              WHERE source = $1 AND lease_owner = $2"
        } else {
            "UPDATE source_schedules SET lease_owner = NULL, lease_until = NULL
              WHERE source = $1 AND lease_owner = $2"
        };
        sqlx::query(release)
            .bind(source)
            .bind(owner)
            .execute(tx.conn())
            .await?;
        tx.0.commit().await
    }

    /// Asks for a listing now: the next process to poll takes it through the slot. A request
    /// already pending stays (two clicks, one listing). None for an unknown source.
    pub async fn request_tick(
        &self,
        source: &str,
        actor: &str,
    ) -> StoreResult<Option<DateTime<Utc>>> {
        sqlx::query_scalar(
            "UPDATE source_schedules
                SET requested_at = coalesce(requested_at, now()),
                    requested_by = coalesce(requested_by, $2), updated_at = now()
              WHERE source = $1
             RETURNING requested_at",
        )
        .bind(source)
        .bind(actor)
        .fetch_optional(&self.pool)
        .await
    }

    /// Pauses or resumes; false for an unknown source.
    pub async fn set_paused(&self, source: &str, paused: bool, actor: &str) -> StoreResult<bool> {
        Ok(sqlx::query(
            "UPDATE source_schedules
                SET paused = $2,
                    paused_by = CASE WHEN $2 THEN $3 END,
                    paused_at = CASE WHEN $2 THEN now() END,
                    updated_at = now()
              WHERE source = $1",
        )
        .bind(source)
        .bind(paused)
        .bind(actor)
        .execute(&self.pool)
        .await?
        .rows_affected()
            == 1)
    }

    pub async fn is_paused(&self, source: &str) -> StoreResult<bool> {
        Ok(
            sqlx::query_scalar("SELECT paused FROM source_schedules WHERE source = $1")
                .bind(source)
                .fetch_optional(&self.pool)
                .await?
                .unwrap_or(false),
        )
    }

    /// The schedule rows of `sources`, each with its latest finished run.
    pub async fn sources(&self, sources: &[String]) -> StoreResult<Vec<SourceRow>> {
        let mut rows: Vec<SourceRow> = sqlx::query_as(
            "SELECT s.source, s.spec, s.next_slot, s.last_slot, s.paused, s.paused_by,
                    s.paused_at, s.lease_owner, s.lease_until, s.requested_at,
                    (SELECT count(*) FROM ingest_ledger l WHERE l.source = s.source) AS ledger_rows
               FROM source_schedules s WHERE s.source = ANY($1) ORDER BY s.source",
        )
        .bind(sources)
        .fetch_all(&self.pool)
        .await?;
        let last: Vec<RunRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT DISTINCT ON (source) {RUN_COLUMNS} FROM source_runs
              WHERE source = ANY($1) AND finished_at IS NOT NULL
              ORDER BY source, id DESC"
        )))
        .bind(sources)
        .fetch_all(&self.pool)
        .await?;
        for r in &mut rows {
            r.last_run = last.iter().find(|l| l.source == r.source).cloned();
        }
        Ok(rows)
    }

    /// A source's runs, newest first.
    pub async fn runs(
        &self,
        source: &str,
        before: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<RunRow>> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM source_runs
              WHERE source = $1 AND ($2::bigint IS NULL OR id < $2)
              ORDER BY id DESC LIMIT $3"
        )))
        .bind(source)
        .bind(before)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
    }

    /// The newest run id of a source (0 when none): `tick --wait` waits for a newer one.
    pub async fn latest_run_id(&self, source: &str) -> StoreResult<i64> {
        sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM source_runs WHERE source = $1")
            .bind(source)
            .fetch_one(&self.pool)
            .await
    }

    /// The first run of `source` newer than `after` that is not an Event Grid delivery.
    pub async fn listing_after(&self, source: &str, after: i64) -> StoreResult<Option<RunRow>> {
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM source_runs
              WHERE source = $1 AND id > $2 AND trigger <> 'eventgrid'
              ORDER BY id LIMIT 1"
        )))
        .bind(source)
        .bind(after)
        .fetch_optional(&self.pool)
        .await
    }

    /// A source's ledger, newest first, with each job's state.
    pub async fn ledger(&self, source: &str, f: &LedgerFilter) -> StoreResult<Vec<LedgerEntry>> {
        let like = f.key_prefix.as_deref().map(|p| {
            let escaped = p
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("{escaped}%")
        });
        sqlx::query_as(
            "SELECT id, source, blob_key, etag, size, last_modified, found_by, found_at, run_id,
                    event_id, bu_id, connector, job_id, job_state, lag_ms
               FROM ingest_history
              WHERE source = $1
                AND ($2::text IS NULL OR found_by = $2)
                AND ($3::text IS NULL OR bu_id = $3)
                AND ($4::text IS NULL OR blob_key LIKE $4)
                AND ($5::bigint IS NULL OR id < $5)
              ORDER BY id DESC LIMIT $6",
        )
        .bind(source)
        .bind(f.found_by.as_deref())
        .bind(f.bu_id.as_deref())
        .bind(like)
        .bind(f.before)
        .bind(f.limit)
        .fetch_all(&self.pool)
        .await
    }

    /// Which of `rows` the ledger already holds ((key, etag) pairs): a listing of a prefix
    /// it has seen before inserts nothing and burns no identity values.
    pub async fn known(
        &self,
        source: &str,
        rows: &[NewLedgerRow],
    ) -> StoreResult<HashSet<(String, String)>> {
        let keys: Vec<&str> = rows.iter().map(|r| r.blob_key.as_str()).collect();
        let found: Vec<(String, String)> = sqlx::query_as(
            "SELECT blob_key, etag FROM ingest_ledger WHERE source = $1 AND blob_key = ANY($2)",
        )
        .bind(source)
        .bind(&keys)
        .fetch_all(&self.pool)
        .await?;
        Ok(found.into_iter().collect())
    }

    /// Opens a finished run row for an Event Grid delivery in the caller's transaction.
    pub async fn delivery_run_in(
        &self,
        tx: &mut Tx,
        source: &str,
        counts: &RunCounts,
    ) -> StoreResult<i64> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO source_runs (source, trigger, slot, started_at, finished_at, outcome)
             VALUES ($1, 'eventgrid', now(), now(), now(), 'ok') RETURNING id",
        )
        .bind(source)
        .fetch_one(tx.conn())
        .await?;
        finish_run_on(tx, id, counts, None).await?;
        Ok(id)
    }

    /// Rewrites a delivery run's counts once its ledger rows are in (same transaction).
    pub async fn set_run_counts_in(
        &self,
        tx: &mut Tx,
        run_id: i64,
        counts: &RunCounts,
    ) -> StoreResult<()> {
        finish_run_on(tx, run_id, counts, None).await
    }

    /// Inserts ledger rows with ON CONFLICT DO NOTHING; returns (id, key, etag, found_at) of
    /// those that were new.
    pub async fn insert_ledger_in(
        &self,
        tx: &mut Tx,
        source: &str,
        connector: &str,
        found_by: &str,
        run_id: Option<i64>,
        rows: &[NewLedgerRow],
    ) -> StoreResult<Vec<(i64, String, String, DateTime<Utc>)>> {
        let keys: Vec<&str> = rows.iter().map(|r| r.blob_key.as_str()).collect();
        let etags: Vec<&str> = rows.iter().map(|r| r.etag.as_str()).collect();
        let sizes: Vec<i64> = rows.iter().map(|r| r.size).collect();
        let modified: Vec<Option<DateTime<Utc>>> = rows.iter().map(|r| r.last_modified).collect();
        let events: Vec<Option<&str>> = rows.iter().map(|r| r.event_id.as_deref()).collect();
        let bus: Vec<&str> = rows.iter().map(|r| r.bu_id.as_str()).collect();
        sqlx::query_as(
            "INSERT INTO ingest_ledger
                    (source, blob_key, etag, size, last_modified, found_by, run_id, event_id, bu_id, connector)
             SELECT $1, k, e, s, m, $2, $3, ev, b, $4
               FROM unnest($5::text[], $6::text[], $7::int8[], $8::timestamptz[], $9::text[], $10::text[])
                    AS t(k, e, s, m, ev, b)
             ON CONFLICT ON CONSTRAINT ingest_ledger_once DO NOTHING
             RETURNING id, blob_key, etag, found_at",
        )
        .bind(source)
        .bind(found_by)
        .bind(run_id)
        .bind(connector)
        .bind(&keys)
        .bind(&etags)
        .bind(&sizes)
        .bind(&modified)
        .bind(&events)
        .bind(&bus)
        .fetch_all(tx.conn())
        .await
    }

    /// Records which job each new ledger row became.
    pub async fn link_jobs_in(&self, tx: &mut Tx, pairs: &[(i64, i64)]) -> StoreResult<()> {
        let ids: Vec<i64> = pairs.iter().map(|p| p.0).collect();
        let jobs: Vec<i64> = pairs.iter().map(|p| p.1).collect();
        sqlx::query(
            "UPDATE ingest_ledger l SET job_id = t.job_id
               FROM unnest($1::int8[], $2::int8[]) AS t(id, job_id) WHERE l.id = t.id",
        )
        .bind(&ids)
        .bind(&jobs)
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    /// Deletes runs finished before `cutoff_hours` ago (the ledger is kept: it is what
    /// remembers a blob was taken).
    pub async fn delete_old_runs(&self, older_than: Duration) -> StoreResult<u64> {
        Ok(sqlx::query(
            "DELETE FROM source_runs
              WHERE finished_at < now() - make_interval(secs => $1)",
        )
        .bind(older_than.as_secs_f64())
        .execute(&self.pool)
        .await?
        .rows_affected())
    }
}

async fn finish_run_on(
    tx: &mut Tx,
    run_id: i64,
    c: &RunCounts,
    error: Option<&str>,
) -> StoreResult<()> {
    let reasons = serde_json::to_value(&c.reasons).unwrap_or(Value::Null);
    sqlx::query(
        "UPDATE source_runs
            SET finished_at = coalesce(finished_at, clock_timestamp()),
                outcome = CASE WHEN $7::text IS NULL THEN 'ok' ELSE 'failed' END,
                listed = $2, new = $3, duplicate = $4, skipped = $5, reasons = $6, error = $7
          WHERE id = $1 AND outcome IS DISTINCT FROM 'cut'",
    )
    .bind(run_id)
    .bind(c.listed as i64)
    .bind(c.new as i64)
    .bind(c.duplicate as i64)
    .bind(c.skipped as i64)
    .bind(reasons)
    .bind(error)
    .execute(tx.conn())
    .await?;
    Ok(())
}
