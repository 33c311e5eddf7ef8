//! ETL benchmark (not a test): a 200,000-row × 9-column G/L export, and a 1,000,000-row one.
//!
//! Reports, each the median of `ETLQ_BENCH_RUNS` (default 3):
//! - extract: parse + map + type + write the records artifact, in a child process so its peak
//!   RSS is its own (VmHWM);
//! - the floor for one pass over the file: inflate the sheet and the shared strings and
//!   tokenize their XML, building nothing;
//! - the same file read by python-calamine and openpyxl (row count only, as the peer kit measures them), in the
//!   same run, when `ETLQ_BENCH_PYTHON` names a Python that has them (scripts/bench-etl sets
//!   that up);
//! - upload → promoted wall time through a release `etlq serve` with the embedded defaults
//!   (local blob directory, PostgreSQL sink), per stage, with the server's and the extract
//!   child's peak RSS: 200k rows, 1M rows (once; `ETLQ_BENCH_1M=0` skips it), and 8 uploads
//!   of the 200k file at once (month-end close). Each scenario gets a fresh server, so each
//!   peak RSS is that scenario's own.
//!
//! Run with `scripts/bench-etl`.

mod common;
#[path = "../examples/samples/mod.rs"]
mod samples;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use common::{median, start_server, upload, wait_promoted};
use etlq::configuration::Settings;
use etlq::etl::parse::parse_workbook;

const ROWS: usize = 200_000;

fn vm_hwm_kb(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Child mode: one extract of `file`; prints "secs records peak_kb".
fn extract_once(file: &Path) {
    let settings = Settings::defaults();
    let connectors = settings.connectors().unwrap();
    let connector = &connectors["sap_fbl3n"];
    let bytes = std::fs::read(file).unwrap();
    let started = Instant::now();
    let mut records = Vec::with_capacity(1 << 20);
    let out = parse_workbook(
        connector,
        bytes,
        "BU-BENCH",
        settings.etl.max_inflated_bytes,
        &mut records,
        &AtomicUsize::new(0),
        &|| false,
    )
    .unwrap()
    .unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{secs} {} {} {}",
        out.report.records,
        vm_hwm_kb("self"),
        records.len()
    );
}

