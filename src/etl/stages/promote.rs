//! `promote`: in one transaction, holding the job (fencing token) and the dataset's lock,
//! copies the artifacts to `latest/…`, points the manifest at this version, bumps the cache
//! counter and records the superseded version, all committed with a `promotions` row keyed by
//! job id. A re-run finds that row and returns what it recorded, so nothing is bumped twice.
//! Versions are ordered by job id: a job older than the promoted version (a late retry) is
//! recorded as stale and superseded instead of rolling the dataset back (ADR 0005).

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};

use super::{blob_error, extract_output, payload};
use crate::datasets::{Promotion, Superseding};
use crate::etl::EtlContext;
use crate::etl::artifact::{self, MANIFEST};
use crate::pipeline::{Stage, StageContext, StageError};

pub struct Promote(pub Arc<EtlContext>);

impl Stage for Promote {
    fn name(&self) -> &str {
        "promote"
    }

    fn run(&self, ctx: StageContext) -> BoxFuture<'static, Result<Value, StageError>> {
        let etl = self.0.clone();
        async move { promote(&etl, &ctx).await }.boxed()
    }
}

fn db(e: impl std::fmt::Display) -> StageError {
    StageError::Retryable(format!("promote: {e}"))
}

async fn promote(etl: &EtlContext, ctx: &StageContext) -> Result<Value, StageError> {
    let p = payload(ctx)?;
    let ex = extract_output(ctx)?;
    let (bu_id, connector) = (p.bu_id.as_str(), p.connector.as_str());
    let mut tx = etl.db.begin().await.map_err(db)?;
    if !etl
        .jobs
        .hold_in(&mut tx, ctx.job_id, ctx.fencing_token)
        .await
        .map_err(db)?
    {
        return Err(StageError::Retryable(
            "promote: the job is no longer held by this worker (rescued or cancelled)".into(),
        ));
    }
    etl.datasets
        .lock_in(&mut tx, bu_id, connector)
        .await
        .map_err(db)?;
    if let Some(done) = etl
        .datasets
        .promotion_in(&mut tx, ctx.job_id)
        .await
        .map_err(db)?
    {
        drop(tx);
        // Committed before a crash, perhaps not yet mirrored: publish (idempotent).
        publish(etl, bu_id, connector).await?;
        return Ok(output(&done, true));
    }
    let manifest = etl
        .datasets
        .current_in(&mut tx, bu_id, connector)
        .await
        .map_err(db)?;
    let current = manifest.as_ref().map(|m| m.version);

    let (outcome, counter) = match current {
        Some(newer) if newer > ctx.job_id => {
            let stale = Superseding {
                version: ctx.job_id,
                bu_id,
                connector,
                by: newer,
                records: Some(ex.records as i64),
                checksum: Some(&ex.checksum),
            };
            etl.datasets
                .supersede_in(&mut tx, &stale)
                .await
                .map_err(db)?;
            ("stale", etl.datasets.counter_in(&mut tx).await.map_err(db)?)
        }
        _ => {
            let latest = artifact::latest_prefix(bu_id, connector);
            for (name, key) in &ex.artifacts {
                let file = key.rsplit('/').next().unwrap_or(name);
                etl.blobs
                    .copy(key, &format!("{latest}/{file}"))
                    .await
                    .map_err(|e| blob_error("copying artifacts to latest", e))?;
            }
            let latest_doc = json!({
                "bu_id": bu_id, "connector": connector, "version": ctx.job_id,
                "records": ex.records, "checksum": ex.checksum, "previous_version": current,
                "promoted_at": chrono::Utc::now(),
            });
            etl.blobs
                .put(
                    &format!("{latest}/{MANIFEST}"),
                    serde_json::to_vec_pretty(&latest_doc).expect("serialise"),
                )
                .await
                .map_err(|e| blob_error("writing the latest manifest", e))?;
            etl.faults.pause(ctx).await?;
            etl.datasets
                .set_manifest_in(
                    &mut tx,
                    bu_id,
                    connector,
                    ctx.job_id,
                    ex.records as i64,
                    &ex.checksum,
                )
                .await
                .map_err(db)?;
            if let Some(prev) = manifest.as_ref().filter(|m| m.version != ctx.job_id) {
                let replaced = Superseding {
                    version: prev.version,
                    bu_id,
                    connector,
                    by: ctx.job_id,
                    records: Some(prev.records),
                    checksum: Some(&prev.checksum),
                };
                etl.datasets
                    .supersede_in(&mut tx, &replaced)
                    .await
                    .map_err(db)?;
            }
            (
                "promoted",
                etl.datasets.bump_counter_in(&mut tx).await.map_err(db)?,
            )
        }
    };
    let promotion = Promotion {
        job_id: ctx.job_id,
        bu_id: bu_id.to_string(),
        connector: connector.to_string(),
        outcome: outcome.to_string(),
        previous_version: current,
        cache_counter: counter,
        promoted_at: chrono::Utc::now(),
    };
    etl.datasets
        .record_promotion_in(&mut tx, &promotion)
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)?;
    tracing::info!(outcome, counter, previous = ?current, "promotion committed");
    publish(etl, bu_id, connector).await?;
    Ok(output(&promotion, false))
}

/// Mirrors the dataset's current promotion (as PostgreSQL has it now, which may already be a
/// newer one) to a sink whose readers look there. Forward-only and idempotent, so re-runs and
/// late, older jobs are harmless. A failure leaves the job to retry; PostgreSQL already has
/// the promotion, and the re-run finds it committed and publishes again.
pub(crate) async fn publish(
    etl: &EtlContext,
    bu_id: &str,
    connector: &str,
) -> Result<(), StageError> {
    if !etl.sink.mirrors_promotions() {
        return Ok(());
    }
    let Some(m) = etl.datasets.manifest(bu_id, connector).await.map_err(db)? else {
        return Ok(());
    };
    let counter = etl.datasets.counter().await.map_err(db)?;
    let published = crate::sink::PublishedManifest {
        bu_id: m.bu_id,
        connector: m.connector,
        version: m.version,
        generation: m.generation,
        records: m.records,
        checksum: m.checksum,
        promoted_at: m.promoted_at,
        cache_counter: counter,
    };
    etl.sink.publish(&published).await.map_err(|e| match e {
        crate::sink::SinkError::Rejected(m) => {
            StageError::Fatal(format!("publishing the promotion: {m}"))
        }
        other => StageError::Retryable(format!("publishing the promotion: {other}")),
    })
}

fn output(p: &Promotion, rerun: bool) -> Value {
    json!({
        "outcome": p.outcome,
        "previous_version": p.previous_version,
        "cache_counter": p.cache_counter,
        "latest": artifact::latest_prefix(&p.bu_id, &p.connector),
        "already_committed": rerun,
    })
}
