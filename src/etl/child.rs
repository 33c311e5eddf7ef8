//! The extract child process (`etlq __extract`, started by `etl/isolate.rs`): parses one
//! workbook into files in a work directory and reports on stdout, one JSON line at a time.
//! It runs under an address-space and a wall-clock limit, so a workbook that crashes,
//! exhausts or hangs the parser takes down this process only.
//!
//! Protocol. stdin: one [`ChildJob`] as JSON. stdout: `{"rows_read": N}` lines, then one
//! [`ChildOutcome`] line. Exit 0 after `done`, [`EXIT_INPUT`] after a fatal input error,
//! [`EXIT_IO`] after a retryable I/O error. Anything else (a signal, 101 for a panic) is a
//! crash the parent names.

use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::connector::{Connector, ConnectorSpec};
use super::extractor;
use super::mapping::{RejectedRow, Report};
use super::parse::{ParseError, Parsed, parse_rows};
use super::preview::{self, Preview};
use super::workbook::records::Records;
use super::workbook::{SheetReader, open_sheet};

/// How often the child reports `rows_read` to its parent.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// The hidden subcommand that runs this module.
pub const SUBCOMMAND: &str = "__extract";
pub const EXIT_INPUT: i32 = 3;
pub const EXIT_IO: i32 = 4;
pub const RECORDS_FILE: &str = "records.ndjson";
pub const REJECTED_FILE: &str = "rejected.ndjson";

/// What the parent asks for.
#[derive(Debug, Serialize, Deserialize)]
pub struct ChildJob {
    pub connector_name: String,
    pub connector: ConnectorSpec,
    pub bu_id: String,
    pub source: PathBuf,
    pub out_dir: PathBuf,
    pub max_inflated_bytes: u64,
    /// Preview only: report what the file would give, write no artifacts.
    #[serde(default)]
    pub preview: bool,
}

/// The child's last stdout line.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildOutcome {
    Done {
        records: usize,
        /// i128 as text.
        checksum: String,
        rejected_rows: usize,
        report: Box<Report>,
    },
    Failed {
        message: String,
        retryable: bool,
    },
    Preview(Box<Preview>),
}

#[derive(Serialize)]
struct Progress {
    rows_read: usize,
}

fn emit(line: &impl Serialize) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, line);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// Runs the child; returns its exit code.
pub fn main() -> i32 {
    extractor::install_stop_handler();
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("etlq extract child: reading the job: {e}");
        return EXIT_IO;
    }
    let job: ChildJob = match serde_json::from_str(&input) {
        Ok(j) => j,
        Err(e) => {
            eprintln!("etlq extract child: bad job: {e}");
            return EXIT_IO;
        }
    };
    let ran = if job.preview {
        run_preview(&job).map(|p| ChildOutcome::Preview(Box::new(p)))
    } else {
        run(&job)
    };
    match ran {
        Ok(outcome) => {
            emit(&outcome);
            0
        }
        Err(ParseError::Io(message)) => {
            emit(&ChildOutcome::Failed {
                message,
                retryable: true,
            });
            EXIT_IO
        }
        Err(e) => {
            emit(&ChildOutcome::Failed {
                message: e.to_string(),
                retryable: false,
            });
            EXIT_INPUT
        }
    }
}

