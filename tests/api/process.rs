//! Real processes: a deploy (drain over REST, stop, start the new version), `kill -9`
//! mid-stage, and a frozen (SIGSTOP) worker whose late writes are fenced off.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use etlq::queue::JobState;

use crate::helpers::*;

const T: Duration = Duration::from_secs(30);

async fn worker_ids_by_version(pool: &sqlx::PgPool, version: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT id FROM workers WHERE version = $1")
        .bind(version)
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn deploy_drains_v1_and_v2_resumes_each_job_at_its_checkpoint() {
    let db = Arc::new(TestDb::new().await);
    let store = db.store();
    let mut p1 = spawn_process("worker", &process_env(&db.url, "v1"));
    let id = db.enqueue("test", json!({"sleep_ms": 1200})).await;
    // Wait until `first` is done and `second` is running in process 1.
    wait_stages_completed(&db.pool, id, 1).await;
    let drained: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/v1/lifecycle/drain", p1.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(drained["mode"], "PreparingForStop");
    p1.wait_lifecycle("process 1 SafeToStop", |b| b["mode"] == "SafeToStop")
        .await;
    p1.signal("TERM");
    assert_eq!(p1.wait_exit(T).await, Some(0), "clean exit after drain");
    let mid = store.get(id).await.unwrap();
    assert_eq!(mid.state, JobState::Queued);
    assert_eq!(mid.attempts, 0);

    let _p2 = spawn_process("worker", &process_env(&db.url, "v2"));
    require_state(&store, id, JobState::Succeeded, T).await;

    let v1 = worker_ids_by_version(&db.pool, "v1").await;
    let v2 = worker_ids_by_version(&db.pool, "v2").await;
    let done = completed_stages(&db.pool, id).await;
    let stages: Vec<&str> = done.iter().map(|d| d.0.as_str()).collect();
    assert_eq!(
        stages,
        ["first", "second", "third"],
        "each stage completed exactly once"
    );
    // Stage k in process 1, stage k+1 onwards in process 2.
    let k = done
        .iter()
        .position(|d| v2.contains(&d.1))
        .expect("v2 ran a stage");
    assert!(k >= 1, "v1 completed at least one stage");
    assert!(done[..k].iter().all(|d| v1.contains(&d.1)));
    assert!(done[k..].iter().all(|d| v2.contains(&d.1)));
    // The recorded work agrees: no stage ran to completion twice.
    let runs: Vec<String> = stage_names(&db.pool, id).await;
    assert_eq!(runs, ["first", "second", "third"]);
    // And the timeline view shows which version ran each stage.
    let versions: Vec<(String, String)> = sqlx::query_as(
        "SELECT stage, worker_version FROM job_timeline WHERE job_id = $1 AND event = 'stage_completed' ORDER BY seq",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(versions[0].1, "v1");
    assert_eq!(versions[2].1, "v2");
}

#[tokio::test]
async fn kill_9_mid_stage_another_process_resumes_from_the_last_checkpoint() {
    let db = Arc::new(TestDb::new().await);
    let store = db.store();
    let mut p1 = spawn_process("worker", &process_env(&db.url, "v1"));
    let id = db
        .enqueue("test", json!({"sleep_ms": {"second": 2000}}))
        .await;
    wait_stages_completed(&db.pool, id, 1).await;
    p1.signal("KILL");
    p1.wait_exit(T).await;
    let p2 = spawn_process("worker", &process_env(&db.url, "v1"));
    require_state(&store, id, JobState::Succeeded, T).await;

    let events = store.events(id).await.unwrap();
    let rescued = events
        .iter()
        .find(|e| e.event == "rescued")
        .expect("rescued event");
    assert!(rescued.error.as_deref().unwrap().contains("lease expired"));
    let done = completed_stages(&db.pool, id).await;
    let stages: Vec<&str> = done.iter().map(|d| d.0.as_str()).collect();
    assert_eq!(stages, ["first", "second", "third"]);
    assert_ne!(done[0].1, done[1].1, "second ran in the new process");
    let runs: Vec<String> = stage_names(&db.pool, id).await;
    assert_eq!(runs, ["first", "second", "third"], "first was not re-run");
    drop(p2);
}

#[tokio::test]
async fn a_frozen_worker_that_wakes_up_late_cannot_overwrite_the_job() {
    let db = Arc::new(TestDb::new().await);
    let store = db.store();
    let p1 = spawn_process("worker", &process_env(&db.url, "v1"));
    let id = db
        .enqueue("test", json!({"sleep_ms": {"second": 4000}}))
        .await;
    wait_stages_completed(&db.pool, id, 1).await;
    let p1_id = completed_stages(&db.pool, id).await[0].1.clone();
    p1.signal("STOP");
    let p2 = spawn_process("worker", &process_env(&db.url, "v1"));
    require_state(&store, id, JobState::Succeeded, T).await;
    let final_job = store.get(id).await.unwrap();
    p1.signal("CONT");
    // Give the zombie time to finish its stage and try to write.
    let client = reqwest::Client::new();
    let metrics = wait_for(T, "the zombie to notice it lost the job", || async {
        let text = client
            .get(format!("{}/metrics", p1.base))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        let counter = |name: &str| metric_value(&text, name).unwrap_or(0);
        let fenced =
            counter("etlq_stale_writes_rejected_total") + counter("etlq_leases_lost_total");
        (fenced > 0).then_some(text)
    })
    .await;
    assert!(metrics.contains("etlq_jobs_claimed_total 1"), "{metrics}");
    p1.wait_lifecycle("the zombie to let go of the job", |b| b["in_flight"] == 0)
        .await;
    let after = store.get(id).await.unwrap();
    assert_eq!(after.state, JobState::Succeeded);
    assert_eq!(
        after.checkpoint, final_job.checkpoint,
        "the zombie changed nothing"
    );
    assert_eq!(after.updated_at, final_job.updated_at);
    let done = completed_stages(&db.pool, id).await;
    assert_eq!(done.len(), 3);
    assert!(
        done[1..].iter().all(|d| d.1 != p1_id),
        "no late checkpoint from the zombie"
    );
    drop(p2);
}

#[tokio::test]
async fn sigterm_mid_stage_finishes_the_stage_releases_the_job_and_exits_zero() {
    let db = Arc::new(TestDb::new().await);
    let store = db.store();
    let mut p = spawn_process("worker", &process_env(&db.url, "v1"));
    let id = db
        .enqueue("test", json!({"sleep_ms": {"first": 800}}))
        .await;
    require_state(&store, id, JobState::Running, T).await;
    p.signal("TERM");
    assert_eq!(p.wait_exit(T).await, Some(0));
    let job = store.get(id).await.unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Queued, 0));
    assert!(
        job.checkpoint.get("first").is_some(),
        "the running stage finished and was checkpointed"
    );
    let (mode, stopped): (String, bool) =
        sqlx::query_as("SELECT mode, stopped_at IS NOT NULL FROM workers")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!((mode.as_str(), stopped), ("SafeToStop", true));
}

