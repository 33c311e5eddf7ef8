//! The happy path kept in the job's row (ADR 0018): `job_events` still shows every transition
//! of every job, once, in order, whichever way each attempt ended, while a job that ran once
//! and succeeded stores no event row at all.

use std::time::Duration;

use serde_json::{Value, json};

use etlq::queue::{Actor, ClaimedJob, JobStore, NewJob, RescueRules, Transition, TransitionEvent};

use crate::helpers::{TestDb, wait_for};

fn worker(id: &str) -> Actor {
    Actor {
        id: id.into(),
        version: format!("v-{id}"),
    }
}

async fn claim_one(store: &JobStore, by: &Actor, lease: Duration) -> ClaimedJob {
    let mut got = store
        .claim(by, &["noop".to_string()], 1, lease)
        .await
        .unwrap();
    assert_eq!(got.len(), 1, "one job claimed");
    got.remove(0)
}

fn ended(job: &ClaimedJob, event: TransitionEvent) -> Transition {
    Transition {
        job_id: job.id,
        fencing_token: job.fencing_token,
        event,
        stage: Some("run".into()),
        attempt: job.attempts,
        duration_ms: Some(1.5),
    }
}

fn done() -> TransitionEvent {
    TransitionEvent::StageCompleted {
        output: Value::Null,
        next_stage: None,
    }
}

/// (event, attempt, worker, worker version, stored) of each transition of `id`, in order.
type Row = (String, Option<i32>, Option<String>, Option<String>, bool);

async fn history(db: &TestDb, id: i64) -> Vec<Row> {
    sqlx::query_as(
        "SELECT event, attempt, worker_id, worker_version, id IS NOT NULL
           FROM job_events WHERE job_id = $1 ORDER BY at, id NULLS FIRST",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

fn row(event: &str, attempt: Option<i32>, by: Option<&Actor>, stored: bool) -> Row {
    (
        event.into(),
        attempt,
        by.map(|a| a.id.clone()),
        by.map(|a| a.version.clone()),
        stored,
    )
}

#[tokio::test]
async fn every_transition_reads_as_one_event_whichever_way_an_attempt_ends() {
    let db = TestDb::new().await;
    let store = db.store();
    let (a, b) = (worker("a"), worker("b"));
    let lease = Duration::from_secs(30);
    let enqueue = || async {
        store
            .enqueue(&NewJob::new("noop", json!({})))
            .await
            .unwrap()
            .job_id
    };

    // Runs once and succeeds: three transitions, none of them a stored row.
    let happy = enqueue().await;
    let j = claim_one(&store, &a, lease).await;
    // While it runs, the claim reads from the row, with the worker's version from `workers`
    // (none registered here).
    assert_eq!(
        history(&db, happy).await,
        [
            row("enqueued", None, None, false),
            ("claimed".into(), Some(1), Some("a".into()), None, false)
        ]
    );
    store.apply(&a, &[ended(&j, done())]).await.unwrap();
    assert_eq!(
        history(&db, happy).await,
        [
            row("enqueued", None, None, false),
            row("claimed", Some(1), Some(&a), false),
            row("stage_completed", Some(1), Some(&a), false),
        ]
    );
    let (to_state, stage, ms): (String, String, f64) = sqlx::query_as(
        "SELECT to_state, stage, duration_ms FROM job_events
          WHERE job_id = $1 AND event = 'stage_completed'",
    )
    .bind(happy)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (to_state.as_str(), stage.as_str(), ms),
        ("succeeded", "run", 1.5)
    );
    // An answer lost with its connection is recognised as already applied.
    assert_eq!(
        store.already_applied(&[ended(&j, done())]).await.unwrap(),
        [happy]
    );

    // Fails once, then succeeds on another worker: the first claim is written out when the
    // attempt fails; the second claim is a stored row of its own; the success is in the row.
    let retried = enqueue().await;
    let j = claim_one(&store, &a, lease).await;
    let retry = TransitionEvent::RetryScheduled {
        error: "boom".into(),
        delay_ms: 0,
    };
    store.apply(&a, &[ended(&j, retry)]).await.unwrap();
    let j = claim_one(&store, &b, lease).await;
    assert_eq!(j.attempts, 2);
    store.apply(&b, &[ended(&j, done())]).await.unwrap();
    assert_eq!(
        history(&db, retried).await,
        [
            row("enqueued", None, None, false),
            row("claimed", Some(1), Some(&a), true),
            row("stage_failed", Some(1), Some(&a), true),
            row("claimed", Some(2), Some(&b), true),
            row("stage_completed", Some(2), Some(&b), false),
        ]
    );

    // Rescued after its worker stopped renewing: the claim is written out with the rescue.
    let rescued = enqueue().await;
    claim_one(&store, &a, Duration::from_millis(300)).await;
    wait_for(Duration::from_secs(20), "the lease to expire", || async {
        let n = store
            .rescue_expired(
                &worker("r"),
                &RescueRules {
                    grace: Duration::ZERO,
                    overdue: Duration::from_secs(60),
                    max_streak: 5,
                    stall: Duration::from_secs(60),
                },
                10,
            )
            .await
            .unwrap();
        (n.requeued == 1).then_some(())
    })
    .await;
    let h = history(&db, rescued).await;
    assert_eq!(
        h.iter()
            .map(|r| (r.0.as_str(), r.2.as_deref(), r.4))
            .collect::<Vec<_>>(),
        [
            ("enqueued", None, false),
            ("claimed", Some("a"), true),
            ("rescued", Some("r"), true)
        ]
    );

    // (Out of the way of the claims below.)
    store.cancel(rescued, &worker("ops")).await.unwrap();

    // Cancelled while running, and cancelled before it ever ran.
    let cancelled = enqueue().await;
    claim_one(&store, &a, lease).await;
    store.cancel(cancelled, &worker("ops")).await.unwrap();
    let never_ran = enqueue().await;
    store.cancel(never_ran, &worker("ops")).await.unwrap();
    let events = |h: Vec<Row>| h.into_iter().map(|r| (r.0, r.4)).collect::<Vec<_>>();
    assert_eq!(
        events(history(&db, cancelled).await),
        [
            ("enqueued".to_string(), false),
            ("claimed".to_string(), true),
            ("cancelled".to_string(), true)
        ]
    );
    assert_eq!(
        events(history(&db, never_ran).await),
        [
            ("enqueued".to_string(), false),
            ("cancelled".to_string(), true)
        ]
    );

    // The job that succeeded first time stored nothing; the views read it all the same.
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM job_event_log WHERE job_id = $1")
        .bind(happy)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    let timeline: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, event FROM job_timeline WHERE job_id = $1 ORDER BY seq")
            .bind(retried)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        timeline.iter().map(|t| t.1.as_str()).collect::<Vec<_>>(),
        [
            "enqueued",
            "claimed",
            "stage_failed",
            "claimed",
            "stage_completed"
        ]
    );
    let runs: Vec<(String, String, f64)> =
        sqlx::query_as("SELECT stage, worker_id, duration_ms FROM stage_runs WHERE job_id = $1")
            .bind(happy)
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(runs, [("run".to_string(), "a".to_string(), 1.5)]);
}

