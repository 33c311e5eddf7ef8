//! `FleetStore`: the only owner of the `workers` table.

use std::time::Duration;

use sqlx::PgPool;

use super::{Command, FleetStatus, WorkerInfo, WorkerRow};
use crate::db::Pools;
use crate::lifecycle::Status;
use crate::queue::CONTROL_CHANNEL;

#[derive(Debug, thiserror::Error)]
#[error("fleet store: {0}")]
pub struct FleetError(#[from] sqlx::Error);

impl FleetError {
    pub fn is_unavailable(&self) -> bool {
        crate::db::is_unavailable(&self.0)
    }
}

#[derive(Debug, Clone)]
pub struct FleetStore {
    main: PgPool,
    /// Heartbeats use the control pool: a busy main pool must not make a live worker look dead.
    control: PgPool,
}

impl FleetStore {
    pub fn new(pools: &Pools) -> Self {
        FleetStore {
            main: pools.main.clone(),
            control: pools.control.clone(),
        }
    }

    /// Writes this process's heartbeat (inserting its row if missing) and returns any pending
    /// fleet command as `(command, seq)`.
    pub async fn heartbeat(
        &self,
        me: &WorkerInfo,
        status: Status,
    ) -> Result<Option<(Command, i64)>, FleetError> {
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
        .fetch_one(&self.control)
        .await?;
        Ok(row
            .0
            .as_deref()
            .and_then(Command::parse)
            .map(|c| (c, row.1)))
    }

    pub async fn mark_stopped(&self, id: &str, status: Status) -> Result<(), FleetError> {
        sqlx::query(
            "UPDATE workers SET stopped_at = now(), heartbeat_at = now(), mode = $2, in_flight = $3 WHERE id = $1",
        )
        .bind(id)
        .bind(status.mode.as_str())
        .bind(status.in_flight as i32)
        .execute(&self.control)
        .await?;
        Ok(())
    }

    pub async fn live_workers(&self, ttl: Duration) -> Result<Vec<WorkerRow>, FleetError> {
        Ok(sqlx::query_as::<_, WorkerRow>(
            r#"
            SELECT id, host, pid, version, roles, mode, in_flight, concurrency, started_at, heartbeat_at
            FROM workers
            WHERE stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => $1)
            ORDER BY started_at, id
            "#,
        )
        .bind(ttl.as_secs_f64())
        .fetch_all(&self.main)
        .await?)
    }

    pub async fn status(&self, ttl: Duration) -> Result<FleetStatus, FleetError> {
        Ok(FleetStatus::of(self.live_workers(ttl).await?))
    }

    /// Addresses `command` to every live worker and wakes them; returns how many were
    /// addressed.
    pub async fn command(&self, command: Command, ttl: Duration) -> Result<u64, FleetError> {
        self.command_where(command, ttl, None).await
    }

    /// Addresses `command` to one live worker and wakes it; false when no live worker has
    /// that id.
    pub async fn command_one(
        &self,
        id: &str,
        command: Command,
        ttl: Duration,
    ) -> Result<bool, FleetError> {
        Ok(self.command_where(command, ttl, Some(id)).await? == 1)
    }

    async fn command_where(
        &self,
        command: Command,
        ttl: Duration,
        id: Option<&str>,
    ) -> Result<u64, FleetError> {
        let mut tx = self.main.begin().await?;
        let n = sqlx::query(
            r#"
            UPDATE workers SET command = $1, command_seq = command_seq + 1
            WHERE stopped_at IS NULL AND heartbeat_at > now() - make_interval(secs => $2)
              AND ($3::text IS NULL OR id = $3)
            "#,
        )
        .bind(command.as_str())
        .bind(ttl.as_secs_f64())
        .bind(id)
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
    pub async fn delete_stale(&self, older_than: Duration) -> Result<u64, FleetError> {
        Ok(sqlx::query(
            "DELETE FROM workers WHERE heartbeat_at < now() - make_interval(secs => $1)",
        )
        .bind(older_than.as_secs_f64())
        .execute(&self.main)
        .await?
        .rows_affected())
    }
}
