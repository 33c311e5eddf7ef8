//! Built-in job kinds for smoke tests, benchmarks and the queue's own test-suite.
//!
//! `noop`: one stage that does nothing. `test`: stages `first`, `second`, `third`, each of which
//! sleeps, fails on demand and records that it ran in `test_stage_runs`. Payload:
//! `{"sleep_ms": 200 | {"second": 3000}, "fail": {"second": {"times": 2, "fatal": false}},
//!   "ignore_cancel": false, "record": true}` — `times` omitted means every attempt fails.

use std::time::Duration;

use chrono::Utc;
use futures_util::FutureExt;
use serde_json::{Value, json};

use super::{FnStage, JobKind, Registry, StageContext, StageError};

pub const NOOP_KIND: &str = "noop";
pub const TEST_KIND: &str = "test";
pub const TEST_STAGES: [&str; 3] = ["first", "second", "third"];

pub fn register_builtin(registry: &mut Registry) {
    registry.register(JobKind::new(NOOP_KIND).stage(FnStage::new("run", |_ctx| {
        async { Ok(Value::Null) }.boxed()
    })));
    let mut test = JobKind::new(TEST_KIND);
    for name in TEST_STAGES {
        test = test.stage(FnStage::new(name, |ctx| test_stage(ctx).boxed()));
    }
    registry.register(test);
}

fn per_stage<'a>(payload: &'a Value, key: &str, stage: &str) -> Option<&'a Value> {
    match payload.get(key)? {
        Value::Object(m) => m.get(stage),
        other => Some(other),
    }
}

async fn test_stage(ctx: StageContext) -> Result<Value, StageError> {
    let started_at = Utc::now();
    let stage = ctx.stage.to_string();
    let sleep_ms = per_stage(&ctx.payload, "sleep_ms", &stage)
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let ignore_cancel = ctx.payload["ignore_cancel"].as_bool().unwrap_or(false);
    if sleep_ms > 0 {
        let sleep = tokio::time::sleep(Duration::from_millis(sleep_ms));
        if ignore_cancel {
            sleep.await;
        } else {
            tokio::select! {
                _ = sleep => {}
                _ = ctx.cancel.cancelled() => return Err(StageError::Cancelled),
            }
        }
    }
    if let Some(fail) = ctx.payload.get("fail").and_then(|f| f.get(&stage)) {
        let times = fail.get("times").and_then(Value::as_i64);
        if times.is_none_or(|t| i64::from(ctx.attempt) <= t) {
            let msg = format!("stage {stage} failed on demand (attempt {})", ctx.attempt);
            return Err(if fail["fatal"].as_bool().unwrap_or(false) {
                StageError::Fatal(msg)
            } else {
                StageError::Retryable(msg)
            });
        }
    }
    let seen: Vec<&String> = ctx
        .checkpoint
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    if ctx.payload["record"].as_bool().unwrap_or(true) {
        sqlx::query(
            "INSERT INTO test_stage_runs (job_id, stage, attempt, worker_id, pid, started_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(ctx.job_id)
        .bind(&stage)
        .bind(ctx.attempt)
        .bind(ctx.worker_id.as_ref())
        .bind(std::process::id() as i32)
        .bind(started_at)
        .execute(ctx.pool())
        .await
        .map_err(|e| StageError::Retryable(format!("recording the run: {e}")))?;
    }
    Ok(json!({
        "stage": stage,
        "pid": std::process::id(),
        "worker_id": ctx.worker_id.as_ref(),
        "attempt": ctx.attempt,
        "saw": seen,
    }))
}
