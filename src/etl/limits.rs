//! How many extracts and syncs one process runs at once (`etl.max_concurrent_extracts`,
//! `etl.max_concurrent_syncs`). A job past the limit waits for a slot inside its stage,
//! holding its lease; a drain or cancel ends the wait at once.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::configuration::EtlSettings;
use crate::pipeline::{StageContext, StageError};

pub struct StageLimits {
    extract: Arc<Semaphore>,
    sync: Arc<Semaphore>,
}

impl StageLimits {
    pub fn new(settings: &EtlSettings) -> Self {
        StageLimits {
            extract: Arc::new(Semaphore::new(settings.extract_slots())),
            sync: Arc::new(Semaphore::new(settings.sync_slots())),
        }
    }

    /// A slot for one extract, held until dropped.
    pub async fn extract(&self, ctx: &StageContext) -> Result<OwnedSemaphorePermit, StageError> {
        wait(&self.extract, ctx).await
    }

    /// A slot for one sync, held until dropped.
    pub async fn sync(&self, ctx: &StageContext) -> Result<OwnedSemaphorePermit, StageError> {
        wait(&self.sync, ctx).await
    }
}

async fn wait(
    slots: &Arc<Semaphore>,
    ctx: &StageContext,
) -> Result<OwnedSemaphorePermit, StageError> {
    tokio::select! {
        permit = slots.clone().acquire_owned() => {
            Ok(permit.expect("the semaphore is never closed"))
        }
        _ = ctx.cancel.cancelled() => Err(StageError::Cancelled),
    }
}
