//! The fleet: each worker process's mode and heartbeat (the `workers` table, owned by
//! [`FleetStore`]) and fleet-wide commands (ADR 0003).

mod store;

use chrono::{DateTime, Utc};
use serde::Serialize;

pub use store::{FleetError, FleetStore};

use crate::lifecycle::Mode;

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
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Command::Drain => "drain",
            Command::Resume => "resume",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Command> {
        match s {
            "drain" => Some(Command::Drain),
            "resume" => Some(Command::Resume),
            _ => None,
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

impl FleetStatus {
    pub(crate) fn of(workers: Vec<WorkerRow>) -> FleetStatus {
        let modes: Vec<Option<Mode>> = workers.iter().map(|w| Mode::parse(&w.mode)).collect();
        let mode = if modes.iter().all(|m| *m == Some(Mode::SafeToStop)) {
            Mode::SafeToStop
        } else if modes.iter().all(|m| *m == Some(Mode::Normal)) {
            Mode::Normal
        } else {
            Mode::PreparingForStop
        };
        FleetStatus { mode, workers }
    }
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

    /// This process as the actor of what it writes.
    pub fn actor(&self) -> crate::queue::Actor {
        crate::queue::Actor::new(&self.id, &self.version)
    }
}
