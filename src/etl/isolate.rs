//! Runs the extract child (`etl/child.rs`) under limits, from the worker (ADR 0006).
//!
//! The child is this same binary re-executed with a hidden subcommand. Before it starts
//! (`pre_exec`), its address space is capped (`RLIMIT_AS`), core dumps are off, and it is
//! asked to die with the thread that started it (`PR_SET_PDEATHSIG`): a `kill -9` of the
//! worker takes its parsers along. That thread lives exactly as long as the child, waits for
//! it with `wait4` (which also reports its peak RSS), and never lets a kill reach a reused
//! pid: the exit is observed with `WNOWAIT` under the same lock the killer takes.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::child::{ChildJob, ChildOutcome, EXIT_INPUT, EXIT_IO, SUBCOMMAND};

/// How the child is started and bounded (from `[etl]` settings).
#[derive(Debug, Clone)]
pub struct Isolation {
    /// The binary to re-execute (this one).
    pub exe: PathBuf,
    pub memory_limit_mb: u64,
    pub timeout: Duration,
}

/// Why an isolated extract did not produce its artifacts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IsolateError {
    /// The file cannot be parsed, or it crashed, exhausted or hung the parser.
    #[error("{0}")]
    Fatal(String),
    /// The child could not be started or could not write (disk full): retry later.
    #[error("{0}")]
    Retryable(String),
    #[error("cancelled")]
    Cancelled,
}

/// A finished child's report.
#[derive(Debug)]
pub struct ChildReport {
    pub outcome: ChildOutcome,
    /// The child's peak resident set size, from `wait4`.
    pub peak_rss_kb: u64,
}

/// Longest stderr tail kept to explain a crash.
const STDERR_TAIL: usize = 8 * 1024;

struct Exit {
    /// `wait4` status.
    status: i32,
    peak_rss_kb: u64,
    outcome: Option<ChildOutcome>,
    stderr: String,
}

/// Kills the child unless it has already exited (and so might have a recycled pid).
#[derive(Clone)]
struct Killer {
    pid: libc::pid_t,
    exited: Arc<Mutex<bool>>,
}

/// How long a child told to stop (SIGTERM: it kills a command extractor's process group
/// first) has before it is killed outright.
const STOP_GRACE: Duration = Duration::from_secs(2);

impl Killer {
    fn signal(&self, sig: libc::c_int) -> bool {
        let exited = self.exited.lock().unwrap_or_else(|p| p.into_inner());
        if !*exited {
            // SAFETY: `pid` is our unreaped child (it has not exited: checked under the lock
            // the waiter holds while observing the exit), so it cannot have been reused.
            unsafe {
                libc::kill(self.pid, sig);
            }
        }
        !*exited
    }

    /// SIGTERM (the child's handler takes a command extractor's group along), then SIGKILL
    /// if it is still there after `STOP_GRACE`.
    fn kill(&self) {
        if self.signal(libc::SIGTERM) {
            let k = self.clone();
            let _ = std::thread::Builder::new()
                .name("etlq-extract-kill".into())
                .spawn(move || {
                    std::thread::sleep(STOP_GRACE);
                    k.signal(libc::SIGKILL);
                });
        }
    }
}

struct KillOnDrop(Killer);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.0.kill();
    }
}

pub(crate) fn human_mb(mb: u64) -> String {
    if mb >= 1024 && mb.is_multiple_of(1024) {
        format!("{} GiB", mb / 1024)
    } else {
        format!("{mb} MiB")
    }
}

pub(crate) fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 60 && s.is_multiple_of(60) {
        format!("{} min", s / 60)
    } else if d.subsec_millis() == 0 {
        format!("{s} s")
    } else {
        format!("{} ms", d.as_millis())
    }
}

