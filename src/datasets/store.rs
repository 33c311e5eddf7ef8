//! `DatasetStore`: the only owner of `dataset_manifests`, `promotions`, `superseded_versions`
//! and `cache_manifest`. Promotion steps take the caller's transaction so the promote stage
//! can copy blobs between them while holding the dataset's lock.

use std::time::Duration;

use sqlx::PgPool;

use super::{
    DatasetView, History, Manifest, Promotion, Rollback, SupersededState, SupersededVersion,
    Superseding,
};
use crate::db::{Pools, Tx};

#[derive(Debug, thiserror::Error)]
#[error("dataset store: {0}")]
pub struct DatasetError(#[from] pub sqlx::Error);

impl DatasetError {
    pub fn is_unavailable(&self) -> bool {
        crate::db::is_unavailable(&self.0)
    }
}

#[derive(Debug, Clone)]
pub struct DatasetStore {
    pool: PgPool,
}

impl DatasetStore {
    pub fn new(pools: &Pools) -> Self {
        DatasetStore {
            pool: pools.main.clone(),
        }
    }

    /// Serialises promotions of one dataset until the transaction ends.
    pub async fn lock_in(
        &self,
        tx: &mut Tx,
        bu_id: &str,
        connector: &str,
    ) -> Result<(), DatasetError> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!("etlq/dataset/{bu_id}/{connector}"))
            .execute(tx.conn())
            .await?;
        Ok(())
    }

    /// The promotion this job already committed, if any (a re-run after a crash).
    pub async fn promotion_in(
        &self,
        tx: &mut Tx,
        job_id: i64,
    ) -> Result<Option<Promotion>, DatasetError> {
        Ok(
            sqlx::query_as::<_, Promotion>("SELECT * FROM promotions WHERE job_id = $1")
                .bind(job_id)
                .fetch_optional(tx.conn())
                .await?,
        )
    }

    /// The manifest of (bu_id, connector) as this transaction sees it.
    pub async fn current_in(
        &self,
        tx: &mut Tx,
        bu_id: &str,
        connector: &str,
    ) -> Result<Option<Manifest>, DatasetError> {
        Ok(
            sqlx::query_as("SELECT * FROM dataset_manifests WHERE bu_id = $1 AND connector = $2")
                .bind(bu_id)
                .bind(connector)
                .fetch_optional(tx.conn())
                .await?,
        )
    }

    /// Points (bu_id, connector) at `version`.
    pub async fn set_manifest_in(
        &self,
        tx: &mut Tx,
        bu_id: &str,
        connector: &str,
        version: i64,
        records: i64,
        checksum: &str,
    ) -> Result<Manifest, DatasetError> {
        Ok(sqlx::query_as::<_, Manifest>(
            "INSERT INTO dataset_manifests (bu_id, connector, version, records, checksum)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (bu_id, connector) DO UPDATE
                SET version = EXCLUDED.version, records = EXCLUDED.records,
                    checksum = EXCLUDED.checksum, generation = dataset_manifests.generation + 1,
                    promoted_at = now()
             RETURNING *",
        )
        .bind(bu_id)
        .bind(connector)
        .bind(version)
        .bind(records)
        .bind(checksum)
        .fetch_one(tx.conn())
        .await?)
    }

    /// Schedules `v` for cleanup once its rollback window has passed. A version that was
    /// superseded before (and rolled back to since) starts a new window.
    pub async fn supersede_in(&self, tx: &mut Tx, v: &Superseding<'_>) -> Result<(), DatasetError> {
        sqlx::query(
            "INSERT INTO superseded_versions
                 (version, bu_id, connector, superseded_by, records, checksum)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (version) DO UPDATE
                SET superseded_by = EXCLUDED.superseded_by, superseded_at = now(),
                    records = coalesce(EXCLUDED.records, superseded_versions.records),
                    checksum = coalesce(EXCLUDED.checksum, superseded_versions.checksum)
              WHERE superseded_versions.deleted_at IS NULL
                AND superseded_versions.delete_started_at IS NULL",
        )
        .bind(v.version)
        .bind(v.bu_id)
        .bind(v.connector)
        .bind(v.by)
        .bind(v.records)
        .bind(v.checksum)
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    /// A superseded version of (bu_id, connector) as a rollback sees it (the database's clock
    /// decides whether it is still within `retention`).
    pub async fn superseded_in(
        &self,
        tx: &mut Tx,
        bu_id: &str,
        connector: &str,
        version: i64,
        retention: Duration,
    ) -> Result<Option<SupersededState>, DatasetError> {
        Ok(sqlx::query_as(
            "SELECT version, records, checksum,
                    deleted_at IS NULL AND delete_started_at IS NULL
                      AND superseded_at + make_interval(secs => $4) > now() AS restorable
               FROM superseded_versions
              WHERE bu_id = $1 AND connector = $2 AND version = $3",
        )
        .bind(bu_id)
        .bind(connector)
        .bind(version)
        .bind(retention.as_secs_f64())
        .fetch_optional(tx.conn())
        .await?)
    }

    /// `version` is promoted again: it leaves the superseded list.
    pub async fn unsupersede_in(&self, tx: &mut Tx, version: i64) -> Result<(), DatasetError> {
        sqlx::query("DELETE FROM superseded_versions WHERE version = $1")
            .bind(version)
            .execute(tx.conn())
            .await?;
        Ok(())
    }

    pub async fn record_rollback_in(&self, tx: &mut Tx, r: &Rollback) -> Result<(), DatasetError> {
        sqlx::query(
            "INSERT INTO rollbacks (bu_id, connector, generation, from_version, to_version,
                                    cache_counter, actor, reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&r.bu_id)
        .bind(&r.connector)
        .bind(r.generation)
        .bind(r.from_version)
        .bind(r.to_version)
        .bind(r.cache_counter)
        .bind(&r.actor)
        .bind(&r.reason)
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    /// A dataset's history: its promotions and rollbacks, newest first, and the versions
    /// still kept (with when each may no longer be rolled back to).
    pub async fn history(
        &self,
        bu_id: &str,
        connector: &str,
        retention: Duration,
        limit: i64,
    ) -> Result<History, DatasetError> {
        let promotions = sqlx::query_as(
            "SELECT * FROM promotions WHERE bu_id = $1 AND connector = $2
              ORDER BY job_id DESC LIMIT $3",
        )
        .bind(bu_id)
        .bind(connector)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let rollbacks = sqlx::query_as(
            "SELECT * FROM rollbacks WHERE bu_id = $1 AND connector = $2
              ORDER BY generation DESC LIMIT $3",
        )
        .bind(bu_id)
        .bind(connector)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let kept = sqlx::query_as(
            "SELECT version, superseded_by, superseded_at, records,
                    superseded_at + make_interval(secs => $3) AS restorable_until
               FROM superseded_versions
              WHERE bu_id = $1 AND connector = $2
                AND deleted_at IS NULL AND delete_started_at IS NULL
              ORDER BY version DESC",
        )
        .bind(bu_id)
        .bind(connector)
        .bind(retention.as_secs_f64())
        .fetch_all(&self.pool)
        .await?;
        Ok(History {
            promotions,
            rollbacks,
            kept,
        })
    }

    /// Bumps the cache counter readers poll; returns the new value.
    pub async fn bump_counter_in(&self, tx: &mut Tx) -> Result<i64, DatasetError> {
        Ok(sqlx::query_scalar(
            "UPDATE cache_manifest SET counter = counter + 1, updated_at = now() RETURNING counter",
        )
        .fetch_one(tx.conn())
        .await?)
    }

    pub async fn counter_in(&self, tx: &mut Tx) -> Result<i64, DatasetError> {
        Ok(sqlx::query_scalar("SELECT counter FROM cache_manifest")
            .fetch_one(tx.conn())
            .await?)
    }

    /// Records the promote stage's outcome, keyed by job id.
    pub async fn record_promotion_in(
        &self,
        tx: &mut Tx,
        p: &Promotion,
    ) -> Result<(), DatasetError> {
        sqlx::query(
            "INSERT INTO promotions (job_id, bu_id, connector, outcome, previous_version, cache_counter)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(p.job_id)
        .bind(&p.bu_id)
        .bind(&p.connector)
        .bind(&p.outcome)
        .bind(p.previous_version)
        .bind(p.cache_counter)
        .execute(tx.conn())
        .await?;
        Ok(())
    }

    /// Superseded versions past `retention` that nothing points at any more, and those a
    /// cleaner started on and did not finish.
    pub async fn due_superseded(
        &self,
        retention: Duration,
        limit: i64,
    ) -> Result<Vec<SupersededVersion>, DatasetError> {
        Ok(sqlx::query_as(
            "SELECT s.version, s.bu_id, s.connector FROM superseded_versions s
              WHERE s.deleted_at IS NULL
                AND (s.delete_started_at IS NOT NULL
                     OR s.superseded_at < now() - make_interval(secs => $1))
                AND NOT EXISTS (SELECT 1 FROM dataset_manifests m WHERE m.version = s.version)
              ORDER BY s.superseded_at LIMIT $2",
        )
        .bind(retention.as_secs_f64())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Takes `v` for deletion under the dataset's lock, so a rollback can't point at it while
    /// its documents go: false when a rollback got there first.
    pub async fn claim_for_deletion(&self, v: &SupersededVersion) -> Result<bool, DatasetError> {
        let mut tx = Tx(self.pool.begin().await?);
        self.lock_in(&mut tx, &v.bu_id, &v.connector).await?;
        let claimed = sqlx::query(
            "UPDATE superseded_versions SET delete_started_at = coalesce(delete_started_at, now())
              WHERE version = $1 AND deleted_at IS NULL
                AND NOT EXISTS (SELECT 1 FROM dataset_manifests m WHERE m.version = $1)",
        )
        .bind(v.version)
        .execute(tx.conn())
        .await?
        .rows_affected()
            == 1;
        tx.0.commit().await?;
        Ok(claimed)
    }

    pub async fn mark_deleted(&self, version: i64) -> Result<(), DatasetError> {
        sqlx::query("UPDATE superseded_versions SET deleted_at = now() WHERE version = $1")
            .bind(version)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The promotion job `job_id` committed, if any.
    pub async fn promotion(&self, job_id: i64) -> Result<Option<Promotion>, DatasetError> {
        Ok(
            sqlx::query_as::<_, Promotion>("SELECT * FROM promotions WHERE job_id = $1")
                .bind(job_id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// The promoted version of (bu_id, connector), if any.
    pub async fn manifest(
        &self,
        bu_id: &str,
        connector: &str,
    ) -> Result<Option<Manifest>, DatasetError> {
        Ok(
            sqlx::query_as("SELECT * FROM dataset_manifests WHERE bu_id = $1 AND connector = $2")
                .bind(bu_id)
                .bind(connector)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// The cache counter readers poll.
    pub async fn counter(&self) -> Result<i64, DatasetError> {
        Ok(sqlx::query_scalar("SELECT counter FROM cache_manifest")
            .fetch_one(&self.pool)
            .await?)
    }

    /// Every dataset with its `recent` latest promotions, newest first.
    pub async fn list(&self, recent: i64) -> Result<Vec<DatasetView>, DatasetError> {
        let manifests: Vec<Manifest> =
            sqlx::query_as("SELECT * FROM dataset_manifests ORDER BY bu_id, connector")
                .fetch_all(&self.pool)
                .await?;
        let promotions: Vec<Promotion> = sqlx::query_as(
            "SELECT * FROM (
                 SELECT p.*, row_number() OVER (PARTITION BY bu_id, connector ORDER BY job_id DESC) AS n
                 FROM promotions p
             ) r WHERE n <= $1 ORDER BY bu_id, connector, job_id DESC",
        )
        .bind(recent)
        .fetch_all(&self.pool)
        .await?;
        Ok(manifests
            .into_iter()
            .map(|m| {
                let recent = promotions
                    .iter()
                    .filter(|p| p.bu_id == m.bu_id && p.connector == m.connector)
                    .cloned()
                    .collect();
                DatasetView {
                    manifest: m,
                    recent,
                }
            })
            .collect())
    }
}