fn python_peer(python: &str, reader: &str, file: &Path) -> Option<f64> {
    let script = match reader {
        "python-calamine" => {
            "import sys,time\nfrom python_calamine import CalamineWorkbook\nt=time.perf_counter()\nwb=CalamineWorkbook.from_path(sys.argv[1])\nn=sum(1 for _ in wb.get_sheet_by_name('GL').iter_rows())\nprint(time.perf_counter()-t, n)"
        }
        _ => {
            "import sys,time\nimport openpyxl\nt=time.perf_counter()\nwb=openpyxl.load_workbook(sys.argv[1], read_only=True)\nn=sum(1 for _ in wb['GL'].iter_rows(values_only=True))\nprint(time.perf_counter()-t, n)"
        }
    };
    let out = Command::new(python)
        .args(["-c", script])
        .arg(file)
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("{reader}: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Inflates the sheet and the shared strings and tokenizes their XML, building nothing: the
/// least any reader of this file must do. Prints "secs events".
fn floor_once(file: &Path) {
    use std::io::BufReader;
    let started = Instant::now();
    let mut zip = zip::ZipArchive::new(std::fs::File::open(file).unwrap()).unwrap();
    let mut events = 0u64;
    for name in ["xl/sharedStrings.xml", "xl/worksheets/sheet1.xml"] {
        let entry = zip.by_name(name).unwrap();
        let mut reader = quick_xml::Reader::from_reader(BufReader::with_capacity(1 << 16, entry));
        let mut buf = Vec::with_capacity(1 << 12);
        loop {
            match reader.read_event_into(&mut buf).unwrap() {
                quick_xml::events::Event::Eof => break,
                _ => events += 1,
            }
            buf.clear();
        }
    }
    println!("{} {events}", started.elapsed().as_secs_f64());
}

/// Runs this benchmark binary in `mode` on `file` in a child; returns its numbers.
fn child_numbers(mode: &str, file: &Path) -> Vec<f64> {
    let out = Command::new(std::env::current_exe().unwrap())
        .arg(mode)
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect()
}

fn psql(db_url: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .arg(db_url)
        .args(["-Atc", sql])
        .output()
        .expect("psql");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// What one scenario measured on its own fresh server.
struct Scenario {
    walls: Vec<f64>,
    server_peak_mb: f64,
    child_peak_mb: f64,
    stages: String,
}

/// Starts a fresh server on a fresh database, uploads `bytes` `batches.len()` times (each
/// batch = that many uploads at once, waited for together), then stops it.
fn scenario(bin: &Path, server_url: &str, dir: &Path, bytes: &[u8], batches: &[usize]) -> Scenario {
    let name = format!("etlq_bench_etl_{}", std::process::id());
    let db_url = format!("{server_url}/{name}");
    let blobs = dir.join(format!("blobs-{}", batches.len() * 1000 + batches[0]));
    let server = start_server(
        bin,
        &[
            ("DATABASE_URL".into(), db_url.clone()),
            ("ETLQ__BLOB__URL".into(), blobs.display().to_string()),
        ],
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();
    let mut walls = Vec::new();
    let mut ids = Vec::new();
    for (run, &n) in batches.iter().enumerate() {
        let started = Instant::now();
        let batch: Vec<i64> = rt.block_on(async {
            let uploads = (0..n).map(|i| {
                let bu = format!("BU-BENCH-{run}-{i}");
                let client = &client;
                let base = &server.base;
                async move {
                    let id = upload(client, base, bytes, &bu).await;
                    wait_promoted(client, base, id).await;
                    id
                }
            });
            futures_util::future::join_all(uploads).await
        });
        walls.push(started.elapsed().as_secs_f64());
        ids.extend(batch);
    }
    let server_peak_mb = vm_hwm_kb(&server.child.id().to_string()) as f64 / 1024.0;
    let list = ids
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let child_peak_mb = psql(
        &db_url,
        &format!(
            "SELECT max((checkpoint->'extract'->'parser'->>'peak_rss_kb')::bigint) FROM jobs WHERE id IN ({list})"
        ),
    )
    .parse::<f64>()
    .unwrap_or(0.0)
        / 1024.0;
    let stages = psql(
        &db_url,
        &format!(
            "SELECT string_agg(stage || ' ' || ms || ' ms', ', ' ORDER BY first) FROM (
               SELECT stage, min(id) AS first, round(percentile_disc(0.5) WITHIN GROUP (ORDER BY duration_ms))::bigint AS ms
                 FROM job_events WHERE event = 'stage_completed' AND job_id IN ({list}) GROUP BY stage) s"
        ),
    );
    drop(server);
    psql(
        &format!("{server_url}/postgres"),
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    );
    Scenario {
        walls,
        server_peak_mb,
        child_peak_mb,
        stages,
    }
}

fn list(v: &[f64]) -> String {
    v.iter()
        .map(|w| format!("{w:.2}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--extract-once") {
        extract_once(Path::new(&args[i + 1]));
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--floor-once") {
        floor_once(Path::new(&args[i + 1]));
        return;
    }
    let runs: usize = std::env::var("ETLQ_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gl-200k.xlsx");
    let sample = samples::gl_export(ROWS, ROWS / 10_000);
    std::fs::write(&file, &sample.bytes).unwrap();
    println!(
        "input: {} line items × 9 columns, {} subtotal/blank rows, {:.1} MB xlsx",
        sample.lines.len(),
        sample.skipped,
        sample.bytes.len() as f64 / 1e6
    );

    let (mut times, mut peaks, mut floors) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..runs {
        floors.push(child_numbers("--floor-once", &file)[0]);
        let f = child_numbers("--extract-once", &file);
        assert_eq!(
            f[1] as usize,
            sample.lines.len(),
            "every line item extracted"
        );
        times.push(f[0]);
        peaks.push(f[2] / 1024.0);
    }
    let extract = median(times);
    let floor = median(floors);
    println!(
        "etlq extract (typed records + artifact): median {extract:.3} s, peak RSS {:.0} MB",
        median(peaks)
    );
    println!(
        "floor (inflate sheet + shared strings, tokenize XML): median {floor:.3} s → etlq extract is {:.2}× the floor",
        extract / floor
    );
    let mut calamine = None;
    if let Ok(python) = std::env::var("ETLQ_BENCH_PYTHON") {
        for reader in ["python-calamine", "openpyxl"] {
            let n = if reader == "openpyxl" { 1 } else { runs };
            let t: Vec<f64> = (0..n)
                .filter_map(|_| python_peer(&python, reader, &file))
                .collect();
            if t.is_empty() {
                continue;
            }
            let m = median(t);
            if reader == "python-calamine" {
                calamine = Some(m);
            }
            println!(
                "{reader} (row count only): median {m:.3} s of {n} → etlq extract is {:.2}× faster",
                m / extract
            );
        }
    }

    // Upload → promoted through a real server with the embedded defaults.
    let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/etlq");
    if !bin.exists() {
        println!(
            "skipping upload → promoted: build target/release/etlq first (scripts/bench-etl does)"
        );
        return;
    }
    let server_url =
        std::env::var("BENCH_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    let vs_calamine = |wall: f64| {
        calamine
            .map(|c| format!(" = {:.2}× python-calamine's row count", wall / c))
            .unwrap_or_default()
    };

    let one = scenario(&bin, &server_url, dir.path(), &sample.bytes, &vec![1; runs]);
    let wall = median(one.walls.clone());
    println!(
        "upload → promoted, 200k: median {wall:.2} s of {runs} (runs: {}){}; stages (median): {}; server peak RSS {:.0} MB, extract child {:.0} MB",
        list(&one.walls),
        vs_calamine(wall),
        one.stages,
        one.server_peak_mb,
        one.child_peak_mb
    );

    let eight = scenario(&bin, &server_url, dir.path(), &sample.bytes, &[8]);
    println!(
        "8 uploads of the 200k file at once: all promoted in {:.2} s; stages (median): {}; server peak RSS {:.0} MB, extract child {:.0} MB",
        eight.walls[0], eight.stages, eight.server_peak_mb, eight.child_peak_mb
    );

    if std::env::var("ETLQ_BENCH_1M").as_deref() != Ok("0") {
        let big = samples::gl_export(1_000_000, 0);
        println!(
            "input: {} line items, {:.1} MB xlsx",
            big.lines.len(),
            big.bytes.len() as f64 / 1e6
        );
        let m = scenario(&bin, &server_url, dir.path(), &big.bytes, &[1]);
        println!(
            "upload → promoted, 1M: {:.2} s; stages: {}; server peak RSS {:.0} MB, extract child {:.0} MB",
            m.walls[0], m.stages, m.server_peak_mb, m.child_peak_mb
        );
    }
}
