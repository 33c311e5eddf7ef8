//! Test harness: a fresh database per test, the app in-process (`spawn_app`) or as a real
//! child process (`spawn_process`), and waiting helpers.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use sqlx::{Connection, PgPool};
use tokio_util::sync::CancellationToken;

use etlq::configuration::Settings;
use etlq::db::Pools;
use etlq::queue::{JobState, JobStore, NewJob};
use etlq::startup::{Application, Role};

/// A service or tool the suite needs is missing: one line naming the command that provides
/// it, and the test process ends at once (no backtrace, no test after it waiting on the same).
pub fn missing_service(what: &str) -> ! {
    use std::io::Write;
    // Straight to the stream: the harness's capture (which `eprintln!` goes through) is lost
    // when the process exits.
    let _ = writeln!(
        std::io::stderr().lock(),
        "{what}: run the test suite with scripts/test, which starts or installs it"
    );
    std::process::exit(2)
}

/// An environment variable `scripts/test` sets for a service it started.
pub fn service_env(name: &str, what: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| missing_service(&format!("{name} is not set ({what})")))
}

/// The server the tests use: DATABASE_URL, else the local default.
pub fn server_url() -> String {
    std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn with_database(url: &str, db: &str) -> String {
    let mut u = url::Url::parse(url).expect("DATABASE_URL parses");
    u.set_path(&format!("/{db}"));
    u.to_string()
}

/// A database of its own for one test, migrated, and a blob directory of its own. Dropped
/// (database and directory) when the test ends.
pub struct TestDb {
    pub url: String,
    pub name: String,
    /// For the tests' own queries.
    pub pool: PgPool,
    pub pools: Pools,
}

/// Prefix of every test database; scripts/test drops leftovers of its own run only.
pub fn db_prefix() -> String {
    match std::env::var("ETLQ_TEST_RUN") {
        Ok(run) if !run.is_empty() => format!("etlq_test_{run}_"),
        _ => "etlq_test_".into(),
    }
}

/// The blob directory of the test database `url` (processes find it from the URL too).
pub fn blob_dir_of(url: &str) -> std::path::PathBuf {
    let name = url::Url::parse(url)
        .unwrap()
        .path()
        .trim_start_matches('/')
        .to_string();
    std::env::temp_dir().join("etlq-test-blobs").join(name)
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.blob_dir());
        let (admin, name) = (with_database(&server_url(), "postgres"), self.name.clone());
        // Drop runs outside any runtime (or inside one that must not block): use a thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut c = sqlx::PgConnection::connect(&admin).await.ok()?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut c)
                .await
                .ok()
            })
        })
        .join();
    }
}

impl TestDb {
    pub async fn new() -> TestDb {
        let db = TestDb::unmigrated().await;
        db.pools.migrate().await.expect("migrate");
        db
    }

    /// An empty database (no migrations run).
    pub async fn unmigrated() -> TestDb {
        let name = format!("{}{}", db_prefix(), uuid::Uuid::new_v4().simple());
        let admin_url = with_database(&server_url(), "postgres");
        let mut admin = match sqlx::PgConnection::connect(&admin_url).await {
            Ok(c) => c,
            Err(e) => missing_service(&format!(
                "PostgreSQL is not reachable at {} ({e}; or set DATABASE_URL)",
                server_url()
            )),
        };
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut admin)
            .await
            .expect("create test database");
        admin.close().await.ok();
        let url = with_database(&server_url(), &name);
        let pool = etlq::db::pool_options()
            .max_connections(10)
            .connect_with(etlq::db::connect_options(&url).unwrap())
            .await
            .expect("connect to test database");
        let pools = Pools::from_main(pool.clone(), Duration::from_millis(500));
        TestDb {
            url,
            name,
            pool,
            pools,
        }
    }

    pub fn store(&self) -> JobStore {
        JobStore::new(&self.pools, 5)
    }

    pub fn blob_dir(&self) -> std::path::PathBuf {
        blob_dir_of(&self.url)
    }

    /// Enqueues one job; returns its id.
    pub async fn enqueue(&self, kind: &str, payload: Value) -> i64 {
        self.store()
            .enqueue(&NewJob::new(kind, payload))
            .await
            .unwrap()
            .job_id
    }
}

