//! Hostile workbooks against a real worker process: each fails (or succeeds) on its own, after
//! one attempt, with a message naming the cause; a good upload in flight beside them succeeds;
//! the worker process never restarts and its memory stays bounded. Also: the parser's time
//! limit, a cancel and a drain timeout killing the parser, and the poison-pill guard.

use std::io::Write;
use std::time::Duration;

use serde_json::Value;

use crate::etl::{check_gl_docs, sink_docs, upload, wait_done};
use crate::helpers::*;
use crate::samples;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn with(mut env: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

/// The trial-balance header, then 4,096 rows each holding one cell in column XFD: 23 KB that
/// cost 520–690 MiB when rows were padded to their last cell.
fn xfd_sparse_xlsx() -> Vec<u8> {
    let mut wb = rust_xlsxwriter::Workbook::new();
    let ws = wb.add_worksheet();
    for (c, h) in samples::TB_HEADERS.iter().enumerate() {
        ws.write_string(0, c as u16, *h).unwrap();
    }
    for r in 1..=4096 {
        ws.write_number(r, 16_383, 1.0).unwrap();
    }
    wb.save_to_buffer().unwrap()
}

/// 1,500 rows of one cell repeated across all 16,384 columns, in 1.6 KB: calamine expanded
/// every repeat before bounding anything (2 GiB).
fn repeated_columns_ods() -> Vec<u8> {
    let row = r#"<table:table-row><table:table-cell table:number-columns-repeated="16384" office:value-type="float" office:value="7"/></table:table-row>"#;
    let body = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><office:document-content xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0" xmlns:table="urn:oasis:names:tc:opendocument:xmlns:table:1.0" xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0"><office:body><office:spreadsheet><table:table table:name="TB">{}</table:table></office:spreadsheet></office:body></office:document-content>"#,
        row.repeat(1500)
    );
    let mut out = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut out);
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("mimetype", stored).unwrap();
    z.write_all(b"application/vnd.oasis.opendocument.spreadsheet")
        .unwrap();
    z.start_file("content.xml", zip::write::SimpleFileOptions::default())
        .unwrap();
    z.write_all(body.as_bytes()).unwrap();
    z.finish().unwrap();
    let bytes = out.into_inner();
    assert!(bytes.len() < 4096, "{} bytes", bytes.len());
    bytes
}

/// Peak resident set size of a process, from /proc.
pub fn vm_hwm_mb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0)
        / 1024
}

/// Whether process `pid` is gone (or a zombie: it has exited and released its memory).
fn gone(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.is_empty()
        || stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            == Some("Z")
}

/// Extract children of `pid` still running.
fn parser_children(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().nth(1))
                .and_then(|v| v.parse::<u32>().ok());
            let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            ppid == Some(pid) && String::from_utf8_lossy(&cmd).contains("__extract") && !gone(*p)
        })
        .collect()
}

