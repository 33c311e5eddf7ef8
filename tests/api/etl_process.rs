//! The ETL pipeline under real processes: `kill -9` inside each stage, and a deploy (drain,
//! SIGTERM, new version) in the middle of a large extract. The sink must end with every
//! record exactly once and the manifest bumped exactly once.

use std::time::Duration;

use crate::etl::{check_gl_docs, counter, sink_docs, upload_ok, wait_done};
use crate::helpers::*;
use crate::samples;

fn with(mut env: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// `(stage, worker_version)` of each completed stage of a job, in order.
async fn stage_versions(db: &TestDb, id: i64) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT stage, worker_version FROM job_events WHERE job_id = $1 AND event = 'stage_completed' ORDER BY at, id NULLS FIRST",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

async fn upload_gl(base: &str, bytes: Vec<u8>, bu_id: &str) -> i64 {
    upload_ok(&reqwest::Client::new(), base, bytes, bu_id, "sap_fbl3n").await
}

/// The sink holds exactly the generator's records under this job's version and nothing
/// else; one promotion, one counter bump; each stage checkpointed once.
async fn assert_exactly_once(db: &TestDb, id: i64, lines: &[samples::GlLine]) {
    check_gl_docs(&sink_docs(&db.pool, id).await, lines);
    let (all, promotions, counter): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM sink_documents), (SELECT count(*) FROM promotions),
                (SELECT counter FROM cache_manifest)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(all as usize, lines.len(), "no document outside the version");
    assert_eq!((promotions, counter), (1, 1), "promoted and bumped once");
    let stages: Vec<String> = completed_stages(&db.pool, id)
        .await
        .into_iter()
        .map(|s| s.0)
        .collect();
    assert_eq!(stages, ["extract", "sync", "verify", "promote"]);
}