/// The fast-test tuning, as environment variables: child processes get exactly these, and
/// in-process apps are built from the same list (`test_settings`), so the two cannot drift.
pub fn test_env(db_url: &str, version: &str) -> Vec<(String, String)> {
    let blobs = blob_dir_of(db_url).display().to_string();
    [
        ("DATABASE_URL", db_url),
        ("ETLQ__BLOB__URL", blobs.as_str()),
        // In-process apps run inside the test binary: the parser child is the real etlq.
        ("ETLQ__ETL__PARSER_EXE", env!("CARGO_BIN_EXE_etlq")),
        ("ETLQ__DATABASE__CREATE_IF_MISSING", "false"),
        ("ETLQ__DATABASE__MAX_CONNECTIONS", "10"),
        ("ETLQ__API__PORT", "0"),
        ("ETLQ__WORKER__VERSION", version),
        ("ETLQ__WORKER__CONCURRENCY", "10"),
        ("ETLQ__WORKER__LEASE_MS", "1500"),
        ("ETLQ__WORKER__POLL_INTERVAL_MS", "200"),
        ("ETLQ__WORKER__HEARTBEAT_MS", "200"),
        ("ETLQ__WORKER__WORKER_TTL_MS", "3000"),
        ("ETLQ__WORKER__DRAIN_TIMEOUT_MS", "10000"),
        ("ETLQ__MAINTENANCE__RESCUE_INTERVAL_MS", "200"),
        ("ETLQ__MAINTENANCE__RESCUE_GRACE_MS", "600"),
        ("ETLQ__MAINTENANCE__SOURCE_POLL_INTERVAL_MS", "200"),
        ("ETLQ__MAINTENANCE__SOURCE_LEASE_MS", "2000"),
        ("ETLQ__RETRY__BACKOFF_BASE_MS", "100"),
        ("ETLQ__RETRY__BACKOFF_MAX_MS", "1000"),
        ("RUST_LOG", "info,sqlx=warn"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Environment for child processes.
pub fn process_env(db_url: &str, version: &str) -> Vec<(String, String)> {
    test_env(db_url, version)
}

/// Settings tuned for fast tests: short leases, quick rescue and polling.
pub fn test_settings(db_url: &str) -> Settings {
    Settings::load_with_env(None, &test_env(db_url, "")).expect("test settings are valid")
}

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub db: Arc<TestDb>,
    pub client: reqwest::Client,
    pub shutdown: CancellationToken,
    pub app: Option<Application>,
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn store(&self) -> JobStore {
        self.db.store()
    }

    pub fn lifecycle(&self) -> &etlq::lifecycle::Lifecycle {
        &self.app.as_ref().unwrap().state.lifecycle
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.client.get(self.url(path)).send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let r = self
            .client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn enqueue(&self, kind: &str, payload: Value) -> i64 {
        self.db.enqueue(kind, payload).await
    }

    /// Starts a drain and waits until the app has stopped.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(app) = self.app.take() {
            tokio::time::timeout(Duration::from_secs(30), app.wait())
                .await
                .expect("app stops within 30 s");
        }
    }
}

pub async fn spawn_app() -> TestApp {
    let db = Arc::new(TestDb::new().await);
    spawn_app_on(db, Role::Serve, |_| {}).await
}

/// Starts the app in-process on `db` with settings adjusted by `tweak`.
pub async fn spawn_app_on(
    db: Arc<TestDb>,
    role: Role,
    tweak: impl FnOnce(&mut Settings),
) -> TestApp {
    log_warnings();
    let mut settings = test_settings(&db.url);
    tweak(&mut settings);
    let shutdown = CancellationToken::new();
    let app = Application::build_with_pools(settings, role, db.pools.clone(), shutdown.clone())
        .await
        .expect("app starts");
    TestApp {
        addr: app.addr,
        db,
        client: reqwest::Client::new(),
        shutdown,
        app: Some(app),
    }
}

/// In-process apps log their warnings to the test's captured output, which the runner shows
/// when the test fails: a lost lease or a failed heartbeat is then in the report, not guessed.
pub fn log_warnings() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("warn,sqlx=error"))
            .with_test_writer()
            .try_init();
    });
}

