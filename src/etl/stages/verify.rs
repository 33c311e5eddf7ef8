//! `verify`: the sink holds exactly the records artifact's documents for this version (count
//! and checksum).

use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use serde_json::{Value, json};

use super::{extract_output, payload, sink_error};
use crate::etl::EtlContext;
use crate::pipeline::{Stage, StageContext, StageError};
use crate::sink::Summary;

pub struct Verify(pub Arc<EtlContext>);

impl Stage for Verify {
    fn name(&self) -> &str {
        "verify"
    }

    fn run(&self, ctx: StageContext) -> BoxFuture<'static, Result<Value, StageError>> {
        let etl = self.0.clone();
        async move { verify(&etl, &ctx).await }.boxed()
    }
}

async fn verify(etl: &EtlContext, ctx: &StageContext) -> Result<Value, StageError> {
    let p = payload(ctx)?;
    let ex = extract_output(ctx)?;
    etl.faults.pause(ctx).await?;
    // The PostgreSQL sink read the version back inside the transaction that wrote it (sync's
    // checkpoint has the figures); other sinks are asked now.
    let stored = ctx.output_of("sync").and_then(|s| {
        let count = s["stored"]["count"].as_i64()?;
        let checksum = s["stored"]["checksum"].as_str()?.parse().ok()?;
        Some(Summary { count, checksum })
    });
    let got = match stored {
        Some(s) => s,
        None => etl
            .sink
            .summary(&p.dataset(ctx.job_id))
            .await
            .map_err(sink_error)?,
    };
    let want_sum: i128 = ex
        .checksum
        .parse()
        .map_err(|e| StageError::Fatal(format!("checksum in the checkpoint: {e}")))?;
    if got.count != ex.records as i64 || got.checksum != want_sum {
        return Err(StageError::Fatal(format!(
            "sink {} holds {} documents (checksum {}) for version {}, the records artifact has {} (checksum {}); retry from start to re-extract and re-sync",
            etl.sink.name(),
            got.count,
            got.checksum,
            ctx.job_id,
            ex.records,
            want_sum
        )));
    }
    Ok(json!({
        "count": got.count,
        "checksum": got.checksum.to_string(),
        "read_back": if stored.is_some() { "in sync's write" } else { "now" },
    }))
}
