//! Command extractors (ADR 0014): a team's existing script (Python on openpyxl, say) runs
//! unchanged and its output is mapped through the connector's typed columns like a sheet.
//!
//! The command is started by the extract child (`etl/child.rs`), so it is as isolated as the
//! built-in parser, and more: its own process group (every descendant is killed with it,
//! including one that outlives the command), an address-space limit, a file-size limit on
//! what it writes, no stdin, an environment reduced to what the connector lists (plus
//! `PATH`, `LANG`, and `HOME` set to the job's work directory), a wall-clock limit, and
//! bounded stdout and stderr (stderr's tail goes into the report and into any error). If the
//! extract child itself is told to stop (`SIGTERM`: the worker's timeout, a cancel, or the
//! worker's death through `PR_SET_PDEATHSIG`), it kills the command's group first.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::workbook::records::RecordsFormat;

/// How long the stderr tail is waited for once the command's group is gone (only a process
/// that left the group can hold the pipe open longer).
const TAIL_WAIT: Duration = Duration::from_secs(2);

pub use crate::configuration::connector::{ExtractorSpec, OutputChannel};

/// stdout (when it is not the output) and stderr: bytes kept of each, and the most stdout a
/// command may write before it is stopped.
const TAIL: usize = 8 * 1024;
const MAX_LOG_BYTES: u64 = 64 << 20;

impl ExtractorSpec {
    pub fn check(&self) -> Result<(), String> {
        let Some(program) = self.command.first() else {
            return Err("extractor.command is empty".into());
        };
        if program.trim().is_empty() {
            return Err("extractor.command names no program".into());
        }
        if !self.command.iter().any(|a| a.contains("{input}")) {
            return Err("extractor.command must pass the file as {input}".into());
        }
        if self.output == OutputChannel::File
            && !self.command.iter().any(|a| a.contains("{output}"))
        {
            return Err(
                "extractor.command must name its output file as {output} (or set output = \"stdout\")"
                    .into(),
            );
        }
        if self.records.is_some() && self.format != RecordsFormat::Json {
            return Err("extractor.records applies to format = \"json\" only".into());
        }
        if self.timeout_ms == 0 {
            return Err("extractor.timeout_ms must be positive".into());
        }
        if self.memory_limit_mb < 64 {
            return Err("extractor.memory_limit_mb must be at least 64".into());
        }
        if self.max_output_mb == 0 {
            return Err("extractor.max_output_mb must be positive".into());
        }
        if self.env.contains_key("HOME") {
            return Err("extractor.env may not set HOME (it is the job's work directory)".into());
        }
        Ok(())
    }

    pub fn output_file(&self, work_dir: &Path) -> PathBuf {
        let ext = match self.format {
            RecordsFormat::Json => "json",
            RecordsFormat::Jsonl => "jsonl",
            RecordsFormat::Csv => "csv",
        };
        work_dir.join(format!("extractor-output.{ext}"))
    }
}

/// What the report says about the command's run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CommandReport {
    pub command: Vec<String>,
    pub exit_code: Option<i32>,
    pub millis: u64,
    pub peak_rss_kb: u64,
    /// The last bytes the command wrote to stderr.
    pub stderr_tail: String,
}

/// The process group of the running command, for the `SIGTERM` handler (0: none).
static COMMAND_PGID: AtomicI32 = AtomicI32::new(0);

extern "C" fn on_term(_: libc::c_int) {
    let pgid = COMMAND_PGID.load(Ordering::SeqCst);
    // SAFETY: killpg and _exit are async-signal-safe.
    unsafe {
        if pgid > 0 {
            libc::killpg(pgid, libc::SIGKILL);
        }
        libc::_exit(143);
    }
}

/// Installed by the extract child at start: a stop request takes the command's group along.
pub fn install_stop_handler() {
    // SAFETY: installing a handler that only calls async-signal-safe functions.
    unsafe {
        libc::signal(libc::SIGTERM, on_term as *const () as libc::sighandler_t);
    }
}

struct Setting<'a>(&'a str, &'a str);

impl std::fmt::Display for Setting<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "connectors.{}.extractor.{}", self.0, self.1)
    }
}

