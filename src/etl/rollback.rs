//! Rolling a dataset back to a version it superseded (issue 20): in one transaction, holding
//! the dataset's lock, the manifest points at the older version (generation + 1), the cache
//! counter is bumped once, the replaced version enters the superseded list and the restored one
//! leaves it, with a `rollbacks` row and an audit row naming who and why. Then `latest/` and a
//! sink's own manifest (Cosmos DB) follow what PostgreSQL now says.
//!
//! Asking again for the version already promoted changes nothing and publishes again, so a
//! client that lost its answer (or a process killed after the commit) can simply retry: one
//! effect, whatever happened.

use serde::Serialize;
use serde_json::json;

use super::EtlContext;
use super::artifact::{self, MANIFEST, RECORDS, REJECTED, REPORT};
use super::stages::promote;
use crate::audit::AuditEntry;
use crate::datasets::{Manifest, Rollback, Superseding};
use crate::pipeline::StageError;
use crate::queue::Actor;
use crate::sink::Dataset;

#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("no dataset {bu_id}/{connector} has been promoted")]
    NoDataset { bu_id: String, connector: String },
    #[error("version {0} is not a superseded version of this dataset")]
    UnknownVersion(i64),
    #[error(
        "version {version} is past its rollback window (etl.superseded_retention_hours = {hours}) or being deleted"
    )]
    Expired { version: i64, hours: u64 },
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Internal(String),
}

/// What a rollback did.
#[derive(Debug, Clone, Serialize)]
pub struct RolledBack {
    /// False when the version asked for was already promoted (nothing changed).
    pub changed: bool,
    pub manifest: Manifest,
    pub from_version: i64,
    pub cache_counter: i64,
}

fn db(e: impl std::fmt::Display + IsUnavailable) -> RollbackError {
    if e.unavailable() {
        RollbackError::Unavailable(format!("PostgreSQL: {e}"))
    } else {
        RollbackError::Internal(e.to_string())
    }
}

/// Errors that can tell an outage from the rest.
trait IsUnavailable {
    fn unavailable(&self) -> bool;
}
impl IsUnavailable for crate::datasets::DatasetError {
    fn unavailable(&self) -> bool {
        self.is_unavailable()
    }
}
impl IsUnavailable for crate::db::DbError {
    fn unavailable(&self) -> bool {
        self.is_unavailable()
    }
}

pub struct RollbackRequest<'a> {
    pub bu_id: &'a str,
    pub connector: &'a str,
    pub version: i64,
    pub reason: &'a str,
    pub actor: &'a Actor,
}

