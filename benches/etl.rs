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
//!   peak RSS is that scenario's own. With the 1M file, the diff of two 1M-record versions
//!   of one dataset (issue 20): its time and the server's peak RSS during it.
//!
//! Bring-your-own extractors and text formats (issue 17), same run:
//! - upload → promoted through the shipped Python extractor on openpyxl
//!   (`examples/extractors/fbl3n_openpyxl.py`) vs the built-in connector on the same file:
//!   etlq's own overhead on top of the script (mapping + sync + verify + promote) as a share
//!   of the script's time;
//! - a 200k-row `;` CSV of the same lines: etlq extract vs Python's `csv` module and polars'
//!   `read_csv` (when installable from PyPI);
//! - a 1,000,000-record JSON document (an extractor's output) mapped through the records
//!   reader: time and peak RSS (bounded: streamed, one record at a time).
//!
//! Run with `scripts/bench-etl` (`scripts/bench-etl --diff-only`: the 1M diff alone).

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
use etlq::startup::CheckedSettings;

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
        "openpyxl" => {
            "import sys,time\nimport openpyxl\nt=time.perf_counter()\nwb=openpyxl.load_workbook(sys.argv[1], read_only=True)\nn=sum(1 for _ in wb['GL'].iter_rows(values_only=True))\nprint(time.perf_counter()-t, n)"
        }
        "csv" => {
            "import csv,sys,time\nt=time.perf_counter()\nwith open(sys.argv[1], newline='', encoding='utf-8') as f:\n    n=sum(1 for _ in csv.reader(f, delimiter=';'))\nprint(time.perf_counter()-t, n)"
        }
        _ => {
            "import sys,time\nimport polars as pl\nt=time.perf_counter()\ndf=pl.read_csv(sys.argv[1], separator=';', skip_rows=2, infer_schema_length=0)\nprint(time.perf_counter()-t, df.height)"
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

/// The 200k lines as an ERP's `;` CSV with German numbers and dates (what the sap_fbl3n
/// connector reads from the workbook), title lines included.
fn gl_csv(lines: &[samples::GlLine]) -> String {
    let mut out = String::from("G/L Account Line Item Display\n\n");
    out.push_str(&samples::GL_HEADERS.join(";"));
    out.push('\n');
    for l in lines {
        let amount = l.amount.to_string().replace('.', ",");
        let text = l.text.clone().unwrap_or_default();
        let text = if text.contains([';', '"']) {
            format!("\"{}\"", text.replace('"', "\"\""))
        } else {
            text
        };
        out.push_str(&format!(
            "{};{};{};{};{};{};{};{};{}\n",
            l.company_code,
            l.gl_account,
            l.document,
            l.line_item,
            l.posting_date.format("%d.%m.%Y"),
            l.document_type,
            amount,
            l.currency,
            text
        ));
    }
    out
}

/// Child mode: one extract of a text file (CSV) or, with `json`, of a command extractor's
/// JSON output through the records reader; prints "secs records peak_kb".
fn extract_text_once(file: &Path, json: bool) {
    use etlq::etl::parse::parse_rows;
    use etlq::etl::workbook::SheetReader;
    use etlq::etl::workbook::records::{Records, RecordsFormat};
    let settings = Settings::defaults();
    let connectors = settings.connectors().unwrap();
    let connector = &connectors["sap_fbl3n"];
    let started = Instant::now();
    let mut records = std::io::sink();
    let out = if json {
        let headers = connector.headers();
        let input = Box::new(std::fs::File::open(file).unwrap());
        let sheet = SheetReader::records(Records::new(
            input,
            RecordsFormat::Json,
            Some("rows"),
            &headers,
        ));
        parse_rows(
            connector,
            sheet,
            "BU-BENCH",
            &mut records,
            &AtomicUsize::new(0),
            &|| false,
            None,
        )
    } else {
        let bytes = std::fs::read(file).unwrap();
        parse_workbook(
            connector,
            bytes,
            "BU-BENCH",
            settings.etl.max_inflated_bytes,
            &mut records,
            &AtomicUsize::new(0),
            &|| false,
        )
    }
    .unwrap()
    .unwrap();
    println!(
        "{} {} {}",
        started.elapsed().as_secs_f64(),
        out.report.records,
        vm_hwm_kb("self")
    );
}

/// `n` G/L records as a JSON document `{"rows": [...]}`, as an extractor writes them.
fn gl_json(path: &Path, n: usize) {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    write!(f, "{{\"source\": \"bench\", \"rows\": [").unwrap();
    for i in 0..n {
        if i > 0 {
            f.write_all(b",").unwrap();
        }
        write!(
            f,
            "{{\"Company Code\": \"1000\", \"G/L Account\": {}, \"Document Number\": \"19{:08}\", \"Line Item\": {}, \"Posting Date\": \"2025-{:02}-{:02} 00:00:00\", \"Document Type\": \"SA\", \"Amount in LC\": {}.{:02}, \"Currency\": \"EUR\", \"Text\": \"line {i}\"}}",
            400000 + (i / 50) * 10,
            i / 3,
            i % 3 + 1,
            i % 12 + 1,
            i % 28 + 1,
            (i as i64 * 7919) % 100_000 - 50_000,
            i % 100
        )
        .unwrap();
    }
    f.write_all(b"]}").unwrap();
    f.flush().unwrap();
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
    /// A command extractor's own time (median), from the extract report.
    script_ms: Option<f64>,
}

/// Starts a fresh server on a fresh database, uploads `bytes` `batches.len()` times (each
/// batch = that many uploads at once, waited for together), then stops it.
fn scenario(
    bin: &Path,
    server_url: &str,
    dir: &Path,
    bytes: &[u8],
    batches: &[usize],
    extra_env: &[(String, String)],
) -> Scenario {
    let name = format!("etlq_bench_etl_{}", std::process::id());
    let db_url = format!("{server_url}/{name}");
    let blobs = dir.join(format!(
        "blobs-{}-{}",
        batches.len() * 1000 + batches[0],
        extra_env.len()
    ));
    let mut env = vec![
        ("DATABASE_URL".into(), db_url.clone()),
        ("ETLQ__BLOB__URL".into(), blobs.display().to_string()),
    ];
    env.extend_from_slice(extra_env);
    let server = start_server(bin, &env);
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
    let script_ms = psql(
        &db_url,
        &format!(
            "SELECT round(percentile_disc(0.5) WITHIN GROUP (ORDER BY (checkpoint->'extract'->'report'->'extractor'->>'millis')::bigint)) FROM jobs WHERE id IN ({list})"
        ),
    )
    .parse::<f64>()
    .ok();
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
        script_ms,
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
    if let Some(i) = args.iter().position(|a| a == "--csv-once") {
        extract_text_once(Path::new(&args[i + 1]), false);
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--json-once") {
        extract_text_once(Path::new(&args[i + 1]), true);
        return;
    }
    // `--diff-only`: the diff of two 1M-record versions alone.
    if args.iter().any(|a| a == "--diff-only") {
        let dir = tempfile::tempdir().unwrap();
        let bin = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/etlq");
        let server_url = common::bench_server();
        let (a, b) = (
            samples::gl_export(1_000_000, 0),
            samples::gl_export(1_000_000, 1_000),
        );
        diff_1m(&bin, &server_url, dir.path(), &a.bytes, &b.bytes);
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
    let server_url = common::bench_server();
    let vs_calamine = |wall: f64| {
        calamine
            .map(|c| format!(" = {:.2}× python-calamine's row count", wall / c))
            .unwrap_or_default()
    };

    // CSV: the same lines as an ERP's `;` CSV, etlq extract vs Python's csv and polars.
    let csv_file = dir.path().join("gl-200k.csv");
    std::fs::write(&csv_file, gl_csv(&sample.lines)).unwrap();
    let (mut csv_times, mut csv_peaks) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let f = child_numbers("--csv-once", &csv_file);
        assert_eq!(
            f[1] as usize,
            sample.lines.len(),
            "every CSV line extracted"
        );
        csv_times.push(f[0]);
        csv_peaks.push(f[2] / 1024.0);
    }
    let csv_extract = median(csv_times);
    println!(
        "etlq extract, 200k-row CSV ({:.1} MB): median {csv_extract:.3} s, peak RSS {:.0} MB",
        std::fs::metadata(&csv_file).unwrap().len() as f64 / 1e6,
        median(csv_peaks)
    );
    if let Ok(python) = std::env::var("ETLQ_BENCH_PYTHON") {
        for reader in ["csv", "polars"] {
            let t: Vec<f64> = (0..runs)
                .filter_map(|_| python_peer(&python, reader, &csv_file))
                .collect();
            if t.is_empty() {
                println!("{reader}: not available in the bench venv");
                continue;
            }
            let m = median(t);
            println!(
                "Python {reader} (rows as text, untyped): median {m:.3} s → etlq's typed extract is {:.2}× its time",
                csv_extract / m
            );
        }
    }
    // A command extractor's 1,000,000-record JSON output through the records reader.
    let json_file = dir.path().join("gl-1m.json");
    gl_json(&json_file, 1_000_000);
    let f = child_numbers("--json-once", &json_file);
    println!(
        "records reader, 1,000,000-record JSON ({:.0} MB): {:.2} s, {} records, peak RSS {:.0} MB",
        std::fs::metadata(&json_file).unwrap().len() as f64 / 1e6,
        f[0],
        f[1],
        f[2] / 1024.0
    );
    std::fs::remove_file(&json_file).unwrap();

    let one = scenario(
        &bin,
        &server_url,
        dir.path(),
        &sample.bytes,
        &vec![1; runs],
        &[],
    );
    let wall = median(one.walls.clone());
    println!(
        "upload → promoted, 200k: median {wall:.2} s of {runs} (runs: {}){}; stages (median): {}; server peak RSS {:.0} MB, extract child {:.0} MB",
        list(&one.walls),
        vs_calamine(wall),
        one.stages,
        one.server_peak_mb,
        one.child_peak_mb
    );

    // The shipped Python extractor (openpyxl) as the sap_fbl3n connector's extractor.
    if let Ok(python) = std::env::var("ETLQ_BENCH_PYTHON") {
        let config = dir.path().join("gl-python.toml");
        std::fs::write(
            &config,
            format!(
                "[connectors.sap_fbl3n]\nextractor = {{ command = [{:?}, {:?}, \"{{input}}\", \"{{output}}\"], records = \"rows\", timeout_ms = 3600000, memory_limit_mb = 8192 }}\n",
                python,
                format!("{}/examples/extractors/fbl3n_openpyxl.py", env!("CARGO_MANIFEST_DIR"))
            ),
        )
        .unwrap();
        let py = scenario(
            &bin,
            &server_url,
            dir.path(),
            &sample.bytes,
            &[1],
            &[("ETLQ_CONFIG".into(), config.display().to_string())],
        );
        let wall = py.walls[0];
        match py.script_ms {
            Some(script_ms) => {
                let script = script_ms / 1000.0;
                println!(
                    "upload → promoted, 200k through the Python extractor (openpyxl): {wall:.2} s, of which the script {script:.2} s; etlq's own part (staging, mapping, sync, verify, promote) {:.2} s = {:.0}% of the script's time; built-in connector: {:.2} s; stages: {}",
                    wall - script,
                    100.0 * (wall - script) / script,
                    median(one.walls.clone()),
                    py.stages
                );
            }
            None => println!(
                "the Python extractor run did not report its time: {}",
                py.stages
            ),
        }
    }

    let eight = scenario(&bin, &server_url, dir.path(), &sample.bytes, &[8], &[]);
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
        let m = scenario(&bin, &server_url, dir.path(), &big.bytes, &[1], &[]);
        println!(
            "upload → promoted, 1M: {:.2} s; stages: {}; server peak RSS {:.0} MB, extract child {:.0} MB",
            m.walls[0], m.stages, m.server_peak_mb, m.child_peak_mb
        );
        // The same lines but 1,000 with an impossible date (rejected): a second version
        // whose diff against the first walks both million-record versions.
        let next = samples::gl_export(1_000_000, 1_000);
        diff_1m(&bin, &server_url, dir.path(), &big.bytes, &next.bytes);
    }
}

