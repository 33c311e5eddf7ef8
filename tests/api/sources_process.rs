//! A watch source under real processes: three workers list one prefix while 40 files arrive
//! over a minute, every process is drained and replaced in turn (a rolling deploy), and one
//! is killed with SIGKILL in the middle of a listing. Every file becomes exactly one job and
//! every job succeeds.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::etl::sample_file;
use crate::helpers::*;

const FILES: usize = 40;

struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn env(db: &TestDb, version: &str) -> Vec<(String, String)> {
    let mut e = process_env(&db.url, version);
    for (k, v) in [
        ("KIND", "watch"),
        ("PREFIX", "incoming/"),
        ("PATH", "incoming/{bu_id}/{file}"),
        ("CONNECTOR", "trial_balance"),
        ("EVERY", "1s"),
        ("MIN_AGE_MS", "300"),
    ] {
        e.push((format!("ETLQ__SOURCES__FLOOD__{k}"), v.into()));
    }
    // Small pages with a pause after each: a listing takes long enough to be killed inside.
    e.push(("ETLQ__TESTING__SOURCE_PAGE_SIZE".into(), "4".into()));
    e.push(("ETLQ__TESTING__SOURCE_PAGE_DELAY_MS".into(), "150".into()));
    e
}

async fn worker_id(p: &Proc) -> String {
    let v = p
        .get_json("/v1/lifecycle")
        .await
        .expect("lifecycle answers");
    v["worker_id"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_deploy_and_a_kill_9_mid_listing_lose_and_duplicate_no_file() {
    let db = Arc::new(TestDb::new().await);
    let dir = db.blob_dir().join("incoming");
    let mut procs: Vec<Proc> = (0..3)
        .map(|_| spawn_process("worker", &env(&db, "v1")))
        .collect();

    // The files arrive one every 1.5 s (40 over a minute), each written under a temporary
    // name and renamed (as an ERP job would), spread over four business units. The writer
    // stops when the test ends, panicking or not.
    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let writer = {
        let dir = dir.clone();
        let tb = sample_file("trial_balance.xlsx");
        let stop = stop.0.clone();
        tokio::task::spawn_blocking(move || {
            let mut keys = Vec::new();
            for i in 0..FILES {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let bu = format!("BU-{}", i % 4);
                std::fs::create_dir_all(dir.join(&bu)).unwrap();
                let tmp = dir.join(&bu).join(format!(".tb-{i}.tmp"));
                std::fs::write(&tmp, &tb).unwrap();
                std::fs::rename(&tmp, dir.join(&bu).join(format!("tb-{i}.xlsx"))).unwrap();
                keys.push(format!("incoming/{bu}/tb-{i}.xlsx"));
                std::thread::sleep(Duration::from_millis(1500));
            }
            keys
        })
    };

    // One kill -9 while a process holds a listing that has recorded at least one page. The
    // owner is frozen first and the listing checked still open, so the kill cannot land just
    // after the listing finished (it then goes on and another listing is waited for). A
    // statement the process sent just before it froze still commits on the server, so the
    // listing may end "ok" after all: only a listing that another process has to cut is the
    // case under test, and if it was not one, the next listing is killed instead.
    let killed = loop {
        let killed = wait_for(Duration::from_secs(60), "a listing in progress", || async {
            let owner: Option<String> = sqlx::query_scalar(
                "SELECT s.lease_owner FROM source_schedules s
                   JOIN source_runs r ON r.source = s.source AND r.finished_at IS NULL
                                     AND r.worker_id = s.lease_owner
                  WHERE s.source = 'flood' AND s.lease_until > now()
                    AND EXISTS (SELECT 1 FROM ingest_ledger l WHERE l.run_id = r.id)",
            )
            .fetch_optional(&db.pool)
            .await
            .ok()
            .flatten();
            owner
        })
        .await;
        let mut victim = None;
        for (i, p) in procs.iter().enumerate() {
            if worker_id(p).await == killed {
                victim = Some(i);
            }
        }
        let victim = victim.expect("the lease owner is one of ours");
        procs[victim].signal("STOP");
        let open: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM source_runs
              WHERE source = 'flood' AND worker_id = $1 AND finished_at IS NULL",
        )
        .bind(&killed)
        .fetch_optional(&db.pool)
        .await
        .unwrap();
        let Some(run) = open else {
            procs[victim].signal("CONT");
            continue;
        };
        procs[victim].signal("KILL");
        procs[victim].wait_exit(Duration::from_secs(10)).await;
        procs[victim] = spawn_process("worker", &env(&db, "v1"));
        // Settled when another process takes the source over (after the lease) and cuts it,
        // or at once if the listing's last commit went through.
        let outcome: String = wait_for(
            Duration::from_secs(60),
            "the killed listing settled",
            || async {
                sqlx::query_scalar(
                    "SELECT outcome FROM source_runs WHERE id = $1 AND finished_at IS NOT NULL",
                )
                .bind(run)
                .fetch_optional(&db.pool)
                .await
                .ok()
                .flatten()
            },
        )
        .await;
        if outcome == "cut" {
            break killed;
        }
    };
    // The rolling deploy: each process drained over REST, stopped, replaced by v2.
    let client = reqwest::Client::new();
    for p in procs.iter_mut() {
        let r = client
            .post(format!("{}/v1/lifecycle/drain", p.base))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        p.wait_lifecycle("SafeToStop", |b| b["mode"] == "SafeToStop")
            .await;
        p.signal("TERM");
        assert_eq!(p.wait_exit(Duration::from_secs(30)).await, Some(0));
        *p = spawn_process("worker", &env(&db, "v2"));
        tokio::time::sleep(Duration::from_secs(3)).await; // the deploy's pace
    }
    let keys = writer.await.unwrap();
    assert_eq!(keys.len(), FILES);

    // Every file in the ledger once, each with its own job, each job succeeded.
    let ledger: Vec<(String, i64)> = wait_for(Duration::from_secs(90), "40 jobs done", || async {
        let rows: Vec<(String, i64, String)> = sqlx::query_as(
            "SELECT l.blob_key, l.job_id, j.state FROM ingest_ledger l JOIN jobs j ON j.id = l.job_id
              WHERE l.source = 'flood'",
        )
        .fetch_all(&db.pool)
        .await
        .ok()?;
        (rows.len() >= FILES && rows.iter().all(|r| r.2 == "succeeded" || r.2 == "dead"))
            .then(|| rows.into_iter().map(|r| (r.0, r.1)).collect())
    })
    .await;
    let got: HashSet<&str> = ledger.iter().map(|r| r.0.as_str()).collect();
    let want: HashSet<&str> = keys.iter().map(String::as_str).collect();
    assert_eq!(ledger.len(), FILES, "no file twice: {ledger:?}");
    assert_eq!(got, want, "no file missed");
    let states: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM jobs WHERE kind = 'etl' GROUP BY state")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(states, [("succeeded".to_string(), FILES as i64)]);

    // The killed listing is on record as cut and another process listed after it; no slot
    // was listed twice.
    let cut: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM source_runs WHERE source = 'flood' AND outcome = 'cut' AND worker_id = $1",
    )
    .bind(&killed)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(cut, 1);
    assert_eq!(crate::sources::slots_listed_twice(&db.pool).await, 0);
    let after_cut: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM source_runs r WHERE r.source = 'flood' AND r.outcome = 'ok'
            AND r.worker_id <> $1
            AND r.id > (SELECT id FROM source_runs WHERE outcome = 'cut' AND worker_id = $1)",
    )
    .bind(&killed)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(after_cut >= 1, "another process listed after the kill");
    // Overlapping listings of one source never happened (the lease).
    let overlaps: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM source_runs a JOIN source_runs b
            ON a.source = b.source AND a.id < b.id AND a.outcome = 'ok' AND b.outcome = 'ok'
           AND b.started_at < a.finished_at",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(overlaps, 0);
    drop(stop);
}
