//! Files other than workbooks and extractors other than ours (issue 17): CSV/TSV in every
//! encoding and delimiter, SAP's HTML and tab-text ".xls", command extractors — a real Python
//! extractor on openpyxl installed from PyPI as users would, and hostile ones — and the
//! connector preview.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::etl::{JOB_TIMEOUT, sample_file, sink_docs, upload, wait_done};
use crate::helpers::*;
use etlq::configuration::Settings;
use etlq::startup::Role;

/// A trial balance as rows of text: header, three accounts (one name with the delimiter, a
/// quote and a newline inside; one with an umlaut).
fn tb_rows() -> Vec<Vec<&'static str>> {
    vec![
        vec![
            "Account",
            "Account Name",
            "Period End",
            "Opening Balance",
            "Debit",
            "Credit",
            "Closing Balance",
            "Active",
        ],
        vec![
            "1000",
            "Cash, \"petty\"\nmain",
            "2025-12-31",
            "1,200.50",
            "300",
            "0.5",
            "1500.00",
            "yes",
        ],
        vec![
            "2000",
            "Käse GmbH",
            "2025-12-31",
            "(400.00)",
            "",
            "100",
            "-500",
            "no",
        ],
        vec!["3000", "Revenue", "2025-12-31", "0", "0", "0", "0", "true"],
    ]
}

fn delimited(delim: char) -> String {
    let mut out = String::new();
    for row in tb_rows() {
        let cells: Vec<String> = row
            .iter()
            .map(|c| {
                if c.contains([delim, '"', '\n']) {
                    format!("\"{}\"", c.replace('"', "\"\""))
                } else {
                    c.to_string()
                }
            })
            .collect();
        out.push_str(&cells.join(&delim.to_string()));
        out.push_str("\r\n");
    }
    out
}

