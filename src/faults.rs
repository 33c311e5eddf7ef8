//! Fault-injection points in production code paths. In a release build (no `test-aids`
//! feature) every point is an empty inline function. The aids themselves live in `testing/`
//! and are plugged in by `startup.rs`; this module only names the point.

#[cfg(feature = "test-aids")]
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::pipeline::{StageContext, StageError};

/// What a test may do at the pause point inside a stage.
pub trait StagePause: Send + Sync + std::fmt::Debug {
    fn pause<'a>(&'a self, ctx: &'a StageContext) -> BoxFuture<'a, Result<(), StageError>>;
}

#[derive(Clone, Debug, Default)]
pub struct Faults {
    #[cfg(feature = "test-aids")]
    pub(crate) pause: Option<Arc<dyn StagePause>>,
    /// `testing.pause_in_rollback_ms`: a rollback waits this long before it commits.
    #[cfg(feature = "test-aids")]
    pub(crate) rollback_pause: std::time::Duration,
}

impl Faults {
    /// Pauses inside the running stage when a test asked for it (`testing.pause_in_stage_ms`).
    #[inline]
    pub async fn pause(&self, _ctx: &StageContext) -> Result<(), StageError> {
        #[cfg(feature = "test-aids")]
        if let Some(p) = &self.pause {
            return p.pause(_ctx).await;
        }
        Ok(())
    }

    /// Pauses a rollback after its changes, before its commit, when a test asked for it.
    #[inline]
    pub async fn pause_rollback(&self) {
        #[cfg(feature = "test-aids")]
        if !self.rollback_pause.is_zero() {
            tokio::time::sleep(self.rollback_pause).await;
        }
    }
}