/// Keeps the last `TAIL` bytes of a stream and counts all of them.
fn drain_tail(
    mut r: impl Read,
    count: &AtomicU64,
    limit: u64,
    over: &AtomicBool,
    pgid: i32,
) -> String {
    let mut kept: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let total = count.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
                kept.extend_from_slice(&buf[..n]);
                if kept.len() > 2 * TAIL {
                    kept.drain(..kept.len() - TAIL);
                }
                if total > limit && !over.swap(true, Ordering::SeqCst) {
                    // SAFETY: the group is ours (see `run`: killed before it is reaped).
                    unsafe {
                        libc::killpg(pgid, libc::SIGKILL);
                    }
                }
            }
        }
    }
    if kept.len() > TAIL {
        kept.drain(..kept.len() - TAIL);
    }
    String::from_utf8_lossy(&kept).into_owned()
}

/// Counts what the output reader takes from stdout and stops the command past the limit.
struct Bounded<R> {
    inner: R,
    read: u64,
    limit: u64,
    over: Arc<AtomicBool>,
    pgid: i32,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.limit {
            if !self.over.swap(true, Ordering::SeqCst) {
                // SAFETY: as in `drain_tail`.
                unsafe {
                    libc::killpg(self.pgid, libc::SIGKILL);
                }
            }
            return Err(std::io::Error::other("output limit reached"));
        }
        Ok(n)
    }
}

