//! Sources benchmark (not a test): 10,000 blobs under one prefix, on the local directory store
//! and on Azurite, listed by a watch source through the real watcher (slot, pages, ledger,
//! jobs); then a listing with nothing new; then the Event Grid webhook's latency for batches
//! of 100 events. Peer in the same run (Azurite): Microsoft's Python SDK
//! (`azure-storage-blob`) listing the same prefix, listing only — what a Function App's poller
//! does before it even decides what is new.
//!
//! Peak RSS is this process's high-water mark (`VmHWM`) reset just before the listing
//! (`/proc/self/clear_refs`), so it is what the listing itself costs on top of what the
//! process held. Run with `scripts/bench-sources`.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

use etlq::configuration::{AzureSettings, BlobSettings, Settings};
use etlq::lifecycle::Lifecycle;
use etlq::metrics::Metrics;
use etlq::sources::ingest::Ingest;
use etlq::sources::{SourceSet, SourceStore, Watcher, WatcherConfig};
use etlq::startup::CheckedSettings;
use etlq::startup::{Application, Role};

const SECRET: &str = "bench-secret-0123456789";

fn kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn reset_peak() {
    // "5" resets the peak resident set size (Linux 4.0+).
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn fresh_db(server: &str, name: &str) -> String {
    let admin = format!("{server}/postgres");
    let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
        .await
        .unwrap();
    for sql in [
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        format!("CREATE DATABASE {name}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut c)
            .await
            .unwrap();
    }
    format!("{server}/{name}")
}

fn settings(db: &str, blob: BlobSettings) -> Settings {
    let mut s = Settings::load_with_env(
        None,
        &[
            ("DATABASE_URL".to_string(), db.to_string()),
            ("ETLQ__SOURCES__INBOX__ENABLED".into(), "false".into()),
            ("ETLQ__SOURCES__BENCH__KIND".into(), "watch".into()),
            ("ETLQ__SOURCES__BENCH__PREFIX".into(), "incoming/".into()),
            (
                "ETLQ__SOURCES__BENCH__PATH".into(),
                "incoming/{bu_id}/{file}".into(),
            ),
            (
                "ETLQ__SOURCES__BENCH__CONNECTOR".into(),
                "trial_balance".into(),
            ),
            ("ETLQ__SOURCES__BENCH__EVERY".into(), "1h".into()),
            ("ETLQ__SOURCES__BENCH__MIN_AGE_MS".into(), "0".into()),
            ("ETLQ__SOURCES__GRID__KIND".into(), "eventgrid".into()),
            ("ETLQ__SOURCES__GRID__PREFIX".into(), "drop/".into()),
            (
                "ETLQ__SOURCES__GRID__PATH".into(),
                "drop/{bu_id}/{file}".into(),
            ),
            (
                "ETLQ__SOURCES__GRID__CONNECTOR".into(),
                "trial_balance".into(),
            ),
            ("ETLQ__SOURCES__GRID__SECRET".into(), SECRET.into()),
            ("ETLQ__SOURCES__GRID__CONTAINER".into(), "bench".into()),
        ],
    )
    .unwrap();
    s.blob = blob;
    s
}

/// One listing through the real watcher: (seconds, peak RSS growth in KiB, counts).
async fn tick(set: &SourceSet, watcher: &Watcher) -> (f64, u64, Value) {
    let store = set.store();
    let before = store.latest_run_id("bench").await.unwrap();
    store.request_tick("bench", "bench").await.unwrap();
    let rss = kib("VmRSS:");
    reset_peak();
    let t = Instant::now();
    let ran = watcher
        .poll_once(&tokio_util::sync::CancellationToken::new())
        .await;
    let secs = t.elapsed().as_secs_f64();
    let peak = kib("VmHWM:").saturating_sub(rss);
    assert_eq!(ran, 1, "the watcher took the slot");
    let run = store.listing_after("bench", before).await.unwrap().unwrap();
    assert_eq!(run.outcome.as_deref(), Some("ok"), "{:?}", run.error);
    (
        secs,
        peak,
        json!({"listed": run.listed, "new": run.new, "duplicate": run.duplicate}),
    )
}

async fn bench_store(label: &str, server: &str, blob: BlobSettings, n: usize) -> (f64, u64) {
    let db = fresh_db(server, &format!("etlq_bench_sources_{label}")).await;
    let s = settings(&db, blob.clone());
    let pools = etlq::db::connect(&s.database, Duration::from_secs(10))
        .await
        .unwrap();
    pools.migrate().await.unwrap();
    let etl = Arc::new(etlq::startup::etl_context(&s, &pools).await.unwrap());
    // The blobs: small, each under its business unit.
    let t = Instant::now();
    futures_util::stream::iter(0..n)
        .map(|i| {
            let blobs = etl.blobs.clone();
            async move {
                blobs
                    .put(
                        &format!("incoming/BU-{}/export-{i:05}.xlsx", i % 50),
                        vec![b'x'; 512],
                    )
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    eprintln!(
        "{label}: wrote {n} blobs in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let metrics = Arc::new(Metrics::default());
    let set = SourceSet {
        sources: Arc::new(s.sources().unwrap()),
        ingest: Ingest::new(
            SourceStore::new(&pools),
            etl.clone(),
            metrics.clone(),
            "bench".into(),
        ),
    };
    etlq::sources::ensure_schedule(set.store(), set.get("bench").unwrap())
        .await
        .unwrap();
    let watcher = Watcher::new(
        set.sources.values().cloned().collect(),
        set.ingest.clone(),
        etl.blobs.clone(),
        Lifecycle::new(Duration::from_secs(1)),
        metrics,
        "bench".into(),
        WatcherConfig::from_settings(&s.maintenance),
    );
    let (first, first_rss, c1) = tick(&set, &watcher).await;
    let (again, again_rss, c2) = tick(&set, &watcher).await;
    println!(
        "{label}: first listing {first:.2} s (peak RSS +{:.1} MB) {c1}; nothing new {again:.2} s (+{:.1} MB) {c2}",
        first_rss as f64 / 1024.0,
        again_rss as f64 / 1024.0
    );
    pools.close().await;
    (first, first_rss)
}

/// Microsoft's Python SDK listing the same Azurite prefix: (seconds, peak RSS growth KiB).
fn python_peer(endpoint: &str, container: &str) -> Option<(f64, u64)> {
    let py = std::env::var("ETLQ_BENCH_PYTHON").ok()?;
    let script = r#"
import resource, sys, time
from azure.storage.blob import ContainerClient
endpoint, container = sys.argv[1], sys.argv[2]
key = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
c = ContainerClient(account_url=endpoint, container_name=container,
                    credential={"account_name": "devstoreaccount1", "account_key": key})
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
n = sum(1 for b in c.list_blobs(name_starts_with="incoming/") if b.etag and b.size)
took = time.perf_counter() - t
print(n, took, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
"#;
    let out = Command::new(py)
        .args(["-c", script, endpoint, container])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "python peer failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = text.split_whitespace().collect();
    println!("python azure-storage-blob: listed {} in {} s", f[0], f[1]);
    Some((f[1].parse().ok()?, f[2].parse().ok()?))
}

async fn bench_webhook(server: &str, batches: usize) {
    let db = fresh_db(server, "etlq_bench_sources_hook").await;
    let work = tempfile_dir();
    let mut s = settings(
        &db,
        BlobSettings {
            url: work.clone(),
            azure: Default::default(),
        },
    );
    s.api.port = 0;
    let app = Application::build(s, Role::Api, tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();
    let url = format!("http://{}/v1/sources/grid/events?key={SECRET}", app.addr);
    let client = reqwest::Client::new();
    let event = |i: usize| {
        json!({
            "id": format!("ev-{i}"),
            "eventType": "Microsoft.Storage.BlobCreated",
            "subject": format!("/blobServices/default/containers/bench/blobs/drop/BU-{}/f-{i}.xlsx", i % 50),
            "eventTime": "2026-12-01T00:00:00Z",
            "data": {"api": "PutBlob", "eTag": format!("\"0x{i:X}\""), "contentLength": 1000,
                     "url": format!("https://acct.blob.core.windows.net/bench/drop/BU-{}/f-{i}.xlsx", i % 50)}
        })
    };
    for (label, offset) in [("new", 0usize), ("redelivered", 0usize)] {
        let mut lat = Vec::with_capacity(batches);
        for b in 0..batches {
            let body: Vec<Value> = (0..100).map(|k| event(offset + b * 100 + k)).collect();
            let t = Instant::now();
            let r = client.post(&url).json(&body).send().await.unwrap();
            assert_eq!(r.status(), 200);
            let _ = r.bytes().await;
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        println!(
            "webhook, batches of 100 {label} events: p50 {:.1} ms, p99 {:.1} ms ({batches} batches)",
            pct(lat.clone(), 0.5),
            pct(lat, 0.99)
        );
    }
    // Event Grid's largest delivery: 5,000 events in one request (new ones).
    let body: Vec<Value> = (0..5000).map(|k| event(1_000_000 + k)).collect();
    let t = Instant::now();
    let r = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["new"], 5000, "{v}");
    println!(
        "webhook, one batch of 5,000 new events: {:.0} ms (Event Grid waits 30 s)",
        t.elapsed().as_secs_f64() * 1000.0
    );
    let _ = std::fs::remove_dir_all(&work);
}

fn tempfile_dir() -> String {
    let d = std::env::temp_dir().join(format!("etlq-bench-sources-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.display().to_string()
}

fn main() {
    let n: usize = std::env::var("ETLQ_BENCH_BLOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let server = std::env::var("BENCH_PG").expect("BENCH_PG (scripts/bench-sources sets it)");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut results = BTreeMap::new();
        let dir = tempfile_dir();
        results.insert(
            "local",
            bench_store(
                "local",
                &server,
                BlobSettings {
                    url: format!("{dir}/blobs"),
                    azure: Default::default(),
                },
                n,
            )
            .await,
        );
        let _ = std::fs::remove_dir_all(&dir);
        if let Ok(endpoint) = std::env::var("ETLQ_TEST_AZURITE") {
            let container = format!("bench-{}", std::process::id());
            let (t, rss) = bench_store(
                "azurite",
                &server,
                BlobSettings {
                    url: format!("az://{container}"),
                    azure: AzureSettings {
                        use_emulator: true,
                        endpoint: endpoint.clone(),
                        ..Default::default()
                    },
                },
                n,
            )
            .await;
            if let Some((pt, prss)) = python_peer(&endpoint, &container) {
                println!(
                    "azurite: etlq's whole first listing (list + ledger + {n} jobs) {t:.2} s = {:.2}x the SDK's listing alone ({pt:.2} s); peak RSS growth +{:.1} MB vs the SDK's +{:.1} MB",
                    t / pt,
                    rss as f64 / 1024.0,
                    prss as f64 / 1024.0
                );
            }
        }
        bench_webhook(&server, 100).await;
    });
}
