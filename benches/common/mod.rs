//! What the benchmarks share: a fresh database, a release `etlq serve` that dies with the
//! benchmark, and an upload that is waited for until promoted.

// Each bench binary compiles this module and uses a part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

/// A new, migrated database `name` on `server` (dropped first); `BENCH_KEEP_DB=1` keeps an
/// existing one (and its per-database settings, e.g. auto_explain) instead.
pub async fn fresh_db(server: &str, name: &str) -> (String, sqlx::PgPool) {
    use sqlx::Connection;
    let admin = format!("{server}/postgres");
    let mut c = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to PostgreSQL");
    if std::env::var_os("BENCH_KEEP_DB").is_none() {
        for ddl in [
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name}"),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(ddl))
                .execute(&mut c)
                .await
                .unwrap();
        }
    }
    let url = format!("{server}/{name}");
    let pool = etlq::db::pool_options()
        .max_connections(20)
        .connect_with(etlq::db::connect_options(&url).unwrap())
        .await
        .unwrap();
    etlq::db::Pools::from_main(pool.clone(), Duration::from_secs(5))
        .migrate()
        .await
        .unwrap();
    (url, pool)
}

/// Drops database `name` on `server`.
pub async fn drop_db(server: &str, name: &str) {
    use sqlx::Connection;
    let mut c = sqlx::PgConnection::connect(&format!("{server}/postgres"))
        .await
        .expect("connect to PostgreSQL");
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&mut c)
    .await
    .unwrap();
}

/// The value after `--name` on the command line, else `default`.
pub fn arg(name: &str, default: usize) -> usize {
    arg_text(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The value after `name` on the command line, as text.
pub fn arg_text(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
}

/// Whether `name` is on the command line.
pub fn flag(name: &str) -> bool {
    std::env::args().any(|a| a == name)
}

/// The PostgreSQL server to measure on: BENCH_PG, else the local default.
pub fn bench_server() -> String {
    std::env::var("BENCH_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// The `p` quantile of `v` (nearest rank; NaN when empty); sorts `v`.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

pub struct Server {
    pub child: std::process::Child,
    pub base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `etlq serve` on a free port with `env` on top of the embedded defaults.
pub fn start_server(bin: &Path, env: &[(String, String)]) -> Server {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(bin)
        .args(["serve", "--port", "0"])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .die_with_parent()
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

/// Uploads `bytes` as a `sap_fbl3n` export for `bu`; returns the job id.
pub async fn upload(client: &reqwest::Client, base: &str, bytes: &[u8], bu: &str) -> i64 {
    let form = reqwest::multipart::Form::new()
        .text("bu_id", bu.to_string())
        .text("connector", "sap_fbl3n")
        .part(
            "file",
            reqwest::multipart::Part::bytes(bytes.to_vec()).file_name("gl.xlsx"),
        );
    let r: Value = client
        .post(format!("{base}/v1/uploads"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    r["job_id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no job id: {r}"))
}

/// Waits until job `id` has succeeded; returns the job as the API shows it.
pub async fn wait_promoted(client: &reqwest::Client, base: &str, id: i64) -> Value {
    loop {
        let v: Value = client
            .get(format!("{base}/v1/jobs/{id}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        match v["state"].as_str() {
            Some("succeeded") => return v,
            Some("dead" | "cancelled") => panic!("job {id} failed: {v}"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// The server dies with the benchmark even when the benchmark is killed (no Drop runs then).
trait DieWithParent {
    fn die_with_parent(&mut self) -> &mut Self;
}

impl DieWithParent for Command {
    fn die_with_parent(&mut self) -> &mut Self {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            self.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            })
        }
    }
}

/// CPU seconds used so far by this process and by the PostgreSQL server whose data directory
/// is `data_dir` (the postmaster, the children it reaped, and its live children), read from
/// /proc as the peers' kit reads them; None for the server when it is not on this machine.
pub fn cpu_seconds(data_dir: Option<&str>) -> (f64, Option<f64>) {
    // USER_HZ: 100 on Linux, as the kit assumes.
    const HZ: f64 = 100.0;
    // The fields after the command name (which may hold spaces): state is index 0, ppid 1,
    // utime 11, stime 12, cutime 13, cstime 14.
    fn fields(pid: &str) -> Option<Vec<u64>> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = stat.get(stat.rfind(')')? + 2..)?;
        Some(rest.split(' ').map(|f| f.parse().unwrap_or(0)).collect())
    }
    let own = fields("self").map_or(0, |f| f[11] + f[12]) as f64 / HZ;
    let server = data_dir.and_then(|dir| {
        let pid_file = std::fs::read_to_string(format!("{dir}/postmaster.pid")).ok()?;
        let pm: u64 = pid_file.lines().next()?.trim().parse().ok()?;
        let p = fields(&pm.to_string())?;
        let mut ticks = p[11] + p[12] + p[13] + p[14];
        for entry in std::fs::read_dir("/proc").ok()?.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str() else { continue };
            if pid.parse::<u64>().is_ok_and(|n| n != pm)
                && let Some(f) = fields(pid)
                && f.get(1) == Some(&pm)
            {
                ticks += f[11] + f[12];
            }
        }
        Some(ticks as f64 / HZ)
    });
    (own, server)
}
