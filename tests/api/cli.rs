//! The `etlq` command line against a real database and real processes.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use etlq::queue::{JobState, NewJob};

use crate::helpers::*;

fn etlq(db_url: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_etlq"))
        .args(args)
        .env("DATABASE_URL", db_url)
        .env("RUST_LOG", "warn")
        .env_remove("ETLQ_CONFIG")
        .output()
        .expect("run etlq");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn enqueue_status_and_dead_letter_commands() {
    let db = TestDb::new().await;
    let (code, out, err) = etlq(&db.url, &["enqueue", "--kind", "noop", "--count", "3"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("enqueued 3 jobs (ids "),
        "a summary, not a line per job: {out}"
    );
    assert_eq!(out.lines().count(), 1);
    let (code, _, err) = etlq(&db.url, &["enqueue", "--kind", "nope"]);
    assert_eq!(code, 2, "a usage error");
    assert!(
        err.contains("invalid value 'nope'") && err.contains("[possible values: etl, noop"),
        "{err}"
    );
    let (code, _, err) = etlq(
        &db.url,
        &["enqueue", "--kind", "noop", "--payload", "{oops"],
    );
    assert_ne!(code, 0);
    assert!(err.contains("not JSON"), "{err}");

    let (code, out, _) = etlq(&db.url, &["status", "--json"]);
    assert_eq!(code, 0);
    let status: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["jobs"]["queued"], 3);

    // Output whose reader goes away (`| head`, here a reader that reads nothing): a quiet
    // end by SIGPIPE like any Unix tool (141 in the shell), never a panic (101).
    let piped = Command::new("bash")
        .args([
            "-c",
            &format!(
                "{} jobs list --limit 100 | true; echo ${{PIPESTATUS[0]}}",
                env!("CARGO_BIN_EXE_etlq")
            ),
        ])
        .env("DATABASE_URL", &db.url)
        .env_remove("ETLQ_CONFIG")
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&piped.stdout).trim().to_string();
    let stderr = String::from_utf8_lossy(&piped.stderr);
    assert!(
        (status == "141" || status == "0") && !stderr.contains("panicked"),
        "exit {status}: {stderr}"
    );

    // A dead job, then list and retry it from the CLI.
    let store = db.store();
    let mut j = NewJob::new(
        "test",
        json!({"bu_id": "CLI", "fail": {"first": {"fatal": true, "times": 1}}}),
    );
    j.max_attempts = Some(1);
    let id = store.enqueue(&j).await.unwrap().job_id;
    sqlx::query("DELETE FROM jobs WHERE kind = 'noop'")
        .execute(&db.pool)
        .await
        .unwrap();
    let _w = spawn_process("worker", &process_env(&db.url, "v1"));
    require_state(&store, id, JobState::Dead, Duration::from_secs(20)).await;
    let (code, out, _) = etlq(&db.url, &["dlq", "list", "--bu-id", "CLI", "--json"]);
    assert_eq!(code, 0);
    let rows: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(rows[0]["job_id"], id);
    let (code, out, _) = etlq(&db.url, &["dlq", "list", "--bu-id", "CLI"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("job "), "a table with a header: {out}");
    assert!(out.contains("failed on demand"), "{out}");
    let (code, _, err) = etlq(&db.url, &["dlq", "retry"]);
    assert_ne!(code, 0, "an unfiltered retry needs --all");
    assert!(err.contains("--all"), "{err}");
    let (code, out, err) = etlq(&db.url, &["dlq", "retry", "--bu-id", "CLI"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("1 job(s) re-enqueued"), "{out}");
    let (code, out, _) = etlq(&db.url, &["dlq", "list", "--bu-id", "CLI"]);
    assert_eq!((code, out.trim()), (0, "no open dead letters"));
    require_state(&store, id, JobState::Succeeded, Duration::from_secs(20)).await;
}

#[tokio::test]
async fn drain_wait_exits_zero_at_safe_to_stop_and_non_zero_on_timeout() {
    let db = Arc::new(TestDb::new().await);
    let mut env = process_env(&db.url, "v1");
    env.push(("ETLQ__WORKER__DRAIN_TIMEOUT_MS".into(), "60000".into()));
    let p = spawn_process("worker", &env);
    let store = db.store();
    let id = db
        .enqueue("test", json!({"sleep_ms": {"first": 3000}}))
        .await;
    require_state(&store, id, JobState::Running, Duration::from_secs(20)).await;
    // Timed out while the stage runs: by default the host is put back to work, and the
    // message says so.
    let (code, _, err) = etlq(
        &db.url,
        &["drain", "--url", &p.base, "--wait", "--timeout", "1"],
    );
    assert_eq!(code, 3, "timed out while the stage runs: {err}");
    assert!(err.contains("timed out after 1s"), "{err}");
    assert!(
        err.contains("is PreparingForStop with 1 job(s) in flight"),
        "{err}"
    );
    assert!(err.contains("sent resume"), "{err}");
    let mode = p.get_json("/v1/lifecycle").await.unwrap();
    assert_eq!(mode["mode"], "Normal", "not left idle");
    // --on-timeout stay leaves it draining, and says how to resume.
    let (code, _, err) = etlq(
        &db.url,
        &[
            "drain",
            "--url",
            &p.base,
            "--wait",
            "--timeout",
            "1",
            "--on-timeout",
            "stay",
        ],
    );
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("It stays draining"), "{err}");
    assert!(err.contains("etlq resume"), "{err}");
    let mode = p.get_json("/v1/lifecycle").await.unwrap();
    assert_eq!(mode["mode"], "PreparingForStop");
    let (code, out, err) = etlq(
        &db.url,
        &["drain", "--url", &p.base, "--wait", "--timeout", "30"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("SafeToStop"), "{out}");
    let (code, out, _) = etlq(&db.url, &["resume", "--url", &p.base]);
    assert_eq!(code, 0);
    assert!(out.contains("Normal"), "{out}");
    // The fleet variant goes through PostgreSQL.
    let (code, out, err) = etlq(
        &db.url,
        &["--json", "drain", "--fleet", "--wait", "--timeout", "30"],
    );
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["mode"], "SafeToStop", "{out}");
}

#[tokio::test]
async fn every_sql_query_runs_with_psql() {
    let app = spawn_app().await;
    let ok = app.enqueue("test", json!({"bu_id": "SQL"})).await;
    let mut dead = NewJob::new("test", json!({"fail": {"second": {"fatal": true}}}));
    dead.max_attempts = Some(1);
    let dead = app.store().enqueue(&dead).await.unwrap().job_id;
    require_state(
        &app.store(),
        ok,
        JobState::Succeeded,
        Duration::from_secs(20),
    )
    .await;
    require_state(&app.store(), dead, JobState::Dead, Duration::from_secs(20)).await;
    let mut files: Vec<_> = std::fs::read_dir("sql")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(files.len() >= 5);
    for f in files {
        let out = Command::new("psql")
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-v", &format!("job_id={ok}")])
            .arg(&app.db.url)
            .arg("-f")
            .arg(&f)
            .output()
            .expect("psql is installed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        if f.ends_with("job_history.sql") {
            assert!(
                stdout.contains("stage_completed") && stdout.contains("third"),
                "{stdout}"
            );
        }
        if f.ends_with("dead_letters.sql") {
            assert!(stdout.contains("failed on demand"), "{stdout}");
        }
    }
    app.stop().await;
}

/// `etlq` with the test environment of `db` (its blob directory, fast tuning) plus `extra`.
fn etlq_env(db_url: &str, extra: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_etlq"))
        .args(args)
        .env_remove("ETLQ_CONFIG")
        .envs(process_env(db_url, "cli"))
        .env("RUST_LOG", "warn")
        .envs(extra.iter().copied())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run etlq");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn config_check_validates_masks_and_names_mistakes() {
    let db = TestDb::new().await;
    let secret = "deployer-secret-0123456789";
    let (code, out, err) = etlq_env(
        &db.url,
        &[
            ("ETLQ__API__TOKENS__DEPLOYER", secret),
            ("ETLQ__SINK__COSMOS__KEY", "cosmos-key-abcdefghijkl"),
        ],
        &["config", "check"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("settings are valid (2 connector(s)"), "{err}");
    assert!(
        out.contains("concurrency = 10"),
        "the effective value: {out}"
    );
    assert!(
        !out.contains(secret) && !out.contains("cosmos-key-abcdefghijkl"),
        "{out}"
    );
    assert!(out.contains("deployer = \"********\""), "{out}");
    // Each setting's source: the variable that set it; the defaults go unannotated.
    assert!(
        out.contains(
            "deployer = \"********\"  # from environment variable ETLQ__API__TOKENS__DEPLOYER"
        ),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("concurrency = ") && !l.contains("# from")),
        "{out}"
    );

    // A typo in a variable: exit 2, the variable, the key and the nearest valid key.
    let (code, _, err) = etlq_env(&db.url, &[("ETLQ__WORKER__CONCURENCY", "5")], &["status"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("unknown key worker.concurency in environment variable ETLQ__WORKER__CONCURENCY; did you mean worker.concurrency?"),
        "{err}"
    );
    // A connector mistake in a file given with --config: the file, the key, the valid values.
    let mut f = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(
        &mut f,
        br#"
[connectors.invoices]
sheet = 0
header = 1
columns = [ { name = "amount", header = "Amount", type = "decimel", key = true } ]
"#,
    )
    .unwrap();
    let path = f.path().to_str().unwrap();
    let (code, _, err) = etlq_env(&db.url, &[], &["config", "check", "--config", path]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(path), "names the file: {err}");
    assert!(err.contains("did you mean \"decimal\""), "{err}");
    // An unknown connector key far from any valid one: the valid keys, and only those.
    std::fs::write(
        f.path(),
        "[connectors.invoices]\nzzz = 1\ncolumns = [ { name = \"a\", header = \"A\", type = \"string\", key = true } ]\n",
    )
    .unwrap();
    let (code, _, err) = etlq_env(&db.url, &[], &["config", "check", "--config", path]);
    assert_eq!(code, 2, "{err}");
    let valid = err.split("valid keys: ").nth(1).unwrap_or_default();
    assert!(
        valid.contains("skip_blank_rows") && !valid.contains("connectors.invoices"),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_database_is_said_once_and_plainly() {
    let db = TestDb::new().await;
    let missing = with_database(&server_url(), "etlq_test_no_such_database");
    let (code, _, err) = etlq_env(&db.url, &[("DATABASE_URL", &missing)], &["status"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(err.matches("does not exist").count(), 1, "{err}");
    assert!(
        err.contains("database \"etlq_test_no_such_database\" does not exist"),
        "{err}"
    );
    assert!(!err.contains("at line"), "no parser internals: {err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[tokio::test]
async fn upload_wait_jobs_and_exit_codes() {
    let db = TestDb::new().await;
    let p = spawn_process("serve", &process_env(&db.url, "cli"));
    let url = p.base.as_str();

    // Succeeds: exit 0 and a one-line summary.
    // `etlq upload FILE --wait` as a user types it, against this test's server.
    let upload_wait = |file: &str| {
        etlq_env(
            &db.url,
            &[],
            &[
                "upload",
                file,
                "--bu-id",
                "BU-1",
                "--connector",
                "sap_fbl3n",
                "--wait",
                "--url",
                url,
            ],
        )
    };
    let (code, out, err) = upload_wait("samples/sap_fbl3n.xlsx");
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("job 1 succeeded: 118 records, 2 rejected rows"),
        "{out}"
    );
    assert!(
        err.contains("job 1: succeeded"),
        "progress on stderr: {err}"
    );

    let (code, out, _) = etlq_env(&db.url, &[], &["jobs", "show", "1"]);
    assert_eq!(code, 0);
    assert!(out.contains("state succeeded"), "{out}");
    for stage in ["extract", "sync", "verify", "promote"] {
        assert!(out.contains(&format!("stage_completed  {stage}")), "{out}");
    }
    let (code, out, _) = etlq_env(&db.url, &[], &["jobs", "rejected", "1"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("Posting Date  31.02.2025  not a date"),
        "{out}"
    );
    assert!(out.contains("2 of 2 rejected rows"), "{out}");
    let (code, out, _) = etlq_env(
        &db.url,
        &[],
        &["--json", "jobs", "rejected", "1", "--limit", "1"],
    );
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["total"].as_u64(), v["rejected"].as_array().unwrap().len()),
        (Some(2), 1)
    );

    // Goes dead: exit 4 with the reason.
    let (code, out, _) = upload_wait("samples/trial_balance.xlsx");
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains("job 2 is dead: extract: sheet \"GL\" not found"),
        "{out}"
    );

    // An etl job enqueued from the CLI for a workbook already in the blob store.
    let incoming = db.blob_dir().join("incoming");
    std::fs::create_dir_all(&incoming).unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/samples/trial_balance.xlsx"),
        incoming.join("tb.xlsx"),
    )
    .unwrap();
    let payload =
        r#"{"bu_id": "BU-2", "connector": "trial_balance", "source_blob": "incoming/tb.xlsx"}"#;
    let (code, out, err) = etlq_env(
        &db.url,
        &[],
        &["enqueue", "--kind", "etl", "--payload", payload],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("job 3"), "{out}");
    let (code, out, err) = etlq_env(&db.url, &[], &["jobs", "wait", "3", "--timeout", "60"]);
    assert_eq!(code, 0, "{out}{err}");
    // A blob that is not there is refused before anything is enqueued.
    let missing =
        r#"{"bu_id": "BU-2", "connector": "trial_balance", "source_blob": "incoming/nope.xlsx"}"#;
    let (code, _, err) = etlq_env(
        &db.url,
        &[],
        &["enqueue", "--kind", "etl", "--payload", missing],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("incoming/nope.xlsx"), "{err}");

    // Cancelled: a job that cannot start before the wait ends (3), then cancelled (5).
    let (code, _, err) = etlq_env(
        &db.url,
        &[],
        &["enqueue", "--kind", "noop", "--delay-ms", "600000"],
    );
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = etlq_env(&db.url, &[], &["jobs", "wait", "4", "--timeout", "1"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("did not finish within 1s"), "{err}");
    let (code, out, _) = etlq_env(&db.url, &[], &["jobs", "cancel", "4"]);
    assert_eq!(code, 0);
    assert!(out.contains("job 4 cancelled (was queued)"), "{out}");
    let (code, _, _) = etlq_env(&db.url, &[], &["jobs", "wait", "4"]);
    assert_eq!(code, 5);
    let (code, _, err) = etlq_env(&db.url, &[], &["jobs", "cancel", "4"]);
    assert_eq!(code, 1, "cancelling twice is refused: {err}");

    // A server that is not there: exit 1, said plainly.
    let (code, _, err) = etlq_env(
        &db.url,
        &[],
        &[
            "upload",
            "samples/sap_fbl3n.xlsx",
            "--bu-id",
            "BU-1",
            "--connector",
            "sap_fbl3n",
            "--url",
            "http://127.0.0.1:9",
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cannot reach etlq at http://127.0.0.1:9"),
        "{err}"
    );
}

#[test]
fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(env!("CARGO_BIN_EXE_etlq"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        for word in ["upload", "dlq", "bu-id"] {
            assert!(text.contains(word), "{shell} completion lacks {word}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connectors_suggest_then_preview_from_the_command_line() {
    let app = spawn_app().await;
    let url = app.url("");
    let db_url = app.db.url.clone();
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("gl.csv");
    std::fs::write(
        &csv,
        "G/L line items\n\nDocument Number;Posting Date;Amount in LC;Text\n\
         100001;31.12.2025;1.234,56-;rent\n100002;30.12.2025;99,5;\n",
    )
    .unwrap();
    let run = |args: Vec<String>| {
        let db_url = db_url.clone();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            etlq(&db_url, &args)
        })
    };
    let s = |v: &[&str]| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    let csv_path = csv.display().to_string();

    let (code, toml_text, err) = run(s(&["connectors", "suggest", &csv_path, "--name", "gl_csv"]))
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(toml_text.contains("[connectors.gl_csv]"), "{toml_text}");
    assert!(toml_text.contains("delimiter = \";\""), "{toml_text}");
    // The user picks the key, then previews the draft against the server: no restart.
    let keyed = toml_text.replacen("type = \"integer\"", "type = \"integer\", key = true", 1);
    let draft = dir.path().join("gl_csv.toml");
    std::fs::write(&draft, keyed).unwrap();
    let draft_path = draft.display().to_string();
    let (code, out, err) = run(s(&[
        "connectors",
        "preview",
        &csv_path,
        "--toml",
        &draft_path,
        "--url",
        &url,
    ]))
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("this upload would succeed: 2 records"),
        "{out}"
    );
    assert!(
        out.contains("format: csv, encoding utf-8, delimiter \";\""),
        "{out}"
    );

    // A configured connector that does not fit: exit 4, the missing header named.
    let (code, out, err) = run(s(&[
        "connectors",
        "preview",
        &csv_path,
        "--connector",
        "trial_balance",
        "--url",
        &url,
    ]))
    .await
    .unwrap();
    assert_eq!(code, 4, "{out}{err}");
    assert!(
        out.contains("would go dead because header row not found"),
        "{out}"
    );
    assert!(out.contains("MISSING"), "{out}");

    let (code, out, _) = run(s(&["connectors", "list"])).await.unwrap();
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with("trial_balance") && l.contains("sheet")),
        "{out}"
    );
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 0, "previews create no job");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_list_show_diff_and_rollback_over_rest_with_a_token() {
    const TOKEN: &str = "cli-datasets-token-0123456789";
    let db = std::sync::Arc::new(TestDb::new().await);
    let app = spawn_app_on(db.clone(), etlq::startup::Role::Serve, |s| {
        s.api.tokens.insert("ops".into(), TOKEN.into());
    })
    .await;
    let base = app.url("");
    let client = crate::helpers::bearer_client(TOKEN);
    let v1 = crate::datasets::promote(&client, &base, "BU-Q", crate::datasets::V1).await;
    let v2 = crate::datasets::promote(&client, &base, "BU-Q", crate::datasets::V2).await;
    let run = |args: &[&str], token: Option<&str>| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--url", &base]);
        let extra: Vec<(&str, &str)> = token.map(|t| ("ETLQ_TOKEN", t)).into_iter().collect();
        etlq_env(&db.url, &extra, &all)
    };

    let (code, _, err) = run(&["datasets", "list"], None);
    assert_ne!(code, 0, "reads need the token");
    assert!(err.contains("401"), "{err}");
    let (code, out, err) = run(&["datasets", "list"], Some(TOKEN));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("BU-Q") && out.contains(&v2.to_string()),
        "{out}"
    );
    let (code, out, err) = run(&["datasets", "diff", "BU-Q", "trial_balance"], Some(TOKEN));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!(
            "{v1} → {v2}: 1 added, 1 removed, 1 changed, 3 unchanged"
        )),
        "{out}"
    );
    let to = v1.to_string();
    let rollback = [
        "datasets",
        "rollback",
        "BU-Q",
        "trial_balance",
        "--to",
        &to,
        "--reason",
        "wrong month",
    ];
    let (code, out, err) = run(&rollback, Some(TOKEN));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("version {v2} → {v1}")), "{out}");
    let (code, out, _) = run(&rollback, Some(TOKEN));
    assert_eq!(code, 0);
    assert!(out.contains("nothing changed"), "{out}");
    let (code, out, err) = run(&["datasets", "show", "BU-Q", "trial_balance"], Some(TOKEN));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("rollbacks:") && out.contains("wrong month"),
        "{out}"
    );
    app.stop().await;
}
