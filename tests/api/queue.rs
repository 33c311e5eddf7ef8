//! Queue semantics against real PostgreSQL: claim order, retries, dead letters, cancellation,
//! rescue and fencing, retention, and exactly-once stages under concurrency. Enqueue itself is
//! in `enqueue.rs`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;

use etlq::queue::{
    Actor, DeadLetterFilter, JobState, NewJob, RescueRules, RetryFrom, Transition, TransitionEvent,
};
use etlq::startup::Role;

use crate::helpers::*;

const T: Duration = Duration::from_secs(20);

fn actor(id: &str) -> Actor {
    Actor {
        id: id.into(),
        version: "test".into(),
    }
}

/// Waits until PostgreSQL considers job `id`'s lease expired.
async fn lease_expired(db: &TestDb, id: i64) {
    wait_for(T, "the lease to expire", || async {
        let expired: bool =
            sqlx::query_scalar("SELECT lease_expires_at < now() FROM jobs WHERE id = $1")
                .bind(id)
                .fetch_one(&db.pool)
                .await
                .ok()?;
        expired.then_some(())
    })
    .await
}

/// Rescue at once (no reconnect grace), poison pills after 2 rescues in a row.
fn rules() -> RescueRules {
    RescueRules {
        grace: Duration::ZERO,
        overdue: Duration::from_secs(60),
        max_streak: 2,
        stall: Duration::from_secs(60),
    }
}

fn kinds() -> Vec<String> {
    vec!["test".into(), "noop".into()]
}

#[tokio::test]
async fn claims_honour_priority_then_run_at_and_skip_future_jobs() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut later = NewJob::new("noop", json!({"n": "delayed"}));
    later.delay_ms = Some(60_000);
    let mut low = NewJob::new("noop", json!({"n": "low"}));
    low.priority = Some(5);
    let mut high = NewJob::new("noop", json!({"n": "high"}));
    high.priority = Some(-1);
    let normal = NewJob::new("noop", json!({"n": "normal"}));
    store
        .enqueue_many(&[later, low, normal, high])
        .await
        .unwrap();
    let a = actor("a");
    let claimed = store
        .claim(&a, &kinds(), 10, Duration::from_secs(30))
        .await
        .unwrap();
    let order: Vec<&str> = claimed
        .iter()
        .map(|j| j.payload["n"].as_str().unwrap())
        .collect();
    assert_eq!(order, ["high", "normal", "low"]);
    assert!(
        claimed
            .iter()
            .all(|j| j.attempts == 1 && j.fencing_token == 1)
    );
    // Only kinds the worker knows are claimed.
    store
        .enqueue(&NewJob::new("etl.future", json!({})))
        .await
        .unwrap();
    let none = store
        .claim(&a, &kinds(), 10, Duration::from_secs(30))
        .await
        .unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn expired_lease_is_rescued_and_the_stale_holders_writes_are_rejected() {
    let db = TestDb::new().await;
    let store = db.store();
    let id = db.enqueue("test", json!({})).await;
    let zombie = actor("zombie");
    let job = store
        .claim(&zombie, &kinds(), 1, Duration::from_millis(300))
        .await
        .unwrap()
        .remove(0);
    // Not expired yet: nothing to rescue.
    let rescued = store
        .rescue_expired(&actor("r"), &rules(), 100)
        .await
        .unwrap();
    assert_eq!(rescued.total(), 0);
    lease_expired(&db, id).await;
    let rescued = store
        .rescue_expired(&actor("r"), &rules(), 100)
        .await
        .unwrap();
    assert_eq!(rescued.requeued, 1);
    let fresh = actor("fresh");
    let job2 = store
        .claim(&fresh, &kinds(), 1, Duration::from_secs(30))
        .await
        .unwrap()
        .remove(0);
    assert_eq!(job2.id, id);
    assert!(job2.fencing_token > job.fencing_token);
    assert_eq!(job2.attempts, 2, "the lost run counted as an attempt");

    let done = |token| Transition {
        job_id: id,
        fencing_token: token,
        event: TransitionEvent::StageCompleted {
            output: json!({"by": token}),
            next_stage: Some("second".into()),
        },
        stage: Some("first".into()),
        attempt: 1,
        duration_ms: Some(1.0),
    };
    // The zombie's late checkpoint, lease renewal and release are all refused.
    assert!(
        store
            .apply(&zombie, &[done(job.fencing_token)])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .renew_leases(
                "zombie",
                &[(id, job.fencing_token)],
                Duration::from_secs(30)
            )
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .apply(&fresh, &[done(job2.fencing_token)])
            .await
            .unwrap(),
        vec![id]
    );
    let stored = store.get(id).await.unwrap();
    assert_eq!(stored.checkpoint["first"]["by"], job2.fencing_token);
    assert_eq!(stored.lease_owner.as_deref(), Some("fresh"));
    let events: Vec<String> = event_names(&store, id).await;
    assert_eq!(
        events,
        [
            "enqueued",
            "claimed",
            "rescued",
            "claimed",
            "stage_completed"
        ]
    );
}

