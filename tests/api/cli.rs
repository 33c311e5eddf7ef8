//! The `etlq` command line against a real database and real processes.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use etlq::queue::{JobState, NewJob};

use crate::helpers::*;

fn etlq(db_url: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_etlq"))
        .args(args)
        .env("DATABASE_URL", db_url)
        .env("RUST_LOG", "warn")
        .env_remove("ETLQ_CONFIG")
        .output()
        .expect("run etlq");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn enqueue_status_and_dead_letter_commands() {
    let db = TestDb::new().await;
    let (code, out, err) = etlq(&db.url, &["enqueue", "--kind", "noop", "--count", "3"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.lines().count(), 3);
    let (code, _, err) = etlq(&db.url, &["enqueue", "--kind", "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown job kind"), "{err}");
    let (code, _, err) = etlq(
        &db.url,
        &["enqueue", "--kind", "noop", "--payload", "{oops"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("not JSON"), "{err}");

    let (code, out, _) = etlq(&db.url, &["status"]);
    assert_eq!(code, 0);
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["jobs"]["queued"], 3);

    // A dead job, then list and retry it from the CLI.
    let store = db.store();
    let mut j = NewJob::new(
        "test",
        json!({"bu_id": "CLI", "fail": {"first": {"fatal": true, "times": 1}}}),
    );
    j.max_attempts = Some(1);
    let id = store.enqueue(&j).await.unwrap().job_id;
    sqlx::query("DELETE FROM jobs WHERE kind = 'noop'")
        .execute(&db.pool)
        .await
        .unwrap();
    let _w = spawn_process("worker", &process_env(&db.url, "v1"));
    require_state(&store, id, JobState::Dead, Duration::from_secs(20)).await;
    let (code, out, _) = etlq(&db.url, &["dlq", "list", "--bu-id", "CLI"]);
    assert_eq!(code, 0);
    let row: Value = serde_json::from_str(out.lines().next().expect("one dead letter")).unwrap();
    assert_eq!(row["job_id"], id);
    let (code, _, err) = etlq(&db.url, &["dlq", "retry"]);
    assert_ne!(code, 0, "an unfiltered retry needs --all");
    assert!(err.contains("--all"), "{err}");
    let (code, out, err) = etlq(&db.url, &["dlq", "retry", "--bu-id", "CLI"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("1 jobs re-enqueued"), "{out}");
    require_state(&store, id, JobState::Succeeded, Duration::from_secs(20)).await;
}

#[tokio::test]
async fn drain_wait_exits_zero_at_safe_to_stop_and_non_zero_on_timeout() {
    let db = Arc::new(TestDb::new().await);
    let mut env = process_env(&db.url, "v1");
    env.push(("ETLQ__WORKER__DRAIN_TIMEOUT_MS".into(), "60000".into()));
    let p = spawn_process("worker", &env);
    let store = db.store();
    let id = db
        .enqueue("test", json!({"sleep_ms": {"first": 3000}}))
        .await;
    require_state(&store, id, JobState::Running, Duration::from_secs(20)).await;
    let (code, _, err) = etlq(
        &db.url,
        &["drain", "--url", &p.base, "--wait", "--timeout", "1"],
    );
    assert_eq!(code, 3, "timed out while the stage runs: {err}");
    assert!(err.contains("timed out"), "{err}");
    let (code, out, err) = etlq(
        &db.url,
        &["drain", "--url", &p.base, "--wait", "--timeout", "30"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("SafeToStop"), "{out}");
    let (code, out, _) = etlq(&db.url, &["resume", "--url", &p.base]);
    assert_eq!(code, 0);
    assert!(out.contains("Normal"), "{out}");
    // The fleet variant goes through PostgreSQL.
    let (code, out, err) = etlq(&db.url, &["drain", "--fleet", "--wait", "--timeout", "30"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"mode\":\"SafeToStop\""), "{out}");
}

#[tokio::test]
async fn every_sql_query_runs_with_psql() {
    let app = spawn_app().await;
    let ok = app.enqueue("test", json!({"bu_id": "SQL"})).await;
    let mut dead = NewJob::new("test", json!({"fail": {"second": {"fatal": true}}}));
    dead.max_attempts = Some(1);
    let dead = app.store().enqueue(&dead).await.unwrap().job_id;
    require_state(
        &app.store(),
        ok,
        JobState::Succeeded,
        Duration::from_secs(20),
    )
    .await;
    require_state(&app.store(), dead, JobState::Dead, Duration::from_secs(20)).await;
    let mut files: Vec<_> = std::fs::read_dir("sql")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(files.len() >= 5);
    for f in files {
        let out = Command::new("psql")
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-v", &format!("job_id={ok}")])
            .arg(&app.db.url)
            .arg("-f")
            .arg(&f)
            .output()
            .expect("psql is installed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        if f.ends_with("job_history.sql") {
            assert!(
                stdout.contains("stage_completed") && stdout.contains("third"),
                "{stdout}"
            );
        }
        if f.ends_with("dead_letters.sql") {
            assert!(stdout.contains("failed on demand"), "{stdout}");
        }
    }
    app.stop().await;
}