/// Runs the connector's command on `input`, hands its output to `map` (streamed from stdout
/// while the command runs, or from the output file once it succeeded), and returns what
/// `map` returned with the run's report. A failed command is an `Err` naming its cause and
/// the setting to raise; the command's whole process group is gone when this returns.
pub fn run<T, E>(
    connector: &str,
    spec: &ExtractorSpec,
    input: &Path,
    work_dir: &Path,
    map: impl FnOnce(Box<dyn Read + Send>) -> Result<T, E>,
) -> Result<(Result<T, E>, CommandReport), String> {
    // Absolute: the command may run in another working directory.
    let work_dir =
        &std::path::absolute(work_dir).map_err(|e| format!("the work directory: {e}"))?;
    let input = &std::path::absolute(input).map_err(|e| format!("the staged file: {e}"))?;
    let output = spec.output_file(work_dir);
    let fill = |a: &String| {
        a.replace("{input}", &input.to_string_lossy())
            .replace("{output}", &output.to_string_lossy())
    };
    let args: Vec<String> = spec.command.iter().map(fill).collect();
    let mut cmd = Command::new(&args[0]);
    cmd.args(&args[1..])
        .env_clear()
        .envs(&spec.env)
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into()),
        )
        .env(
            "LANG",
            std::env::var_os("LANG").unwrap_or_else(|| "C.UTF-8".into()),
        )
        .env("HOME", work_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(dir) = &spec.working_dir {
        cmd.current_dir(dir);
    }
    let mem = spec.memory_limit_mb.saturating_mul(1 << 20);
    let fsize = spec.max_output_mb.saturating_mul(1 << 20);
    let parent = unsafe { libc::getpid() };
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let limit = |r, v: u64| {
                let l = libc::rlimit {
                    rlim_cur: v as libc::rlim_t,
                    rlim_max: v as libc::rlim_t,
                };
                libc::setrlimit(r, &l)
            };
            if limit(libc::RLIMIT_AS, mem) != 0 || limit(libc::RLIMIT_FSIZE, fsize) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            limit(libc::RLIMIT_CORE, 0);
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let started = Instant::now();
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "starting the extractor {:?}: {e} ({})",
            args[0],
            Setting(connector, "command")
        )
    })?;
    let pid = child.id() as i32;
    COMMAND_PGID.store(pid, Ordering::SeqCst);
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let stdout_over = Arc::new(AtomicBool::new(false));
    let err_count = Arc::new(AtomicU64::new(0));
    // The tail comes back on a channel, so it can be waited for with a timeout.
    let err_tail = {
        let count = err_count.clone();
        let over = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(drain_tail(stderr, &count, MAX_LOG_BYTES, &over, pid));
        });
        rx
    };
    // The wall clock: the watchdog kills the group unless the command is done first.
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let timed_out = Arc::new(AtomicBool::new(false));
    let watchdog = {
        let timed_out = timed_out.clone();
        let timeout = Duration::from_millis(spec.timeout_ms);
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(timeout) {
                timed_out.store(true, Ordering::SeqCst);
                // SAFETY: the group's leader is not reaped before `done` is sent.
                unsafe {
                    libc::killpg(pid, libc::SIGKILL);
                }
            }
        })
    };
    let mut map = Some(map);
    let streamed = match spec.output {
        OutputChannel::Stdout => {
            let reader = Bounded {
                inner: stdout,
                read: 0,
                limit: fsize,
                over: stdout_over.clone(),
                pgid: pid,
            };
            let r = (map.take().expect("mapped once"))(Box::new(reader));
            if r.is_err() {
                // The output is unusable: stop the command rather than wait for it.
                unsafe {
                    libc::killpg(pid, libc::SIGKILL);
                }
            }
            Some(r)
        }
        OutputChannel::File => {
            let over = stdout_over.clone();
            let count = Arc::new(AtomicU64::new(0));
            // Detached: it ends when the group (which holds the pipe) is gone.
            std::thread::spawn(move || drain_tail(stdout, &count, MAX_LOG_BYTES, &over, pid));
            None
        }
    };
    let (status, peak_rss_kb) = reap_group(pid);
    let _ = done_tx.send(());
    let _ = watchdog.join();
    COMMAND_PGID.store(0, Ordering::SeqCst);
    std::mem::forget(child);
    // Unless a process that left the group (`setsid`) still holds the pipe open: then the
    // tail is given up on.
    let stderr_tail = err_tail.recv_timeout(TAIL_WAIT).unwrap_or_default();
    let report = CommandReport {
        command: args.clone(),
        exit_code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        millis: started.elapsed().as_millis() as u64,
        peak_rss_kb,
        stderr_tail: stderr_tail.clone(),
    };
    let tail_note = || {
        let t = last_lines(&stderr_tail, 5);
        if t.is_empty() {
            String::new()
        } else {
            format!("; its stderr ends: {t}")
        }
    };
    let human_mb = |mb: u64| super::isolate::human_mb(mb);
    if timed_out.load(Ordering::SeqCst) {
        return Err(format!(
            "the extractor exceeded its {} time limit ({})",
            super::isolate::human_duration(Duration::from_millis(spec.timeout_ms)),
            Setting(connector, "timeout_ms")
        ));
    }
    if stdout_over.load(Ordering::SeqCst) {
        return Err(match spec.output {
            OutputChannel::Stdout => format!(
                "the extractor wrote more than {} to stdout ({})",
                human_mb(spec.max_output_mb),
                Setting(connector, "max_output_mb")
            ),
            OutputChannel::File => format!(
                "the extractor wrote more than {} of messages to stdout (its records go to {{output}}); it was stopped",
                human_mb(MAX_LOG_BYTES >> 20)
            ),
        });
    }
    let signal = libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status));
    let out_of_memory = [
        "MemoryError",
        "memory allocation of",
        "Cannot allocate memory",
        "std::bad_alloc",
        "out of memory",
    ]
    .iter()
    .any(|m| stderr_tail.contains(m));
    if out_of_memory && (report.exit_code != Some(0) || signal.is_some()) {
        return Err(format!(
            "the extractor exceeded its {} memory limit ({}){}",
            human_mb(spec.memory_limit_mb),
            Setting(connector, "memory_limit_mb"),
            tail_note()
        ));
    }
    if signal == Some(libc::SIGXFSZ) {
        return Err(format!(
            "the extractor's output file exceeded {} ({})",
            human_mb(spec.max_output_mb),
            Setting(connector, "max_output_mb")
        ));
    }
    if let Some(sig) = signal {
        return Err(format!(
            "the extractor was killed by signal {sig}{}",
            tail_note()
        ));
    }
    match report.exit_code {
        Some(0) => {}
        Some(c) => {
            return Err(format!(
                "the extractor exited with status {c}{}",
                tail_note()
            ));
        }
        None => return Err("the extractor stopped without an exit status".into()),
    }
    let mapped = match streamed {
        Some(r) => r,
        None => {
            let file = std::fs::File::open(&output).map_err(|e| {
                format!(
                    "the extractor exited 0 but did not write its output file ({e}){}",
                    tail_note()
                )
            })?;
            (map.take().expect("mapped once"))(Box::new(file))
        }
    };
    Ok((mapped, report))
}

/// Waits for the group's leader to exit, kills whatever else is left in its group (the
/// zombie leader keeps the group id from being reused until it is reaped), then reaps it.
fn reap_group(pid: i32) -> (i32, u64) {
    super::isolate::reap(pid, || {
        // SAFETY: the group's leader is our unreaped child.
        unsafe {
            libc::killpg(pid, libc::SIGKILL);
        }
    })
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    let from = lines.len().saturating_sub(n);
    lines[from..].join(" | ").chars().take(1000).collect()
}
