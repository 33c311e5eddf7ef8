//! The binary as shipped (built without the `test-aids` feature; scripts/test builds
//! `target/release/etlq` and names it in ETLQ_RELEASE_BIN): it has no test aids, and it
//! starts the way the container image runs it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

pub fn release_bin() -> PathBuf {
    PathBuf::from(crate::helpers::service_env(
        "ETLQ_RELEASE_BIN",
        "the etlq binary built without test aids, target/release/etlq",
    ))
}

fn is_root() -> bool {
    // SAFETY: a plain syscall.
    unsafe { libc::geteuid() == 0 }
}

#[tokio::test]
async fn the_release_build_has_no_test_aids() {
    let db = TestDb::new().await;
    let bin = release_bin();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let out = Command::new(&bin)
            .args(args)
            .env("DATABASE_URL", &db.url)
            .envs(env.iter().copied())
            .env_remove("ETLQ_CONFIG")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["enqueue", "--kind", "test"], &[]);
    assert_eq!(code, Some(2), "a usage error: {err}");
    assert!(
        err.contains("invalid value 'test'") && err.contains("[possible values: etl, noop]"),
        "this build runs etl and noop only: {err}"
    );
    let (code, err) = run(
        &["config", "check"],
        &[("ETLQ__TESTING__PAUSE_IN_STAGE_MS", "1")],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("unknown key testing"), "{err}");

    let mut env = process_env(&db.url, "release");
    env.retain(|(k, _)| k != "ETLQ__ETL__PARSER_EXE");
    let mut child = Command::new(&bin)
        .args(["serve", "--port", "0"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env_remove("ETLQ_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let base = {
        use std::io::{BufRead, BufReader};
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        loop {
            let line = lines.next().expect("listening line").unwrap();
            if let Some(url) = line.strip_prefix("etlq listening on ") {
                std::thread::spawn(move || for _ in lines {});
                break url.trim().to_string();
            }
        }
    };
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"kind": "test", "payload": {"sleep_ms": 86400000}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unknown_kind", "{body}");
    let table: Option<String> = sqlx::query_scalar("SELECT to_regclass('test_stage_runs')::text")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(table, None, "the release migration has no test table");
    let _ = child.kill();
    let _ = child.wait();
}

/// As the Dockerfile runs it: an unprivileged user, the working directory its data volume
/// (relative blob and work paths resolve there), the image's environment.
#[tokio::test]
async fn the_release_binary_starts_the_way_the_image_runs_it() {
    let db = TestDb::new().await;
    let workdir = tempfile::tempdir().unwrap();
    let mut cmd = if is_root() {
        // The image's user is unprivileged; `nobody` stands in for it.
        Command::new("chown")
            .args(["nobody", workdir.path().to_str().unwrap()])
            .status()
            .unwrap();
        // setpriv (util-linux) execs in place, so the pid we signal is etlq's.
        let setpriv = ["/usr/bin/setpriv", "/bin/setpriv", "/usr/sbin/setpriv"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("setpriv (util-linux) to run as an unprivileged user");
        let mut c = Command::new(setpriv);
        c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(release_bin());
        c
    } else {
        Command::new(release_bin())
    };
    let mut child = cmd
        .args(["serve", "--port", "0"])
        .current_dir(workdir.path())
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("DATABASE_URL", &db.url)
        .env("ETLQ__DATABASE__CREATE_IF_MISSING", "false")
        // The image sets 0.0.0.0; tests stay on loopback.
        .env("ETLQ__API__HOST", "127.0.0.1")
        .env("ETLQ__LOG__FORMAT", "json")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let base = tokio::task::spawn_blocking(move || {
        use std::io::{BufRead, BufReader};
        let mut lines = BufReader::new(stdout).lines();
        let base = loop {
            let line = lines.next()?.ok()?;
            if let Some(url) = line.strip_prefix("etlq listening on ") {
                break url.trim().to_string();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Some(base)
    })
    .await
    .unwrap();
    let Some(base) = base else {
        let out = child.wait_with_output().unwrap();
        panic!(
            "the binary did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ready = wait_for(Duration::from_secs(20), "/readyz", || async {
        let r = reqwest::get(format!("{base}/readyz")).await.ok()?;
        (r.status().as_u16() == 200).then_some(())
    })
    .await;
    let () = ready;
    assert!(
        workdir.path().join("data/blobs").is_dir(),
        "blobs under the working directory"
    );
    // A job runs and finishes; then the process drains, and the probes that see 503 while it
    // does are not errors in its log.
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{base}/v1/jobs"))
        .json(&json!({"kind": "noop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    wait_for(
        Duration::from_secs(20),
        "the noop job to succeed",
        || async {
            let v: serde_json::Value = reqwest::get(format!("{base}/v1/jobs/1"))
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (v["state"] == "succeeded").then_some(())
        },
    )
    .await;
    let r = client
        .post(format!("{base}/v1/lifecycle/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    for _ in 0..5 {
        let r = reqwest::get(format!("{base}/readyz")).await.unwrap();
        assert_eq!(r.status().as_u16(), 503);
    }
    // Logs are JSON lines, without terminal colours.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!log.contains('\u{1b}'), "no ANSI codes in a non-TTY log");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .collect();
    let errors: Vec<_> = lines.iter().filter(|l| l["level"] == "ERROR").collect();
    assert!(errors.is_empty(), "ERROR lines in a clean run: {errors:?}");
    let finished = lines
        .iter()
        .find(|l| l["fields"]["message"] == "job finished")
        .unwrap_or_else(|| panic!("no \"job finished\" line: {log}"));
    assert_eq!(finished["level"], "INFO", "{finished}");
    assert_eq!(finished["fields"]["outcome"], "succeeded", "{finished}");
    assert!(finished["fields"]["run_ms"].is_u64(), "{finished}");
}