impl Isolation {
    /// Runs `job` in a child; `rows_read` follows its progress. The child is killed when
    /// `cancel` fires (drain timeout, job cancelled) or past the timeout.
    pub async fn run(
        &self,
        job: &ChildJob,
        rows_read: Arc<AtomicUsize>,
        cancel: &CancellationToken,
    ) -> Result<ChildReport, IsolateError> {
        // A command extractor runs inside the child under its own limits: the child's must
        // hold them (an address-space limit cannot be raised from inside) and its time too.
        let (memory_limit_mb, timeout) = match &job.connector.extractor {
            Some(x) => (
                self.memory_limit_mb.max(x.memory_limit_mb + 64),
                self.timeout + Duration::from_millis(x.timeout_ms),
            ),
            None => (self.memory_limit_mb, self.timeout),
        };
        let input = serde_json::to_vec(job).expect("a child job serialises");
        let (started_tx, started_rx) = oneshot::channel::<Result<Killer, String>>();
        let (exit_tx, exit_rx) = oneshot::channel::<Exit>();
        let limit_bytes = memory_limit_mb.saturating_mul(1 << 20);
        let exe = self.exe.clone();
        let spawned = std::thread::Builder::new()
            .name("etlq-extract".into())
            .spawn(move || supervise(exe, limit_bytes, input, rows_read, started_tx, exit_tx));
        if let Err(e) = spawned {
            return Err(IsolateError::Retryable(format!(
                "starting the workbook parser: {e}"
            )));
        }
        let killer = match started_rx.await {
            Ok(Ok(k)) => k,
            Ok(Err(e)) => {
                return Err(IsolateError::Retryable(format!(
                    "starting the workbook parser: {e}"
                )));
            }
            Err(_) => {
                return Err(IsolateError::Retryable(
                    "the workbook parser's supervisor stopped".into(),
                ));
            }
        };
        // If this future is dropped midway (the runner gave up on the stage), the child dies
        // with it instead of parsing on for nobody.
        let _guard = KillOnDrop(killer.clone());
        let mut exit_rx = exit_rx;
        let mut stopped_by: Option<IsolateError> = None;
        let exit = tokio::select! {
            e = &mut exit_rx => e,
            _ = cancel.cancelled() => {
                killer.kill();
                stopped_by = Some(IsolateError::Cancelled);
                exit_rx.await
            }
            _ = tokio::time::sleep(timeout) => {
                killer.kill();
                stopped_by = Some(IsolateError::Fatal(format!(
                    "the workbook parser exceeded the {} time limit (etl.extract_timeout_ms)",
                    human_duration(timeout)
                )));
                exit_rx.await
            }
        };
        let exit = exit.map_err(|_| {
            IsolateError::Retryable("the workbook parser's supervisor stopped".into())
        })?;
        if let Some(e) = stopped_by {
            return Err(e);
        }
        self.verdict(exit)
    }

    /// Runs a preview job (`job.preview`) in a child: same limits, nothing stored.
    pub async fn preview(
        &self,
        job: &ChildJob,
        cancel: &CancellationToken,
    ) -> Result<super::preview::Preview, IsolateError> {
        let report = self.run(job, Arc::new(AtomicUsize::new(0)), cancel).await?;
        match report.outcome {
            ChildOutcome::Preview(p) => Ok(*p),
            _ => Err(IsolateError::Retryable(
                "the preview child answered with something else".into(),
            )),
        }
    }

    fn verdict(&self, exit: Exit) -> Result<ChildReport, IsolateError> {
        let status = exit.status;
        let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
        let signal = libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status));
        let memory = || {
            IsolateError::Fatal(format!(
                "the workbook parser exceeded the {} memory limit (etl.extract_memory_limit_mb)",
                human_mb(self.memory_limit_mb)
            ))
        };
        match (code, exit.outcome) {
            (Some(0), Some(outcome @ (ChildOutcome::Done { .. } | ChildOutcome::Preview(_)))) => {
                Ok(ChildReport {
                    outcome,
                    peak_rss_kb: exit.peak_rss_kb,
                })
            }
            (Some(EXIT_INPUT), Some(ChildOutcome::Failed { message, .. })) => {
                Err(IsolateError::Fatal(message))
            }
            (Some(EXIT_IO), Some(ChildOutcome::Failed { message, .. })) => {
                Err(IsolateError::Retryable(message))
            }
            _ if exit.stderr.contains("memory allocation of") => Err(memory()),
            // The kernel's OOM killer (we only kill on timeout or cancel, handled above).
            (None, _) if signal == Some(libc::SIGKILL) => Err(memory()),
            _ if exit.stderr.contains("has overflowed its stack") => Err(IsolateError::Fatal(
                "the workbook parser crashed: the file nests too deeply (stack overflow)".into(),
            )),
            (Some(101), _) => Err(IsolateError::Fatal(format!(
                "the workbook parser crashed on this file (panic: {})",
                panic_message(&exit.stderr)
            ))),
            (Some(c), _) => Err(IsolateError::Fatal(format!(
                "the workbook parser crashed (exit status {c})"
            ))),
            (None, _) => Err(IsolateError::Fatal(format!(
                "the workbook parser crashed (signal {})",
                signal.unwrap_or(0)
            ))),
        }
    }
}