#[tokio::test]
async fn rescue_of_a_job_out_of_attempts_dead_letters_it() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut job = NewJob::new("test", json!({"bu_id": "BU1"}));
    job.max_attempts = Some(1);
    let id = store.enqueue(&job).await.unwrap().job_id;
    store
        .claim(&actor("a"), &kinds(), 1, Duration::from_millis(100))
        .await
        .unwrap();
    lease_expired(&db, id).await;
    store
        .rescue_expired(&actor("r"), &rules(), 100)
        .await
        .unwrap();
    let stored = store.get(id).await.unwrap();
    assert_eq!(stored.state, JobState::Dead);
    let dl = store
        .dead_letters(&DeadLetterFilter::default(), false, None, 10)
        .await
        .unwrap();
    assert_eq!(dl.items.len(), 1);
    assert_eq!(dl.items[0].bu_id.as_deref(), Some("BU1"));
    assert!(
        dl.items[0].reason.contains("lease expired"),
        "{}",
        dl.items[0].reason
    );
}

#[tokio::test]
async fn failed_stage_retries_with_backoff_and_resumes_at_its_checkpoint() {
    let app = spawn_app().await;
    let store = app.store();
    let id = app
        .enqueue("test", json!({"fail": {"second": {"times": 2}}}))
        .await;
    require_state(&store, id, JobState::Succeeded, T).await;
    let job = store.get(id).await.unwrap();
    assert_eq!(job.attempts, 3);
    // `first` ran once: retries resumed from its checkpoint.
    let runs = stage_runs(&app.db.pool, id).await;
    let stages: Vec<&str> = runs.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(stages, ["first", "second", "third"]);
    // Each retry waited at least its backoff (base 100 ms doubling, jitter ±20%).
    let events = store.events(id).await.unwrap();
    let at = |ev: &str, attempt: i32| -> DateTime<Utc> {
        events
            .iter()
            .find(|e| e.event == ev && e.attempt == Some(attempt))
            .unwrap_or_else(|| panic!("{ev} attempt {attempt}"))
            .at
    };
    let gap1 = at("claimed", 2) - at("stage_failed", 1);
    let gap2 = at("claimed", 3) - at("stage_failed", 2);
    assert!(gap1.num_milliseconds() >= 80, "first backoff {gap1}");
    assert!(gap2.num_milliseconds() >= 160, "second backoff {gap2}");
    let failed: Vec<_> = events
        .iter()
        .filter(|e| e.event == "stage_failed")
        .collect();
    assert_eq!(failed.len(), 2);
    assert!(
        failed
            .iter()
            .all(|e| e.to_state.as_deref() == Some("retrying"))
    );
    app.stop().await;
}

#[tokio::test]
async fn exhausted_and_fatal_failures_are_dead_lettered_with_their_reason() {
    let app = spawn_app().await;
    let store = app.store();
    let mut exhausted = NewJob::new("test", json!({"fail": {"third": {}}, "bu_id": "BU7"}));
    exhausted.max_attempts = Some(2);
    let exhausted = store.enqueue(&exhausted).await.unwrap().job_id;
    let fatal = app
        .enqueue("test", json!({"fail": {"first": {"fatal": true}}}))
        .await;
    require_state(&store, exhausted, JobState::Dead, T).await;
    require_state(&store, fatal, JobState::Dead, T).await;
    assert_eq!(
        store.get(fatal).await.unwrap().attempts,
        1,
        "fatal errors are not retried"
    );
    let dl = store
        .dead_letters(&DeadLetterFilter::default(), false, None, 10)
        .await
        .unwrap()
        .items;
    let ex = dl.iter().find(|d| d.job_id == exhausted).unwrap();
    assert_eq!(ex.failed_stage.as_deref(), Some("third"));
    assert_eq!(ex.attempts, 2);
    assert_eq!(ex.bu_id.as_deref(), Some("BU7"));
    assert!(ex.reason.contains("attempt 2 of 2"), "{}", ex.reason);
    let fa = dl.iter().find(|d| d.job_id == fatal).unwrap();
    assert_eq!(fa.failed_stage.as_deref(), Some("first"));
    assert!(fa.reason.contains("failed on demand"), "{}", fa.reason);
    app.stop().await;
}

