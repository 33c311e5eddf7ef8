//! Queue benchmark (not a test): no-op single-stage jobs on a real PostgreSQL.
//!
//!   scripts/bench-queue            # or: cargo bench --bench queue -- [--jobs N] [--runs N]
//!
//! Reports, as the median of several runs: bulk enqueue jobs/s (one `enqueue_many` call),
//! processed jobs/s (one worker process, full history kept: every claim and completion is in
//! `job_events`), and pickup latency (enqueue call → stage start) p50/p99 with a worker that
//! has nothing else to do: back to back as graphile-worker's latency test runs, then with
//! idle time between samples and split into steps.
//!
//! `--wal-records` prints, for each run, where a processed job's WAL goes by record type
//! (`pg_waldump --stats=record`; the server must be on this machine).
//!
//! `--timeline` prints, for each run, when its first job, a tenth, half and nine tenths had
//! succeeded: a run's start-up apart from its steady rate.
//!
//! `--json FILE --run-no N` also appends each measurement to FILE as a JSON line shaped like
//! the peers' kit's results (system, run, phase, jobs_per_s, wal_bytes_per_job, p50, ...), so
//! `scripts/bench-vs-peers` can set them beside graphile-worker's runs of the same sitting.

use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::{arg, arg_text, cpu_seconds, flag, median, percentile};

use futures_util::FutureExt;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use etlq::configuration::Settings;
use etlq::db::Pools;
use etlq::fleet::FleetStore;
use etlq::fleet::WorkerInfo;
use etlq::lifecycle::Lifecycle;
use etlq::metrics::Metrics;
use etlq::pipeline::{FnStage, JobKind, Registry, noop_kind};
use etlq::queue::{JobStore, NewJob};
use etlq::worker::Worker;

fn settings(url: &str, concurrency: usize, batch: usize) -> Settings {
    let mut s = Settings::defaults();
    s.worker.fetchers = arg("--fetchers", s.worker.fetchers);
    s.worker.completion_wait_ms =
        arg("--completion-wait-ms", s.worker.completion_wait_ms as usize) as u64;
    s.database.url = url.into();
    s.worker.concurrency = concurrency;
    s.worker.fetch_batch = batch;
    s.worker.poll_interval_ms = 1000;
    s
}

fn start_worker(
    s: &Settings,
    pool: &PgPool,
    registry: Registry,
) -> (Arc<Metrics>, CancellationToken, tokio::task::JoinHandle<()>) {
    let metrics = Arc::new(Metrics::default());
    let lifecycle = Lifecycle::new(s.worker.drain_timeout());
    let pools = Pools::from_main(pool.clone(), Duration::from_secs(5));
    let w = Worker::new(
        s,
        etlq::worker::WorkerParts {
            jobs: JobStore::new(&pools, 5),
            fleet: FleetStore::new(&pools),
            registry: Arc::new(registry),
            lifecycle,
            metrics: metrics.clone(),
            info: WorkerInfo::for_this_process(s, "bench"),
            signals: etlq::worker::Signals::default(),
        },
    );
    let stop = CancellationToken::new();
    let h = tokio::spawn(w.run(stop.clone()));
    (metrics, stop, h)
}

/// Where `--json` sends the measurements: one JSON line each, appended.
struct Results {
    file: Option<String>,
    first_run: usize,
    config: String,
}

impl Results {
    fn record(&self, run: usize, phase: &str, fields: Value) {
        let Some(file) = &self.file else { return };
        let mut line = json!({
            "system": "etlq",
            "config": self.config,
            "run": self.first_run + run - 1,
            "phase": phase,
        });
        if let (Some(line), Value::Object(fields)) = (line.as_object_mut(), fields) {
            line.extend(fields);
        }
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(file)
            .unwrap_or_else(|e| panic!("--json {file}: {e}"));
        writeln!(f, "{line}").unwrap();
    }
}

async fn truncate(pool: &PgPool) {
    sqlx::query("TRUNCATE jobs, job_event_log, dead_letters, workers, job_keys, job_counts")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("VACUUM ANALYZE jobs")
        .execute(pool)
        .await
        .unwrap();
}

