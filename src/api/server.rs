//! The HTTP server, bounded: at most `max_connections` served at once, a time limit on
//! request headers (which hyper also applies while a kept-alive connection waits for its next
//! request), per-request limits in the router (body pauses, upload and request timeouts),
//! and a shutdown that is graceful for `shutdown_grace` and then closes what is left — so a
//! slow client can never hold a drain or a deploy hostage.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::configuration::ApiSettings;

/// After a failed accept (EMFILE and friends): back off instead of spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);
/// Clean-ups of cut-off requests get at least this long at shutdown, whatever grace is left.
const MIN_CLEANUP_WAIT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub header_read_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}

impl ServerConfig {
    pub fn from_settings(a: &ApiSettings) -> Self {
        ServerConfig {
            header_read_timeout: Duration::from_millis(a.header_read_timeout_ms),
            max_connections: a.max_connections,
            shutdown_grace: Duration::from_millis(a.shutdown_grace_ms),
        }
    }
}

/// Serves `app` on `listener` until `stop` fires, then shuts down within the grace period.
/// `cleanup` holds work requests leave behind when they are cut off (deleting a partly
/// stored upload); it is awaited, within the grace period, before returning.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    config: ServerConfig,
    stop: CancellationToken,
    cleanup: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(config.max_connections));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.header_read_timeout)
        .keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let service = TowerToHyperService::new(app);
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let accepted = tokio::select! {
            _ = stop.cancelled() => break,
            a = listener.accept() => a,
        };
        // Reap finished connection tasks as we go.
        while connections.try_join_next().is_some() {}
        let (stream, _) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service.clone())
            .into_owned();
        let conn = graceful.watch(conn);
        connections.spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    let started = tokio::time::Instant::now();
    let open = connections.len();
    if tokio::time::timeout(config.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            open,
            grace_ms = config.shutdown_grace.as_millis() as u64,
            "HTTP shutdown grace expired: closing the remaining connections"
        );
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
    cleanup.close();
    let left = config.shutdown_grace.saturating_sub(started.elapsed());
    let _ = tokio::time::timeout(left.max(MIN_CLEANUP_WAIT), cleanup.wait()).await;
}
