//! Finished jobs leave `jobs_live` for their day's partition in the statement that finishes
//! them (ADR 0017): every history read still finds them, a dead-letter retry brings one back,
//! retention drops whole days, and a kill -9 in the middle of a move loses and duplicates
//! nothing.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use etlq::maintenance::{JobCleaner, JobCleanerConfig};
use etlq::queue::NewJob;

use crate::helpers::{TestDb, process_env, spawn_app, spawn_app_on, spawn_process, wait_for};

/// The partitions holding job `id` (exactly one, or the job is lost or doubled).
async fn partitions_of(pool: &sqlx::PgPool, id: i64) -> Vec<String> {
    sqlx::query_scalar("SELECT tableoid::regclass::text FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Whether job `id` sits in the partition of the UTC day it finished.
async fn in_its_day(pool: &sqlx::PgPool, id: i64) -> bool {
    sqlx::query_scalar(
        "SELECT tableoid::regclass::text = 'jobs_p' || to_char(finished_at AT TIME ZONE 'UTC', 'YYYYMMDD')
           FROM jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The kept counts of finished jobs against a count of the rows themselves.
async fn assert_counts_agree(pool: &sqlx::PgPool) {
    let kept: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT state, kind, sum(n)::int8 FROM job_counts GROUP BY 1, 2 HAVING sum(n) <> 0 ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let truth: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT state, kind, count(*) FROM jobs WHERE finished_at IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(kept, truth, "job_counts agrees with the finished rows");
}

async fn state_of(pool: &sqlx::PgPool, id: i64) -> Option<String> {
    sqlx::query_scalar("SELECT state FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_jobs_move_to_their_day_and_every_history_read_still_finds_them() {
    let app = spawn_app().await;
    let pool = app.db.pool.clone();
    let enqueue = |kind: &'static str, payload: Value| {
        let app = &app;
        async move {
            let (s, b) = app
                .post("/v1/jobs", json!({"kind": kind, "payload": payload}))
                .await;
            assert_eq!(s, 202, "{b}");
            b["job_id"].as_i64().unwrap()
        }
    };
    let mut noops = Vec::new();
    for _ in 0..3 {
        noops.push(enqueue("noop", json!({})).await);
    }
    // Dies in its first attempt; a retry succeeds.
    let dies = enqueue(
        "test",
        json!({"fail": {"first": {"times": 1, "fatal": true}}}),
    )
    .await;
    let sleeper = enqueue("test", json!({"sleep_ms": 60000})).await;
    wait_for(Duration::from_secs(20), "the jobs to run", || async {
        let done = [noops[0], noops[1], noops[2], dies];
        let mut all = true;
        for id in done {
            all &= matches!(
                state_of(&pool, id).await.as_deref(),
                Some("succeeded" | "dead")
            );
        }
        (all && state_of(&pool, sleeper).await.as_deref() == Some("running")).then_some(())
    })
    .await;
    let (s, b) = app
        .post(&format!("/v1/jobs/{sleeper}/cancel"), json!({}))
        .await;
    assert_eq!(s, 200, "{b}");

    // Nothing finished is left in the live partition; each job is in its day, once.
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs_live")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(live, 0, "jobs_live holds only live jobs");
    for &id in noops.iter().chain([&dies, &sleeper]) {
        assert_eq!(partitions_of(&pool, id).await.len(), 1, "job {id} once");
        assert!(
            in_its_day(&pool, id).await,
            "job {id} in its day's partition"
        );
    }

    // REST reads across the partitions.
    let (s, b) = app.get(&format!("/v1/jobs/{dies}")).await;
    assert_eq!((s, b["state"].as_str()), (200, Some("dead")), "{b}");
    let (s, b) = app.get("/v1/jobs?state=succeeded").await;
    assert_eq!(s, 200, "{b}");
    let listed: Vec<i64> = b["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect();
    assert_eq!(listed, [noops[2], noops[1], noops[0]], "newest first: {b}");
    let (_, b) = app.get("/v1/jobs/count").await;
    assert_eq!(
        (&b["matched"], &b["retryable"], &b["cancellable"]),
        (&json!(5), &json!(1), &json!(0)),
        "{b}"
    );
    let (_, b) = app.get("/v1/jobs/count?state=succeeded&kind=noop").await;
    assert_eq!(b["matched"], json!(3), "{b}");
    let (_, b) = app.get("/v1/stats").await;
    let cancelled = b["counts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["state"] == "cancelled")
        .cloned();
    assert_eq!(
        cancelled,
        Some(json!({"state": "cancelled", "kind": "test", "count": 1})),
        "{b}"
    );
    assert_counts_agree(&pool).await;

    // SQL history: the timeline and stage runs of moved jobs.
    let events: Vec<String> =
        sqlx::query_scalar("SELECT event FROM job_timeline WHERE job_id = $1 ORDER BY seq")
            .bind(dies)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(events, ["enqueued", "claimed", "dead"]);
    let runs: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM stage_runs WHERE job_id = ANY($1) AND kind = 'noop'",
    )
    .bind(&noops)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(runs, 3);

    // A dead-letter retry moves the job back into jobs_live; it runs and finishes again.
    let (s, b) = app
        .post(&format!("/v1/dead-letters/{dies}/retry"), json!({}))
        .await;
    assert_eq!(s, 202, "{b}");
    wait_for(
        Duration::from_secs(20),
        "the retried job to succeed",
        || async { (state_of(&pool, dies).await.as_deref() == Some("succeeded")).then_some(()) },
    )
    .await;
    assert_eq!(partitions_of(&pool, dies).await.len(), 1);
    assert!(in_its_day(&pool, dies).await);
    let events: Vec<String> = sqlx::query_scalar(
        "SELECT event FROM job_events WHERE job_id = $1 ORDER BY at, id NULLS FIRST",
    )
    .bind(dies)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(
        events[2..],
        [
            "dead",
            "retried",
            "claimed",
            "stage_completed",
            "stage_completed",
            "stage_completed"
        ]
    );
    let (_, b) = app.get("/v1/jobs/count").await;
    assert_eq!(
        (&b["matched"], &b["retryable"]),
        (&json!(5), &json!(0)),
        "{b}"
    );
    assert_counts_agree(&pool).await;
    app.stop().await;
}

#[tokio::test]
async fn retention_drops_whole_days_with_what_only_their_jobs_used() {
    let db = TestDb::new().await;
    let store = db.store();
    let jobs: Vec<NewJob> = (0..4)
        .map(|i| {
            let mut j = NewJob::new("noop", json!({}));
            j.idempotency_key = Some(format!("k{i}"));
            j
        })
        .collect();
    let ids: Vec<i64> = store
        .enqueue_many(&jobs)
        .await
        .unwrap()
        .iter()
        .map(|e| e.job_id)
        .collect();
    // Succeeded and dead ten days ago (into `jobs_before`), succeeded now, still queued.
    for (id, state, ago) in [
        (ids[0], "succeeded", "10 days"),
        (ids[1], "dead", "10 days"),
        (ids[2], "succeeded", "0 days"),
    ] {
        sqlx::query("UPDATE jobs SET state = $2, finished_at = now() - $3::interval WHERE id = $1")
            .bind(id)
            .bind(state)
            .bind(ago)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    sqlx::query(
        "INSERT INTO dead_letters (job_id, kind, attempts, reason) VALUES ($1, 'noop', 1, 'x')",
    )
    .bind(ids[1])
    .execute(&db.pool)
    .await
    .unwrap();
    assert_counts_agree(&db.pool).await;
    let cleaner = |retention: Duration| {
        JobCleaner::new(
            store.clone(),
            etlq::fleet::FleetStore::new(&db.pools),
            JobCleanerConfig {
                interval: Duration::from_secs(3600),
                retention,
                worker_retention: Duration::from_secs(86_400),
            },
        )
    };
    let exists = |name: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>("SELECT to_regclass($1) IS NOT NULL")
                .bind(name)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };

    // A day ends, then stays `retention` longer: with a day's retention nothing has expired
    // (`jobs_before` ended at midnight today).
    assert_eq!(
        cleaner(Duration::from_secs(86_400))
            .clean_once()
            .await
            .unwrap(),
        0
    );
    assert!(exists("jobs_before").await);

    // With none, every partition that has ended goes, whole; today's and the live one stay.
    assert_eq!(cleaner(Duration::ZERO).clean_once().await.unwrap(), 2);
    assert!(!exists("jobs_before").await && !exists("job_event_log_before").await);
    let left: Vec<i64> = sqlx::query_scalar("SELECT id FROM jobs ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(left, &ids[2..]);
    let dead_letters: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        dead_letters, 0,
        "the dropped job's dead letter went with it"
    );
    assert_counts_agree(&db.pool).await;
    // The dropped jobs' keys are free again; the kept ones still name their jobs.
    let again = store.enqueue_many(&jobs).await.unwrap();
    assert!(again[0].created && again[1].created, "{again:?}");
    assert_eq!(
        (
            again[2].job_id,
            again[2].created,
            again[3].job_id,
            again[3].created
        ),
        (ids[2], false, ids[3], false)
    );
    // Days ahead stay ready: today and the next seven, for both tables.
    let ahead: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class WHERE relname ~ '^(jobs|job_event_log)_p[0-9]{8}$'
            AND to_date(right(relname, 8), 'YYYYMMDD') >= (now() AT TIME ZONE 'UTC')::date",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(ahead, 2 * 8);
}

/// A worker killed with its finishing statement's transaction open (the job already moved to
/// its day inside it) leaves the job live, once; another worker rescues and finishes it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kill_9_in_the_middle_of_a_move_loses_and_duplicates_nothing() {
    let db = Arc::new(TestDb::new().await);
    let mut env = process_env(&db.url, "v1");
    env.push(("ETLQ__TESTING__PAUSE_IN_FINISH_MS".into(), "60000".into()));
    let mut a = spawn_process("serve", &env);
    let ids: Vec<i64> = db
        .store()
        .enqueue_many(&vec![NewJob::new("test", json!({})); 3])
        .await
        .unwrap()
        .iter()
        .map(|e| e.job_id)
        .collect();
    // Inside the move: the statement ran, its transaction is open.
    crate::helpers::wait_open_transaction(
        &db.pool,
        "%etlq_apply_transitions%",
        "a finishing statement to hold its transaction",
    )
    .await;
    a.signal("KILL");
    a.wait_exit(Duration::from_secs(10)).await;
    // Wait for PostgreSQL to end the dead client's transaction, then look.
    wait_for(
        Duration::from_secs(10),
        "the killed transaction to end",
        || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
               AND state = 'idle in transaction'",
            )
            .fetch_one(&db.pool)
            .await
            .ok()?;
            (n == 0).then_some(())
        },
    )
    .await;
    for &id in &ids {
        assert_eq!(
            partitions_of(&db.pool, id).await,
            ["jobs_live"],
            "job {id} is still live, once"
        );
    }
    assert_counts_agree(&db.pool).await;

    let b = spawn_app_on(db.clone(), etlq::startup::Role::Serve, |_| {}).await;
    wait_for(
        Duration::from_secs(30),
        "the rescued jobs to finish",
        || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM jobs WHERE id = ANY($1) AND state = 'succeeded'",
            )
            .bind(&ids)
            .fetch_one(&db.pool)
            .await
            .ok()?;
            (n == 3).then_some(())
        },
    )
    .await;
    for &id in &ids {
        assert_eq!(partitions_of(&db.pool, id).await.len(), 1, "job {id} once");
        assert!(in_its_day(&db.pool, id).await);
        let finished: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM job_events WHERE job_id = $1 AND to_state = 'succeeded'",
        )
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(finished, 1, "job {id} finished once");
    }
    assert_counts_agree(&db.pool).await;
    b.stop().await;
}

