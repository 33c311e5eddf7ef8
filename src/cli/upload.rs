//! `etlq upload FILE`: sends a workbook to a running server (`POST /v1/uploads`) and, with
//! `--wait`, follows the job with a progress line until it ends; the exit code says how.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::Value;

use etlq::configuration::Settings;

use super::remote::{Server, answer};
use super::{exit, output};

#[derive(Args)]
pub struct UploadArgs {
    /// The workbook (xlsx, xlsm, xlsb, xls or ods).
    file: PathBuf,
    /// The business unit the export belongs to.
    #[arg(long)]
    bu_id: String,
    /// The connector (ERP layout) to read it with; see `etlq config check`.
    #[arg(long)]
    connector: String,
    /// Uploading again with the same key returns the same job instead of a new one.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Follow the job until it succeeds (exit 0), goes dead (4) or is cancelled (5).
    #[arg(long)]
    wait: bool,
    /// Seconds to wait with --wait (exit 3 past it; the job keeps running).
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    timeout: u64,
    #[command(flatten)]
    server: Server,
}

fn progress_line(v: &Value) -> String {
    let state = v["state"].as_str().unwrap_or("?");
    let stage = v["stage"].as_str().unwrap_or("");
    let p = &v["progress"];
    let detail = if let Some(n) = p["rows_written"].as_u64() {
        let total = p["rows_total"].as_u64().unwrap_or(0).max(1);
        let width = 30;
        let done = ((n as f64 / total as f64) * width as f64).round() as usize;
        format!(
            " [{}{}] {n}/{total} written",
            "#".repeat(done.min(width)),
            "-".repeat(width - done.min(width))
        )
    } else if let Some(n) = p["rows_read"].as_u64() {
        format!(" {n} rows read")
    } else {
        String::new()
    };
    format!("job {}: {state} {stage}{detail}", v["id"])
}

pub async fn upload(settings: &Settings, a: UploadArgs, json: bool) -> anyhow::Result<u8> {
    let bytes = std::fs::read(&a.file).with_context(|| format!("reading {}", a.file.display()))?;
    let name = a
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "upload.xlsx".into());
    let mut form = reqwest::multipart::Form::new()
        .text("bu_id", a.bu_id.clone())
        .text("connector", a.connector.clone());
    if let Some(k) = &a.idempotency_key {
        form = form.text("idempotency_key", k.clone());
    }
    form = form.part(
        "file",
        reqwest::multipart::Part::bytes(bytes).file_name(name),
    );
    let url = format!("{}/v1/uploads", a.server.base(settings));
    let mut req = a.server.client()?.post(&url).multipart(form);
    if let Some(t) = &a.server.token {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach etlq at {url}"))?;
    let body = answer(&url, resp).await?;
    let id = body["job_id"].as_i64().context("no job_id in the answer")?;
    if !a.wait {
        if json {
            output::json(&body);
        } else {
            println!(
                "job {id} {}",
                if body["created"] == true {
                    "enqueued"
                } else {
                    "already existed (same idempotency key)"
                }
            );
        }
        return Ok(exit::OK);
    }
    let server = &a.server;
    let path = format!("/v1/jobs/{id}");
    follow(id, a.timeout, json, || {
        server.call(settings, reqwest::Method::GET, &path)
    })
    .await
}

/// Follows job `id` (as `GET /v1/jobs/{id}` shows it, from `fetch`) with a progress line on
/// stderr until it ends or `timeout_s` passes; returns the exit code for the outcome.
pub(super) async fn follow<F, Fut>(
    id: i64,
    timeout_s: u64,
    json: bool,
    mut fetch: F,
) -> anyhow::Result<u8>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Value>>,
{
    let tty = std::io::stderr().is_terminal() && !json;
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    let mut last = String::new();
    loop {
        let v = fetch().await?;
        let line = progress_line(&v);
        if !json && line != last {
            if tty {
                eprint!("\r\x1b[2K{line}");
                let _ = std::io::stderr().flush();
            } else {
                eprintln!("{line}");
            }
            last = line;
        }
        let code = match v["state"].as_str() {
            Some("succeeded") => Some(exit::OK),
            Some("dead") => Some(exit::JOB_DEAD),
            Some("cancelled") => Some(exit::JOB_CANCELLED),
            _ => None,
        };
        if let Some(code) = code {
            if tty {
                eprintln!();
            }
            if json {
                output::json(&v);
            } else {
                match code {
                    exit::OK => println!(
                        "job {id} succeeded: {} records, {} rejected rows",
                        v["report"]["records"], v["report"]["rejected_rows"]
                    ),
                    _ => println!(
                        "job {id} is {}: {}",
                        v["state"].as_str().unwrap_or("?"),
                        v["last_error"].as_str().unwrap_or("")
                    ),
                }
            }
            return Ok(code);
        }
        if Instant::now() >= deadline {
            if tty {
                eprintln!();
            }
            eprintln!(
                "etlq: job {id} did not finish within {}s; it keeps running (etlq jobs show {id})",
                timeout_s
            );
            return Ok(exit::TIMEOUT);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
