//! Fault-injection points in production code paths. In a release build (no `test-aids`
//! feature) every point is an empty inline function.

use crate::pipeline::{StageContext, StageError};

#[derive(Clone, Debug, Default)]
pub struct Faults {
    #[cfg(feature = "test-aids")]
    pub(crate) pause: Option<crate::testing::Pause>,
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
}
