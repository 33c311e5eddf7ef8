//! PostgreSQL restarting or unreachable under a running worker process (SPEC §9): the test
//! starts a private cluster from the installed PostgreSQL binaries so it can stop it at will
//! without disturbing the other tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use sqlx::Connection;

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

    /// A small pool on the cluster (schema migrated: a no-op after the first time) and a job
    /// store over it.
    async fn connect(&self) -> (sqlx::PgPool, JobStore) {
        let pool = etlq::db::pool_options()
            .max_connections(2)
            .connect(&self.url())
            .await
            .unwrap();
        let pools = etlq::db::Pools::from_main(pool.clone(), Duration::from_secs(1));
        pools.migrate().await.unwrap();
        (pool, JobStore::new(&pools, 5))
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
    let (pool, store) = cluster.connect().await;
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
    // Back up (it accepts connections) before the outage begins.
    wait_for(
        Duration::from_secs(20),
        "PostgreSQL to accept connections",
        || async {
            let c = sqlx::PgConnection::connect(&cluster.url()).await.ok()?;
            c.close().await.ok()
        },
    )
    .await;
    cluster.ctl("stop");
    // The worker notices (its heartbeats fail), and lives on through 3 s without PostgreSQL.
    let failures = || async {
        let text = reqwest::get(format!("{}/metrics", worker.base))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("etlq_heartbeat_failures_total "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    wait_for(
        Duration::from_secs(10),
        "the worker to see the outage",
        || async { failures().await.filter(|n| *n > 0) },
    )
    .await;
    // The outage's length is what this test is about: no event can stand for it.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker survives the outage"
    );
    assert!(failures().await.is_some(), "and still answers");
    cluster.ctl("start");

    let (pool, store) = cluster.connect().await;
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

/// PostgreSQL stopped for longer than the lease while jobs run: when it is back, the live
/// owners keep their jobs (no rescue, no attempt consumed), while the jobs of a worker killed
/// during the outage are rescued within a lease of the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_the_lease_costs_live_workers_nothing() {
    let cluster = Cluster::start();
    let (pool, store) = cluster.connect().await;
    // The worker that will die during the outage, holding one long job.
    let mut doomed = spawn_process("worker", &process_env(&cluster.url(), "doomed"));
    let orphan = store
        .enqueue(&NewJob::new("test", json!({"sleep_ms": {"first": 20000}})))
        .await
        .unwrap()
        .job_id;
    require_state(&store, orphan, JobState::Running, Duration::from_secs(20)).await;
    // It claims nothing more (it keeps its job and renews its lease).
    reqwest::Client::new()
        .post(format!("{}/v1/lifecycle/drain", doomed.base))
        .send()
        .await
        .unwrap();
    // The survivor, holding five jobs whose first stage spans the outage. A 3 s lease, renewed
    // every second: slower to renew than the eager rescuer below is to rescue.
    let mut survivor_env = process_env(&cluster.url(), "survivor");
    survivor_env.push(("ETLQ__WORKER__LEASE_MS".into(), "3000".into()));
    let mut survivor = spawn_process("worker", &survivor_env);
    let held: Vec<i64> = store
        .enqueue_many(&vec![
            NewJob::new(
                "test",
                json!({"sleep_ms": {"first": 4000}})
            );
            5
        ])
        .await
        .unwrap()
        .iter()
        .map(|e| e.job_id)
        .collect();
    for id in &held {
        require_state(&store, *id, JobState::Running, Duration::from_secs(20)).await;
    }
    pool.close().await;

    cluster.ctl("stop");
    doomed.signal("KILL");
    doomed.wait_exit(Duration::from_secs(10)).await;
    // Longer than the leases (1.5 s and 3 s), with PostgreSQL down: time passing is the
    // subject here (no database clock to wait on while it is stopped).
    tokio::time::sleep(Duration::from_secs(5)).await;
    // The survivor is slow to come back (a busy machine): it is frozen for the first moments
    // after the restart, while an eager rescuer is already at work.
    survivor.signal("STOP");
    cluster.ctl("start");
    let restarted = chrono::Utc::now();
    let frozen_until = tokio::time::Instant::now() + Duration::from_millis(400);

    let (pool, store) = cluster.connect().await;
    // An eager rescuer: the first to see PostgreSQL back, rescuing every 20 ms with the rules
    // the workers use, its grace widened to 1.2 s so a loaded machine cannot make the thawed
    // survivor miss it. It must not take a live owner's job.
    let mut settings = test_settings(&cluster.url());
    settings.maintenance.rescue_grace_ms = 1200;
    let rules = etlq::maintenance::RescuerConfig::from_settings(&settings).rules;
    let eager = etlq::queue::Actor::new("eager", "test");
    let mut rescued_by_eager = 0;
    let mut frozen = true;
    let until = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < until {
        if frozen && tokio::time::Instant::now() >= frozen_until {
            survivor.signal("CONT");
            frozen = false;
        }
        if let Ok(r) = store.rescue_expired(&eager, &rules, 100).await {
            rescued_by_eager += r.total();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        rescued_by_eager <= 1,
        "only the dead worker's job may be rescued"
    );
    for id in &held {
        require_state(&store, *id, JobState::Succeeded, Duration::from_secs(60)).await;
        let job = store.get(*id).await.unwrap();
        assert_eq!(
            job.attempts, 1,
            "job {id}: no attempt consumed by the outage"
        );
        let events: Vec<String> = store
            .events(*id)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event)
            .collect();
        assert_eq!(
            events.iter().filter(|e| *e == "claimed").count(),
            1,
            "job {id}: {events:?}"
        );
        assert!(
            !events.contains(&"rescued".to_string()),
            "job {id}: {events:?}"
        );
    }
    // The dead worker's job: rescued soon after the restart, then finished by the survivor.
    let rescued_at: chrono::DateTime<chrono::Utc> = wait_for(
        Duration::from_secs(20),
        "the orphan to be rescued",
        || async {
            sqlx::query_scalar("SELECT at FROM job_events WHERE job_id = $1 AND event = 'rescued'")
                .bind(orphan)
                .fetch_optional(&pool)
                .await
                .ok()
                .flatten()
        },
    )
    .await;
    let after = (rescued_at - restarted).to_std().unwrap_or_default();
    // Within a lease (1.5 s) of the restart, with room for a loaded machine.
    assert!(
        after < Duration::from_secs(3),
        "rescued {after:?} after the restart"
    );
    // The survivor rode out the outage: it is still running, not restarted by anyone.
    assert!(
        survivor.child.try_wait().unwrap().is_none(),
        "the surviving worker exited"
    );
}

/// Every process of a cluster stopped (SIGSTOP) until dropped: PostgreSQL frozen, as by a
/// stalled disk or a paused VM — connections stay open and statements wait.
struct Frozen(Vec<String>);

impl Frozen {
    fn freeze(cluster: &Cluster) -> Frozen {
        let pid_file = cluster.dir.path().join("data/postmaster.pid");
        let postmaster = std::fs::read_to_string(pid_file).unwrap();
        let postmaster = postmaster.lines().next().unwrap().trim().to_string();
        let children = Command::new("pgrep")
            .args(["-P", &postmaster])
            .output()
            .unwrap();
        let mut pids: Vec<String> = String::from_utf8_lossy(&children.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        pids.push(postmaster);
        let frozen = Frozen(pids);
        frozen.signal("STOP");
        frozen
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .arg(format!("-{sig}"))
            .args(&self.0)
            .status();
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        self.signal("CONT");
    }
}

/// PostgreSQL freezes for longer than the lease with the whole fleet waiting on it. When it
/// thaws, every statement queued meanwhile runs at once: a rescue that ran before the
/// owners' renewals took jobs from workers that never stopped (a full suite on a loaded
/// machine once rescued 30 that way). The rescuers see the pause between their own passes
/// and give the owners the reconnect grace instead.
///
/// In-process workers sharing one set of pools, as in `queue::several_workers_…`: after the
/// thaw their renewals and heartbeats queue for two control connections while the rescuers
/// have the main pool — the order that lost the race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_postgres_costs_live_workers_nothing() {
    log_warnings();
    let cluster = Cluster::start();
    let (pool, store) = cluster.connect().await;
    let pools = etlq::db::Pools::from_main(
        etlq::db::pool_options()
            .max_connections(10)
            .connect(&cluster.url())
            .await
            .unwrap(),
        Duration::from_millis(500),
    );
    let mut fleet = Vec::new();
    for _ in 0..4 {
        let shutdown = tokio_util::sync::CancellationToken::new();
        let mut settings = test_settings(&cluster.url());
        settings.worker.fetch_batch = 7;
        let app = etlq::startup::Application::build_with_pools(
            settings,
            etlq::startup::Role::Worker,
            pools.clone(),
            shutdown.clone(),
        )
        .await
        .expect("app starts");
        fleet.push((shutdown, app));
    }
    // Jobs flowing through the fleet when PostgreSQL freezes.
    let n = 2000;
    store
        .enqueue_many(&vec![NewJob::new("test", json!({})); n])
        .await
        .unwrap();
    let done = |pool: sqlx::PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    wait_for(
        Duration::from_secs(60),
        "the fleet to be under way",
        || async { (done(pool.clone()).await >= 200).then_some(()) },
    )
    .await;

    // 2.5 s: past every lease (1.5 s, test settings), short of the 3 s after which an owner
    // that heartbeats without renewing counts as gone. Time passing is the subject (no
    // database clock to read while it is frozen).
    let frozen = Frozen::freeze(&cluster);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    drop(frozen);

    wait_for(Duration::from_secs(120), "every job to succeed", || async {
        (done(pool.clone()).await == n as i64).then_some(())
    })
    .await;
    let count = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        count("SELECT count(*) FROM job_events WHERE event = 'rescued'").await,
        0,
        "jobs were rescued from live workers"
    );
    assert_eq!(
        count("SELECT count(*) FROM jobs WHERE attempts <> 1").await,
        0,
        "an attempt was consumed by the freeze"
    );
    let runs = count("SELECT count(*) FROM test_stage_runs").await;
    assert_eq!(runs, 3 * n as i64, "each stage ran once");
    for (shutdown, app) in fleet {
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), app.wait())
            .await
            .expect("app stops within 30 s");
    }
}

