//! The worker at the edges an outside review found (issue 18): the concurrency cap under
//! several claim loops, a statement PostgreSQL refuses, and the fleet row following the
//! process; and a finished job leaving its slot while its outcome is written (ADR 0026).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use etlq::lifecycle::Mode;
use etlq::queue::{JobState, NewJob};
use etlq::startup::Role;

use crate::helpers::*;

const T: Duration = Duration::from_secs(60);

/// The most stage runs of `stage` that overlapped in time, from the test kind's own record of
/// when each began and ended.
async fn peak_overlap(pool: &sqlx::PgPool, stage: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(max(running), 0)::bigint FROM (
           SELECT sum(d) OVER (ORDER BY at, d ROWS UNBOUNDED PRECEDING) AS running FROM (
             SELECT started_at AS at, 1 AS d FROM test_stage_runs WHERE stage = $1
             UNION ALL
             SELECT finished_at, -1 FROM test_stage_runs WHERE stage = $1) e) r",
    )
    .bind(stage)
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn metric(app: &TestApp, name: &str) -> u64 {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric_value(&text, name).unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// Enqueues `jobs` in one statement; their ids in order.
async fn enqueue_ids(store: &etlq::queue::JobStore, jobs: &[NewJob]) -> Vec<i64> {
    let done = store.enqueue_many(jobs).await.unwrap();
    done.iter().map(|e| e.job_id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn several_claim_loops_never_run_more_jobs_than_the_cap() {
    let db = Arc::new(TestDb::new().await);
    // All queued before the worker starts: every claim loop finds a backlog at once.
    let jobs: Vec<NewJob> = (0..40)
        .map(|_| NewJob::new("test", json!({"sleep_ms": {"first": 150}})))
        .collect();
    let ids = enqueue_ids(&db.store(), &jobs).await;
    let app = spawn_app_on(db.clone(), Role::Serve, |s| {
        s.worker.concurrency = 4;
        s.worker.fetchers = 4;
        s.worker.fetch_batch = 4;
    })
    .await;
    let store = app.store();
    for id in ids {
        require_state(&store, id, JobState::Succeeded, T).await;
    }
    assert_eq!(
        peak_overlap(&db.pool, "first").await,
        4,
        "the cap was reached and never passed"
    );
    app.stop().await;
}

/// How many statements finished `ids`: one transaction gives its jobs one `finished_at`.
async fn finishing_statements(pool: &sqlx::PgPool, ids: &[i64]) -> i64 {
    sqlx::query_scalar("SELECT count(DISTINCT finished_at) FROM jobs WHERE id = ANY ($1)")
        .bind(ids)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Four single enqueues 80 ms apart, each run as it arrives; how many statements finished them
/// with `worker.completion_wait_ms = wait`.
async fn finish_four_spread_out(wait: u64) -> i64 {
    let db = Arc::new(TestDb::new().await);
    let app = spawn_app_on(db.clone(), Role::Serve, |s| {
        s.worker.completion_wait_ms = wait;
    })
    .await;
    let store = app.store();
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(app.enqueue("test", json!({})).await);
        tokio::time::sleep(Duration::from_millis(80)).await;
    }
    for &id in &ids {
        require_state(&store, id, JobState::Succeeded, T).await;
    }
    let n = finishing_statements(&db.pool, &ids).await;
    app.stop().await;
    n
}

#[tokio::test]
async fn small_batches_of_completions_wait_for_each_other_only_as_long_as_configured() {
    // A window longer than the four arrivals (240 ms): the first job's checkpoint waits for
    // the others', and from then on the four move, and finish, together.
    assert_eq!(
        finish_four_spread_out(1000).await,
        1,
        "one statement finished all four"
    );
    // No wait: each job, 80 ms after the one before, is finished by a statement of its own
    // (at least two, so a stalled machine merging two neighbours does not fail the test).
    let apart = finish_four_spread_out(0).await;
    assert!(
        apart >= 2,
        "with no wait, {apart} statement(s) finished four spread-out jobs"
    );
}

#[tokio::test]
async fn a_statement_postgres_refuses_fails_its_job_at_once_and_the_worker_goes_on() {
    let app = spawn_app().await;
    let store = app.store();
    // One batch: the refused checkpoint shares the completer's statement with good ones.
    let mut bad = NewJob::new("test", json!({"unstorable": "second"}));
    bad.max_attempts = Some(1);
    let mut jobs = vec![bad];
    jobs.extend((0..8).map(|_| NewJob::new("test", json!({}))));
    let ids = enqueue_ids(&store, &jobs).await;
    // Well inside the outage tolerance (300 s): a refusal is not waited on.
    let quick = Duration::from_secs(20);
    require_state(&store, ids[0], JobState::Dead, quick).await;
    for &id in &ids[1..] {
        require_state(&store, id, JobState::Succeeded, quick).await;
    }
    let dead = store.get(ids[0]).await.unwrap();
    let error = dead.last_error.unwrap_or_default();
    assert!(
        error.starts_with("second: PostgreSQL refused the stage's checkpoint (SQLSTATE 22P05"),
        "{error}"
    );
    assert!(
        !error.contains("Unicode"),
        "no database text in a job: {error}"
    );
    assert!(dead.checkpoint.get("first").is_some());
    assert!(dead.checkpoint.get("second").is_none());
    assert_eq!(metric(&app, "etlq_transitions_refused_total").await, 1);
    assert_eq!(metric(&app, "etlq_stale_writes_rejected_total").await, 0);
    // And the worker goes on.
    let next = app.enqueue("test", json!({})).await;
    require_state(&store, next, JobState::Succeeded, quick).await;
    app.stop().await;
}

#[tokio::test]
async fn the_fleet_row_follows_the_in_flight_count_between_beats() {
    let db = Arc::new(TestDb::new().await);
    // Beats far apart: what the row shows in between comes from changes, not beats.
    let app = spawn_app_on(db.clone(), Role::Serve, |s| {
        s.worker.heartbeat_ms = 60_000;
        s.worker.worker_ttl_ms = 600_000;
        s.worker.concurrency = 50;
    })
    .await;
    let id = app.app.as_ref().unwrap().state.identity.id.clone();
    let row = || {
        let pool = db.pool.clone();
        let id = id.clone();
        async move {
            sqlx::query_scalar::<_, i32>("SELECT in_flight FROM workers WHERE id = $1")
                .bind(id)
                .fetch_optional(&pool)
                .await
                .unwrap()
        }
    };
    let jobs: Vec<NewJob> = (0..1000)
        .map(|_| NewJob::new("test", json!({"record": false, "sleep_ms": {"first": 20}})))
        .collect();
    app.store().enqueue_many(&jobs).await.unwrap();
    let busiest = std::sync::atomic::AtomicI32::new(0);
    wait_for(T, "the 1,000 jobs to finish", || async {
        let shown = row().await.unwrap_or(0);
        assert!(shown <= 50, "the row shows {shown} in flight, over the cap");
        busiest.fetch_max(shown, std::sync::atomic::Ordering::Relaxed);
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state <> 'succeeded'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        (left == 0).then_some(())
    })
    .await;
    assert!(
        busiest.into_inner() > 0,
        "the row showed the work while it ran"
    );
    assert_eq!(app.lifecycle().status().in_flight, 0);
    // Within the debounce and a write, not at the next beat a minute away.
    wait_for(
        Duration::from_secs(2),
        "the row to show the idle worker",
        || async { (row().await == Some(0)).then_some(()) },
    )
    .await;
    app.stop().await;
}

async fn state_in_db(store: &etlq::queue::JobStore, id: i64) -> JobState {
    store.get(id).await.unwrap().state
}

#[tokio::test]
async fn finished_jobs_leave_their_slots_while_their_outcomes_are_written() {
    // ADR 0026. One slot. A's outcome is held up for real: a transaction of the test's holds
    // A's row, so the completion statement waits on it.
    let db = Arc::new(TestDb::new().await);
    let app = spawn_app_on(db.clone(), Role::Serve, |s| {
        s.worker.concurrency = 1;
        s.worker.fetch_batch = 1;
        s.worker.completion_wait_ms = 0;
    })
    .await;
    let mut signals = app.app.as_ref().unwrap().signals.subscribe();
    let a = app
        .enqueue("test", json!({"sleep_ms": {"third": 500}}))
        .await;
    // Its first two stages written: its last one runs.
    wait_stages_completed(&db.pool, a, 2).await;
    let mut hold = db.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM jobs WHERE id = $1 FOR SHARE")
        .bind(a)
        .execute(&mut *hold)
        .await
        .unwrap();
    wait_for(
        T,
        "A's stages to be done and its outcome waiting",
        || async {
            let st = app.lifecycle().status();
            (st.in_flight == 0 && st.writing == 1).then_some(())
        },
    )
    .await;
    assert_eq!(state_in_db(&app.store(), a).await, JobState::Running);

    // A drain waits for the write although no stage runs.
    assert_eq!(app.lifecycle().drain().mode, Mode::PreparingForStop);
    let (_, body) = app.get("/v1/lifecycle").await;
    assert_eq!(body["in_flight"], 0);
    assert_eq!(body["writing"], 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.lifecycle().mode(), Mode::PreparingForStop);
    app.lifecycle().resume();

    // The slot A left takes B while A's outcome is unwritten. B fails at once, and as one
    // outcome is being written already (the cap: worker.concurrency), B keeps its slot: C
    // waits for it.
    let b = app
        .enqueue("test", json!({"fail": {"first": {"fatal": true}}}))
        .await;
    wait_started(&mut signals, b, T).await;
    assert_eq!(state_in_db(&app.store(), a).await, JobState::Running);
    wait_for(T, "B's stage to fail and its outcome to wait", || async {
        let st = app.lifecycle().status();
        (st.in_flight == 1 && st.writing == 1).then_some(())
    })
    .await;
    let c = app.enqueue("test", json!({})).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        state_in_db(&app.store(), c).await,
        JobState::Queued,
        "C found no slot"
    );
    assert!(stage_runs(&db.pool, c).await.is_empty());

    hold.rollback().await.unwrap();
    let store = app.store();
    require_state(&store, a, JobState::Succeeded, T).await;
    require_state(&store, b, JobState::Dead, T).await;
    require_state(&store, c, JobState::Succeeded, T).await;
    assert_eq!(stage_names(&db.pool, a).await, ["first", "second", "third"]);
    assert_eq!(stage_names(&db.pool, c).await, ["first", "second", "third"]);
    wait_for(T, "every outcome written", || async {
        let st = app.lifecycle().status();
        (st.in_flight == 0 && st.writing == 0).then_some(())
    })
    .await;
    app.lifecycle().drain();
    tokio::time::timeout(T, app.lifecycle().safe_to_stop())
        .await
        .expect("SafeToStop once every outcome is written");
    app.stop().await;
}
