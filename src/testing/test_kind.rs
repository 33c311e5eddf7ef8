//! The `test` job kind for the queue's own test-suite: stages `first`, `second`, `third`, each
//! of which sleeps, fails on demand and records that it ran in `test_stage_runs`. Payload:
//! `{"sleep_ms": 200 | {"second": 3000}, "fail": {"second": {"times": 2, "fatal": false}},
//!   "ignore_cancel": false, "record": true, "unstorable": "first"}` — `times` omitted means
//!   every attempt fails; the `unstorable` stage's output holds a NUL character, which
//!   PostgreSQL's jsonb refuses (a statement refused for real, not a connection problem).

use std::time::Duration;

use chrono::Utc;
use futures_util::FutureExt;
use serde_json::{Value, json};

use super::TestRuns;
use crate::pipeline::{FnStage, JobKind, StageContext, StageError};

pub const TEST_KIND: &str = "test";
pub const TEST_STAGES: [&str; 3] = ["first", "second", "third"];

pub(super) fn kind(runs: TestRuns) -> JobKind {
    let mut test = JobKind::new(TEST_KIND);
    for name in TEST_STAGES {
        let runs = runs.clone();
        test = test.stage(FnStage::new(name, move |ctx| {
            test_stage(ctx, runs.clone()).boxed()
        }));
    }
    test
}

fn per_stage<'a>(payload: &'a Value, key: &str, stage: &str) -> Option<&'a Value> {
    match payload.get(key)? {
        Value::Object(m) => m.get(stage),
        other => Some(other),
    }
}

async fn test_stage(ctx: StageContext, runs: TestRuns) -> Result<Value, StageError> {
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
        runs.record_run(&ctx, started_at)
            .await
            .map_err(|e| StageError::Retryable(format!("recording the run: {e}")))?;
    }
    let mut output = json!({
        "stage": stage,
        "pid": std::process::id(),
        "worker_id": ctx.worker_id.as_ref(),
        "attempt": ctx.attempt,
        "saw": seen,
    });
    if ctx.payload["unstorable"].as_str() == Some(stage.as_str()) {
        output["unstorable"] = Value::String("\u{0}".into());
    }
    Ok(output)
}