fn html_table() -> String {
    let mut out = String::from(
        "<html><head><meta charset=\"utf-8\"><style>td{mso-number-format:\\@}</style></head><body>\
         <table><tr><td>Trial balance export</td></tr></table><table border=\"1\">",
    );
    for (i, row) in tb_rows().iter().enumerate() {
        out.push_str("<tr>");
        for c in row {
            let c = c
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('\n', "<br>");
            out.push_str(&if i == 0 {
                format!("<th>{c}</th>")
            } else {
                format!("<td>{c}</td>")
            });
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table></body></html>");
    out
}

fn utf16le_with_bom(s: &str) -> Vec<u8> {
    let mut out = vec![0xFF, 0xFE];
    out.extend(s.encode_utf16().flat_map(u16::to_le_bytes));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_tsv_and_html_exports_are_read_by_content_in_every_encoding() {
    let app = spawn_app().await;
    let base = app.url("");
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend(delimited(';').into_bytes());
    let piped = delimited('|');
    let (cp1252, _, unmappable) = encoding_rs::WINDOWS_1252.encode(&piped);
    assert!(!unmappable);
    let cases: Vec<(&str, Vec<u8>, &str, &str, &str)> = vec![
        // (file name, bytes, format, encoding, delimiter)
        ("tb.csv", delimited(',').into_bytes(), "csv", "utf-8", ","),
        ("tb.csv", bom, "csv", "utf-8", ";"),
        // Excel's "Unicode text" and SAP's "unconverted" export, both saved as .xls.
        (
            "tb.xls",
            utf16le_with_bom(&delimited('\t')),
            "csv",
            "utf-16le",
            "\\t",
        ),
        ("tb.txt", cp1252.into_owned(), "csv", "windows-1252", "|"),
        // SAP's "spreadsheet" export: an HTML table named .xls.
        ("tb.xls", html_table().into_bytes(), "html", "utf-8", ""),
    ];
    for (i, (name, bytes, format, encoding, delim)) in cases.into_iter().enumerate() {
        let bu = format!("BU-{i}");
        let (s, b) = upload(
            &app.client,
            &base,
            bytes,
            name,
            &[("bu_id", bu.as_str()), ("connector", "trial_balance")],
        )
        .await;
        assert_eq!(s, 202, "{name}: {b}");
        let job = b["job_id"].as_i64().unwrap();
        let v = wait_done(&app.client, &base, job).await;
        assert_eq!(v["state"], "succeeded", "{name} ({encoding}): {v}");
        let report = &v["report"];
        assert_eq!(report["format"]["format"], format, "{name}: {report}");
        assert_eq!(report["format"]["encoding"], encoding, "{name}: {report}");
        if !delim.is_empty() {
            assert_eq!(report["format"]["delimiter"], delim, "{name}: {report}");
        }
        assert_eq!(report["records"], 3, "{name}: {report}");
        let docs: BTreeMap<String, Value> = sink_docs(&app.db.pool, job)
            .await
            .into_iter()
            .map(|(_, body)| (body["account"].as_str().unwrap().to_string(), body))
            .collect();
        assert_eq!(
            docs["1000"]["name"], "Cash, \"petty\"\nmain",
            "{name}: a quoted delimiter, quote and newline"
        );
        assert_eq!(docs["2000"]["name"], "Käse GmbH", "{name}: {encoding}");
        assert_eq!(docs["1000"]["opening"], "1200.50", "{name}");
        assert_eq!(docs["2000"]["opening"], "-400.00", "{name}");
        assert_eq!(docs["2000"]["debit"], Value::Null, "{name}");
        assert_eq!(docs["1000"]["period_end"], "2025-12-31", "{name}");
        assert_eq!(docs["2000"]["active"], false, "{name}");
    }
    // What is none of the formats is named at the door.
    for (bytes, name, want) in [
        (
            b"%PDF-1.7\n%\xE2\xE3".to_vec(),
            "tb.xls",
            "the file is a PDF document",
        ),
        (
            b"<!DOCTYPE html><html><body>Login</body></html>".to_vec(),
            "tb.xls",
            "the file is an HTML page without a table",
        ),
    ] {
        let (s, b) = upload(
            &app.client,
            &base,
            bytes,
            name,
            &[("bu_id", "BU-X"), ("connector", "trial_balance")],
        )
        .await;
        assert_eq!(s, 422, "{b}");
        let m = b["error"]["message"].as_str().unwrap();
        assert!(m.starts_with(want), "{m}");
    }
    app.stop().await;
}

/// Where `scripts/test` installed openpyxl with `pip install --target`, as the README tells
/// users to ship a script's dependencies.
fn pylibs() -> String {
    service_env(
        "ETLQ_TEST_PYLIBS",
        "openpyxl installed with `python3 -m pip install --target target/pylibs openpyxl`",
    )
}

fn connector(text: &str) -> etlq::etl::connector::ConnectorSpec {
    toml::from_str(text).unwrap()
}

/// The shipped G/L connector with a command extractor in place of the built-in reader.
fn python_gl(s: &Settings) -> etlq::etl::connector::ConnectorSpec {
    let mut spec = s.connectors["sap_fbl3n"].clone();
    let root = env!("CARGO_MANIFEST_DIR");
    spec.extractor = Some(
        toml::from_str(&format!(
            r#"
            command = ["python3", "{root}/examples/extractors/fbl3n_openpyxl.py", "{{input}}", "{{output}}"]
            records = "rows"
            env = {{ PYTHONPATH = "{}" }}
            timeout_ms = 120000
            memory_limit_mb = 1024
            "#,
            pylibs()
        ))
        .unwrap(),
    );
    spec.sheet = etlq::etl::connector::SheetRef::Index(0);
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_extractor_on_openpyxl_gives_the_records_of_the_built_in_connector() {
    let gl = sample_file("sap_fbl3n.xlsx");
    // The same connector name in both apps: document ids are (bu_id, connector, key).
    let builtin = spawn_app().await;
    let script = spawn_app_on(std::sync::Arc::new(TestDb::new().await), Role::Serve, |s| {
        let spec = python_gl(s);
        s.connectors.insert("sap_fbl3n".into(), spec);
    })
    .await;
    let (_, kinds) = script.get("/v1/connectors").await;
    let kind = kinds["connectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "sap_fbl3n")
        .unwrap()["kind"]
        .clone();
    assert_eq!(kind, "command");
    let mut docs = Vec::new();
    for app in [&builtin, &script] {
        let base = app.url("");
        let (s, b) = upload(
            &app.client,
            &base,
            gl.clone(),
            "FBL3N.xlsx",
            &[("bu_id", "BU-1000"), ("connector", "sap_fbl3n")],
        )
        .await;
        assert_eq!(s, 202, "{b}");
        let job = b["job_id"].as_i64().unwrap();
        let v = wait_done(&app.client, &base, job).await;
        assert_eq!(v["state"], "succeeded", "{v}");
        docs.push((sink_docs(&app.db.pool, job).await, v["report"].clone()));
    }
    let (ours, theirs) = (&docs[0], &docs[1]);
    assert!(ours.0.len() > 100, "{} records", ours.0.len());
    assert_eq!(ours.0, theirs.0, "same ids, same typed values");
    assert_eq!(ours.1["rejected_rows"], theirs.1["rejected_rows"]);
    let ex = &theirs.1["extractor"];
    assert_eq!(ex["exit_code"], 0, "{ex}");
    assert_eq!(theirs.1["format"]["format"], "json");
    builtin.stop().await;
    script.stop().await;
}

/// The interpreter itself, not a wrapper on PATH (pyenv's `python3` is a shell script that
/// adds variables of its own to the environment it passes on).
fn real_python() -> String {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("python3 runs");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The hostile extractors' modes (tests/extractors/hostile.py), each a connector.
const HOSTILE: [&str; 8] = [
    "memory",
    "loop",
    "grandchild",
    "stdout",
    "garbage",
    "fail",
    "abort",
    "env",
];

/// Processes whose process group is `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid pgrp …; comm may hold spaces: split after the last ')'.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = rest.split(' ').collect();
        if fields[2].parse::<i32>().ok() == Some(pgid) && fields[0] != "Z" {
            out.push(pid);
        }
    }
    out
}

fn peak_rss_mb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_extractors_go_dead_with_their_cause_and_leave_no_process() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("grandchild.pid");
    let script = format!("{}/tests/extractors/hostile.py", env!("CARGO_MANIFEST_DIR"));
    let pid_env = pid_file.display().to_string();
    let report_file = dir.path().join("env.json");
    let report_env = report_file.display().to_string();
    let work_env = dir.path().display().to_string();
    let python = real_python();
    let app = spawn_app_on(
        std::sync::Arc::new(TestDb::new().await),
        Role::Serve,
        |s| {
            s.worker.concurrency = 8;
            for mode in HOSTILE {
                let spec = connector(&format!(
                    r#"
                    extractor = {{ command = ["{python}", "{script}", "{mode}", "{{input}}", "{{output}}"],
                                  format = "json", env = {{ PID_FILE = "{pid_env}", REPORT_FILE = "{report_env}" }},
                                  timeout_ms = 3000, memory_limit_mb = 256, working_dir = "{work_env}" }}
                    columns = [
                      {{ name = "account", header = "Account", type = "string", required = true, key = true }},
                      {{ name = "amount", header = "Amount", type = "decimal", required = true, scale = 2 }},
                    ]
                    "#
                ));
                s.connectors.insert(format!("hostile_{mode}"), spec);
            }
        },
    )
    .await;
    let base = app.url("");
    let mut jobs = Vec::new();
    for mode in HOSTILE {
        let connector = format!("hostile_{mode}");
        let (s, b) = upload(
            &app.client,
            &base,
            b"Account,Amount\n1,2\n".to_vec(),
            "in.csv",
            &[("bu_id", "BU-1"), ("connector", connector.as_str())],
        )
        .await;
        assert_eq!(s, 202, "{b}");
        jobs.push((mode, b["job_id"].as_i64().unwrap()));
    }
    let good = crate::etl::upload_ok(
        &app.client,
        &base,
        sample_file("trial_balance.xlsx"),
        "BU-2",
        "trial_balance",
    )
    .await;
    let want = [
        (
            "memory",
            "the extractor exceeded its 256 MiB memory limit (connectors.hostile_memory.extractor.memory_limit_mb)",
        ),
        (
            "loop",
            "the extractor exceeded its 3 s time limit (connectors.hostile_loop.extractor.timeout_ms)",
        ),
        (
            "stdout",
            "the extractor wrote more than 64 MiB of messages to stdout",
        ),
        ("garbage", "the extractor's output is not what it should be"),
        (
            "fail",
            "the extractor exited with status 1; its stderr ends: cannot read the export: sheet 'Buchungen' missing",
        ),
        ("abort", "the extractor was killed by signal 6"),
    ];
    for (mode, id) in &jobs {
        let v = wait_done(&app.client, &base, *id).await;
        if *mode == "grandchild" || *mode == "env" {
            assert_eq!(v["state"], "succeeded", "{mode}: {v}");
            continue;
        }
        assert_eq!(v["state"], "dead", "{mode}: {v}");
        let err = v["last_error"].as_str().unwrap();
        let (_, w) = want.iter().find(|(m, _)| m == mode).unwrap();
        assert!(err.contains(w), "{mode}: {err:?} should contain {w:?}");
        assert_eq!(v["attempts"], 1, "{mode}: not retried");
    }
    let v = wait_done(&app.client, &base, good).await;
    assert_eq!(v["state"], "succeeded", "the good upload beside them: {v}");
    // The grandchild that outlived its extractor was killed with the extractor's group.
    let recorded = std::fs::read_to_string(&pid_file).unwrap();
    let mut it = recorded
        .split_whitespace()
        .map(|n| n.parse::<i32>().unwrap());
    let (grandchild, pgid) = (it.next().unwrap(), it.next().unwrap());
    assert_eq!(
        group_members(pgid),
        Vec::<i32>::new(),
        "the extractor's process group (grandchild {grandchild}) is gone"
    );
    // No extractor is left running, whatever it did (this test's modes; another test runs
    // the same script as `slow`).
    let left: Vec<Vec<String>> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| {
            c.split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
        })
        .filter(|args| args.contains(&script) && args.iter().any(|a| HOSTILE.contains(&a.as_str())))
        .collect();
    assert!(left.is_empty(), "extractors left running: {left:?}");
    // What the extractor saw: only its own environment (plus PATH, LANG, HOME = the job's
    // work directory), the configured working directory, no stdin, the file's extension.
    let seen: Value = serde_json::from_slice(&std::fs::read(&report_file).unwrap()).unwrap();
    let env: Vec<&str> = seen["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .filter(|k| *k != "LC_CTYPE")
        .collect();
    assert_eq!(
        env,
        ["HOME", "LANG", "PATH", "PID_FILE", "REPORT_FILE"],
        "{seen}"
    );
    let home = seen["home"].as_str().unwrap();
    assert!(
        home.contains("extract-"),
        "HOME is the job's work directory: {seen}"
    );
    assert_eq!(seen["cwd"].as_str(), Some(work_env.as_str()), "{seen}");
    assert_eq!(seen["stdin"], "/dev/null", "{seen}");
    assert!(
        seen["input"].as_str().unwrap().ends_with("/source.csv"),
        "{seen}"
    );
    let env_job = jobs.iter().find(|(m, _)| *m == "env").unwrap().1;
    let docs = sink_docs(&app.db.pool, env_job).await;
    assert_eq!(
        docs[0].1["amount"], "-31007.20",
        "a Python float's exact text at the column's scale"
    );
    // The worker (this process) never held the 2 GiB of stdout or the 4 GiB allocation.
    assert!(peak_rss_mb() < 600, "peak RSS {} MiB", peak_rss_mb());
    app.stop().await;
}

async fn preview(
    app: &TestApp,
    path: &str,
    bytes: Vec<u8>,
    name: &str,
    toml_text: Option<&str>,
) -> (u16, Value) {
    let mut form = reqwest::multipart::Form::new();
    if let Some(t) = toml_text {
        form = form.text("connector", t.to_string());
    }
    form = form.part(
        "file",
        reqwest::multipart::Part::bytes(bytes).file_name(name.to_string()),
    );
    let r = app
        .client
        .post(app.url(path))
        .multipart(form)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preview_shows_format_header_rows_and_verdict_and_stores_nothing() {
    let app = spawn_app().await;
    // A good file.
    let (s, p) = preview(
        &app,
        "/v1/connectors/trial_balance/preview",
        delimited(';').into_bytes(),
        "tb.csv",
        None,
    )
    .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["would_succeed"], true, "{p}");
    assert_eq!(p["format"]["format"], "csv");
    assert_eq!(p["format"]["delimiter"], ";");
    assert_eq!(p["header_row"], 1);
    assert_eq!(p["records"], 3);
    assert_eq!(p["rows"].as_array().unwrap().len(), 3);
    assert_eq!(p["rows"][1]["opening"], "-400.00");
    let opening = p["columns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "opening")
        .unwrap();
    assert_eq!(
        (opening["found"].as_str(), opening["column"].as_str()),
        (Some("Opening Balance"), Some("D"))
    );
    assert!(
        p["verdict"]
            .as_str()
            .unwrap()
            .starts_with("this upload would succeed")
    );

    // A wrong layout: the missing column is named with the nearest header text.
    let renamed = delimited(',').replace("Closing Balance", "Closing Bal.");
    let (s, p) = preview(
        &app,
        "/v1/connectors/trial_balance/preview",
        renamed.into_bytes(),
        "tb.csv",
        None,
    )
    .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["would_succeed"], false, "{p}");
    assert_eq!(
        p["missing"],
        serde_json::json!(["\"Closing Balance\" (nearest: \"Closing Bal.\")"])
    );
    assert!(
        p["verdict"]
            .as_str()
            .unwrap()
            .starts_with("this upload would go dead because header row not found"),
        "{p}"
    );

    // A hostile file: the same isolation as extract, and a verdict rather than a crash.
    let (s, p) = preview(
        &app,
        "/v1/connectors/trial_balance/preview",
        b"%PDF-1.7\n".to_vec(),
        "tb.xlsx",
        None,
    )
    .await;
    assert_eq!(s, 200, "{p}");
    assert!(
        p["verdict"]
            .as_str()
            .unwrap()
            .contains("the file is a PDF document"),
        "{p}"
    );

    // A connector not yet in the config, iterated on without a restart: a scale too small
    // for the data rejects rows with a reason and the ratio decides.
    let draft = r#"
        format = "csv"
        max_rejected_ratio = 0.0
        columns = [
          { name = "account", header = "Account", type = "string", required = true, key = true },
          { name = "opening", header = "Opening Balance", type = "decimal", required = true, scale = 0 },
        ]
    "#;
    let (s, p) = preview(
        &app,
        "/v1/connectors/preview",
        delimited(',').into_bytes(),
        "tb.csv",
        Some(draft),
    )
    .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["connector"], "draft");
    assert_eq!(p["rejected_rows"], 1, "{p}");
    assert_eq!(p["rows"][0]["opening"], "-400", "{p}");
    assert!(
        p["rejections"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("1200.5 has more than 0 decimal places"),
        "{p}"
    );
    assert!(
        p["verdict"]
            .as_str()
            .unwrap()
            .contains("would go dead because 1 of 3 rows"),
        "{p}"
    );
    // A draft may not run a program.
    let (s, p) = preview(
        &app,
        "/v1/connectors/preview",
        b"a,b\n".to_vec(),
        "x.csv",
        Some("extractor = { command = [\"sh\", \"-c\", \"id\", \"{input}\"], output = \"stdout\" }\ncolumns = [{ name = \"a\", header = \"a\", type = \"string\", key = true }]"),
    )
    .await;
    assert_eq!(s, 422, "{p}");

    // Nothing stored, no job created, no staged file left.
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 0);
    let work = app.db.blob_dir();
    let uploads = work.join("uploads");
    assert!(
        !uploads.exists() || std::fs::read_dir(&uploads).unwrap().next().is_none(),
        "no upload stored"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_extractor_takes_the_extractor_group_along() {
    let db = TestDb::new().await;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("slow.pid");
    let script = format!("{}/tests/extractors/hostile.py", env!("CARGO_MANIFEST_DIR"));
    let config = dir.path().join("etlq.toml");
    std::fs::write(
        &config,
        format!(
            r#"
            [connectors.slow]
            extractor = {{ command = ["python3", "{script}", "slow", "{{input}}", "{{output}}"],
                          env = {{ PID_FILE = "{}" }}, timeout_ms = 600000 }}
            columns = [ {{ name = "account", header = "Account", type = "string", key = true }} ]
            "#,
            pid_file.display()
        ),
    )
    .unwrap();
    let mut env = process_env(&db.url, "kill");
    env.push(("ETLQ_CONFIG".into(), config.display().to_string()));
    let mut p = spawn_process("serve", &env);
    let client = reqwest::Client::new();
    let (s, b) = upload(
        &client,
        &p.base,
        b"Account\n1\n".to_vec(),
        "in.csv",
        &[("bu_id", "BU-1"), ("connector", "slow")],
    )
    .await;
    assert_eq!(s, 202, "{b}");
    // The extractor and its grandchild are running once it has written their ids.
    let recorded = wait_for(JOB_TIMEOUT, "the extractor to start", || {
        let pid_file = pid_file.clone();
        async move {
            let t = std::fs::read_to_string(&pid_file).ok()?;
            (t.split_whitespace().count() == 2).then_some(t)
        }
    })
    .await;
    let pgid: i32 = recorded.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(
        !group_members(pgid).is_empty(),
        "the extractor's group is running"
    );
    p.signal("KILL");
    p.wait_exit(std::time::Duration::from_secs(10)).await;
    wait_for(
        std::time::Duration::from_secs(10),
        "the extractor's process group to be gone",
        || async { group_members(pgid).is_empty().then_some(()) },
    )
    .await;
}
