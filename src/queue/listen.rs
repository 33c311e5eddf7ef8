//! LISTEN/NOTIFY wake-ups for workers: new jobs, cancellations and fleet commands.

use sqlx::postgres::PgListener;

use super::{CANCEL_CHANNEL, CONTROL_CHANNEL, JOBS_CHANNEL, JobStore, PushedJob, QueueError};

/// What a notification means to a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// Jobs became claimable.
    JobsAvailable,
    /// A job was pushed to this worker (ADR 0020): it is running under this worker's lease.
    Pushed(PushedJob),
    /// This job was cancelled: stop its stage.
    Cancelled(i64),
    /// A fleet command was issued: read it from the `workers` row.
    Fleet,
    /// The connection was lost and re-established: notifications may have been missed.
    Reconnected,
}

/// A listening connection (sqlx's listener reconnects by itself).
pub struct Listener {
    inner: PgListener,
    push: Option<String>,
}

impl JobStore {
    /// Opens a connection listening on the queue's channels. It is a connection of its own,
    /// outside the main pool (a listener holds its connection for good). With `push`, it also
    /// hears the jobs pushed to this worker on that channel.
    pub async fn listen(&self, push: Option<&str>) -> Result<Listener, QueueError> {
        let own = crate::db::pool_options()
            .max_connections(1)
            .connect_lazy_with((*self.pool.connect_options()).clone());
        let mut l = PgListener::connect_with(&own).await?;
        l.listen_all(
            [JOBS_CHANNEL, CANCEL_CHANNEL, CONTROL_CHANNEL]
                .into_iter()
                .chain(push),
        )
        .await?;
        Ok(Listener {
            inner: l,
            push: push.map(str::to_owned),
        })
    }
}

impl Listener {
    /// The server process of the listening connection (it reconnects: ask again after
    /// [`Notification::Reconnected`]). Notifications that arrive meanwhile are kept.
    pub async fn backend_pid(&mut self) -> Result<i32, QueueError> {
        Ok(sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut self.inner)
            .await?)
    }

    pub async fn recv(&mut self) -> Result<Notification, QueueError> {
        loop {
            match self.inner.try_recv().await? {
                None => return Ok(Notification::Reconnected),
                Some(n) => match n.channel() {
                    JOBS_CHANNEL => return Ok(Notification::JobsAvailable),
                    c if Some(c) == self.push.as_deref() => {
                        match serde_json::from_str::<PushedJob>(n.payload()) {
                            Ok(job) => return Ok(Notification::Pushed(job)),
                            // Only etlq's enqueue writes here; a job it cannot read is left
                            // to the withdrawal, which starts it from its row.
                            Err(e) => tracing::error!(error = %e, "unreadable push notification"),
                        }
                    }
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
