//! PostgreSQL restarting or unreachable under a running worker process (SPEC §9): the test
//! starts a private cluster from the installed PostgreSQL binaries so it can stop it at will
//! without disturbing the other tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use sqlx::postgres::PgPoolOptions;

use etlq::queue::{JobState, JobStore, NewJob};

use crate::helpers::*;

struct Cluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
}

fn pg_bindir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.into_iter()
        .rev()
        .find(|d| d.join("initdb").exists())
        .expect("this test needs PostgreSQL's server binaries (initdb, pg_ctl) under /usr/lib/postgresql")
}

fn as_owner(cmd: &Path, args: &[&str]) -> Command {
    let root = is_root();
    let mut c = if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(cmd);
        c
    } else {
        Command::new(cmd)
    };
    c.args(args);
    c
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Cluster {
    fn start() -> Cluster {
        let bin = pg_bindir();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        if is_root() {
            Command::new("chown")
                .args(["postgres", dir.path().to_str().unwrap()])
                .status()
                .unwrap();
        }
        let ok = as_owner(
            &bin.join("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=trust",
            ],
        )
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
        assert!(ok, "initdb");
        let c = Cluster {
            bin,
            dir,
            port: free_port(),
        };
        c.ctl("start");
        c
    }

    fn ctl(&self, action: &str) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("pg.log");
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={}",
            self.port,
            self.dir.path().display()
        );
        let ok = as_owner(
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &opts,
                "-m",
                "fast",
                "-w",
                action,
            ],
        )
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
        assert!(ok, "pg_ctl {action}");
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = as_owner(
            &self.bin.join("pg_ctl"),
            &["-D", data.to_str().unwrap(), "-m", "immediate", "stop"],
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    }
}

#[tokio::test]
async fn workers_ride_out_a_postgres_restart_and_an_outage() {
    let cluster = Cluster::start();
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&cluster.url())
        .await
        .unwrap();
    etlq::db::migrate(&pool).await.unwrap();
    let store = JobStore::new(pool.clone(), 5);
    let mut worker = spawn_process("worker", &process_env(&cluster.url(), "v1"));
    let batch = |n: usize| vec![NewJob::new("test", json!({"sleep_ms": 200})); n];
    let first: Vec<i64> = store
        .enqueue_many(&batch(10))
        .await
        .unwrap()
        .iter()
        .map(|e| e.job_id)
        .collect();
    wait_for(Duration::from_secs(20), "jobs to start", || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM job_events WHERE event = 'stage_completed'")
                .fetch_one(&pool)
                .await
                .ok()?;
        (n > 0).then_some(())
    })
    .await;

    // A restart mid-work, then an outage of a few seconds.
    cluster.ctl("restart");
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.ctl("stop");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker survives the outage"
    );
    cluster.ctl("start");

    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&cluster.url())
        .await
        .unwrap();
    let store = JobStore::new(pool.clone(), 5);
    let second: Vec<i64> = store
        .enqueue_many(&batch(5))
        .await
        .unwrap()
        .iter()
        .map(|e| e.job_id)
        .collect();
    for id in first.iter().chain(&second) {
        require_state(&store, *id, JobState::Succeeded, Duration::from_secs(60)).await;
    }
    // Nothing ran twice to completion even though connections broke mid-stage.
    let dups: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT job_id, stage FROM job_events WHERE event = 'stage_completed' GROUP BY 1, 2 HAVING count(*) > 1) d",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(dups, 0);
    assert!(worker.child.try_wait().unwrap().is_none());
    worker.signal("TERM");
    assert_eq!(worker.wait_exit(Duration::from_secs(30)).await, Some(0));
}