#[tokio::main]
async fn main() {
    let server = common::bench_server();
    let jobs = arg("--jobs", 20_000);
    let runs = arg("--runs", 3);
    let concurrency = arg("--concurrency", 1000);
    let batch = arg("--batch", 500);
    let samples = arg("--samples", 1000);
    let results = Results {
        file: arg_text("--json"),
        first_run: arg("--run-no", 1),
        config: format!("concurrency {concurrency}, batch {batch}"),
    };
    let (url, pool) = common::fresh_db(&server, "etlq_bench").await;
    // Where the server keeps its postmaster.pid, for its CPU time (when it runs here).
    let data_dir: Option<String> = sqlx::query_scalar("SELECT current_setting('data_directory')")
        .fetch_one(&pool)
        .await
        .ok();
    let store = JobStore::new(&Pools::from_main(pool.clone(), Duration::from_secs(5)), 5);
    let noop: Vec<NewJob> = (0..jobs)
        .map(|_| NewJob::new("noop", Value::Null))
        .collect();

    let mut enqueue_rates = Vec::new();
    let mut process_rates = Vec::new();
    let mut wal_per_job = Vec::new();
    let mut wal_non_fpi = Vec::new();
    // `--warmup N`: N runs first that count for nothing, so the measured ones start on warm
    // connections (their plans cached, as a long-running worker's are), as the peers' kit
    // measures graphile-worker's tuned processing as its database's third processing phase.
    let warmup = arg("--warmup", 0);
    for run in 1 - warmup as isize..=runs as isize {
        truncate(&pool).await;
        // The peers' kit checkpoints before its enqueue phases too: the WAL a job writes over
        // its whole life is its enqueue's share plus its processing's.
        sqlx::query("CHECKPOINT").execute(&pool).await.unwrap();
        let lsn_enq = wal_lsn(&pool).await;
        let t = Instant::now();
        store.enqueue_many(&noop).await.unwrap();
        let enq = jobs as f64 / t.elapsed().as_secs_f64();
        let enq_wal = wal_since(&pool, &lsn_enq).await;

        // As the peers' kit does before each phase: fresh statistics and a checkpoint, so the
        // WAL counted includes the full-page images a real run writes after each checkpoint.
        for sql in ["ANALYZE", "CHECKPOINT"] {
            sqlx::query(sql).execute(&pool).await.unwrap();
        }
        let commits =
            "SELECT xact_commit::float8 FROM pg_stat_database WHERE datname = current_database()";
        let c0: f64 = sqlx::query_scalar(commits).fetch_one(&pool).await.unwrap();
        let lsn0 = wal_lsn(&pool).await;
        let (client0, server0) = cpu_seconds(data_dir.as_deref());
        let mut registry = Registry::new();
        registry.register(noop_kind());
        let s = settings(&url, concurrency, batch);
        let t = Instant::now();
        let (metrics, stop, handle) = start_worker(&s, &pool, registry);
        // `--timeline`: when the first job, a tenth, half and nine tenths had succeeded, to see
        // a run's start-up and its tail apart from its steady rate.
        let timeline = flag("--timeline");
        let mut marks: Vec<(u64, f64)> = Vec::new();
        let steps = [1, jobs as u64 / 10, jobs as u64 / 2, jobs as u64 * 9 / 10];
        while metrics.jobs_succeeded.get() < jobs as u64 {
            let done = metrics.jobs_succeeded.get();
            while timeline && marks.len() < steps.len() && done >= steps[marks.len()] {
                marks.push((steps[marks.len()], t.elapsed().as_secs_f64() * 1e3));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let elapsed = t.elapsed().as_secs_f64();
        if timeline {
            let at: Vec<String> = marks
                .iter()
                .map(|(n, ms)| format!("{n} at {ms:.0} ms"))
                .collect();
            println!(
                "timeline: {}; all {jobs} at {:.0} ms",
                at.join(", "),
                elapsed * 1e3
            );
        }
        let (client1, server1) = cpu_seconds(data_dir.as_deref());
        let per_job = |s: f64| (s * 1e6 / jobs as f64).round();
        let wal = wal_since(&pool, &lsn0).await;
        let c1: f64 = sqlx::query_scalar(commits).fetch_one(&pool).await.unwrap();
        let lsn1 = wal_lsn(&pool).await;
        // One `pg_waldump` for both: its per-record statistics end with the same totals.
        let dump = waldump(&pool, "--stats=record", &lsn0, &lsn1).await;
        let split = dump.as_deref().and_then(wal_split);
        if flag("--wal-records") {
            wal_by_record(dump.as_deref(), jobs);
        }
        stop.cancel();
        handle.await.unwrap();
        let done: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE state = 'succeeded'")
            .fetch_one(&pool)
            .await
            .unwrap();
        let events: i64 = sqlx::query_scalar("SELECT count(*) FROM job_events")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(done as usize, jobs, "every job succeeded");
        let proc_rate = jobs as f64 / elapsed;
        let non_fpi = split.map(|(_, rec)| rec / jobs as f64);
        if run < 1 {
            println!("warm-up: processed {proc_rate:.0} jobs/s (not counted)");
            continue;
        }
        let run = run as usize;
        results.record(
            run,
            "enqueue_bulk",
            json!({
                "jobs": jobs,
                "jobs_per_s": enq.round(),
                "wal_bytes_per_job": (enq_wal / jobs as f64).round(),
            }),
        );
        results.record(
            run,
            "process",
            json!({
                "jobs": jobs,
                "jobs_per_s": proc_rate.round(),
                "wal_bytes_per_job": (wal / jobs as f64).round(),
                "wal_nonfpi_bytes_per_job": non_fpi.map(f64::round),
                "wal_records_per_job": split.map(|(records, _)| records / jobs as f64),
                "pg_cpu_us_per_job": server0.zip(server1).map(|(a, b)| per_job(b - a)),
                "client_cpu_us_per_job": per_job(client1 - client0),
            }),
        );
        println!(
            "run {run}: enqueue {enq:.0} jobs/s ({:.0} B of WAL/job), processed {proc_rate:.0} jobs/s ({events} history rows kept), WAL {:.0} B/job ({} without full-page images), {:.3} commits/job, CPU per job: PostgreSQL {}, etlq {:.0} µs",
            enq_wal / jobs as f64,
            wal / jobs as f64,
            non_fpi.map_or("?".into(), |b| format!("{b:.0} B")),
            (c1 - c0) / jobs as f64,
            server0
                .zip(server1)
                .map_or("?".into(), |(a, b)| format!("{:.0} µs", per_job(b - a))),
            per_job(client1 - client0),
        );
        if let Some(b) = non_fpi {
            wal_non_fpi.push(b);
        }
        enqueue_rates.push(enq);
        process_rates.push(proc_rate);
        wal_per_job.push(wal / jobs as f64);
    }

    // Pickup latency: an idle worker woken by NOTIFY; enqueue → stage start.
    truncate(&pool).await;
    let (tx, mut rx) = mpsc::unbounded_channel::<(i64, Instant)>();
    let mut registry = Registry::new();
    registry.register(JobKind::new("ping").stage(FnStage::new(
        "run",
        move |ctx: etlq::pipeline::StageContext| {
            let _ = tx.send((ctx.job_id, Instant::now()));
            async { Ok(Value::Null) }.boxed()
        },
    )));
    let s = settings(&url, 10, 10);
    let (_m, stop, handle) = start_worker(&s, &pool, registry);
    // Warmed up as graphile-worker's latency test is (the peers' kit): 100 jobs enqueued at
    // once and run, then 2 s of rest, before the first sample.
    let warm: Vec<NewJob> = (0..100)
        .map(|i| NewJob::new("ping", json!({ "warm": i })))
        .collect();
    store.enqueue_many(&warm).await.unwrap();
    for _ in 0..warm.len() {
        rx.recv().await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut push: Option<String> = None;
    for _ in 0..100 {
        push = sqlx::query_scalar("SELECT channel FROM worker_parking")
            .fetch_optional(&pool)
            .await
            .unwrap();
        if push.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // As graphile-worker's latency test measures it (the peers' kit, from its perfTest):
    // one job enqueued, and the next as soon as its stage starts; concurrency 10.
    let mut back_to_back = Vec::with_capacity(samples);
    let mut b2b_ids = Vec::with_capacity(samples);
    let mut b2b_enq = Vec::with_capacity(samples);
    for i in 0..samples {
        let (id, t, returned, started) = pickup(&store, &mut rx, i).await;
        back_to_back.push(ms(started - t));
        b2b_enq.push(ms(returned - t));
        b2b_ids.push(id);
    }
    let b2b_pushed = pushed_among(&pool, &b2b_ids, true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The steps, on an idle machine: a round trip first, then the enqueue, with 5 ms between
    // samples and a listener of the bench's own on the workers' channel and on the idle
    // worker's push channel: when the wake-up, or the pushed job, reaches a listening
    // connection.
    let (ntx, mut nrx) = mpsc::unbounded_channel::<Instant>();
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool)
        .await
        .unwrap();
    listener.listen("etlq_jobs").await.unwrap();
    if let Some(channel) = &push {
        listener.listen(channel).await.unwrap();
    }
    let listening = tokio::spawn(async move {
        while listener.recv().await.is_ok() {
            if ntx.send(Instant::now()).is_err() {
                return;
            }
        }
    });
    let mut lat = Vec::with_capacity(samples);
    let mut enq = Vec::with_capacity(samples);
    let mut rtt = Vec::with_capacity(samples);
    let mut notified = Vec::with_capacity(samples);
    for i in 0..samples {
        let t = Instant::now();
        store.ping().await.unwrap();
        rtt.push(ms(t.elapsed()));
        let (_, t, returned, started) = pickup(&store, &mut rx, i).await;
        enq.push(ms(returned - t));
        lat.push(ms(started - t));
        let heard = nrx.recv().await.unwrap();
        notified.push(ms(heard - t));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    listening.abort();
    stop.cancel();
    handle.await.unwrap();
    let pushed = pushed_among(&pool, &b2b_ids, false).await;
    // The latency is measured once per invocation, after its runs: it belongs to the last.
    results.record(
        runs,
        "latency_ms",
        json!({
            "n": samples,
            "pushed": b2b_pushed,
            "p50": percentile(&mut back_to_back, 0.5),
            "p99": percentile(&mut back_to_back, 0.99),
        }),
    );

    println!();
    println!("| measurement ({jobs} no-op jobs, median of {runs}) | etlq |");
    println!("|---|---|");
    println!(
        "| enqueue, one bulk call | {:.0} jobs/s |",
        median(enqueue_rates)
    );
    println!(
        "| process, 1 process, concurrency {concurrency} / batch {batch}, full history kept | {:.0} jobs/s |",
        median(process_rates)
    );
    println!(
        "| pickup latency enqueue → stage start, p50 / p99 ({samples} samples back to back, as graphile-worker's latency test; {b2b_pushed} pushed) | {:.2} / {:.2} ms |",
        percentile(&mut back_to_back, 0.5),
        percentile(&mut back_to_back, 0.99)
    );
    println!(
        "| the same with 5 ms idle and a round trip before each sample ({samples} samples) | {:.2} / {:.2} ms |",
        percentile(&mut lat, 0.5),
        percentile(&mut lat, 0.99)
    );
    println!(
        "| WAL per processed job (without full-page images) | {:.0} B ({}) |",
        median(wal_per_job),
        if wal_non_fpi.is_empty() {
            "? — pg_waldump could not read the server's pg_wal".to_string()
        } else {
            format!("{:.0} B", median(wal_non_fpi))
        }
    );
    println!(
        "(pickup latency by step, the idle samples, p50 from the enqueue call: the call returned at {:.2} ms, \
         a listening connection heard the wake-up (or the pushed job) at {:.2} ms, the stage \
         started at {:.2} ms; a bare round trip, SELECT 1 through the pool, takes {:.2} ms; \
         {pushed} of {samples} jobs were pushed to the idle worker; back to back, the enqueue \
         call returned at {:.2} ms)",
        percentile(&mut enq, 0.5),
        percentile(&mut notified, 0.5),
        percentile(&mut lat, 0.5),
        percentile(&mut rtt, 0.5),
        percentile(&mut b2b_enq, 0.5)
    );
}

/// One `ping` job enqueued and its stage started: (job, call made, call returned, stage
/// started).
async fn pickup(
    store: &JobStore,
    started: &mut mpsc::UnboundedReceiver<(i64, Instant)>,
    i: usize,
) -> (i64, Instant, Instant, Instant) {
    let t = Instant::now();
    let id = store
        .enqueue(&NewJob::new("ping", json!({"i": i})))
        .await
        .unwrap()
        .job_id;
    let returned = Instant::now();
    let (got, at) = started.recv().await.unwrap();
    assert_eq!(got, id);
    (id, t, returned, at)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Jobs pushed to the idle worker (ADR 0020) among `ids` (`inside`) or among the others.
async fn pushed_among(pool: &PgPool, ids: &[i64], inside: bool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE push_generation IS NOT NULL AND (id = ANY ($1)) = $2",
    )
    .bind(ids)
    .bind(inside)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The WAL of a `pg_waldump --stats` output as (records, bytes without full-page images), as
/// the peers' kit splits it.
fn wal_split(text: &str) -> Option<(f64, f64)> {
    let total = text.lines().find(|l| l.starts_with("Total"))?;
    let mut nums = total.split_whitespace().skip(1);
    let records: f64 = nums.next()?.parse().ok()?;
    let bytes: f64 = nums.next()?.parse().ok()?;
    Some((records, bytes))
}

/// `--wal-records`: where a processed job's WAL goes, by record type (records, bytes and
/// full-page-image bytes per job), as `pg_waldump --stats=record` counts it.
fn wal_by_record(text: Option<&str>, jobs: usize) {
    let Some(text) = text else {
        println!("  (pg_waldump could not read the server's pg_wal)");
        return;
    };
    println!(
        "  {:<28} {:>8} {:>8} {:>8}",
        "WAL per job: record", "count", "bytes", "FPI B"
    );
    for line in text.lines().skip(3) {
        // Type  N (%)  Record size (%)  FPI size (%)  Combined size (%)
        let cols: Vec<&str> = line
            .split_whitespace()
            .filter(|c| !c.starts_with('(') && !c.ends_with(')') && !c.starts_with('['))
            .collect();
        let (Some(name), Some(n), Some(rec), Some(fpi)) =
            (cols.first(), cols.get(1), cols.get(2), cols.get(3))
        else {
            continue;
        };
        let num = |c: &str| c.parse::<f64>().ok().map(|v| v / jobs as f64);
        if let (Some(n), Some(rec), Some(fpi)) = (num(n), num(rec), num(fpi))
            && rec + fpi >= 1.0
        {
            println!("  {name:<28} {n:>8.2} {rec:>8.0} {fpi:>8.0}");
        }
    }
}

/// The server's WAL position now.
async fn wal_lsn(pool: &PgPool) -> String {
    sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Bytes of WAL written since `lsn`.
async fn wal_since(pool: &PgPool, lsn: &str) -> f64 {
    sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::float8")
        .bind(lsn)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// `pg_waldump` with `stats` over the server's pg_wal between two LSNs; None when this machine
/// cannot read it.
async fn waldump(pool: &PgPool, stats: &str, from: &str, to: &str) -> Option<String> {
    let dir: String = sqlx::query_scalar("SELECT current_setting('data_directory')")
        .fetch_one(pool)
        .await
        .ok()?;
    let version: String = sqlx::query_scalar("SELECT current_setting('server_version_num')")
        .fetch_one(pool)
        .await
        .ok()?;
    let major = version.get(..2)?;
    let waldump = [
        "pg_waldump".to_string(),
        format!("/usr/lib/postgresql/{major}/bin/pg_waldump"),
    ];
    let out = waldump.iter().find_map(|bin| {
        std::process::Command::new(bin)
            .args([stats, "-p", &format!("{dir}/pg_wal"), "-s", from, "-e", to])
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
    })?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}
