//! What the orphan cleaner asks of the jobs table: dead and cancelled ETL jobs whose outputs
//! (a sink version, `runs/{job}/`) are still kept, held while they go, and which stored
//! uploads a job still names.

use std::time::Duration;

use super::{JobStore, QueueError};
use crate::db::Tx;

/// A finished-but-failed ETL job whose outputs are still kept.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Abandoned {
    pub id: i64,
    pub bu_id: Option<String>,
    pub connector: Option<String>,
}

impl JobStore {
    /// ETL jobs dead or cancelled for longer than `grace` whose outputs are still kept, oldest
    /// first.
    pub async fn abandoned(
        &self,
        grace: Duration,
        limit: i64,
    ) -> Result<Vec<Abandoned>, QueueError> {
        Ok(sqlx::query_as(
            "SELECT id, payload->>'bu_id' AS bu_id, payload->>'connector' AS connector
               FROM jobs
              WHERE kind = 'etl' AND state IN ('dead', 'cancelled') AND outputs_reclaimed_at IS NULL
                AND finished_at < now() - make_interval(secs => $1)
              ORDER BY finished_at LIMIT $2",
        )
        .bind(grace.as_secs_f64())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Locks job `id` while its outputs are deleted, if it is still dead or cancelled (a retry
    /// waits for the transaction, then starts from the first stage).
    pub async fn hold_abandoned_in(&self, tx: &mut Tx, id: i64) -> Result<bool, QueueError> {
        Ok(sqlx::query_scalar::<_, i64>(
            "SELECT id FROM jobs
              WHERE id = $1 AND state IN ('dead', 'cancelled') AND outputs_reclaimed_at IS NULL
              FOR UPDATE",
        )
        .bind(id)
        .fetch_optional(tx.conn())
        .await?
        .is_some())
    }

    pub async fn mark_reclaimed_in(&self, tx: &mut Tx, id: i64) -> Result<(), QueueError> {
        sqlx::query("UPDATE jobs SET outputs_reclaimed_at = now() WHERE id = $1")
            .bind(id)
            .execute(tx.conn())
            .await?;
        Ok(())
    }

    /// Those of `keys` some ETL job names as its source.
    pub async fn referenced_sources(&self, keys: &[String]) -> Result<Vec<String>, QueueError> {
        Ok(sqlx::query_scalar(
            "SELECT DISTINCT payload->>'source_blob' FROM jobs
              WHERE kind = 'etl' AND payload->>'source_blob' = ANY($1)",
        )
        .bind(keys)
        .fetch_all(&self.pool)
        .await?)
    }
}
