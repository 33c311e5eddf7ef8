//! What the worker did, as events tests can wait on (River's `TestSignals`): a test waits for
//! "the worker was told about the new job" instead of sleeping and hoping it had a chance.
//! Cheap when nobody listens (a broadcast send without receivers).

use tokio::sync::broadcast;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// The listener delivered a "jobs available" notification to the claim loops.
    JobsNotified,
    /// A claim returned these jobs (a pushed job is also told as claimed, alone).
    Claimed(Vec<i64>),
    /// A job pushed to this worker started from its notification (ADR 0020).
    Pushed(i64),
    /// A job pushed to this worker started when the worker withdrew its advertisement: its
    /// notification had not arrived.
    Adopted(i64),
}

#[derive(Clone, Debug)]
pub struct Signals(broadcast::Sender<Signal>);

impl Default for Signals {
    fn default() -> Self {
        Signals(broadcast::channel(1024).0)
    }
}

impl Signals {
    pub(crate) fn emit(&self, s: Signal) {
        let _ = self.0.send(s);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.0.subscribe()
    }
}
