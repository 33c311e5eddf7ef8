//! The overview's figures (`GET /v1/stats`): counts by state and kind, and the last hour
//! minute by minute — throughput, failures and the queue's depth — read from the per-minute
//! rollup (`job_event_minutes`) where it has caught up and from the deltas the job statements
//! append (`job_minute_deltas`) for the minutes after it.

use chrono::{DateTime, Duration, DurationRound, Utc};
use serde::Serialize;

use super::{JobStore, QueueError};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct StateKindCount {
    pub state: String,
    pub kind: String,
    pub count: i64,
}

/// One minute of the last hour.
#[derive(Debug, Clone, Default, Serialize, sqlx::FromRow)]
pub struct MinuteBucket {
    pub minute: DateTime<Utc>,
    /// Became claimable: enqueued, retried, released, rescued, scheduled for a retry.
    pub arrived: i64,
    pub succeeded: i64,
    /// Stage failures (each retry counts) and jobs that died.
    pub failed: i64,
    pub dead: i64,
    /// Queued or retrying at the end of the minute.
    #[sqlx(skip)]
    pub depth: i64,
}

/// A recent failure, newest first.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct FailureRow {
    pub job_id: i64,
    pub kind: String,
    pub at: DateTime<Utc>,
    pub event: String,
    pub stage: Option<String>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub counts: Vec<StateKindCount>,
    /// Queued or retrying now.
    pub depth: i64,
    pub open_dead_letters: i64,
    /// Sixty buckets, oldest first, the last one the current minute.
    pub last_hour: Vec<MinuteBucket>,
    pub recent_failures: Vec<FailureRow>,
}

/// Minutes in `last_hour`.
const MINUTES: i64 = 60;
/// Failures listed in `recent_failures`.
const RECENT_FAILURES: i64 = 10;

/// Per minute from `$1` (inclusive) to `$2` (exclusive), summed from the deltas the job
/// statements append (`job_minute_deltas`, migration 20261203000011): a transition into
/// queued/retrying from anything else is an arrival, one out of them a departure; the depth
/// curve is rebuilt backwards from today's depth with these. A literal, shared by the
/// overview (the minutes not rolled up yet) and the rollup.
macro_rules! minutes_sql {
    () => {
        "SELECT minute, sum(arrived)::int8 AS arrived, sum(departed)::int8 AS departed,
                sum(succeeded)::int8 AS succeeded, sum(failed)::int8 AS failed,
                sum(dead)::int8 AS dead
         FROM job_minute_deltas
         WHERE minute >= $1 AND minute < $2
         GROUP BY 1"
    };
}

/// Rolls up every settled minute after the last one rolled up (at most from `$1`) until `$2`
/// into `job_event_minutes`, empty minutes included. Safe to run in several processes at once:
/// they compute the same rows and the second insert does nothing.
const ROLLUP_SQL: &str = concat!(
    "WITH bounds AS (
         SELECT greatest($1::timestamptz, coalesce(max(minute) + interval '1 minute', $1::timestamptz)) AS lo
         FROM job_event_minutes
     ),
     agg AS (",
    minutes_sql!(),
    "),
     minutes AS (
         SELECT g.minute FROM bounds,
              generate_series(bounds.lo, $2::timestamptz - interval '1 minute', interval '1 minute') AS g(minute)
     ),
     ins AS (
         INSERT INTO job_event_minutes (minute, arrived, departed, succeeded, failed, dead)
         SELECT m.minute, coalesce(a.arrived, 0), coalesce(a.departed, 0),
                coalesce(a.succeeded, 0), coalesce(a.failed, 0), coalesce(a.dead, 0)
         FROM minutes m LEFT JOIN agg a ON a.minute = m.minute
         ON CONFLICT (minute) DO NOTHING
         RETURNING 1
     )
     SELECT count(*) FROM ins"
);

#[derive(sqlx::FromRow)]
struct MinuteRow {
    minute: DateTime<Utc>,
    arrived: i64,
    departed: i64,
    succeeded: i64,
    failed: i64,
    dead: i64,
}

