//! The queue's types: job states, what is enqueued, claimed and written back, and who did it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A job's state (SPEC §3). Stored as lowercase text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Retrying,
    Succeeded,
    Dead,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::Retrying,
        JobState::Succeeded,
        JobState::Dead,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Retrying => "retrying",
            JobState::Succeeded => "succeeded",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Dead | JobState::Cancelled
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!("unknown state {s:?} (expected one of queued, running, retrying, succeeded, dead, cancelled)")
            })
    }
}

/// Who did something: a worker process (its id and build) or an API/CLI caller (the token's
/// name and the API build). The one name for "who" in job history and the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub id: String,
    pub version: String,
}

impl Actor {
    pub fn new(id: impl Into<String>, version: impl Into<String>) -> Self {
        Actor {
            id: id.into(),
            version: version.into(),
        }
    }
}

/// How the rescuer tells a dead owner from one that was only cut off (see
/// `JobStore::rescue_expired`).
#[derive(Debug, Clone, Copy)]
pub struct RescueRules {
    /// Nothing is rescued this soon after PostgreSQL (or the rescuer) reconnects.
    pub grace: Duration,
    /// A lease this far past expiry is rescued even if its owner still heartbeats (its
    /// renewals are failing for some other reason).
    pub overdue: Duration,
    /// Rescues of one job in a row, without its worker ever reporting back, before it is
    /// dead-lettered as a poison pill.
    pub max_streak: i32,
    /// Two passes of one rescuer further apart than this on the database's clock mean
    /// PostgreSQL or the rescuer's process stood still in between (a stalled disk, a
    /// failover, a paused VM). The owners stood still too and their renewals are still on
    /// their way, so that pass rescues nothing (`JobStore::rescue_pass`).
    pub stall: Duration,
}

/// What one rescue pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rescued {
    pub requeued: u64,
    pub dead: u64,
}

impl Rescued {
    pub fn total(&self) -> u64 {
        self.requeued + self.dead
    }
}

/// One pass of a rescuer: what it did, when (the database's clock), and whether it found a
/// stall since the previous pass and so rescued nothing.
#[derive(Debug, Clone, Copy)]
pub struct RescuePass {
    pub rescued: Rescued,
    pub at: DateTime<Utc>,
    pub stalled: bool,
}

/// Longest delay accepted on enqueue (one year): `run_at` must stay a real timestamp.
pub const MAX_DELAY_MS: u64 = 365 * 24 * 3600 * 1000;
/// Longest job kind name.
pub const MAX_KIND_LEN: usize = 100;

/// What a caller asks to enqueue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewJob {
    pub kind: String,
    #[serde(default = "empty_object")]
    pub payload: Value,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(default)]
    pub priority: Option<i16>,
    #[serde(default)]
    pub max_attempts: Option<i32>,
    /// Delay before the job becomes claimable.
    #[serde(default)]
    pub delay_ms: Option<u64>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// The first string (or object key) in `v` that PostgreSQL's jsonb cannot hold: one with a
/// NUL character. Returns its JSON path.
pub fn find_nul(v: &Value, path: &mut String) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().enumerate().any(|(i, x)| {
            let len = path.len();
            path.push_str(&format!("[{i}]"));
            let found = find_nul(x, path);
            if !found {
                path.truncate(len);
            }
            found
        }),
        Value::Object(m) => m.iter().any(|(k, x)| {
            let len = path.len();
            path.push('.');
            path.push_str(&k.replace('\0', "\\u0000"));
            let found = k.contains('\0') || find_nul(x, path);
            if !found {
                path.truncate(len);
            }
            found
        }),
        _ => false,
    }
}

