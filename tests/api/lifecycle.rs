//! Worker modes: drain idle, drain with jobs in flight, drain timeout, resume mid-drain,
//! and fleet-wide drain through PostgreSQL across two processes.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use etlq::lifecycle::Mode;
use etlq::queue::JobState;
use etlq::startup::Role;
use etlq::worker::Signal;

use crate::helpers::*;

const T: Duration = Duration::from_secs(20);

/// This process's mode as its `workers` row shows it; None until its first heartbeat.
async fn mode_row(app: &TestApp) -> Option<String> {
    let id = &app.app.as_ref().unwrap().state.identity.id;
    sqlx::query_scalar("SELECT mode FROM workers WHERE id = $1")
        .bind(id)
        .fetch_optional(&app.db.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn drain_while_idle_is_safe_at_once_and_resume_restores_normal() {
    let app = spawn_app().await;
    assert_eq!(app.get("/readyz").await.0, 200);
    let (status, body) = app.post("/v1/lifecycle/drain", json!({})).await;
    assert_eq!(status, 200);
    // A poll's claim may be in progress (its reserved slots count as in flight) for a moment.
    assert!(
        body["mode"] == "SafeToStop" || body["mode"] == "PreparingForStop",
        "{body}"
    );
    assert!(body["worker_id"].as_str().is_some());
    tokio::time::timeout(Duration::from_secs(2), app.lifecycle().safe_to_stop())
        .await
        .expect("an idle worker is SafeToStop within a claim's round trip");
    assert_eq!(app.lifecycle().status().in_flight, 0);
    let (status, body) = app.get("/readyz").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (503, Some("draining"))
    );
    wait_for(T, "workers row to show SafeToStop", || async {
        (mode_row(&app).await.as_deref() == Some("SafeToStop")).then_some(())
    })
    .await;
    // Nothing is claimed while drained; uploads are still accepted. The worker is told about
    // the new job (the signal), and still does not claim it.
    let mut signals = app.app.as_ref().unwrap().signals.subscribe();
    let id = app.enqueue("test", json!({})).await;
    tokio::time::timeout(T, async {
        while signals.recv().await.unwrap() != Signal::JobsNotified {}
    })
    .await
    .expect("the drained worker was notified of the new job");
    assert_eq!(app.store().get(id).await.unwrap().state, JobState::Queued);

    let (_, body) = app.post("/v1/lifecycle/resume", json!({})).await;
    assert_eq!(body["mode"], "Normal");
    assert_eq!(app.get("/readyz").await.0, 200);
    require_state(&app.store(), id, JobState::Succeeded, T).await;
    app.stop().await;
}

#[tokio::test]
async fn drain_lets_the_running_stage_finish_then_releases_the_job_at_its_checkpoint() {
    let app = spawn_app().await;
    let store = app.store();
    let id = app.enqueue("test", json!({"sleep_ms": 700})).await;
    require_state(&store, id, JobState::Running, T).await;
    let (_, body) = app.post("/v1/lifecycle/drain", json!({})).await;
    assert_eq!(body["mode"], "PreparingForStop");
    assert_eq!(body["in_flight"], 1);
    let other = app.enqueue("test", json!({})).await;

    tokio::time::timeout(T, app.lifecycle().safe_to_stop())
        .await
        .unwrap();
    let job = store.get(id).await.unwrap();
    assert_eq!(job.state, JobState::Queued, "released, not failed");
    assert_eq!(job.attempts, 0, "a release does not consume an attempt");
    assert!(
        job.checkpoint.get("first").is_some(),
        "the finished stage was checkpointed"
    );
    assert!(job.checkpoint.get("third").is_none());
    assert_eq!(
        store.get(other).await.unwrap().state,
        JobState::Queued,
        "not claimed while draining"
    );
    let events: Vec<String> = event_names(&store, id).await;
    assert!(events.contains(&"released".to_string()), "{events:?}");

    app.post("/v1/lifecycle/resume", json!({})).await;
    require_state(&store, id, JobState::Succeeded, T).await;
    let runs: Vec<String> = stage_names(&app.db.pool, id).await;
    assert_eq!(runs, ["first", "second", "third"], "no stage ran twice");
    app.stop().await;
}

#[tokio::test]
async fn drain_timeout_cancels_the_stage_and_releases_the_job_without_an_attempt() {
    let db = Arc::new(TestDb::new().await);
    let app = spawn_app_on(db, Role::Serve, |s| s.worker.drain_timeout_ms = 300).await;
    let store = app.store();
    let id = app
        .enqueue("test", json!({"sleep_ms": {"first": 60000}}))
        .await;
    require_state(&store, id, JobState::Running, T).await;
    let started = std::time::Instant::now();
    app.post("/v1/lifecycle/drain", json!({})).await;
    tokio::time::timeout(T, app.lifecycle().safe_to_stop())
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the stage did not run to its end"
    );
    let job = store.get(id).await.unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Queued, 0));
    assert_eq!(job.checkpoint, json!({}));
    let released = store
        .events(id)
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.event == "released")
        .expect("released event");
    assert!(released.error.unwrap().contains("drain timeout"));
    assert!(stage_runs(&app.db.pool, id).await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn resume_during_preparing_for_stop_keeps_jobs_running() {
    let app = spawn_app().await;
    let store = app.store();
    let id = app.enqueue("test", json!({"sleep_ms": 400})).await;
    require_state(&store, id, JobState::Running, T).await;
    let (_, body) = app.post("/v1/lifecycle/drain", json!({})).await;
    assert_eq!(body["mode"], "PreparingForStop");
    let (_, body) = app.post("/v1/lifecycle/resume", json!({})).await;
    assert_eq!(body["mode"], "Normal");
    require_state(&store, id, JobState::Succeeded, T).await;
    let events: Vec<String> = event_names(&store, id).await;
    assert!(!events.contains(&"released".to_string()), "{events:?}");
    assert_eq!(events.iter().filter(|e| *e == "claimed").count(), 1);
    assert_eq!(app.lifecycle().mode(), Mode::Normal);
    app.stop().await;
}

#[tokio::test]
async fn fleet_drain_through_postgres_reaches_every_process() {
    let db = Arc::new(TestDb::new().await);
    // Two real worker processes and an API-only process to send the command.
    let p1 = spawn_process("worker", &process_env(&db.url, "v1"));
    let p2 = spawn_process("worker", &process_env(&db.url, "v1"));
    let api = spawn_app_on(db.clone(), Role::Api, |s| s.worker.worker_ttl_ms = 3000).await;
    let ids: Vec<i64> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(api.enqueue("test", json!({"sleep_ms": 300})).await);
        }
        v
    };
    wait_for(T, "both workers to be live", || async {
        let (_, body) = api.get("/v1/fleet").await;
        (body["workers"].as_array()?.len() == 2).then_some(())
    })
    .await;
    let (status, body) = api.post("/v1/fleet/drain", json!({})).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["addressed"], 2);
    let fleet = wait_for(T, "fleet SafeToStop", || async {
        let (_, body) = api.get("/v1/fleet").await;
        (body["mode"] == "SafeToStop").then_some(body)
    })
    .await;
    for w in fleet["workers"].as_array().unwrap() {
        assert_eq!(w["mode"], "SafeToStop");
        assert_eq!(w["in_flight"], 0);
    }
    // Each process's own lifecycle endpoint agrees.
    for p in [&p1, &p2] {
        let body = p.get_json("/v1/lifecycle").await.unwrap();
        assert_eq!(body["mode"], "SafeToStop");
    }
    api.post("/v1/fleet/resume", json!({})).await;
    wait_for(T, "fleet Normal", || async {
        let (_, body) = api.get("/v1/fleet").await;
        (body["mode"] == "Normal").then_some(())
    })
    .await;
    for id in ids {
        require_state(&api.store(), id, JobState::Succeeded, T).await;
    }
    api.stop().await;
}