fn vm_rss_kb(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Promotes `a` then `b` for one dataset on a fresh server, then asks for their diff: its
/// time and the server's peak RSS during the diff alone (the peak is reset before it, through
/// `/proc/PID/clear_refs`), against its RSS just before.
fn diff_1m(bin: &Path, server_url: &str, dir: &Path, a: &[u8], b: &[u8]) {
    let name = format!("etlq_bench_diff_{}", std::process::id());
    let db_url = format!("{server_url}/{name}");
    let env = [
        ("DATABASE_URL".to_string(), db_url),
        (
            "ETLQ__BLOB__URL".to_string(),
            dir.join("blobs-diff").display().to_string(),
        ),
    ];
    let server = start_server(bin, &env);
    let pid = server.child.id().to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = reqwest::Client::new();
    let (counts, secs, before_kb, peak_kb) = rt.block_on(async {
        for bytes in [a, b] {
            let id = upload(&client, &server.base, bytes, "BU-DIFF").await;
            wait_promoted(&client, &server.base, id).await;
        }
        let before = vm_rss_kb(&pid);
        let reset = std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok();
        let started = Instant::now();
        let d: serde_json::Value = client
            .get(format!(
                "{}/v1/datasets/BU-DIFF/sap_fbl3n/diff?limit=100",
                server.base
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let secs = started.elapsed().as_secs_f64();
        let peak = if reset { vm_hwm_kb(&pid) } else { 0 };
        (d["counts"].clone(), secs, before, peak)
    });
    drop(server);
    psql(
        &format!("{server_url}/postgres"),
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    );
    println!(
        "diff of two 1M-record versions (PostgreSQL sink): {secs:.2} s, counts {counts}; server RSS {:.0} MB before, peak during the diff {:.0} MB",
        before_kb as f64 / 1024.0,
        peak_kb as f64 / 1024.0
    );
}
