//! LISTEN/NOTIFY wake-ups for workers: new jobs, cancellations and fleet commands.

use sqlx::postgres::PgListener;

use super::{CANCEL_CHANNEL, CONTROL_CHANNEL, JOBS_CHANNEL, JobStore, QueueError};

/// What a notification means to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// Jobs became claimable.
    JobsAvailable,
    /// This job was cancelled: stop its stage.
    Cancelled(i64),
    /// A fleet command was issued: read it from the `workers` row.
    Fleet,
    /// The connection was lost and re-established: notifications may have been missed.
    Reconnected,
}

/// A listening connection (sqlx's listener reconnects by itself).
pub struct Listener(PgListener);

impl JobStore {
    /// Opens a connection listening on the queue's channels. It is a connection of its own,
    /// outside the main pool (a listener holds its connection for good).
    pub async fn listen(&self) -> Result<Listener, QueueError> {
        let own = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with((*self.pool.connect_options()).clone());
        let mut l = PgListener::connect_with(&own).await?;
        l.listen_all([JOBS_CHANNEL, CANCEL_CHANNEL, CONTROL_CHANNEL])
            .await?;
        Ok(Listener(l))
    }
}

impl Listener {
    pub async fn recv(&mut self) -> Result<Notification, QueueError> {
        loop {
            match self.0.try_recv().await? {
                None => return Ok(Notification::Reconnected),
                Some(n) => match n.channel() {
                    JOBS_CHANNEL => return Ok(Notification::JobsAvailable),
                    CANCEL_CHANNEL => {
                        if let Ok(id) = n.payload().parse::<i64>() {
                            return Ok(Notification::Cancelled(id));
                        }
                    }
                    _ => return Ok(Notification::Fleet),
                },
            }
        }
    }
}
