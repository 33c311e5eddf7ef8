//! ETL benchmark (not a test): a 200,000-row × 9-column G/L export.
//!
//! Reports, each the median of `ETLQ_BENCH_RUNS` (default 3):
//! - extract: parse + map + type + write the records artifact, in a child process so its peak
//!   RSS is its own (VmHWM);
//! - the same file read by python-calamine and openpyxl (row count only, as in PERF.md), in the
//!   same run, when `ETLQ_BENCH_PYTHON` names a Python that has them (scripts/bench-etl sets
//!   that up);
//! - upload → promoted wall time through a release `etlq serve` with the embedded defaults
//!   (local blob directory, PostgreSQL sink), and that server's peak RSS.
//!
//! Run with `scripts/bench-etl`.

#[path = "../examples/samples/mod.rs"]
mod samples;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicUsize;
use std::time::{Duration, Instant};

use etlq::configuration::Settings;
use etlq::etl::job::extract_artifact;

const ROWS: usize = 200_000;

fn vm_hwm_kb(pid: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Child mode: one extract of `file`; prints "secs records peak_kb".
fn extract_once(file: &Path) {
    let settings = Settings::defaults();
    let connectors = settings.connectors().unwrap();
    let connector = &connectors["sap_fbl3n"];
    let bytes = std::fs::read(file).unwrap();
    let started = Instant::now();
    let out = extract_artifact(
        connector,
        bytes,
        "BU-BENCH",
        settings.etl.max_inflated_bytes,
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
        out.records.len()
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

struct Server {
    child: std::process::Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(bin: &Path, db_url: &str, blobs: &Path) -> Server {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(bin)
        .args(["serve", "--port", "0"])
        .env("DATABASE_URL", db_url)
        .env("ETLQ__BLOB__URL", blobs)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start etlq serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let base = loop {
        let line = lines.next().expect("etlq exited").unwrap();
        if let Some(url) = line.strip_prefix("etlq listening on ") {
            break url.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Server { child, base }
}

async fn upload_to_promoted(base: &str, bytes: &[u8], run: usize) -> f64 {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let form = reqwest::multipart::Form::new()
        .text("bu_id", format!("BU-BENCH-{run}"))
        .text("connector", "sap_fbl3n")
        .part(
            "file",
            reqwest::multipart::Part::bytes(bytes.to_vec()).file_name("gl.xlsx"),
        );
    let r: serde_json::Value = client
        .post(format!("{base}/v1/uploads"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = r["job_id"].as_i64().expect("job id");
    loop {
        let v: serde_json::Value = client
            .get(format!("{base}/v1/jobs/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        match v["state"].as_str() {
            Some("succeeded") => return started.elapsed().as_secs_f64(),
            Some("dead" | "cancelled") => panic!("job {id} failed: {v}"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--extract-once") {
        extract_once(Path::new(&args[i + 1]));
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

    let me = std::env::current_exe().unwrap();
    let (mut times, mut peaks) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let out = Command::new(&me)
            .args(["--extract-once"])
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let f: Vec<f64> = text
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        assert_eq!(
            f[1] as usize,
            sample.lines.len(),
            "every line item extracted"
        );
        times.push(f[0]);
        peaks.push(f[2] / 1024.0);
    }
    let extract = median(times);
    println!(
        "etlq extract (typed records + artifact): median {extract:.3} s, peak RSS {:.0} MB",
        median(peaks)
    );
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
            println!(
                "{reader} (row count only): median {m:.3} s of {n} → etlq is {:.1}× faster",
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
    let db_url = format!("{server_url}/etlq_bench_etl_{}", std::process::id());
    let blobs = dir.path().join("blobs");
    let server = start_server(&bin, &db_url, &blobs);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let walls: Vec<f64> = (0..runs)
        .map(|i| rt.block_on(upload_to_promoted(&server.base, &sample.bytes, i)))
        .collect();
    let peak = vm_hwm_kb(&server.child.id().to_string()) as f64 / 1024.0;
    println!(
        "upload → promoted ({} records): median {:.2} s of {runs} (runs: {}), server peak RSS {peak:.0} MB",
        sample.lines.len(),
        median(walls.clone()),
        walls
            .iter()
            .map(|w| format!("{w:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    drop(server);
    let _ = Command::new("psql")
        .arg(format!("{server_url}/postgres"))
        .args([
            "-qc",
            &format!(
                "DROP DATABASE IF EXISTS etlq_bench_etl_{} WITH (FORCE)",
                std::process::id()
            ),
        ])
        .status();
}
