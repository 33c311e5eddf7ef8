//! The fleet across a network (issue 18): worker processes reach PostgreSQL through a proxy
//! the test controls, and the test cuts and heals that path — no byte crosses while it is cut
//! and none is lost, as across a partitioned network (ADR 0016: why a proxy on loopback and
//! not network namespaces). And a worker whose wall clock is ten minutes off (libfaketime)
//! changes no lease, rescue or schedule decision: the database's clock makes them.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use etlq::queue::{JobState, NewJob};

use crate::helpers::*;

const T: Duration = Duration::from_secs(60);

/// A TCP proxy on loopback in front of PostgreSQL. While cut, bytes already read wait in the
/// proxy and nothing more is read from either side; new connections wait too. Healing lets
/// everything flow on. Its tasks end when it is dropped, or with the test's runtime (a
/// panicking test included).
pub struct FaultProxy {
    pub url: String,
    open: watch::Sender<bool>,
    stop: CancellationToken,
}

impl FaultProxy {
    /// A proxy for the database at `db_url`; `url` is the same database through it.
    pub async fn start(db_url: &str) -> FaultProxy {
        let mut url = url::Url::parse(db_url).unwrap();
        let upstream = format!("{}:{}", url.host_str().unwrap(), url.port().unwrap_or(5432));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        url.set_port(Some(listener.local_addr().unwrap().port()))
            .unwrap();
        url.set_host(Some("127.0.0.1")).unwrap();
        let (open, _) = watch::channel(true);
        let stop = CancellationToken::new();
        let gate = open.subscribe();
        let s = stop.clone();
        tokio::spawn(async move {
            loop {
                let down = tokio::select! {
                    _ = s.cancelled() => return,
                    r = listener.accept() => match r { Ok((c, _)) => c, Err(_) => return },
                };
                let gate = gate.clone();
                let upstream = upstream.clone();
                let s = s.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = s.cancelled() => {}
                        _ = relay(down, upstream, gate) => {}
                    }
                });
            }
        });
        FaultProxy {
            url: url.to_string(),
            open,
            stop,
        }
    }

    pub fn cut(&self) {
        self.open.send_replace(false);
    }

    pub fn heal(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn relay(down: TcpStream, upstream: String, mut gate: watch::Receiver<bool>) {
    if gate.wait_for(|open| *open).await.is_err() {
        return;
    }
    let Ok(up) = TcpStream::connect(&upstream).await else {
        return;
    };
    let (dr, dw) = down.into_split();
    let (ur, uw) = up.into_split();
    tokio::join!(pump(dr, uw, gate.clone()), pump(ur, dw, gate));
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut gate: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if gate.wait_for(|open| *open).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        // Read just before a cut: held until the heal, like a packet in a dead link's queue.
        if gate.wait_for(|open| *open).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn db_now(pool: &sqlx::PgPool) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT now()")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn worker_id(p: &Proc) -> String {
    wait_for(T, "the process's worker id", || async {
        p.get_json("/v1/lifecycle").await?["worker_id"]
            .as_str()
            .map(str::to_string)
    })
    .await
}

async fn lease(pool: &sqlx::PgPool, id: i64) -> (Option<String>, Option<DateTime<Utc>>) {
    sqlx::query_as("SELECT lease_owner, lease_expires_at FROM jobs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn events(pool: &sqlx::PgPool, id: i64, event: &str) -> Vec<DateTime<Utc>> {
    sqlx::query_scalar(
        "SELECT at FROM job_events WHERE job_id = $1 AND event = $2 ORDER BY at, id NULLS FIRST",
    )
    .bind(id)
    .bind(event)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Starts a worker behind `proxy` and has it claim a job whose first stage sleeps
/// `sleep_ms`; returns the process, its worker id and the job.
async fn held_behind(
    db: &TestDb,
    proxy: &FaultProxy,
    env: &[(String, String)],
    sleep_ms: u64,
) -> (Proc, String, i64) {
    let mut behind = env.to_vec();
    behind.retain(|(k, _)| k != "DATABASE_URL");
    behind.push(("DATABASE_URL".into(), proxy.url.clone()));
    let w1 = spawn_process("worker", &behind);
    let w1_id = worker_id(&w1).await;
    let job = db
        .enqueue("test", json!({"sleep_ms": {"first": sleep_ms}}))
        .await;
    wait_for(T, "the worker behind the proxy to hold the job", || async {
        (lease(&db.pool, job).await.0.as_deref() == Some(w1_id.as_str())).then_some(())
    })
    .await;
    (w1, w1_id, job)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cut_off_past_its_lease_is_rescued_fenced_and_rejoins() {
    let db = Arc::new(TestDb::new().await);
    let env = process_env(&db.url, "v1");
    let proxy = FaultProxy::start(&db.url).await;
    let (w1, w1_id, job) = held_behind(&db, &proxy, &env, 4000).await;
    // The rest of the fleet, on its own path to PostgreSQL.
    let w2 = spawn_process("worker", &env);
    let w2_id = worker_id(&w2).await;

    proxy.cut();
    // A renewal already past the proxy may still land: read the lease once it cannot move.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, expires) = lease(&db.pool, job).await;
    let expires = expires.expect("the job is leased");
    wait_for(T, "the cut-off worker's job to be rescued", || async {
        (!events(&db.pool, job, "rescued").await.is_empty()).then_some(())
    })
    .await;
    let rescued = events(&db.pool, job, "rescued").await[0];
    // Lease 1.5 s, rescue interval 0.2 s (process_env): not before the lease ran out, and
    // within the rescue interval of its end (with two seconds for a loaded test machine to
    // schedule the rescuer and run its statement).
    assert!(
        rescued >= expires,
        "rescued at {rescued}, lease until {expires}"
    );
    assert!(
        rescued <= expires + chrono::Duration::milliseconds(200 + 2000),
        "rescued at {rescued}, lease until {expires}"
    );
    require_state(&db.store(), job, JobState::Succeeded, T).await;

    // Healed: whatever the cut-off worker had pending reaches PostgreSQL and is fenced.
    proxy.heal();
    w1.wait_lifecycle("the healed worker to let go of the job", |b| {
        b["in_flight"] == 0
    })
    .await;
    let text = reqwest::get(format!("{}/metrics", w1.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counter = |name: &str| metric_value(&text, name).unwrap_or(0);
    assert!(
        counter("etlq_stale_writes_rejected_total") + counter("etlq_leases_lost_total") > 0,
        "{text}"
    );
    let done = completed_stages(&db.pool, job).await;
    assert_eq!(done.len(), 3, "each stage took effect once: {done:?}");
    assert!(done.iter().all(|(_, w)| *w == w2_id), "{done:?}");
    let after = db.store().get(job).await.unwrap();
    assert_eq!(after.state, JobState::Succeeded);

    // It rejoins: with the other worker gone, it takes and finishes new work.
    drop(w2);
    let next = db.enqueue("test", json!({})).await;
    require_state(&db.store(), next, JobState::Succeeded, T).await;
    let done = completed_stages(&db.pool, next).await;
    assert!(done.iter().all(|(_, w)| *w == w1_id), "{done:?}");
    drop(w1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_healed_inside_the_lease_rescues_nothing_and_costs_no_attempt() {
    let db = Arc::new(TestDb::new().await);
    let mut env = process_env(&db.url, "v1");
    // Lease 6 s, renewed every 2 s: a 2 s cut ends well inside it.
    env.push(("ETLQ__WORKER__LEASE_MS".into(), "6000".into()));
    let proxy = FaultProxy::start(&db.url).await;
    let (w1, w1_id, job) = held_behind(&db, &proxy, &env, 4000).await;
    let w2 = spawn_process("worker", &env);
    worker_id(&w2).await;

    proxy.cut();
    let cut_at = db_now(&db.pool).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (owner, expires) = lease(&db.pool, job).await;
    assert_eq!(owner.as_deref(), Some(w1_id.as_str()));
    assert!(
        expires.unwrap() > db_now(&db.pool).await,
        "the lease is still running"
    );
    proxy.heal();
    wait_for(T, "a renewal after the heal", || async {
        (lease(&db.pool, job).await.1? > cut_at + chrono::Duration::milliseconds(6000))
            .then_some(())
    })
    .await;
    require_state(&db.store(), job, JobState::Succeeded, T).await;
    assert!(events(&db.pool, job, "rescued").await.is_empty());
    let after = db.store().get(job).await.unwrap();
    assert_eq!(after.attempts, 1, "no attempt consumed");
    let done = completed_stages(&db.pool, job).await;
    assert_eq!(done.len(), 3);
    assert!(done.iter().all(|(_, w)| *w == w1_id), "{done:?}");
    drop((w1, w2));
}

/// Where Debian's libfaketime puts its preload library.
fn libfaketime() -> Option<std::path::PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    ]
    .iter()
    .map(std::path::PathBuf::from)
    .find(|p| p.exists())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_ten_minutes_ahead_decides_nothing_by_its_own_clock() {
    let Some(lib) = libfaketime() else {
        missing_service("libfaketime (Debian's libfaketime; scripts/test installs it)")
    };
    let db = Arc::new(TestDb::new().await);
    let env = process_env(&db.url, "v1");
    let mut ahead = env.clone();
    ahead.extend([
        ("LD_PRELOAD".to_string(), lib.display().to_string()),
        ("FAKETIME".to_string(), "+10m".to_string()),
    ]);
    // `serve`: its rescuer and its worker both run on the skewed clock.
    let skewed = spawn_process("serve", &ahead);
    let skewed_id = worker_id(&skewed).await;
    // The skew is real: the process's own Date header is ten minutes ahead of PostgreSQL.
    let date = reqwest::get(format!("{}/healthz", skewed.base))
        .await
        .unwrap()
        .headers()["date"]
        .to_str()
        .unwrap()
        .to_string();
    let its_now = DateTime::parse_from_rfc2822(&date)
        .unwrap()
        .with_timezone(&Utc);
    let skew = its_now - db_now(&db.pool).await;
    assert!(
        skew > chrono::Duration::seconds(590) && skew < chrono::Duration::seconds(610),
        "skew {skew}"
    );

    // A job due in 3 s (the database's clock) waits 3 s, though the worker believes it is
    // 10 minutes late.
    let mut later = NewJob::new("test", json!({}));
    later.delay_ms = Some(3000);
    let scheduled = db.store().enqueue(&later).await.unwrap().job_id;
    let run_at = db.store().get(scheduled).await.unwrap().run_at;
    require_state(&db.store(), scheduled, JobState::Succeeded, T).await;
    let claimed = events(&db.pool, scheduled, "claimed").await[0];
    assert!(claimed >= run_at, "claimed at {claimed}, due at {run_at}");

    // It holds a job longer than its lease: its renewals keep the lease on the database's
    // clock, and the other worker's rescuer leaves it alone.
    let held = db
        .enqueue("test", json!({"sleep_ms": {"first": 5000}}))
        .await;
    wait_for(T, "the skewed worker to hold the job", || async {
        (lease(&db.pool, held).await.0.as_deref() == Some(skewed_id.as_str())).then_some(())
    })
    .await;
    let (_, expires) = lease(&db.pool, held).await;
    let left = expires.unwrap() - db_now(&db.pool).await;
    assert!(
        left <= chrono::Duration::milliseconds(1500),
        "the lease runs on the database's clock: {left} left of 1.5 s"
    );
    // Draining, it claims nothing more but keeps renewing, and its rescuer keeps running.
    let drained = reqwest::Client::new()
        .post(format!("{}/v1/lifecycle/drain", skewed.base))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(drained.status(), 200);
    let other = spawn_process("serve", &env);
    let other_id = worker_id(&other).await;
    // And a job the other worker holds is not rescued by the skewed rescuer.
    let theirs = db
        .enqueue("test", json!({"sleep_ms": {"first": 4000}}))
        .await;
    wait_for(T, "the other worker to hold a job", || async {
        let owner = lease(&db.pool, theirs).await.0;
        match owner {
            Some(o) if o == other_id => Some(()),
            _ => None,
        }
    })
    .await;
    require_state(&db.store(), held, JobState::Succeeded, T).await;
    require_state(&db.store(), theirs, JobState::Succeeded, T).await;
    for id in [held, theirs] {
        assert!(events(&db.pool, id, "rescued").await.is_empty(), "job {id}");
        assert_eq!(db.store().get(id).await.unwrap().attempts, 1, "job {id}");
    }
    drop((skewed, other));
}
