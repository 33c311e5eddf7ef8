//! Push pickup (ADR 0020): an idle worker's advertised slots take single enqueues directly;
//! a pushed job starts exactly once whether its notification arrives or is lost; a worker
//! that died is pushed nothing; the advertisement never lets a process pass its cap; a
//! drained worker advertises nothing.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use sqlx::PgPool;

use etlq::queue::JobState;
use etlq::worker::Signal;

use crate::helpers::*;

const T: Duration = Duration::from_secs(20);

/// The advertisement out, as (worker, free slots, listener backend), if any.
async fn advert(pool: &PgPool) -> Option<(String, i32, i32)> {
    sqlx::query_as(
        "SELECT p.worker_id, (SELECT count(*)::int4 FROM parking_slots s
                               WHERE s.worker_id = p.worker_id AND s.generation = p.generation),
                p.listener_pid
           FROM worker_parking p",
    )
    .fetch_optional(pool)
    .await
    .unwrap()
}

async fn wait_advert(pool: &PgPool) -> (String, i32, i32) {
    wait_for(T, "an idle worker to advertise its free slots", || {
        advert(pool)
    })
    .await
}

async fn pushed_generation(pool: &PgPool, id: i64) -> Option<i64> {
    sqlx::query_scalar("SELECT push_generation FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn wait_signal(rx: &mut tokio::sync::broadcast::Receiver<Signal>, want: Signal) {
    tokio::time::timeout(T, async {
        loop {
            match rx.recv().await {
                Ok(s) if s == want => return,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("signals closed: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {want:?} within {T:?}"));
}

/// A `test` job's history after it ran once, start to end, in one worker.
async fn assert_ran_once(app: &TestApp, id: i64, worker: &str) {
    let pool = &app.db.pool;
    let runs = stage_runs(pool, id).await;
    assert_eq!(
        runs,
        ["first", "second", "third"].map(|s| (s.to_string(), worker.to_string())),
        "each stage ran once, in the worker it was pushed to"
    );
    assert_eq!(
        event_names(&app.store(), id).await,
        [
            "enqueued",
            "claimed",
            "stage_completed",
            "stage_completed",
            "stage_completed"
        ],
        "one enqueue, one claim (the push), each stage once"
    );
    let timeline: Vec<String> =
        sqlx::query_scalar("SELECT event FROM job_timeline WHERE job_id = $1 ORDER BY seq")
            .bind(id)
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(
        timeline[..2],
        ["enqueued", "claimed"],
        "the enqueue comes first"
    );
    let job = app.store().get(id).await.unwrap();
    assert_eq!(job.attempts, 1);
}

#[tokio::test]
async fn an_idle_worker_starts_a_pushed_job_from_its_notification_and_it_reads_as_one_claim() {
    let app = spawn_app().await;
    let pool = app.db.pool.clone();
    let (worker, free, _) = wait_advert(&pool).await;
    assert_eq!(
        free, 5,
        "half the free slots of concurrency 10 (fetch_batch is larger): the rest are for claims"
    );
    let mut signals = app.app.as_ref().unwrap().signals.subscribe();
    let id = app.enqueue("test", json!({})).await;
    // Handed over in the enqueue's own transaction: never seen queued.
    let job = app.store().get(id).await.unwrap();
    assert_ne!(job.state, JobState::Queued, "{job:?}");
    assert!(pushed_generation(&pool, id).await.is_some());
    wait_signal(&mut signals, Signal::Pushed(id)).await;
    require_state(&app.store(), id, JobState::Succeeded, T).await;
    assert_ran_once(&app, id, &worker).await;
    // A delayed job is not pushed: it is not due yet.
    let delayed = etlq::queue::NewJob {
        delay_ms: Some(300),
        ..etlq::queue::NewJob::new("test", json!({}))
    };
    let later = app.store().enqueue(&delayed).await.unwrap().job_id;
    assert_eq!(
        app.store().get(later).await.unwrap().state,
        JobState::Queued
    );
    assert_eq!(pushed_generation(&pool, later).await, None);
    require_state(&app.store(), later, JobState::Succeeded, T).await;

    // Draining withdraws the advertisement: nothing is pushed to a stopping worker.
    let (_, body) = app.post("/v1/lifecycle/drain", json!({})).await;
    assert!(body["mode"] == "SafeToStop" || body["mode"] == "PreparingForStop");
    tokio::time::timeout(T, app.lifecycle().safe_to_stop())
        .await
        .unwrap();
    assert_eq!(advert(&pool).await, None, "withdrawn by the drain");
    let queued = app.enqueue("test", json!({})).await;
    assert_eq!(
        app.store().get(queued).await.unwrap().state,
        JobState::Queued
    );
    app.stop().await;
}

/// A push takes a slot row and never the advertisement's row: an enqueue is pushed while a
/// top-up or an advertisement holds that row and while another push holds a slot. With the
/// slots a count in the advertisement's row, each of those made it queue its job.
#[tokio::test]
async fn a_push_is_not_turned_away_by_a_top_up_or_another_push_in_flight() {
    let app = spawn_app().await;
    let pool = app.db.pool.clone();
    let (worker, _, _) = wait_advert(&pool).await;
    // A slot whose advertisement is gone without it (a worker of the previous release, in a
    // rolling deploy, removes lapsed advertisements only): the next advertisement clears it.
    sqlx::query("INSERT INTO parking_slots (worker_id, generation) VALUES ('etlq-gone', 1)")
        .execute(&pool)
        .await
        .unwrap();
    let generation = || async {
        sqlx::query_scalar::<_, i64>("SELECT generation FROM worker_parking")
            .fetch_optional(&pool)
            .await
            .unwrap()
    };
    let mut tries = 0;
    let id = loop {
        tries += 1;
        wait_advert(&pool).await;
        let before = generation().await;
        let mut held = pool.begin().await.unwrap();
        // What a top-up or an advertisement holds while it writes: the advertisement's row.
        sqlx::query("SELECT 1 FROM worker_parking WHERE worker_id = $1 FOR UPDATE")
            .bind(&worker)
            .execute(&mut *held)
            .await
            .unwrap();
        // And a push in flight: one slot.
        sqlx::query("SELECT 1 FROM parking_slots WHERE worker_id = $1 LIMIT 1 FOR UPDATE")
            .bind(&worker)
            .execute(&mut *held)
            .await
            .unwrap();
        let id = app.enqueue("test", json!({})).await;
        held.rollback().await.unwrap();
        if pushed_generation(&pool, id).await.is_some() {
            break id;
        }
        // The worker withdraws at every poll (each second); a withdrawal that began inside
        // this moment holds every slot, and then the job is rightly queued. Anything else
        // is the failure this test is for.
        wait_advert(&pool).await;
        assert!(
            generation().await != before && tries < 3,
            "job {id} was queued beside an open advertisement whose row and one slot were held"
        );
        require_state(&app.store(), id, JobState::Succeeded, T).await;
    };
    require_state(&app.store(), id, JobState::Succeeded, T).await;
    assert_ran_once(&app, id, &worker).await;
    wait_for(T, "the orphaned slot to be cleared", || async {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM parking_slots WHERE worker_id = 'etlq-gone'")
                .fetch_one(&pool)
                .await
                .unwrap();
        (left == 0).then_some(())
    })
    .await;
    app.stop().await;
}

// The notifications are dropped by a test aid: without it this test does not exist.
#[cfg(feature = "test-aids")]
#[tokio::test]
async fn a_pushed_job_whose_notification_is_lost_starts_once_when_the_worker_withdraws() {
    let db = Arc::new(TestDb::new().await);
    let app = spawn_app_on(db.clone(), etlq::startup::Role::Serve, |s| {
        s.testing.drop_push_notices = true;
    })
    .await;
    let (worker, _, _) = wait_advert(&db.pool).await;
    let mut signals = app.app.as_ref().unwrap().signals.subscribe();
    let ids = [
        app.enqueue("test", json!({})).await,
        app.enqueue("test", json!({})).await,
    ];
    for id in ids {
        assert!(pushed_generation(&db.pool, id).await.is_some());
    }
    // Its notifications ignored, the worker finds both when it next wakes (the poll).
    for id in ids {
        wait_signal(&mut signals, Signal::Adopted(id)).await;
    }
    for id in ids {
        require_state(&app.store(), id, JobState::Succeeded, T).await;
        assert_ran_once(&app, id, &worker).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_killed_worker_is_pushed_nothing_and_the_next_worker_runs_the_job() {
    let db = Arc::new(TestDb::new().await);
    let mut dead = spawn_process("worker", &process_env(&db.url, "v1"));
    let (_, _, backend) = wait_advert(&db.pool).await;
    dead.signal("KILL");
    dead.wait_exit(Duration::from_secs(10)).await;
    // Its advertisement is still there (it could not withdraw); its LISTEN backend is gone.
    assert!(advert(&db.pool).await.is_some());
    wait_for(T, "the killed worker's LISTEN backend to exit", || async {
        let alive: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = $1)")
                .bind(backend)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        (!alive).then_some(())
    })
    .await;
    let id = db.enqueue("test", json!({})).await;
    let job = db.store().get(id).await.unwrap();
    assert_eq!(job.state, JobState::Queued, "not pushed to a dead worker");
    assert_eq!(pushed_generation(&db.pool, id).await, None);
    let _next = spawn_process("worker", &process_env(&db.url, "v2"));
    require_state(&db.store(), id, JobState::Succeeded, T).await;
    assert_eq!(
        stage_names(&db.pool, id).await,
        ["first", "second", "third"]
    );
}

#[tokio::test]
async fn pushed_and_claimed_jobs_together_never_pass_the_cap() {
    let app = spawn_app().await;
    let pool = app.db.pool.clone();
    wait_advert(&pool).await;
    let mut ids = Vec::new();
    for _ in 0..30 {
        ids.push(app.enqueue("test", json!({"sleep_ms": 150})).await);
        let running: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'running'")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(running <= 10, "{running} jobs running with concurrency 10");
        assert!(app.lifecycle().status().in_flight <= 10);
    }
    let pushed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE push_generation IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        pushed >= 5,
        "the first five went to advertised slots ({pushed})"
    );
    assert!(pushed < 30, "the rest waited for a free slot ({pushed})");
    for id in ids {
        require_state(&app.store(), id, JobState::Succeeded, T).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn jobs_enqueued_back_to_back_each_start_once_without_a_rescue() {
    // Several claim loops share one advertisement; each job comes as soon as the previous
    // one started, so advertisements are used up, withdrawn and made again throughout (a
    // withdrawal racing an advertisement once left a pushed job to the rescuer).
    let db = Arc::new(TestDb::new().await);
    let app = spawn_app_on(db.clone(), etlq::startup::Role::Serve, |s| {
        s.worker.fetchers = 4;
    })
    .await;
    wait_advert(&db.pool).await;
    let mut signals = app.app.as_ref().unwrap().signals.subscribe();
    let mut ids = Vec::new();
    for _ in 0..150 {
        let id = app.enqueue("noop", json!({})).await;
        wait_started(&mut signals, id, T).await;
        ids.push(id);
    }
    for &id in &ids {
        require_state(&app.store(), id, JobState::Succeeded, T).await;
    }
    let (pushed, claims, rescues): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM jobs WHERE id = ANY ($1) AND push_generation IS NOT NULL),
                (SELECT count(*) FROM job_events WHERE job_id = ANY ($1) AND event = 'claimed'),
                (SELECT count(*) FROM job_events WHERE job_id = ANY ($1) AND event = 'rescued')",
    )
    .bind(&ids)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((claims, rescues), (150, 0), "one claim each, none rescued");
    assert!(pushed >= 100, "most were pushed ({pushed} of 150)");
    app.stop().await;
}

#[tokio::test]
async fn queued_jobs_are_claimed_beside_the_advertisement_which_is_still_renewed_on_time() {
    // One claim loop, woken for a queued job every 100 ms for 2.5 s, with a poll of 500 ms
    // (the advertisement lapses 1 s after it was made). The loop claims each queued job with
    // the slots it did not advertise and keeps the advertisement (withdrawing at every
    // wake-up queued the enqueues that came meanwhile), and still renews it at each poll (a
    // renewal put off by every wake-up let it lapse, and then nothing was pushed).
    let db = Arc::new(TestDb::new().await);
    let app = spawn_app_on(db.clone(), etlq::startup::Role::Serve, |s| {
        s.worker.fetchers = 1;
        s.worker.poll_interval_ms = 500;
    })
    .await;
    let pool = db.pool.clone();
    wait_advert(&pool).await;
    let generation = || async {
        sqlx::query_scalar::<_, i64>("SELECT generation FROM worker_parking")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let first = generation().await;
    let mut queued = Vec::new();
    for i in 0..25 {
        let keyed = etlq::queue::NewJob {
            idempotency_key: Some(format!("beside-{i}")),
            ..etlq::queue::NewJob::new("noop", json!({}))
        };
        queued.push(app.store().enqueue(&keyed).await.unwrap().job_id);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for &id in &queued {
        require_state(&app.store(), id, JobState::Succeeded, T).await;
        assert_eq!(
            pushed_generation(&pool, id).await,
            None,
            "keyed jobs are queued"
        );
    }
    let renewals = generation().await - first;
    assert!(
        (1..=12).contains(&renewals),
        "renewed at each poll (~5 in 2.5 s), not withdrawn at each of 25 wake-ups: {renewals}"
    );
    let pushed = app.enqueue("noop", json!({})).await;
    assert!(
        pushed_generation(&pool, pushed).await.is_some(),
        "the advertisement did not lapse"
    );
    require_state(&app.store(), pushed, JobState::Succeeded, T).await;
    app.stop().await;
}