#[tokio::test]
async fn events_written_into_the_view_are_stored_and_told_once() {
    // A process of the previous release, mid rolling deploy, writes its `enqueued` and
    // `claimed` events into `job_events` itself, as does anyone's own SQL.
    let db = TestDb::new().await;
    let store = db.store();
    let id = store
        .enqueue(&NewJob::new("noop", json!({})))
        .await
        .unwrap()
        .job_id;
    claim_one(&store, &worker("old"), Duration::from_secs(30)).await;
    let stored: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO job_events (job_id, event, from_state, to_state, attempt, worker_id)
         VALUES ($1, 'enqueued', NULL, 'queued', NULL, NULL),
                ($1, 'claimed', 'queued', 'running', 1, 'old')
         RETURNING id",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(stored.len(), 2, "{stored:?}");
    let h = history(&db, id).await;
    assert_eq!(
        h.iter().map(|r| (r.0.as_str(), r.4)).collect::<Vec<_>>(),
        [("enqueued", true), ("claimed", true)],
        "each told once, from the stored rows"
    );
}

/// (arrived, departed, succeeded, failed) over every minute so far, rolled up or not.
async fn minute_sums(db: &TestDb) -> (i64, i64, i64, i64) {
    sqlx::query_as(
        "SELECT coalesce(sum(arrived), 0)::int8, coalesce(sum(departed), 0)::int8,
                coalesce(sum(succeeded), 0)::int8, coalesce(sum(failed), 0)::int8
           FROM (SELECT arrived, departed, succeeded, failed FROM job_minute_deltas
                 UNION ALL
                 SELECT arrived, departed, succeeded, failed FROM job_event_minutes) m",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_claim_counts_its_own_departures_and_the_statements_after_it_are_counted_as_before() {
    let db = TestDb::new().await;
    let store = db.store();
    let a = worker("a");
    let lease = Duration::from_secs(30);
    let jobs: Vec<NewJob> = (0..5).map(|_| NewJob::new("noop", json!({}))).collect();
    store.enqueue_many(&jobs).await.unwrap();
    assert_eq!(minute_sums(&db).await, (5, 0, 0, 0));

    // The claim writes its own delta (ADR 0024); its statement is on jobs_live (migration
    // 18), which fires neither counting trigger, so nothing is counted twice.
    let first = claim_one(&store, &a, lease).await;
    let more = store
        .claim(&a, &["noop".to_string()], 2, lease)
        .await
        .unwrap();
    assert_eq!(more.len(), 2);
    assert_eq!(minute_sums(&db).await, (5, 3, 0, 0));

    // The retry is counted by the triggers (an arrival and a failure).
    let retry = TransitionEvent::RetryScheduled {
        error: "again".into(),
        delay_ms: 0,
    };
    store.apply(&a, &[ended(&first, retry)]).await.unwrap();
    assert_eq!(minute_sums(&db).await, (6, 3, 0, 1));

    // An update later in the claim's transaction (here a job handed back to the queue by hand)
    // is counted by the triggers.
    let mut tx = db.pool.begin().await.unwrap();
    let claimed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM etlq_claim(1, 'b', 30, 'v', '{noop}')")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    assert_eq!(claimed, 1);
    sqlx::query(
        "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL
          WHERE lease_owner = 'b'",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(minute_sums(&db).await, (7, 4, 0, 1));

    // The rest departs in one claim, the retried job from 'retrying' among them.
    let all = store
        .claim(&a, &["noop".to_string()], 3, lease)
        .await
        .unwrap();
    let again = all
        .into_iter()
        .find(|j| j.id == first.id)
        .expect("the retried job is claimed again");
    assert_eq!(again.attempts, 2);
    assert_eq!(minute_sums(&db).await, (7, 7, 0, 1));

    // Finishing is counted by the triggers, per minute and per day.
    store.apply(&a, &[ended(&again, done())]).await.unwrap();
    assert_eq!(minute_sums(&db).await, (7, 7, 1, 1));
    let finished: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(n), 0)::int8 FROM job_counts WHERE state = 'succeeded'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(finished, 1);
}

async fn day_counts(db: &TestDb) -> Vec<(String, String, i64)> {
    sqlx::query_as(
        "SELECT kind, state, sum(n)::int8 FROM job_counts GROUP BY 1, 2 HAVING sum(n) <> 0
          ORDER BY 1, 2",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

async fn dead_sum(db: &TestDb) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(dead), 0)::int8
           FROM (SELECT dead FROM job_minute_deltas UNION ALL SELECT dead FROM job_event_minutes) m",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_completion_counts_its_own_transitions_and_the_statements_after_it_are_counted_as_before()
{
    let db = TestDb::new().await;
    let store = db.store();
    let a = worker("a");
    let lease = Duration::from_secs(30);
    let kinds = ["noop".to_string(), "other".to_string()];
    let jobs: Vec<NewJob> = (0..8)
        .map(|i| NewJob::new(&kinds[i % 2], json!({})))
        .collect();
    store.enqueue_many(&jobs).await.unwrap();
    let mut claimed = store.claim(&a, &kinds, 6, lease).await.unwrap();
    claimed.sort_by_key(|j| j.id);
    assert_eq!(claimed.len(), 6);
    assert_eq!(minute_sums(&db).await, (8, 6, 0, 0));

    // One batch with every way a transition ends, over both kinds; jobs 0, 2, 4 are `noop`.
    let next = TransitionEvent::StageCompleted {
        output: json!({"rows": 1}),
        next_stage: Some("second".into()),
    };
    let retry = TransitionEvent::RetryScheduled {
        error: "again".into(),
        delay_ms: 0,
    };
    let dead = TransitionEvent::Dead {
        error: "broken".into(),
    };
    let released = TransitionEvent::Released {
        reason: "draining".into(),
    };
    let batch = [
        ended(&claimed[0], done()),
        ended(&claimed[1], done()),
        ended(&claimed[2], next),
        ended(&claimed[3], retry),
        ended(&claimed[4], dead),
        ended(&claimed[5], released),
    ];
    assert_eq!(store.apply(&a, &batch).await.unwrap().len(), 6);
    // Arrivals: the retried and the released job; failures: the retry and the death.
    assert_eq!(minute_sums(&db).await, (10, 6, 2, 2));
    assert_eq!(dead_sum(&db).await, 1);
    let day = |k: &str, s: &str, n| (k.to_string(), s.to_string(), n);
    assert_eq!(
        day_counts(&db).await,
        [
            day("noop", "dead", 1),
            day("noop", "succeeded", 1),
            day("other", "succeeded", 1)
        ]
    );
    // A fenced-off transition (its token is stale) changes and counts nothing.
    assert!(
        store
            .apply(&a, &[ended(&claimed[0], done())])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(minute_sums(&db).await, (10, 6, 2, 2));

    // The completion's mark ends with its statement: a job handed back to the queue by hand
    // later in the same transaction is counted by the triggers.
    let running = claimed[2].clone();
    let mut tx = db.pool.begin().await.unwrap();
    let applied: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM etlq_apply_transitions(
             ARRAY[$1::int8], ARRAY[$2::int8], '{stage_completed}', '{succeeded}', '{second}',
             '{NULL}', '{NULL}', '{0}', '{NULL}', '{NULL}', ARRAY[$3::int4], '{2.5}', 'a', 'v-a')",
    )
    .bind(running.id)
    .bind(running.fencing_token)
    .bind(running.attempts)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(applied, 1);
    let other = store.claim(&a, &kinds, 1, lease).await.unwrap();
    assert_eq!(other.len(), 1);
    sqlx::query(
        "UPDATE jobs SET state = 'queued', lease_owner = NULL, lease_expires_at = NULL
          WHERE id = $1",
    )
    .bind(other[0].id)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    // One more success (the function), a claim's departure, and the hand-made arrival.
    assert_eq!(minute_sums(&db).await, (11, 7, 3, 2));
    assert_eq!(
        day_counts(&db).await,
        [
            day("noop", "dead", 1),
            day("noop", "succeeded", 2),
            day("other", "succeeded", 1)
        ]
    );
}