/// Kills the worker with SIGKILL while it is paused inside `stage` (after the stage's first
/// write where it has one), then lets a second process rescue and finish the job.
async fn kill_inside(stage: &str) {
    let db = TestDb::new().await;
    let slow = with(
        process_env(&db.url, "v1"),
        &[
            ("ETLQ__TESTING__PAUSE_IN_STAGE_MS", "60000"),
            ("ETLQ__TESTING__PAUSE_STAGE", stage),
            ("ETLQ__ETL__SYNC_BATCH", "400"),
        ],
    );
    let mut a = spawn_process("serve", &slow);
    let gl = samples::gl_export(3000, 3);
    let id = upload_gl(&a.base, gl.bytes.clone(), "BU-K").await;
    let blobs = db.blob_dir();
    let pool = db.pool.clone();
    // The pause aid records that the process is inside the stage (after its first write,
    // where it has one); the stage's own evidence must be there too.
    wait_for(
        Duration::from_secs(30),
        &format!("job {id} paused inside {stage}"),
        || async {
            let paused: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM test_pauses WHERE job_id = $1 AND stage = $2",
            )
            .bind(id)
            .bind(stage)
            .fetch_one(&pool)
            .await
            .ok()?;
            let written = match stage {
                "extract" => blobs.join(format!("runs/{id}/records.ndjson")).exists(),
                // Rows are streaming into the version's table, not yet attached.
                "sync" => sqlx::query_scalar::<_, i64>(
                    "SELECT coalesce(sum(tuples_processed), 0)::bigint FROM pg_stat_progress_copy
                      WHERE relid = to_regclass('sink_documents_v' || $1)",
                )
                .bind(id)
                .fetch_one(&pool)
                .await
                .ok()?
                    > 0,
                "promote" => blobs.join("latest/BU-K/sap_fbl3n/manifest.json").exists(),
                _ => true,
            };
            (paused == 1 && written).then_some(())
        },
    )
    .await;
    let job = db.store().get(id).await.unwrap();
    // (No stage yet means the first one.)
    assert_eq!(
        job.stage.as_deref().unwrap_or("extract"),
        stage,
        "the kill lands inside {stage}"
    );
    a.signal("KILL");
    a.wait_exit(Duration::from_secs(10)).await;
    if stage == "sync" {
        assert!(
            sink_docs(&db.pool, id).await.is_empty(),
            "a killed sync leaves nothing readers can see"
        );
    }
    if stage == "promote" {
        assert_eq!(
            counter(&db.pool).await,
            0,
            "the killed promotion did not commit"
        );
    }

    let b = spawn_process("serve", &process_env(&db.url, "v2"));
    let v = wait_done(&reqwest::Client::new(), &b.base, id).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    let events: Vec<&str> = v["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert!(events.contains(&"rescued"), "{events:?}");
    assert_exactly_once(&db, id, &gl.lines).await;
    // Stages before the killed one ran in v1, the killed one and later in v2.
    let versions = stage_versions(&db, id).await;
    let killed_at = versions.iter().position(|(s, _)| s == stage).unwrap();
    for (i, (s, v)) in versions.iter().enumerate() {
        let want = if i < killed_at { "v1" } else { "v2" };
        assert_eq!(v, want, "{s} ran in {v}: {versions:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_inside_extract() {
    kill_inside("extract").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_inside_sync() {
    kill_inside("sync").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_inside_verify() {
    kill_inside("verify").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_inside_promote() {
    kill_inside("promote").await;
}

/// A deploy in the middle of a large extract: drain v1 over REST, the extract finishes and is
/// checkpointed, the job is released, v1 stops on SIGTERM, v2 resumes at sync. Uploads are
/// accepted throughout and wait for v2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_during_a_large_extract_then_resume_in_the_new_version() {
    let db = TestDb::new().await;
    let slow = with(
        process_env(&db.url, "v1"),
        &[
            ("ETLQ__TESTING__PAUSE_IN_STAGE_MS", "3000"),
            ("ETLQ__TESTING__PAUSE_STAGE", "extract"),
        ],
    );
    let mut a = spawn_process("serve", &slow);
    let gl = samples::gl_export(20_000, 10);
    let id = upload_gl(&a.base, gl.bytes.clone(), "BU-D").await;
    let records = db.blob_dir().join(format!("runs/{id}/records.ndjson"));
    wait_for(
        Duration::from_secs(60),
        "extract to reach its pause",
        || async { records.exists().then_some(()) },
    )
    .await;
    // Progress of the running stage is visible meanwhile (reported on the reporter's next
    // tick: the parse itself can finish within one).
    let v = wait_for(
        Duration::from_secs(2),
        "extract progress past 10,000 rows",
        || async {
            let v = a.get_json(&format!("/v1/jobs/{id}")).await?;
            (v["progress"]["rows_read"].as_u64()? > 10_000).then_some(v)
        },
    )
    .await;
    assert_eq!(v["state"], "running");
    assert_eq!(v["progress"]["stage"], "extract", "{v}");

    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/v1/lifecycle/drain", a.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let small = samples::gl_export(100, 0);
    let second = upload_gl(&a.base, small.bytes.clone(), "BU-D2").await;
    a.wait_lifecycle("v1 SafeToStop", |l| l["mode"] == "SafeToStop")
        .await;
    let job = db.store().get(id).await.unwrap();
    assert_eq!(
        (job.state.as_str(), job.stage.as_deref()),
        ("queued", Some("sync")),
        "released at the extract checkpoint"
    );
    a.signal("TERM");
    assert_eq!(a.wait_exit(Duration::from_secs(20)).await, Some(0));

    let b = spawn_process("serve", &process_env(&db.url, "v2"));
    for job in [id, second] {
        let v = wait_done(&reqwest::Client::new(), &b.base, job).await;
        assert_eq!(v["state"], "succeeded", "{v}");
    }
    check_gl_docs(&sink_docs(&db.pool, id).await, &gl.lines);
    check_gl_docs(&sink_docs(&db.pool, second).await, &small.lines);
    let ran = stage_versions(&db, id).await;
    let want: Vec<(String, String)> = [
        ("extract", "v1"),
        ("sync", "v2"),
        ("verify", "v2"),
        ("promote", "v2"),
    ]
    .iter()
    .map(|(s, v)| (s.to_string(), v.to_string()))
    .collect();
    assert_eq!(ran, want);
    assert_eq!(counter(&db.pool).await, 2, "one bump per promoted job");
}
