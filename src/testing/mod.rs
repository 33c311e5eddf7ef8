//! Test aids, compiled only with the `test-aids` feature (scripts/test enables it; a release
//! build has none of this): the `test` job kind with its evidence table, and a pause inside a
//! chosen stage so fault-injection tests can kill a worker exactly there.

mod test_kind;

use std::time::Duration;

use sqlx::PgPool;

use crate::db::Pools;
use crate::pipeline::{Registry, StageContext, StageError};

pub use test_kind::{TEST_KIND, TEST_STAGES};

pub use crate::configuration::testing::TestingSettings;

/// The aids' own table access (`test_stage_runs`, `test_pauses`), created at startup.
#[derive(Clone, Debug)]
pub struct TestRuns {
    pool: PgPool,
}

impl TestRuns {
    pub async fn new(pools: &Pools) -> Result<Self, sqlx::Error> {
        let pool = pools.main.clone();
        // Advisory lock: several processes may start at once on one database.
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('etlq/test-aids', 0))")
            .execute(&mut *tx)
            .await?;
        for ddl in [
            "CREATE TABLE IF NOT EXISTS test_stage_runs (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, job_id bigint NOT NULL,
                stage text NOT NULL, attempt integer NOT NULL, worker_id text NOT NULL,
                pid integer NOT NULL, started_at timestamptz NOT NULL,
                finished_at timestamptz NOT NULL DEFAULT now())",
            "CREATE INDEX IF NOT EXISTS test_stage_runs_job_idx ON test_stage_runs (job_id, stage)",
            "CREATE TABLE IF NOT EXISTS test_pauses (
                job_id bigint NOT NULL, stage text NOT NULL, pid integer NOT NULL,
                at timestamptz NOT NULL DEFAULT now())",
        ] {
            sqlx::query(ddl).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(TestRuns { pool })
    }

    async fn record_run(
        &self,
        ctx: &StageContext,
        started_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO test_stage_runs (job_id, stage, attempt, worker_id, pid, started_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(ctx.job_id)
        .bind(&*ctx.stage)
        .bind(ctx.attempt)
        .bind(ctx.worker_id.as_ref())
        .bind(std::process::id() as i32)
        .bind(started_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn record_pause(&self, ctx: &StageContext) -> Result<(), sqlx::Error> {
        sqlx::query("INSERT INTO test_pauses (job_id, stage, pid) VALUES ($1, $2, $3)")
            .bind(ctx.job_id)
            .bind(&*ctx.stage)
            .bind(std::process::id() as i32)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// The pause aid: holds a stage after its first write, recording in `test_pauses` that it is
/// there, so a test can kill the process knowing exactly where it is.
#[derive(Clone, Debug)]
pub struct Pause {
    runs: TestRuns,
    settings: TestingSettings,
}

impl crate::faults::StagePause for Pause {
    fn pause<'a>(
        &'a self,
        ctx: &'a StageContext,
    ) -> futures_util::future::BoxFuture<'a, Result<(), StageError>> {
        Box::pin(self.pause_here(ctx))
    }
}

impl Pause {
    pub fn new(runs: TestRuns, settings: TestingSettings) -> Self {
        Pause { runs, settings }
    }

    async fn pause_here(&self, ctx: &StageContext) -> Result<(), StageError> {
        let ms = self.settings.pause_in_stage_ms;
        let only = &self.settings.pause_stage;
        if ms == 0 || !(only.is_empty() || only.as_str() == &*ctx.stage) {
            return Ok(());
        }
        tracing::info!(stage = %ctx.stage, ms, "pausing inside the stage (testing.pause_in_stage_ms)");
        if let Err(e) = self.runs.record_pause(ctx).await {
            tracing::warn!(error = %e, "recording the pause failed");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => Ok(()),
            _ = ctx.cancel.cancelled() => Err(StageError::Cancelled),
        }
    }
}

/// Registers the `test` kind.
pub fn register(registry: &mut Registry, runs: TestRuns) {
    registry.register(test_kind::kind(runs));
}