/// The rows to map: the source file's, or a command extractor's output (run by `with`,
/// which gets the opened sheet and returns what mapping it gave).
fn with_rows<T>(
    job: &ChildJob,
    connector: &Connector,
    with: impl FnOnce(Result<SheetReader, ParseError>) -> Result<T, ParseError>,
) -> Result<(T, Option<extractor::CommandReport>), ParseError> {
    let io = |e: std::io::Error| ParseError::Io(e.to_string());
    let Some(x) = &connector.spec.extractor else {
        let source = std::fs::read(&job.source).map_err(io)?;
        let sheet = open_sheet(
            source,
            &connector.spec.sheet,
            job.max_inflated_bytes,
            &connector.text_options(),
        )
        .map_err(ParseError::from);
        return with(sheet).map(|t| (t, None));
    };
    let headers = connector.headers();
    let (mapped, report) =
        extractor::run(&job.connector_name, x, &job.source, &job.out_dir, |input| {
            let records = Records::new(input, x.format, x.records.as_deref(), &headers);
            with(Ok(SheetReader::records(records)))
        })
        .map_err(ParseError::Extractor)?;
    match mapped {
        Ok(t) => Ok((t, Some(report))),
        Err(ParseError::Io(m)) => Err(ParseError::Io(m)),
        Err(e) => {
            let tail: Vec<&str> = report
                .stderr_tail
                .lines()
                .filter(|l| !l.trim().is_empty())
                .collect();
            let note = match tail.len() {
                0 => String::new(),
                n => format!(
                    "; its stderr ends: {}",
                    tail[n.saturating_sub(3)..].join(" | ")
                ),
            };
            Err(ParseError::Extractor(format!("{e}{note}")))
        }
    }
}

fn run_preview(job: &ChildJob) -> Result<Preview, ParseError> {
    let connector = Connector::new(&job.connector_name, job.connector.clone())?;
    let ran = with_rows(job, &connector, |sheet| {
        preview::preview(&connector, sheet, &job.bu_id)
    });
    match ran {
        Ok((mut p, report)) => {
            p.extractor = report;
            Ok(p)
        }
        Err(ParseError::Io(m)) => Err(ParseError::Io(m)),
        // The command failed: the preview says so rather than failing.
        Err(e) => preview::preview(&connector, Err(e), &job.bu_id),
    }
}

fn run(job: &ChildJob) -> Result<ChildOutcome, ParseError> {
    let io = |e: std::io::Error| ParseError::Io(e.to_string());
    let connector = Connector::new(&job.connector_name, job.connector.clone())?;
    let rows_read = Arc::new(AtomicUsize::new(0));
    // Dropping `finished` wakes the reporter at once (a sleep would hold the exit up).
    let (finished, done) = std::sync::mpsc::channel::<()>();
    let reporter = {
        let rows_read = rows_read.clone();
        std::thread::spawn(move || {
            let mut last = 0;
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                done.recv_timeout(PROGRESS_EVERY)
            {
                let n = rows_read.load(Ordering::Relaxed);
                if n != last {
                    last = n;
                    emit(&Progress { rows_read: n });
                }
            }
        })
    };
    let file = std::fs::File::create(job.out_dir.join(RECORDS_FILE)).map_err(io)?;
    let mut records = BufWriter::with_capacity(1 << 20, file);
    let parsed = with_rows(job, &connector, |sheet| {
        parse_rows(
            &connector,
            sheet?,
            &job.bu_id,
            &mut records,
            &rows_read,
            &|| false,
            None,
        )
    });
    drop(finished);
    let _ = reporter.join();
    let (parsed, command) = parsed?;
    let mut parsed: Parsed = parsed.expect("never cancelled in the child");
    parsed.report.extractor = command;
    records.flush().map_err(io)?;
    records
        .into_inner()
        .map_err(|e| io(e.into_error()))?
        .sync_all()
        .map_err(io)?;
    let file = std::fs::File::create(job.out_dir.join(REJECTED_FILE)).map_err(io)?;
    let mut rejected = BufWriter::new(file);
    for r in &parsed.rejected {
        serde_json::to_writer(&mut rejected, r).map_err(|e| io(e.into()))?;
        rejected.write_all(b"\n").map_err(io)?;
    }
    rejected.flush().map_err(io)?;
    Ok(ChildOutcome::Done {
        records: parsed.records,
        checksum: parsed.checksum.to_string(),
        rejected_rows: parsed.report.rejected_rows,
        report: Box::new(parsed.report),
    })
}

/// The first rejected rows, for the report (read back by the parent).
pub fn read_rejected_sample(path: &std::path::Path, n: usize) -> Vec<RejectedRow> {
    use std::io::BufRead;
    let Ok(f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    std::io::BufReader::new(f)
        .lines()
        .take(n)
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str(&l).ok())
        .collect()
}