/// `etlq migrate` on `url`: whether it succeeded, and what it said (warnings included).
fn etlq_migrate(url: &str) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_etlq"))
        .arg("migrate")
        .env("DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .env_remove("ETLQ_CONFIG")
        .output()
        .expect("run etlq migrate");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// During a rolling deploy the next release migrates first. A process of the previous release
/// that restarts then (a crash, a host moved) finds a migration it does not know: it must
/// start, migrate nothing, and run jobs (ADR 0025). Without `ignore_missing` it refused to
/// start ("migration … was previously applied but is missing").
#[tokio::test]
async fn a_process_restarting_after_a_newer_release_migrated_starts_and_runs_jobs() {
    let db = Arc::new(TestDb::new().await);
    let newer: i64 = 29991231000001;
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES ($1, 'from a newer release', true, '\\x00'::bytea, 1)",
    )
    .bind(newer)
    .execute(&db.pool)
    .await
    .unwrap();

    let (ok, said) = etlq_migrate(&db.url);
    assert!(ok, "etlq migrate on a newer schema: {said}");
    assert!(
        said.contains("migrations this release does not know") && said.contains("29991231000001"),
        "the newer schema is said: {said}"
    );

    let _p = spawn_process("worker", &process_env(&db.url, "v1"));
    let id = db.enqueue("test", json!({})).await;
    require_state(&db.store(), id, JobState::Succeeded, T).await;
    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        versions.last(),
        Some(&newer),
        "the newer migration is left alone"
    );
    assert_eq!(
        versions.len(),
        etlq::db::MIGRATOR.iter().count() + 1,
        "nothing migrated twice or taken back"
    );

    // A migration this release knows whose text changed is a broken release, not a deploy in
    // progress: still refused, and said once.
    sqlx::query("UPDATE _sqlx_migrations SET checksum = '\\x00'::bytea WHERE version = $1")
        .bind(versions[0])
        .execute(&db.pool)
        .await
        .unwrap();
    let (ok, err) = etlq_migrate(&db.url);
    assert!(!ok, "a changed migration is refused");
    assert_eq!(err.matches("migrations failed").count(), 1, "{err}");
    assert_eq!(err.matches("modified").count(), 1, "said once: {err}");
}
