//! The `workers` table: each worker process's mode and heartbeat, and fleet-wide commands.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::lifecycle::{Mode, Status};
use crate::queue::CONTROL_CHANNEL;

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct WorkerRow {
    pub id: String,
    pub host: String,
    pub pid: i32,
    pub version: String,
    pub roles: String,
    pub mode: String,
    pub in_flight: i32,
    pub concurrency: i32,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
}

/// A fleet-wide command addressed to one worker row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Drain,
    Resume,
}

impl Command {
    fn as_str(self) -> &'static str {
        match self {
            Command::Drain => "drain",
            Command::Resume => "resume",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetStatus {
    /// `SafeToStop` only when every live worker is; `Normal` when all are; otherwise
    /// `PreparingForStop`.
    pub mode: Mode,
    pub workers: Vec<WorkerRow>,
}

/// Identifies one process: unique per process, stable for its lifetime.
#[derive(Debug, Clone)]
pub struct WorkerInfo {
    pub id: String,
    pub host: String,
    pub pid: i32,
    pub version: String,
    pub roles: String,
    pub concurrency: i32,
}

/// Writes this process's heartbeat (inserting its row if missing) and returns any pending
/// fleet command as `(command, seq)`.
pub async fn heartbeat(
    pool: &PgPool,
    me: &WorkerInfo,
    status: Status,
) -> Result<Option<(Command, i64)>, sqlx::Error> {
    let row: (Option<String>, i64) = sqlx::query_as(
        r#"
        INSERT INTO workers (id, host, pid, version, roles, mode, in_flight, concurrency)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
        ON CONFLICT (id) DO UPDATE
            SET mode = EXCLUDED.mode, in_flight = EXCLUDED.in_flight, heartbeat_at = now(),
                stopped_at = NULL
        RETURNING command, command_seq
        "#,
    )
    .bind(&me.id)
    .bind(&me.host)
    .bind(me.pid)
    .bind(&me.version)
    .bind(&me.roles)
    .bind(status.mode.as_str())
    .bind(status.in_flight as i32)
    .bind(me.concurrency)
    .fetch_one(pool)
    .await?;
    Ok(match row.0.as_deref() {
        Some("drain") => Some((Command::Drain, row.1)),
        Some("resume") => Some((Command::Resume, row.1)),
        _ => None,
    })
}

pub async fn mark_stopped(pool: &PgPool, id: &str, status: Status) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE workers SET stopped_at = now(), heartbeat_at = now(), mode = $2, in_flight = $3 WHERE id = $1",
    )
    .bind(id)
    .bind(status.mode.as_str())
    .bind(status.in_flight as i32)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn live_workers(pool: &PgPool, ttl: Duration) -> Result<Vec<WorkerRow>, sqlx::Error> {
    sqlx::query_as::<_, WorkerRow>(
        r#"
        SELECT id, host, pid, version, roles, mode, in_flight, concurrency, started_at, heartbeat_at
        FROM workers
        WHERE stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => $1)
        ORDER BY started_at, id
        "#,
    )
    .bind(ttl.as_secs_f64())
    .fetch_all(pool)
    .await
}

pub async fn status(pool: &PgPool, ttl: Duration) -> Result<FleetStatus, sqlx::Error> {
    let workers = live_workers(pool, ttl).await?;
    let modes: Vec<Option<Mode>> = workers.iter().map(|w| Mode::parse(&w.mode)).collect();
    let mode = if modes.iter().all(|m| *m == Some(Mode::SafeToStop)) {
        Mode::SafeToStop
    } else if modes.iter().all(|m| *m == Some(Mode::Normal)) {
        Mode::Normal
    } else {
        Mode::PreparingForStop
    };
    Ok(FleetStatus { mode, workers })
}

/// Addresses `command` to every live worker and wakes them; returns how many were addressed.
pub async fn command(pool: &PgPool, command: Command, ttl: Duration) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let n = sqlx::query(
        r#"
        UPDATE workers SET command = $1, command_seq = command_seq + 1
        WHERE stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => $2)
        "#,
    )
    .bind(command.as_str())
    .bind(ttl.as_secs_f64())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CONTROL_CHANNEL)
        .bind(command.as_str())
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(n)
}

/// Deletes rows of workers stopped or silent for longer than `older_than`.
pub async fn delete_stale(pool: &PgPool, older_than: Duration) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM workers WHERE heartbeat_at < now() - make_interval(secs => $1)")
            .bind(older_than.as_secs_f64())
            .execute(pool)
            .await?
            .rows_affected(),
    )
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

impl WorkerInfo {
    pub fn for_this_process(settings: &crate::configuration::Settings, roles: &str) -> Self {
        let host = hostname();
        let pid = std::process::id();
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
        WorkerInfo {
            id: format!("{host}-{pid}-{suffix}"),
            host,
            pid: pid as i32,
            version: settings.worker.version(),
            roles: roles.to_string(),
            concurrency: settings.worker.concurrency as i32,
        }
    }
}