impl NewJob {
    /// Checks what PostgreSQL would refuse (or store wrongly) before it gets there, naming the
    /// field: every client mistake is a 422 with a message, never a database error.
    pub fn check(&self) -> Result<(), super::QueueError> {
        let invalid = |m: String| Err(super::QueueError::Invalid(m));
        if self.kind.trim().is_empty() {
            return invalid("kind must not be empty".into());
        }
        if self.kind.len() > MAX_KIND_LEN || self.kind.chars().any(char::is_control) {
            return invalid(format!(
                "kind must be at most {MAX_KIND_LEN} characters without control characters"
            ));
        }
        if let Some(m) = self.max_attempts
            && !(1..=1000).contains(&m)
        {
            return invalid("max_attempts must be between 1 and 1000".into());
        }
        if let Some(k) = &self.idempotency_key
            && (k.is_empty() || k.len() > 255 || k.chars().any(char::is_control))
        {
            return invalid(
                "idempotency_key must be 1 to 255 characters without control characters".into(),
            );
        }
        if let Some(d) = self.delay_ms
            && d > MAX_DELAY_MS
        {
            return invalid(format!(
                "delay_ms must be at most {MAX_DELAY_MS} (one year)"
            ));
        }
        let mut path = String::from("payload");
        if find_nul(&self.payload, &mut path) {
            return invalid(format!(
                "{path} contains a NUL character (\\u0000), which cannot be stored"
            ));
        }
        Ok(())
    }

    pub fn new(kind: impl Into<String>, payload: Value) -> Self {
        NewJob {
            kind: kind.into(),
            payload,
            idempotency_key: None,
            priority: None,
            max_attempts: None,
            delay_ms: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Enqueued {
    pub job_id: i64,
    /// False when an existing job with the same idempotency key was returned.
    pub created: bool,
}

/// A job as stored.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub payload: Value,
    #[sqlx(try_from = "String")]
    pub state: JobState,
    pub stage: Option<String>,
    pub checkpoint: Value,
    pub progress: Option<Value>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub priority: i16,
    pub run_at: DateTime<Utc>,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub fencing_token: i64,
    pub idempotency_key: Option<String>,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl TryFrom<String> for JobState {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// One row of the `job_events` view: a stored `job_event_log` row, or a transition kept in
/// the job's own row (ADR 0018), which has no event id.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JobEvent {
    pub id: Option<i64>,
    pub job_id: i64,
    pub at: DateTime<Utc>,
    pub event: String,
    pub from_state: Option<String>,
    pub to_state: Option<String>,
    pub stage: Option<String>,
    pub attempt: Option<i32>,
    pub fencing_token: Option<i64>,
    pub worker_id: Option<String>,
    pub worker_version: Option<String>,
    pub duration_ms: Option<f64>,
    pub error: Option<String>,
}

/// A job handed to a worker by a claim: everything the stage runner needs.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedJob {
    pub id: i64,
    pub kind: String,
    pub payload: Value,
    pub checkpoint: Value,
    /// The attempt this claim starts (1-based).
    pub attempts: i32,
    pub max_attempts: i32,
    pub fencing_token: i64,
    /// Seconds between the job becoming due (`run_at`) and this claim: pickup latency.
    pub waited_s: f64,
}

/// A state change written by a worker, fenced by the token its claim returned.
#[derive(Debug, Clone)]
pub struct Transition {
    pub job_id: i64,
    pub fencing_token: i64,
    pub event: TransitionEvent,
    /// The stage the event is about (finished, failed, or the next one when released).
    pub stage: Option<String>,
    pub attempt: i32,
    pub duration_ms: Option<f64>,
}

#[derive(Debug, Clone)]
pub enum TransitionEvent {
    /// A stage finished: its output joins the checkpoint. `next_stage` None means the job succeeded.
    StageCompleted {
        output: Value,
        next_stage: Option<String>,
    },
    /// Handed back to the queue at its last checkpoint without consuming an attempt.
    Released { reason: String },
    /// The stage failed and will be retried after `delay_ms`.
    RetryScheduled { error: String, delay_ms: u64 },
    /// The job is dead (attempts exhausted or non-retryable); a dead letter is written with it.
    Dead { error: String },
}

impl TransitionEvent {
    /// The `job_events.event` this transition writes.
    pub fn name(&self) -> &'static str {
        match self {
            TransitionEvent::StageCompleted { .. } => "stage_completed",
            TransitionEvent::Released { .. } => "released",
            TransitionEvent::RetryScheduled { .. } => "stage_failed",
            TransitionEvent::Dead { .. } => "dead",
        }
    }
}