/// A real `etlq` process. Killed on drop.
pub struct Proc {
    pub child: Child,
    pub base: String,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.pid().to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -{sig} {}", self.pid());
    }

    /// GET on the process's REST API; None while it does not answer.
    pub async fn get_json(&self, path: &str) -> Option<Value> {
        reqwest::get(format!("{}{path}", self.base))
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    /// Waits for the process's own lifecycle endpoint to satisfy `pred`.
    pub async fn wait_lifecycle(&self, what: &str, pred: impl Fn(&Value) -> bool) {
        wait_for(Duration::from_secs(30), what, || async {
            let body = self.get_json("/v1/lifecycle").await?;
            pred(&body).then_some(())
        })
        .await
    }

    /// Waits for the process to exit; returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "process {} did not exit in {timeout:?}",
                self.pid()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `etlq <role> --port 0` and waits for its "listening" line.
pub fn spawn_process(role: &str, env: &[(String, String)]) -> Proc {
    let mut child = Command::new(env!("CARGO_BIN_EXE_etlq"))
        .args([role, "--port", "0"])
        .env_remove("ETLQ_CONFIG")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn etlq");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let base = loop {
        let line = lines
            .next()
            .expect("etlq exited before listening")
            .expect("read stdout");
        if let Some(url) = line.strip_prefix("etlq listening on ") {
            break url.trim().to_string();
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Proc { child, base }
}

/// A loopback port free at the time of asking.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` until it returns Some, or panics after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of an unlabelled series `name` in a Prometheus text scrape.
pub fn metric_value(scrape: &str, name: &str) -> Option<u64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.parse().ok())
}

/// Waits until the stage-pause test aid has recorded `job` inside `stage` at least `times`
/// times (once a process it paused in).
pub async fn wait_paused(pool: &sqlx::PgPool, job: i64, stage: &str, times: i64) {
    wait_for(
        Duration::from_secs(60),
        &format!("job {job} paused inside {stage} ({times}x)"),
        || async {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM test_pauses WHERE job_id = $1 AND stage = $2",
            )
            .bind(job)
            .bind(stage)
            .fetch_one(pool)
            .await
            .ok()?;
            (n >= times).then_some(())
        },
    )
    .await
}

/// Waits until job `id` is in `state` (like River's RequireInserted, for states).
pub async fn require_state(store: &JobStore, id: i64, state: JobState, timeout: Duration) {
    wait_for(timeout, &format!("job {id} to be {state}"), || async {
        let job = store.get(id).await.ok()?;
        (job.state == state).then_some(())
    })
    .await
}

/// `(stage, worker_id)` of every stage_completed event of a job, in order.
pub async fn completed_stages(pool: &PgPool, job_id: i64) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT stage, worker_id FROM job_events WHERE job_id = $1 AND event = 'stage_completed' ORDER BY at, id NULLS FIRST",
    )
    .bind(job_id)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Waits until `n` stages of job `id` have completed.
pub async fn wait_stages_completed(pool: &PgPool, id: i64, n: usize) {
    wait_for(
        Duration::from_secs(30),
        &format!("{n} stage(s) of job {id} to complete"),
        || async { (completed_stages(pool, id).await.len() >= n).then_some(()) },
    )
    .await
}

/// `(stage, worker_id)` of every recorded run of a `test` job's stages.
pub async fn stage_runs(pool: &PgPool, job_id: i64) -> Vec<(String, String)> {
    sqlx::query_as("SELECT stage, worker_id FROM test_stage_runs WHERE job_id = $1 ORDER BY id")
        .bind(job_id)
        .fetch_all(pool)
        .await
        .unwrap()
}

/// The `event` of each of a job's history rows, in order.
pub async fn event_names(store: &JobStore, job_id: i64) -> Vec<String> {
    store
        .events(job_id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event)
        .collect()
}

/// The stage of each recorded run of a `test` job, in order.
pub async fn stage_names(pool: &PgPool, job_id: i64) -> Vec<String> {
    stage_runs(pool, job_id)
        .await
        .into_iter()
        .map(|r| r.0)
        .collect()
}

/// A REST client that sends `token` as its bearer token on every request.
pub fn bearer_client(token: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .default_headers(
            [(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {token}").parse().unwrap(),
            )]
            .into_iter()
            .collect(),
        )
        .build()
        .unwrap()
}

/// Waits until a connection to this test's database holds a transaction open after a
/// statement whose text matches `like` (a kill -9 test's "inside the transaction").
pub async fn wait_open_transaction(pool: &PgPool, like: &str, what: &str) {
    wait_for(Duration::from_secs(20), what, || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
               AND state = 'idle in transaction' AND query LIKE $1",
        )
        .bind(like)
        .fetch_one(pool)
        .await
        .ok()?;
        (n >= 1).then_some(())
    })
    .await;
}

/// Waits until the worker has told that it started job `id` (claimed or pushed).
pub async fn wait_started(
    signals: &mut tokio::sync::broadcast::Receiver<etlq::worker::Signal>,
    id: i64,
    timeout: Duration,
) {
    tokio::time::timeout(timeout, async {
        loop {
            match signals.recv().await {
                Ok(etlq::worker::Signal::Claimed(c)) if c.contains(&id) => return,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("signals closed: {e}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("job {id} did not start within {timeout:?}"));
}