#[tokio::test]
async fn dead_letters_retry_one_and_in_bulk_from_checkpoint_or_start() {
    let app = spawn_app().await;
    let store = app.store();
    let mut ids = Vec::new();
    for bu in ["A", "A", "B"] {
        // Fails its first attempt at `second`, succeeds afterwards.
        let mut j = NewJob::new(
            "test",
            json!({"bu_id": bu, "fail": {"second": {"times": 1}}}),
        );
        j.max_attempts = Some(1);
        ids.push(store.enqueue(&j).await.unwrap().job_id);
    }
    for id in &ids {
        require_state(&store, *id, JobState::Dead, T).await;
    }
    // One, from its checkpoint, over REST.
    let (status, body) = app
        .post(&format!("/v1/dead-letters/{}/retry", ids[0]), json!({}))
        .await;
    assert_eq!(status, 202, "{body}");
    require_state(&store, ids[0], JobState::Succeeded, T).await;
    let stages: Vec<String> = stage_runs(&app.db.pool, ids[0])
        .await
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(stages, ["first", "second", "third"], "first was not re-run");
    // Retrying it again is a conflict: it is not dead any more.
    let (status, body) = app
        .post(&format!("/v1/dead-letters/{}/retry", ids[0]), json!({}))
        .await;
    assert_eq!(status, 409, "{body}");

    // Bulk by bu_id from the start: only the other A job.
    let (status, body) = app
        .post(
            "/v1/dead-letters/retry",
            json!({"bu_id": "A", "from": "start"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["job_ids"], json!([ids[1]]));
    require_state(&store, ids[1], JobState::Succeeded, T).await;
    let stages: Vec<String> = stage_runs(&app.db.pool, ids[1])
        .await
        .into_iter()
        .map(|r| r.0)
        .collect();
    assert_eq!(
        stages,
        ["first", "first", "second", "third"],
        "from start re-runs first"
    );
    assert_eq!(store.get(ids[2]).await.unwrap().state, JobState::Dead);

    // An unfiltered bulk retry must be explicit.
    let (status, _) = app.post("/v1/dead-letters/retry", json!({})).await;
    assert_eq!(status, 422);
    let (status, body) = app
        .post("/v1/dead-letters/retry", json!({"all": true}))
        .await;
    assert_eq!((status, body["retried"].as_i64()), (202, Some(1)));
    require_state(&store, ids[2], JobState::Succeeded, T).await;
    let (_, list) = app.get("/v1/dead-letters").await;
    assert_eq!(list["dead_letters"], json!([]), "all retried");
    let (_, list) = app.get("/v1/dead-letters?include_retried=true").await;
    assert_eq!(list["dead_letters"].as_array().unwrap().len(), 3);
    app.stop().await;
}

#[tokio::test]
async fn cancel_stops_queued_and_running_jobs() {
    let app = spawn_app().await;
    let store = app.store();
    let mut delayed = NewJob::new("test", json!({}));
    delayed.delay_ms = Some(60_000);
    let queued = store.enqueue(&delayed).await.unwrap().job_id;
    let running = app
        .enqueue("test", json!({"sleep_ms": {"first": 30000}}))
        .await;
    require_state(&store, running, JobState::Running, T).await;

    let (status, body) = app
        .post(&format!("/v1/jobs/{queued}/cancel"), json!({}))
        .await;
    assert_eq!(
        (status, body["previous_state"].as_str()),
        (200, Some("queued"))
    );
    let (status, body) = app
        .post(&format!("/v1/jobs/{running}/cancel"), json!({}))
        .await;
    assert_eq!(
        (status, body["previous_state"].as_str()),
        (200, Some("running"))
    );
    // The worker stops the stage promptly and frees its slot.
    wait_for(T, "the cancelled stage to stop", || async {
        (app.lifecycle().status().in_flight == 0).then_some(())
    })
    .await;
    let job = store.get(running).await.unwrap();
    assert_eq!(job.state, JobState::Cancelled);
    assert!(job.lease_owner.is_none());
    assert!(stage_runs(&app.db.pool, running).await.is_empty());
    assert!(completed_stages(&app.db.pool, running).await.is_empty());
    // Finished jobs cannot be cancelled; unknown ones are 404.
    let (status, body) = app
        .post(&format!("/v1/jobs/{running}/cancel"), json!({}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict"))
    );
    let (status, _) = app.post("/v1/jobs/999999/cancel", json!({})).await;
    assert_eq!(status, 404);
    app.stop().await;
}

// Several worker threads, as in a real process. The short test lease (1.5 s) stays: lease
// renewals have a pool of their own, so busy claims and completions cannot starve them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_workers_run_thousands_of_jobs_each_stage_exactly_once() {
    let db = Arc::new(TestDb::new().await);
    let mut apps = Vec::new();
    for _ in 0..4 {
        apps.push(
            spawn_app_on(db.clone(), Role::Worker, |s| {
                s.worker.fetch_batch = 7;
            })
            .await,
        );
    }
    let n = 2000;
    let jobs: Vec<NewJob> = (0..n).map(|_| NewJob::new("test", json!({}))).collect();
    db.store().enqueue_many(&jobs).await.unwrap();
    wait_for(Duration::from_secs(120), "every job to succeed", || async {
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        (done == n).then_some(())
    })
    .await;
    let count = |sql: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    // Every stage completed (was checkpointed) exactly once.
    let completions =
        count("SELECT count(*) FROM job_events WHERE event = 'stage_completed'").await;
    let distinct_completions = count(
        "SELECT count(*) FROM (SELECT DISTINCT job_id, stage FROM job_events WHERE event = 'stage_completed') d",
    )
    .await;
    assert_eq!((completions, distinct_completions), (3 * n, 3 * n));
    // No faults were injected, so nothing may have been rescued, and every stage ran exactly
    // once (its run is recorded by the stage itself, independently of its checkpoint).
    let rescued = count("SELECT count(*) FROM job_events WHERE event = 'rescued'").await;
    assert_eq!(rescued, 0, "a rescue in a run without faults is a bug");
    let runs = count("SELECT count(*) FROM test_stage_runs").await;
    let distinct_runs =
        count("SELECT count(*) FROM (SELECT DISTINCT job_id, stage FROM test_stage_runs) d").await;
    assert_eq!((runs, distinct_runs), (3 * n, 3 * n));
    // No job was claimed twice at once: every claim after a job's first follows a rescue or
    // release of that job.
    let overlapping = count(
        r#"
        SELECT count(*) FROM (
            SELECT event, lag(event) OVER (PARTITION BY job_id ORDER BY at, id NULLS FIRST) AS prev
            FROM job_events WHERE event IN ('claimed', 'rescued', 'released')
        ) e
        WHERE event = 'claimed' AND prev = 'claimed'
        "#,
    )
    .await;
    let claimed_jobs =
        count("SELECT count(DISTINCT job_id) FROM job_events WHERE event = 'claimed'").await;
    assert_eq!(overlapping, 0);
    assert_eq!(claimed_jobs, n);
    // The overview's per-minute figures, kept by the statement trigger over batched claims
    // and completions (rolled up or not yet): every job arrived, left the queue, succeeded.
    let minutes: (i64, i64, i64, i64, i64) = sqlx::query_as(
        r#"
        SELECT sum(arrived)::int8, sum(departed)::int8, sum(succeeded)::int8,
               sum(failed)::int8, sum(dead)::int8
        FROM (SELECT arrived, departed, succeeded, failed, dead FROM job_minute_deltas
              UNION ALL
              SELECT arrived, departed, succeeded, failed, dead FROM job_event_minutes) m
        "#,
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(minutes, (n, n, n, 0, 0));
    // The work was really shared.
    let workers: i64 = sqlx::query_scalar("SELECT count(DISTINCT worker_id) FROM test_stage_runs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(workers >= 2, "only {workers} worker(s) took jobs");
    for app in apps {
        app.stop().await;
    }
}

#[tokio::test]
async fn retried_dead_letter_keeps_attempt_history() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut j = NewJob::new("test", json!({}));
    j.max_attempts = Some(1);
    let id = store.enqueue(&j).await.unwrap().job_id;
    let claimed = store
        .claim(&actor("a"), &kinds(), 1, Duration::from_secs(30))
        .await
        .unwrap()
        .remove(0);
    let dead = Transition {
        job_id: id,
        fencing_token: claimed.fencing_token,
        event: TransitionEvent::Dead {
            error: "boom".into(),
        },
        stage: Some("first".into()),
        attempt: 1,
        duration_ms: None,
    };
    assert_eq!(store.apply(&actor("a"), &[dead]).await.unwrap(), vec![id]);
    store
        .retry_dead(id, RetryFrom::Checkpoint, &actor("op"))
        .await
        .unwrap();
    let job = store.get(id).await.unwrap();
    assert_eq!(
        (job.state, job.attempts, job.max_attempts),
        (JobState::Queued, 1, 2)
    );
}

/// A sink that holds every connection of the worker's main pool for longer than a lease:
/// lease renewals and heartbeats run on the control pool, so a second, idle process finds
/// nothing to rescue, and every stage runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_main_pool_never_costs_a_live_worker_its_jobs() {
    let db = TestDb::new().await;
    sqlx::query(
        "CREATE FUNCTION slow_sink() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN IF current_query() LIKE 'CREATE TABLE sink_documents_v%' THEN PERFORM pg_sleep(4); END IF; END $$",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    // Each sync creates its version's table first (ADR 0009): that is where it sleeps.
    sqlx::query("CREATE EVENT TRIGGER slow ON ddl_command_start WHEN TAG IN ('CREATE TABLE') EXECUTE FUNCTION slow_sink()")
        .execute(&db.pool)
        .await
        .unwrap();
    let db = Arc::new(db);
    let api = spawn_app_on(db.clone(), Role::Api, |_| {}).await;
    let mut env = process_env(&db.url, "busy");
    // One connection: while the sink sleeps in it, nothing else gets the main pool.
    env.push(("ETLQ__DATABASE__MAX_CONNECTIONS".into(), "1".into()));
    let _busy = spawn_process("worker", &env);
    let client = reqwest::Client::new();
    let gl = crate::samples::gl_export(200, 0);
    let mut ids = Vec::new();
    for bu in ["BU-S1", "BU-S2"] {
        ids.push(
            crate::etl::upload_ok(&client, &api.url(""), gl.bytes.clone(), bu, "sap_fbl3n").await,
        );
    }
    // A sync holds the main pool's only connection in the slow sink (4 s, over two leases).
    wait_for(Duration::from_secs(30), "a sync inside the slow sink", || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CREATE TABLE sink_documents_v%' AND state = 'active' AND pid <> pg_backend_pid() AND datname = current_database()",
        )
        .fetch_one(&db.pool)
        .await
        .ok()?;
        (n == 1).then_some(())
    })
    .await;
    // An idle process that would rescue any lease left to expire.
    let _rescuer = spawn_process("worker", &process_env(&db.url, "idle"));
    for id in &ids {
        let v = crate::etl::wait_done(&client, &api.url(""), *id).await;
        assert_eq!(v["state"], "succeeded", "{v}");
    }
    let rescued: i64 =
        sqlx::query_scalar("SELECT count(*) FROM job_events WHERE event = 'rescued'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(rescued, 0, "a live worker's job was rescued");
    let completions: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT job_id, stage, count(*) FROM job_events WHERE event = 'stage_completed' GROUP BY 1, 2",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(completions.len(), 8);
    assert!(completions.iter().all(|c| c.2 == 1), "{completions:?}");
    let ran_in: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT worker_version FROM job_events WHERE event = 'stage_completed'",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(ran_in, ["busy"]);
    api.stop().await;
}

/// One kind's candidate scan as `etlq_claim` (what `JobStore::claim` calls) words it, explained.
async fn claim_plan(pool: &sqlx::PgPool) -> String {
    let rows: Vec<String> = sqlx::query_scalar(
        "EXPLAIN SELECT id FROM jobs
          WHERE kind = 'noop' AND state IN ('queued', 'retrying') AND run_at <= now()
            AND finished_at IS NULL
          ORDER BY priority, run_at, id LIMIT 50 FOR UPDATE SKIP LOCKED",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.join("\n")
}

#[tokio::test]
async fn a_claim_walks_its_index_even_when_statistics_are_stale() {
    let db = TestDb::new().await;
    let store = db.store();
    // Statistics taken while the table was empty, then a backlog arrives at once (what made
    // the old claim sort a million rows until autovacuum's analyze came round). Autovacuum is
    // kept off these tables so the statistics stay stale.
    for sql in [
        "ALTER TABLE jobs_live SET (autovacuum_enabled = false)",
        "ANALYZE jobs, job_events",
    ] {
        sqlx::query(sql).execute(&db.pool).await.unwrap();
    }
    let chunk: Vec<NewJob> = (0..10_000)
        .map(|_| NewJob::new("noop", serde_json::Value::Null))
        .collect();
    for _ in 0..6 {
        store.enqueue_many(&chunk).await.unwrap();
    }
    let plan = claim_plan(&db.pool).await;
    assert!(
        plan.contains("Index Scan using jobs_live_claim_idx") && !plan.contains("Sort"),
        "the claim walks its index: {plan}"
    );
    // The claim itself runs on a generic plan (etlq_claim, ADR 0024), made on these stale
    // statistics: it too reads its jobs' index entries and no more.
    let read = claim_and_count_index_reads(&db, 50).await;
    assert!(
        read <= 100,
        "the claim read {read} index entries for 50 jobs"
    );
}

/// An index's scans and the entries read through it so far, as PostgreSQL's statistics count
/// them.
async fn index_stats(pool: &sqlx::PgPool, index: &str) -> (i64, i64) {
    sqlx::query_as(
        "SELECT idx_scan, idx_tup_read FROM pg_stat_user_indexes WHERE indexrelname = $1",
    )
    .bind(index)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Index entries read through `jobs_live_claim_idx` so far.
async fn claim_index_reads(pool: &sqlx::PgPool) -> i64 {
    index_stats(pool, "jobs_live_claim_idx").await.1
}

/// Claims `n` `noop` jobs through `JobStore::claim` and returns the index entries it read.
async fn claim_and_count_index_reads(db: &TestDb, n: usize) -> i64 {
    let before = claim_index_reads(&db.pool).await;
    let claimed = db
        .store()
        .claim(
            &Actor::new("w", "v1"),
            &["noop".to_string()],
            n,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), n);
    // A backend's counts reach the statistics within a second of its statement, all at once.
    wait_for(
        Duration::from_secs(5),
        "the claim's index reads",
        || async {
            let n = claim_index_reads(&db.pool).await - before;
            (n > 0).then_some(n)
        },
    )
    .await
}

#[tokio::test]
async fn a_claim_never_reads_the_queued_jobs_of_kinds_it_does_not_run() {
    let db = TestDb::new().await;
    let store = db.store();
    // Another deployment's backlog, queued first (so it comes first in due order), then ours.
    let parked: Vec<NewJob> = (0..20_000)
        .map(|_| NewJob::new("parked", serde_json::Value::Null))
        .collect();
    store.enqueue_many(&parked).await.unwrap();
    let ours: Vec<NewJob> = (0..10)
        .map(|_| NewJob::new("noop", serde_json::Value::Null))
        .collect();
    store.enqueue_many(&ours).await.unwrap();
    sqlx::query("ANALYZE jobs").execute(&db.pool).await.unwrap();
    let read = claim_and_count_index_reads(&db, 5).await;
    assert!(read <= 20, "the claim read {read} index entries for 5 jobs");
}

#[tokio::test]
async fn a_claim_updates_the_rows_it_locked_where_it_read_them() {
    let db = TestDb::new().await;
    let store = db.store();
    // Enough jobs, analysed, that a lookup by id would go through the index (on a few
    // hundred rows the planner scans the partition instead, and this test could not fail).
    let jobs: Vec<NewJob> = (0..5_000)
        .map(|_| NewJob::new("noop", serde_json::Value::Null))
        .collect();
    store.enqueue_many(&jobs).await.unwrap();
    sqlx::query("ANALYZE jobs").execute(&db.pool).await.unwrap();
    let before = index_stats(&db.pool, "jobs_live_id_idx").await.0;
    // The claim reads its jobs through the claim index and locks them; its UPDATE then takes
    // each locked row at the address it was read from (migration 19), not through the id
    // index a second time. The statistics of one statement arrive all at once, so once its
    // claim-index reads are counted, so are any id-index scans it made.
    claim_and_count_index_reads(&db, 100).await;
    assert_eq!(
        index_stats(&db.pool, "jobs_live_id_idx").await.0 - before,
        0,
        "the claim scanned the id index"
    );
    let (running, tokens): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE fencing_token = 1 AND attempts = 1)
           FROM jobs WHERE state = 'running'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((running, tokens), (100, 100), "each claimed job once");
}