pub async fn rollback(
    etl: &EtlContext,
    r: &RollbackRequest<'_>,
) -> Result<RolledBack, RollbackError> {
    let (bu_id, connector) = (r.bu_id, r.connector);
    let mut tx = etl.db.begin().await.map_err(db)?;
    etl.datasets
        .lock_in(&mut tx, bu_id, connector)
        .await
        .map_err(db)?;
    let current = etl
        .datasets
        .current_in(&mut tx, bu_id, connector)
        .await
        .map_err(db)?
        .ok_or_else(|| RollbackError::NoDataset {
            bu_id: bu_id.into(),
            connector: connector.into(),
        })?;
    if current.version == r.version {
        drop(tx);
        publish(etl, &current).await?;
        let cache_counter = etl.datasets.counter().await.map_err(db)?;
        return Ok(RolledBack {
            changed: false,
            from_version: current.version,
            manifest: current,
            cache_counter,
        });
    }
    let hours = etl.settings.superseded_retention_hours;
    let retention = std::time::Duration::from_secs(hours * 3600);
    let target = etl
        .datasets
        .superseded_in(&mut tx, bu_id, connector, r.version, retention)
        .await
        .map_err(db)?
        .ok_or(RollbackError::UnknownVersion(r.version))?;
    if !target.restorable {
        return Err(RollbackError::Expired {
            version: r.version,
            hours,
        });
    }
    let (records, checksum) = match (target.records, target.checksum) {
        (Some(n), Some(c)) => (n, c),
        // Superseded before its counts were kept: the sink says what the version holds.
        _ => {
            let ds = Dataset {
                bu_id: bu_id.into(),
                connector: connector.into(),
                version: r.version,
            };
            let s = etl
                .sink
                .summary(&ds)
                .await
                .map_err(|e| RollbackError::Unavailable(e.to_string()))?;
            (s.count, s.checksum.to_string())
        }
    };
    let manifest = etl
        .datasets
        .set_manifest_in(&mut tx, bu_id, connector, r.version, records, &checksum)
        .await
        .map_err(db)?;
    etl.datasets
        .unsupersede_in(&mut tx, r.version)
        .await
        .map_err(db)?;
    let replaced = Superseding {
        version: current.version,
        bu_id,
        connector,
        by: r.version,
        records: Some(current.records),
        checksum: Some(&current.checksum),
    };
    etl.datasets
        .supersede_in(&mut tx, &replaced)
        .await
        .map_err(db)?;
    let cache_counter = etl.datasets.bump_counter_in(&mut tx).await.map_err(db)?;
    let row = Rollback {
        bu_id: bu_id.into(),
        connector: connector.into(),
        generation: manifest.generation,
        from_version: current.version,
        to_version: r.version,
        cache_counter,
        actor: r.actor.id.clone(),
        reason: r.reason.into(),
        at: manifest.promoted_at,
    };
    etl.datasets
        .record_rollback_in(&mut tx, &row)
        .await
        .map_err(db)?;
    etl.audit
        .record_in(
            &mut tx,
            &AuditEntry {
                actor: r.actor,
                action: "dataset_rollback",
                job_id: Some(r.version),
                bu_id: Some(bu_id),
                connector: Some(connector),
                detail: json!({
                    "from_version": current.version, "to_version": r.version,
                    "generation": manifest.generation, "reason": r.reason,
                }),
            },
        )
        .await
        .map_err(|e| db(crate::db::DbError::from(e)))?;
    etl.faults.pause_rollback().await;
    tx.commit().await.map_err(db)?;
    tracing::info!(
        bu_id,
        connector,
        from = current.version,
        to = r.version,
        generation = manifest.generation,
        "dataset rolled back"
    );
    publish(etl, &manifest).await?;
    Ok(RolledBack {
        changed: true,
        from_version: current.version,
        manifest,
        cache_counter,
    })
}

/// `latest/` and the sink's own manifest follow PostgreSQL's (idempotent, forward-only).
async fn publish(etl: &EtlContext, m: &Manifest) -> Result<(), RollbackError> {
    let unavailable = |what: &str, e: &dyn std::fmt::Display| {
        RollbackError::Unavailable(format!(
            "{what}: {e}; the rollback is committed, ask again to finish publishing it"
        ))
    };
    let latest = artifact::latest_prefix(&m.bu_id, &m.connector);
    let run = artifact::run_prefix(m.version);
    for file in [RECORDS, REJECTED, REPORT] {
        match etl
            .blobs
            .copy(&format!("{run}/{file}"), &format!("{latest}/{file}"))
            .await
        {
            Ok(()) | Err(crate::storage::StorageError::NotFound(_)) => {}
            Err(e) => return Err(unavailable("copying artifacts to latest", &e)),
        }
    }
    let doc = json!({
        "bu_id": m.bu_id, "connector": m.connector, "version": m.version,
        "records": m.records, "checksum": m.checksum, "generation": m.generation,
        "promoted_at": m.promoted_at,
    });
    etl.blobs
        .put(
            &format!("{latest}/{MANIFEST}"),
            serde_json::to_vec_pretty(&doc).expect("serialise"),
        )
        .await
        .map_err(|e| unavailable("writing the latest manifest", &e))?;
    promote::publish(etl, &m.bu_id, &m.connector)
        .await
        .map_err(|e| match e {
            StageError::Fatal(m) => RollbackError::Internal(m),
            other => unavailable("publishing to the sink", &other),
        })
}