/// Waits for child `pid` to exit, runs `before_reap` while it is a zombie (its pid — and, as a
/// group leader, its process group id — cannot be reused until it is reaped), then reaps it.
/// Returns the `wait4` status and the child's peak RSS in KiB.
pub(crate) fn reap(pid: libc::pid_t, before_reap: impl FnOnce()) -> (i32, u64) {
    // SAFETY: plain syscalls on our own child's pid; siginfo and rusage are plain data.
    unsafe {
        let mut info: libc::siginfo_t = std::mem::zeroed();
        while libc::waitid(
            libc::P_PID,
            pid as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOWAIT,
        ) != 0
        {
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                break;
            }
        }
        before_reap();
        let mut status: libc::c_int = 0;
        let mut usage: libc::rusage = std::mem::zeroed();
        while libc::wait4(pid, &mut status, 0, &mut usage) < 0 {
            if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                break;
            }
        }
        (status, usage.ru_maxrss.max(0) as u64)
    }
}

/// The message of a Rust panic report (`thread '…' panicked at file:line:col:\nmessage`).
fn panic_message(stderr: &str) -> String {
    let mut lines = stderr.lines();
    while let Some(l) = lines.next() {
        if l.contains("panicked at") {
            return lines
                .next()
                .unwrap_or("unknown")
                .chars()
                .take(300)
                .collect();
        }
    }
    "unknown".into()
}

/// The supervising thread: starts the child, feeds it, follows it, reaps it.
fn supervise(
    exe: PathBuf,
    limit_bytes: u64,
    input: Vec<u8>,
    rows_read: Arc<AtomicUsize>,
    started: oneshot::Sender<Result<Killer, String>>,
    exit: oneshot::Sender<Exit>,
) {
    let parent = unsafe { libc::getpid() };
    let mut cmd = Command::new(exe);
    // glibc gives each parsing thread an arena that reserves 64 MiB of address space, which
    // RLIMIT_AS counts: two threads reserve ~128 MiB of the limit. Capping arenas
    // (MALLOC_ARENA_MAX=2) was measured 15-25 % slower on the 200k-row export, so it is not.
    cmd.arg(SUBCOMMAND)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let as_limit = libc::rlimit {
                rlim_cur: limit_bytes as libc::rlim_t,
                rlim_max: limit_bytes as libc::rlim_t,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &as_limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let no_core = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            // SIGTERM, not SIGKILL: the child's handler kills a command extractor's process
            // group before it exits (a SIGKILL would orphan it).
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died between fork and prctl: nobody will read our result.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = started.send(Err(e.to_string()));
            return;
        }
    };
    let pid = child.id() as libc::pid_t;
    let killer = Killer {
        pid,
        exited: Arc::new(Mutex::new(false)),
    };
    let _ = started.send(Ok(killer.clone()));

    let mut stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let reader = std::thread::spawn(move || {
        let mut outcome = None;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(p) = serde_json::from_str::<serde_json::Value>(&line)
                && let Some(n) = p.get("rows_read").and_then(|n| n.as_u64())
            {
                rows_read.store(n as usize, Ordering::Relaxed);
                continue;
            }
            if let Ok(o) = serde_json::from_str::<ChildOutcome>(&line) {
                outcome = Some(o);
            }
        }
        outcome
    });
    let tail = std::thread::spawn(move || {
        let mut kept: Vec<u8> = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > 2 * STDERR_TAIL {
                kept.drain(..kept.len() - STDERR_TAIL);
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    });

    let (status, peak_rss_kb) = reap(pid, || {
        *killer.exited.lock().unwrap_or_else(|p| p.into_inner()) = true;
    });
    // The std handle must not wait again (the pid is reaped); forget it.
    std::mem::forget(child);
    let _ = feeder.join();
    let outcome = reader.join().unwrap_or(None);
    let stderr = tail.join().unwrap_or_default();
    let _ = exit.send(Exit {
        status,
        peak_rss_kb,
        outcome,
        stderr,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_reports_are_reduced_to_their_message() {
        let stderr = "\nthread 'main' panicked at src/xls.rs:12:5:\nindex out of bounds: the len is 3 but the index is 7\nnote: run with `RUST_BACKTRACE=1`";
        assert_eq!(
            panic_message(stderr),
            "index out of bounds: the len is 3 but the index is 7"
        );
        assert_eq!(human_mb(1024), "1 GiB");
        assert_eq!(human_mb(300), "300 MiB");
        assert_eq!(human_duration(Duration::from_secs(600)), "10 min");
        assert_eq!(human_duration(Duration::from_millis(1500)), "1500 ms");
    }
}
