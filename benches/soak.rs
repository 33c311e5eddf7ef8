//! The queue at a million (issue 18; not a test): a release `etlq serve` on a database holding
//! 1,000,000 finished jobs with their history and 100,000 queued jobs of a kind no worker
//! runs, soaked for 10 minutes at a steady 2,000 jobs/s produced by this process.
//!
//!   scripts/bench-soak       # or: cargo bench --bench soak -- [--history N] [--parked N]
//!                            #      [--rate N] [--secs N]
//!
//! Reports: a one-job claim's p50/p99 (timed here, on the soak's table, for a kind of its own),
//! `GET /v1/jobs`, `/v1/jobs/count` and the console overview's requests (`/v1/stats` +
//! `/v1/fleet`, together) p50/p95; table and index sizes before and after; dead tuples of
//! `jobs` and `job_events` sampled every 10 s (the most seen, and autovacuum runs); the
//! server's RSS in the first and the last minute; the rate actually processed.

mod common;

use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::PgPool;

use common::{arg, percentile, start_server};
use etlq::db::Pools;
use etlq::queue::{Actor, JobStore, NewJob, Transition, TransitionEvent};

fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

async fn scalar_i64(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

async fn sizes(pool: &PgPool) -> String {
    // Both tables are partitioned by day (ADR 0017): summed over their partitions, and the
    // live partition on its own.
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT p.relname::text, sum(pg_relation_size(c.oid))::int8, sum(pg_indexes_size(c.oid))::int8
           FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent
          WHERE p.relname IN ('jobs', 'job_event_log') GROUP BY 1
         UNION ALL
         SELECT 'jobs_live', pg_relation_size('jobs_live'), pg_indexes_size('jobs_live')
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    rows.iter()
        .map(|(t, heap, idx)| {
            format!(
                "{t} {:.0} MB + indexes {:.0} MB",
                *heap as f64 / 1e6,
                *idx as f64 / 1e6
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

async fn dead_tuples(pool: &PgPool) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT coalesce(sum(s.n_dead_tup) FILTER (WHERE p.relname = 'jobs'), 0)::bigint,
                coalesce(sum(s.n_dead_tup) FILTER (WHERE p.relname = 'job_event_log'), 0)::bigint,
                coalesce(sum(s.autovacuum_count), 0)::bigint
           FROM pg_stat_user_tables s JOIN pg_inherits i ON i.inhrelid = s.relid
           JOIN pg_class p ON p.oid = i.inhparent
          WHERE p.relname IN ('jobs', 'job_event_log')",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Enqueues `n` jobs of `kind` in chunks of 10,000.
async fn enqueue(store: &JobStore, kind: &str, n: usize) {
    let chunk: Vec<NewJob> = (0..10_000)
        .map(|_| NewJob::new(kind, Value::Null))
        .collect();
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len());
        store.enqueue_many(&chunk[..k]).await.unwrap();
        left -= k;
    }
}

async fn wait_succeeded(pool: &PgPool, n: i64) {
    loop {
        let done = scalar_i64(pool, "SELECT count(*) FROM jobs WHERE state = 'succeeded'").await;
        if done >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn timed_get(client: &reqwest::Client, urls: &[String]) -> f64 {
    let t = Instant::now();
    for u in urls {
        let r = client.get(u).send().await.unwrap();
        assert!(r.status().is_success(), "{u}: {}", r.status());
        r.bytes().await.unwrap();
    }
    t.elapsed().as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let server = common::bench_server();
    let history = arg("--history", 1_000_000);
    let parked = arg("--parked", 100_000);
    let rate = arg("--rate", 2000);
    let secs = arg("--secs", 600);
    let bin = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/etlq");

    let (url, pool) = common::fresh_db(&server, "etlq_soak").await;
    let pools = Pools::from_main(pool.clone(), Duration::from_secs(5));
    let store = JobStore::new(&pools, 5);

    let blobs = tempfile::tempdir().unwrap();
    let srv = start_server(
        &bin,
        &[
            ("DATABASE_URL".into(), url.clone()),
            ("ETLQ__BLOB__URL".into(), blobs.path().display().to_string()),
        ],
    );
    let pid = srv.child.id();

    // History: a million no-op jobs through the real worker (claim, completion, history rows).
    let t = Instant::now();
    enqueue(&store, "noop", history).await;
    wait_succeeded(&pool, history as i64).await;
    println!(
        "seeded {history} finished jobs through the server in {:.0} s",
        t.elapsed().as_secs_f64()
    );
    // Queued work no worker here runs (a kind of another deployment's).
    enqueue(&store, "parked", parked).await;
    sqlx::query("VACUUM ANALYZE jobs, job_event_log")
        .execute(&pool)
        .await
        .unwrap();
    println!("before the soak: {}", sizes(&pool).await);
    let (_, _, autovac0) = dead_tuples(&pool).await;

    // The soak: produce `rate` jobs/s in ticks of 50 ms.
    let producer = {
        let store = store.clone();
        tokio::spawn(async move {
            let per_tick = (rate / 20).max(1);
            let batch: Vec<NewJob> = (0..per_tick)
                .map(|_| NewJob::new("noop", Value::Null))
                .collect();
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let end = Instant::now() + Duration::from_secs(secs as u64);
            let mut sent = 0usize;
            while Instant::now() < end {
                tick.tick().await;
                store.enqueue_many(&batch).await.unwrap();
                sent += per_tick;
            }
            sent
        })
    };
    let client = reqwest::Client::new();
    let base = srv.base.clone();
    let jobs_urls = [format!("{base}/v1/jobs")];
    let count_urls = [format!("{base}/v1/jobs/count")];
    let overview_urls = [format!("{base}/v1/stats"), format!("{base}/v1/fleet")];
    let probe = Actor::new("soak-probe", "bench");
    let probe_kind = vec!["probe".to_string()];
    let (mut claims, mut list, mut counts, mut overview) = (vec![], vec![], vec![], vec![]);
    let (mut dead_jobs, mut dead_events) = (0i64, 0i64);
    let (mut rss_first, mut rss_last) = (vec![], vec![]);
    let done0 = scalar_i64(&pool, "SELECT count(*) FROM jobs WHERE state = 'succeeded'").await;
    let start = Instant::now();
    let mut next_sample = start;
    while start.elapsed() < Duration::from_secs(secs as u64) {
        // One probe job: enqueued, then claimed alone (timed) and completed.
        store
            .enqueue(&NewJob::new("probe", Value::Null))
            .await
            .unwrap();
        let t = Instant::now();
        let got = store
            .claim(&probe, &probe_kind, 1, Duration::from_secs(30))
            .await
            .unwrap();
        claims.push(t.elapsed().as_secs_f64() * 1000.0);
        for j in got {
            let done = Transition {
                job_id: j.id,
                fencing_token: j.fencing_token,
                event: TransitionEvent::StageCompleted {
                    output: Value::Null,
                    next_stage: None,
                },
                stage: Some("run".into()),
                attempt: j.attempts,
                duration_ms: None,
            };
            store.apply(&probe, &[done]).await.unwrap();
        }
        list.push(timed_get(&client, &jobs_urls).await);
        counts.push(timed_get(&client, &count_urls).await);
        overview.push(timed_get(&client, &overview_urls).await);
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(10);
            let (dj, de, _) = dead_tuples(&pool).await;
            dead_jobs = dead_jobs.max(dj);
            dead_events = dead_events.max(de);
            let rss = rss_mb(pid);
            let at = start.elapsed().as_secs();
            if at < 60 {
                rss_first.push(rss);
            }
            if at + 60 >= secs as u64 {
                rss_last.push(rss);
            }
            println!("t={at:>4}s dead tuples jobs {dj} job_events {de}; server RSS {rss:.0} MB");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let sent = producer.await.unwrap();
    let done1 = scalar_i64(&pool, "SELECT count(*) FROM jobs WHERE state = 'succeeded'").await;
    let (_, _, autovac1) = dead_tuples(&pool).await;
    let avg = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    println!(
        "soak: {secs} s, produced {sent} ({:.0}/s), processed {:.0} jobs/s",
        sent as f64 / secs as f64,
        (done1 - done0) as f64 / secs as f64
    );
    println!(
        "one-job claim beside {history} finished + {parked} queued: p50 {:.2} ms, p99 {:.2} ms ({} claims)",
        percentile(&mut claims, 0.5),
        percentile(&mut claims, 0.99),
        claims.len()
    );
    println!(
        "GET /v1/jobs p50 {:.1} ms, p95 {:.1} ms; /v1/jobs/count p50 {:.1} ms, p95 {:.1} ms; console overview (/v1/stats + /v1/fleet) p50 {:.1} ms, p95 {:.1} ms",
        percentile(&mut list, 0.5),
        percentile(&mut list, 0.95),
        percentile(&mut counts, 0.5),
        percentile(&mut counts, 0.95),
        percentile(&mut overview, 0.5),
        percentile(&mut overview, 0.95)
    );
    println!(
        "dead tuples, most seen: jobs {dead_jobs}, job_events {dead_events}; autovacuum runs during the soak: {}",
        autovac1 - autovac0
    );
    println!(
        "server RSS: first minute {:.0} MB, last minute {:.0} MB",
        avg(&rss_first),
        avg(&rss_last)
    );
    println!("after the soak: {}", sizes(&pool).await);
    drop(srv);
    pool.close().await;
    common::drop_db(&server, "etlq_soak").await;
}