/// The upgrade to the split (migration 20261203000010) on a database with jobs in every state:
/// every job, id, event and key is kept, each job lands where it belongs, and new ids go on
/// after the old ones.
#[tokio::test]
async fn the_upgrade_moves_existing_jobs_into_the_split_and_loses_none() {
    let db = TestDb::unmigrated().await;
    let mut files: Vec<_> = std::fs::read_dir("migrations")
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let split = files
        .iter()
        .position(|f| f.to_string_lossy().contains("20261203000010"))
        .expect("the split's migration");
    let psql = |file: &std::path::Path| {
        let out = std::process::Command::new("psql")
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-1", "-d", &db.url, "-f"])
            .arg(file)
            .output()
            .expect("psql is installed");
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    for f in &files[..split] {
        psql(f);
    }
    // Before the split: queued (keyed), succeeded three days ago (keyed), dead just now.
    let ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO jobs (kind, state, idempotency_key, finished_at) VALUES
           ('noop', 'queued', 'a', NULL),
           ('noop', 'succeeded', 'b', now() - interval '3 days'),
           ('test', 'dead', NULL, now())
         RETURNING id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO job_events (job_id, event) SELECT id, 'enqueued' FROM jobs")
        .execute(&db.pool)
        .await
        .unwrap();
    for f in &files[split..] {
        psql(f);
    }
    // The pool's connections cached plans of the old tables.
    db.pool.close().await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let rows: Vec<(i64, String, String)> =
        sqlx::query_as("SELECT id, state, tableoid::regclass::text FROM jobs ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let today = sqlx::query_scalar::<_, String>(
        "SELECT 'jobs_p' || to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            (ids[0], "queued".into(), "jobs_live".into()),
            (ids[1], "succeeded".into(), "jobs_before".into()),
            (ids[2], "dead".into(), today),
        ]
    );
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM job_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(events, 3);
    assert_counts_agree(&pool).await;
    let pools = etlq::db::Pools::from_main(pool.clone(), Duration::from_millis(500));
    let store = etlq::queue::JobStore::new(&pools, 5);
    let keyed = |key: &str| {
        let mut j = NewJob::new("noop", json!({}));
        j.idempotency_key = Some(key.into());
        j
    };
    let a = store.enqueue(&keyed("a")).await.unwrap();
    let b = store.enqueue(&keyed("b")).await.unwrap();
    assert_eq!(
        (a.job_id, a.created, b.job_id, b.created),
        (ids[0], false, ids[1], false)
    );
    let fresh = store.enqueue(&keyed("c")).await.unwrap();
    // Ids go on after the old ones (a key found in use spends one: sequences have gaps).
    assert!(fresh.created && fresh.job_id > ids[2], "{fresh:?}");
    pool.close().await;
}