/// The pool hands out a connection used a moment ago without pinging it first (a round trip
/// off every statement's path) and pings one idle for longer (`db::PING_IF_IDLE_FOR`, 1 s).
/// So a backend the server ended just after its last use fails the next statement once, as
/// unreachable — what the worker retries and the API answers with 503 — and is replaced; one
/// ended while idle is replaced before anyone sees it. The two thresholds are set wide apart
/// here so that no pause of a busy machine decides the outcome.
#[tokio::test]
async fn a_connection_the_server_ended_is_replaced() {
    let db = TestDb::new().await;
    for (idle, fails_once) in [(Duration::from_secs(3600), true), (Duration::ZERO, false)] {
        let pool = etlq::db::pool_options_pinging_after(idle)
            .max_connections(1)
            .connect_with(etlq::db::connect_options(&db.url).unwrap())
            .await
            .unwrap();
        let backend = || sqlx::query_scalar::<_, i32>("SELECT pg_backend_pid()").fetch_one(&pool);
        let first = backend().await.unwrap();
        // Back in the pool (sqlx pings it on the way), then ended by the server.
        while pool.num_idle() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let ended: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1, 10000)")
            .bind(first)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert!(ended);
        if fails_once {
            let err = backend()
                .await
                .expect_err("an unchecked dead connection fails");
            assert!(
                etlq::db::is_unavailable(&err),
                "classed as unreachable: {err}"
            );
        }
        let next = backend().await.expect("the pool replaced the connection");
        assert_ne!(next, first);
        pool.close().await;
    }
}