async fn upload_as(base: &str, bytes: Vec<u8>, name: &str, bu: &str, connector: &str) -> i64 {
    let client = reqwest::Client::new();
    let fields = [("bu_id", bu), ("connector", connector)];
    let (status, body) = upload(&client, base, bytes, name, &fields).await;
    assert_eq!(status, 202, "{name}: {body}");
    body["job_id"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_workbooks_fail_alone_and_never_take_the_worker_down() {
    let db = TestDb::new().await;
    // A parser limit small enough that a memory-exhausting file reaches it quickly, and large
    // enough for the good 20,000-row file: the debug binary's parser peaks at ~264 MB of
    // address space on it (two threads' 64 MB glibc arenas and ~35 MB of text included),
    // measured with VmPeak; 256 MB was too tight by that margin.
    let env = with(
        process_env(&db.url, "v1"),
        &[("ETLQ__ETL__EXTRACT_MEMORY_LIMIT_MB", "384")],
    );
    let mut p = spawn_process("serve", &env);
    let pid = p.pid();
    let client = reqwest::Client::new();

    // A good, larger upload first, so it is in flight while the hostile ones are parsed.
    let gl = samples::gl_export(20_000, 5);
    let good = upload_as(&p.base, gl.bytes.clone(), "gl.xlsx", "BU-GOOD", "sap_fbl3n").await;
    // (file, connector, expected state, text the message or report must contain)
    let cases: Vec<(&str, Vec<u8>, &str, &str, &str)> = vec![
        (
            "parser_panic.xls",
            fixture("parser_panic.xls"),
            "trial_balance",
            "dead",
            "extract: the workbook parser crashed on this file (panic: range end index 4 out of range for slice of length 1)",
        ),
        (
            "far_corners.xls",
            fixture("far_corners.xls"),
            "trial_balance",
            "dead",
            "extract: the workbook parser exceeded the 384 MiB memory limit (etl.extract_memory_limit_mb)",
        ),
        (
            "repeated_columns.ods",
            repeated_columns_ods(),
            "trial_balance",
            "dead",
            "extract: header row not found in sheet \"TB\"",
        ),
        (
            "forged_dimensions_as_gl.xls",
            fixture("forged_dimensions.xls"),
            "sap_fbl3n",
            "dead",
            "extract: sheet \"GL\" not found; the workbook has [\"TB\"]",
        ),
        // Read as what it is: a five-row trial balance.
        (
            "forged_dimensions.xls",
            fixture("forged_dimensions.xls"),
            "trial_balance",
            "succeeded",
            "",
        ),
        // Every cell past the mapped columns is dropped as it is read: no records, no memory.
        (
            "xfd_sparse.xlsx",
            xfd_sparse_xlsx(),
            "trial_balance",
            "succeeded",
            "",
        ),
    ];
    let mut ids = Vec::new();
    for (name, bytes, connector, _, _) in &cases {
        ids.push(upload_as(&p.base, bytes.clone(), name, "BU-HOSTILE", connector).await);
    }
    for (id, (name, _, _, state, want)) in ids.iter().zip(&cases) {
        let v = wait_done(&client, &p.base, *id).await;
        assert_eq!(v["state"], *state, "{name}: {v}");
        assert_eq!(v["attempts"], 1, "{name}: one attempt only");
        if *state == "dead" {
            let err = v["last_error"].as_str().unwrap();
            assert!(
                err.starts_with(want),
                "{name}: {err:?} should start with {want:?}"
            );
            let reason: String =
                sqlx::query_scalar("SELECT reason FROM dead_letters WHERE job_id = $1")
                    .bind(id)
                    .fetch_one(&db.pool)
                    .await
                    .unwrap();
            assert_eq!(reason, err, "{name}");
        }
    }
    let forged = wait_done(&client, &p.base, ids[4]).await;
    assert_eq!(forged["report"]["records"], 5, "{forged}");
    let sparse = wait_done(&client, &p.base, ids[5]).await;
    assert_eq!(sparse["report"]["records"], 0, "{sparse}");

    let v = wait_done(&client, &p.base, good).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    check_gl_docs(&sink_docs(&db.pool, good).await, &gl.lines);
    // The worker never restarted: same process, one `workers` row, no rescue.
    assert!(p.child.try_wait().unwrap().is_none(), "the worker is alive");
    let workers: i64 = sqlx::query_scalar("SELECT count(*) FROM workers")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(workers, 1);
    let rescued: i64 =
        sqlx::query_scalar("SELECT count(*) FROM job_events WHERE event = 'rescued'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(rescued, 0);
    // Parsers ran in children: the worker itself never held a parsed workbook.
    let peak = vm_hwm_mb(pid);
    assert!(
        peak < 250,
        "worker peak RSS {peak} MB (the bound for this test: 250 MB)"
    );
    assert!(parser_children(pid).is_empty(), "no parser left behind");
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(20)).await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parser_time_limit_and_a_cancel_kill_the_parser_not_the_worker() {
    let db = TestDb::new().await;
    let env = with(
        process_env(&db.url, "v1"),
        &[("ETLQ__ETL__EXTRACT_TIMEOUT_MS", "400")],
    );
    let p = spawn_process("serve", &env);
    let client = reqwest::Client::new();
    // 60,000 rows take the (debug-built) parser well past 400 ms.
    let big = samples::gl_export(60_000, 0);
    let id = upload_as(&p.base, big.bytes.clone(), "big.xlsx", "BU-T", "sap_fbl3n").await;
    let v = wait_done(&client, &p.base, id).await;
    assert_eq!(v["state"], "dead", "{v}");
    assert_eq!(v["attempts"], 1);
    assert_eq!(
        v["last_error"],
        "extract: the workbook parser exceeded the 400 ms time limit (etl.extract_timeout_ms)"
    );
    assert!(parser_children(p.pid()).is_empty());
    drop(p);

    // A cancel while the parser runs kills it.
    let p = spawn_process("serve", &process_env(&db.url, "v1"));
    let id = upload_as(&p.base, big.bytes.clone(), "big.xlsx", "BU-C", "sap_fbl3n").await;
    let children = wait_for(Duration::from_secs(30), "the parser to start", || async {
        let c = parser_children(p.pid());
        (!c.is_empty()).then_some(c)
    })
    .await;
    let r = client
        .post(format!("{}/v1/jobs/{id}/cancel", p.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    wait_for(
        Duration::from_secs(10),
        "the parser to be killed",
        || async { children.iter().all(|c| gone(*c)).then_some(()) },
    )
    .await;
    let v: Value = p.get_json(&format!("/v1/jobs/{id}")).await.unwrap();
    assert_eq!(v["state"], "cancelled");
    assert!(p.get_json("/healthz").await.is_some(), "the worker is fine");
}

/// A deploy whose drain times out while a parser runs: the parser is killed, the job released
/// at its last checkpoint (no attempt used), and the next version extracts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_timeout_kills_the_running_parser_and_releases_the_job() {
    let db = TestDb::new().await;
    let env = with(
        process_env(&db.url, "v1"),
        &[("ETLQ__WORKER__DRAIN_TIMEOUT_MS", "300")],
    );
    let mut p = spawn_process("serve", &env);
    let big = samples::gl_export(60_000, 0);
    let id = upload_as(&p.base, big.bytes.clone(), "big.xlsx", "BU-D", "sap_fbl3n").await;
    let children = wait_for(Duration::from_secs(30), "the parser to start", || async {
        let c = parser_children(p.pid());
        (!c.is_empty()).then_some(c)
    })
    .await;
    p.signal("TERM");
    // Killed at the drain timeout, before the worker releases the job and exits.
    wait_for(
        Duration::from_secs(10),
        "the parser to be killed",
        || async { children.iter().all(|c| gone(*c)).then_some(()) },
    )
    .await;
    assert_eq!(p.wait_exit(Duration::from_secs(20)).await, Some(0));
    let job = db.store().get(id).await.unwrap();
    assert_eq!(
        (job.state.as_str(), job.attempts, job.stage.as_deref()),
        ("queued", 0, Some("extract"))
    );
    let b = spawn_process("serve", &process_env(&db.url, "v2"));
    let v = wait_done(&reqwest::Client::new(), &b.base, id).await;
    assert_eq!(v["state"], "succeeded", "{v}");
}

/// A job whose worker dies in the same stage twice in a row is dead-lettered as a poison pill
/// by the next rescuer, with attempts left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_that_kills_its_worker_twice_in_a_stage_is_dead_lettered() {
    let db = TestDb::new().await;
    let paused = with(
        process_env(&db.url, "v1"),
        &[
            ("ETLQ__TESTING__PAUSE_IN_STAGE_MS", "60000"),
            ("ETLQ__TESTING__PAUSE_STAGE", "sync"),
        ],
    );
    let gl = samples::gl_export(500, 0);
    let mut id = None;
    for round in 1..=2 {
        let mut w = spawn_process("serve", &paused);
        let job = match id {
            Some(j) => j,
            None => upload_as(&w.base, gl.bytes.clone(), "gl.xlsx", "BU-P", "sap_fbl3n").await,
        };
        id = Some(job);
        crate::helpers::wait_paused(&db.pool, job, "sync", round).await;
        w.signal("KILL");
        w.wait_exit(Duration::from_secs(10)).await;
    }
    let id = id.unwrap();
    let c = spawn_process("serve", &process_env(&db.url, "v2"));
    let v = wait_done(&reqwest::Client::new(), &c.base, id).await;
    assert_eq!(v["state"], "dead", "{v}");
    let err = v["last_error"].as_str().unwrap();
    assert!(
        err.starts_with("poison pill: the worker running stage sync stopped without finishing it 2 times in a row"),
        "{err}"
    );
    assert!(v["attempts"].as_i64().unwrap() < v["max_attempts"].as_i64().unwrap());
    let reason: String = sqlx::query_scalar("SELECT reason FROM dead_letters WHERE job_id = $1")
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(
        reason.contains("worker.max_consecutive_rescues"),
        "{reason}"
    );
    // One rescue (the first kill) requeued it; the second dead-lettered it.
    let rescues: Vec<String> = sqlx::query_scalar(
        "SELECT to_state FROM job_events WHERE job_id = $1 AND event = 'rescued' ORDER BY id",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(rescues, ["queued", "dead"]);
}