impl JobStore {
    pub async fn stats(&self) -> Result<Stats, QueueError> {
        let counts = self.counts_by_state_kind().await?;
        let depth = counts
            .iter()
            .filter(|c| c.state == "queued" || c.state == "retrying")
            .map(|c| c.count)
            .sum();
        let now = Utc::now();
        let this_minute = now.duration_trunc(Duration::minutes(1)).unwrap_or(now);
        let start = this_minute - Duration::minutes(MINUTES - 1);
        // Settled minutes from the rollup, the rest from the events themselves.
        let mut rows: Vec<MinuteRow> =
            sqlx::query_as("SELECT * FROM job_event_minutes WHERE minute >= $1 ORDER BY minute")
                .bind(start)
                .fetch_all(&self.pool)
                .await?;
        let cut = rows
            .last()
            .map(|r| r.minute + Duration::minutes(1))
            .unwrap_or(start);
        rows.extend(
            sqlx::query_as::<_, MinuteRow>(minutes_sql!())
                .bind(cut)
                .bind(now + Duration::minutes(1))
                .fetch_all(&self.pool)
                .await?,
        );
        let recent_failures = sqlx::query_as(
            r#"
            SELECT e.job_id, j.kind, e.at, e.event, e.stage, e.error
            FROM job_event_log e JOIN jobs j ON j.id = e.job_id
            WHERE e.at >= $1 AND e.event IN ('stage_failed', 'dead') -- job_events_failures_idx
            ORDER BY e.at DESC
            LIMIT $2
            "#,
        )
        .bind(start)
        .bind(RECENT_FAILURES)
        .fetch_all(&self.pool)
        .await?;
        let open_dead_letters = self.open_dead_letter_count().await?;
        Ok(Stats {
            counts,
            depth,
            open_dead_letters,
            last_hour: last_hour(start, depth, &rows),
            recent_failures,
        })
    }
}

impl JobStore {
    /// Rolls up the minutes from `from` (at the earliest) to `settled` into
    /// `job_event_minutes`, deletes their deltas, and forgets rollups older than `from`;
    /// returns minutes added.
    pub async fn roll_up_minutes(
        &self,
        from: DateTime<Utc>,
        settled: DateTime<Utc>,
    ) -> Result<i64, QueueError> {
        let trunc = |t: DateTime<Utc>| t.duration_trunc(Duration::minutes(1)).unwrap_or(t);
        let mut tx = self.pool.begin().await?;
        let added = sqlx::query_scalar(ROLLUP_SQL)
            .bind(trunc(from))
            .bind(trunc(settled))
            .fetch_one(&mut *tx)
            .await?;
        // The settled minutes' deltas are in job_event_minutes now (a delta committed later
        // than the settle lag is dropped here, as a late event was missed before).
        sqlx::query("DELETE FROM job_minute_deltas WHERE minute < $1")
            .bind(trunc(settled))
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM job_event_minutes WHERE minute < $1")
            .bind(trunc(from))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(added)
    }
}

/// Sixty buckets from `start`, with the depth at the end of each minute: today's depth minus
/// the net arrivals of every later minute.
fn last_hour(start: DateTime<Utc>, depth_now: i64, rows: &[MinuteRow]) -> Vec<MinuteBucket> {
    let mut buckets: Vec<MinuteBucket> = (0..MINUTES)
        .map(|i| MinuteBucket {
            minute: start + Duration::minutes(i),
            ..MinuteBucket::default()
        })
        .collect();
    let mut net = vec![0i64; buckets.len()];
    for r in rows {
        let i = (r.minute - start).num_minutes();
        let Some(b) = usize::try_from(i).ok().and_then(|i| buckets.get_mut(i)) else {
            continue;
        };
        b.arrived = r.arrived;
        b.succeeded = r.succeeded;
        b.failed = r.failed;
        b.dead = r.dead;
        net[i as usize] = r.arrived - r.departed;
    }
    let mut depth = depth_now;
    for (b, n) in buckets.iter_mut().zip(&net).rev() {
        b.depth = depth.max(0);
        depth -= n;
    }
    buckets
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(minute: DateTime<Utc>, arrived: i64, departed: i64) -> MinuteRow {
        MinuteRow {
            minute,
            arrived,
            departed,
            succeeded: 0,
            failed: 0,
            dead: 0,
        }
    }

    #[test]
    fn depth_is_rebuilt_backwards_from_now() {
        let start = Utc::now().duration_trunc(Duration::minutes(1)).unwrap();
        // Minute 10: 5 arrive; minute 20: 3 leave; now 2 are waiting.
        let rows = [
            row(start + Duration::minutes(10), 5, 0),
            row(start + Duration::minutes(20), 0, 3),
        ];
        let b = last_hour(start, 2, &rows);
        assert_eq!(b.len(), 60);
        assert_eq!(b[59].depth, 2);
        assert_eq!(b[20].depth, 2);
        assert_eq!(b[19].depth, 5);
        assert_eq!(b[10].depth, 5);
        assert_eq!(b[9].depth, 0);
        assert_eq!(b[10].arrived, 5);
    }
}