/// Claims racing finishers: a claim whose snapshot still shows a job queued that another
/// claimer took and finished meanwhile meets the row in its new partition. Each claim must
/// still answer (it runs again on a fresh snapshot), never fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn claims_racing_finished_jobs_never_fail() {
    let db = TestDb::new().await;
    let store = db.store();
    let n = 4000;
    let jobs: Vec<NewJob> = (0..n).map(|_| NewJob::new("noop", json!({}))).collect();
    store.enqueue_many(&jobs).await.unwrap();
    let mut claimers = Vec::new();
    for w in 0..6 {
        let store = store.clone();
        claimers.push(tokio::spawn(async move {
            let actor = etlq::queue::Actor::new(format!("w{w}"), "v1");
            let kinds = vec!["noop".to_string()];
            let mut done = 0;
            loop {
                let got = store
                    .claim(&actor, &kinds, 2, Duration::from_secs(30))
                    .await
                    .expect("a claim answers");
                if got.is_empty() {
                    return done;
                }
                let finish: Vec<etlq::queue::Transition> = got
                    .iter()
                    .map(|j| etlq::queue::Transition {
                        job_id: j.id,
                        fencing_token: j.fencing_token,
                        event: etlq::queue::TransitionEvent::StageCompleted {
                            output: Value::Null,
                            next_stage: None,
                        },
                        stage: Some("run".into()),
                        attempt: j.attempts,
                        duration_ms: None,
                    })
                    .collect();
                done += store.apply(&actor, &finish).await.unwrap().len();
            }
        }));
    }
    let mut total = 0;
    for c in claimers {
        total += c.await.unwrap();
    }
    assert_eq!(total, n);
    let live: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs_live")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(live, 0);
    assert_counts_agree(&db.pool).await;
}
