//! Sink benchmark (not a test): the same G/L export synced into the PostgreSQL sink and into
//! the Cosmos DB emulator, one after the other in one run, through a release `etlq serve`.
//!
//! Reports per sink, medians of `ETLQ_BENCH_RUNS` (default 3): the sync stage's duration and
//! documents/s (from the job's history), and upload → promoted. For Cosmos DB also: requests
//! per document and bytes per document (from the emulator's shim), and the request units a
//! real account would need, from Microsoft's published ~5.5 RU per 1 KB write (the emulator
//! reports a flat 1 RU per request, which says nothing).
//!
//! Run with `scripts/bench-cosmos` (it starts the emulator and sets ETLQ_TEST_COSMOS*).

mod common;
#[path = "../examples/samples/mod.rs"]
mod samples;

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

use common::{median, start_server, upload, wait_promoted};

/// Request units per 1 KB document write (Microsoft's published figure for an insert/upsert
/// with default indexing; ADR 0013).
const RU_PER_KB_WRITE: f64 = 5.5;
const EMULATOR_KEY: &str =
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw==";

/// Uploads `bytes`, waits for the job; returns (upload → promoted seconds, sync seconds).
async fn run_once(base: &str, bytes: &[u8], run: usize) -> (f64, f64) {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let id = upload(&client, base, bytes, &format!("BU-SINK-{run}")).await;
    let v = wait_promoted(&client, base, id).await;
    let wall = started.elapsed().as_secs_f64();
    let sync_ms = v["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event"] == "stage_completed" && e["stage"] == "sync")
        .and_then(|e| e["duration_ms"].as_f64())
        .unwrap();
    (wall, sync_ms / 1000.0)
}

fn main() {
    let runs: usize = std::env::var("ETLQ_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let rows: usize = std::env::var("ETLQ_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let cosmos =
        std::env::var("ETLQ_TEST_COSMOS").expect("ETLQ_TEST_COSMOS: run scripts/bench-cosmos");
    let admin = std::env::var("ETLQ_TEST_COSMOS_ADMIN").expect("ETLQ_TEST_COSMOS_ADMIN");
    let server_url = common::bench_server();
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/etlq");
    assert!(
        bin.exists(),
        "build target/release/etlq first (scripts/bench-cosmos does)"
    );
    let sample = samples::gl_export(rows, 0);
    println!(
        "input: {} line items × 9 columns, {:.1} MB xlsx, {runs} run(s) per sink",
        sample.lines.len(),
        sample.bytes.len() as f64 / 1e6
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stats = |rt: &tokio::runtime::Runtime| -> Value {
        rt.block_on(async {
            reqwest::get(format!("{admin}/stats"))
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        })
    };
    let mut results = Vec::new();
    for sink in ["postgres", "cosmos"] {
        let (mut walls, mut syncs) = (Vec::new(), Vec::new());
        let (mut writes, mut requests, mut kb) = (0.0, 0.0, 0.5);
        // A fresh server, database and container per run: the emulator's queries slow down
        // with every document it holds, which would tax later runs.
        for run in 0..runs {
            let dir = tempfile::tempdir().unwrap();
            let db = format!("etlq_bench_sink_{sink}_{}_{run}", std::process::id());
            let mut env: Vec<(String, String)> = vec![
                ("DATABASE_URL".into(), format!("{server_url}/{db}")),
                (
                    "ETLQ__BLOB__URL".into(),
                    dir.path().join("blobs").display().to_string(),
                ),
                (
                    "ETLQ__ETL__WORK_DIR".into(),
                    dir.path().join("work").display().to_string(),
                ),
            ];
            if sink == "cosmos" {
                for (k, v) in [
                    ("ETLQ__SINK__KIND", "cosmos"),
                    ("ETLQ__SINK__COSMOS__ENDPOINT", cosmos.as_str()),
                    ("ETLQ__SINK__COSMOS__KEY", EMULATOR_KEY),
                    ("ETLQ__SINK__COSMOS__DATABASE", db.as_str()),
                    ("ETLQ__SINK__COSMOS__EMULATOR", "true"),
                ] {
                    env.push((k.into(), v.into()));
                }
            }
            let server = start_server(&bin, &env);
            let before = stats(&rt);
            let (w, s) = rt.block_on(run_once(&server.base, &sample.bytes, run));
            let after = stats(&rt);
            walls.push(w);
            syncs.push(s);
            writes += after["writes"].as_f64().unwrap() - before["writes"].as_f64().unwrap();
            requests += after["requests"].as_f64().unwrap() - before["requests"].as_f64().unwrap();
            // The document as sent: the record plus etlq's envelope (~190 bytes).
            if let Ok(text) =
                std::fs::read_to_string(dir.path().join("blobs/runs/1/records.ndjson"))
            {
                kb = (text.len() as f64 / sample.lines.len() as f64 + 190.0) / 1024.0;
            }
            drop(server);
            let _ = Command::new("psql")
                .arg(format!("{server_url}/postgres"))
                .args(["-qc", &format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)")])
                .status();
        }
        let sync = median(syncs);
        let docs_per_s = sample.lines.len() as f64 / sync;
        println!(
            "{sink:>8}: sync median {sync:.2} s = {docs_per_s:.0} documents/s; upload → promoted median {:.2} s",
            median(walls)
        );
        if sink == "cosmos" {
            let n = (sample.lines.len() * runs) as f64;
            let ru_per_doc = RU_PER_KB_WRITE * kb.max(1.0);
            let ru_for_60s = 200_000.0 * ru_per_doc / 60.0;
            println!(
                "          {:.2} document writes and {:.2} requests per document (the rest: account, container and query requests); ~{:.2} KB per document",
                writes / n,
                requests / n,
                kb
            );
            println!(
                "          request charge: the emulator reports a flat 1 RU; Microsoft's figure is ~{RU_PER_KB_WRITE} RU per 1 KB write → ~{ru_per_doc:.1} RU per document"
            );
            println!(
                "          a real account syncing 200,000 documents in 60 s needs ~{ru_for_60s:.0} RU/s of write throughput ({:.0} physical partitions at 10,000 RU/s)",
                (ru_for_60s / 10_000.0).ceil()
            );
        }
        results.push((sink, docs_per_s));
    }
    println!(
        "cosmos (emulator) ÷ postgres documents/s: {:.2}",
        results[1].1 / results[0].1
    );
}
