//! Connection pools, database creation, migrations, and the transaction handle that lets one
//! caller span several stores (an enqueue and its audit row commit together).
//!
//! Only the stores (`queue/`, `fleet/store.rs`, `datasets/`, `audit.rs`, `sink/postgres.rs`)
//! run SQL; everything else holds a store. The tidy test enforces it.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool, Postgres};

use crate::configuration::DatabaseSettings;
use crate::retry::Backoff;

/// Days of history partitions kept ready after today (ADR 0017): made by every migrate and
/// by the history service's passes.
pub const PARTITIONS_AHEAD_DAYS: i32 = 7;

/// The schema's migrations. A migration this release does not know is left alone: during a
/// rolling deploy the next release migrates first, and a process of this one that restarts
/// (a crash, a host moved) must still start. It works on that schema because every migration
/// keeps the previous release's statements working (ADR 0025).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("./migrations")
};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database url: {0}")]
    Url(String),
    #[error("cannot reach PostgreSQL at {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error(
        "database {database:?} does not exist on {server}: check DATABASE_URL, or create it with `etlq migrate` (`etlq serve` creates it too)"
    )]
    MissingDatabase { database: String, server: String },
    /// The migrator's message, kept as text: as a source it was printed twice in `{:#}`.
    #[error("migrations failed: {0}")]
    Migrate(String),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

impl From<sqlx::migrate::MigrateError> for DbError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        DbError::Migrate(e.to_string())
    }
}

impl DbError {
    /// Connection trouble (worth retrying), as opposed to a statement PostgreSQL refused.
    pub fn is_unavailable(&self) -> bool {
        match self {
            DbError::Connect { .. } => true,
            DbError::Sql(e) => is_unavailable(e),
            _ => false,
        }
    }
}

/// Whether an sqlx error means PostgreSQL could not be reached (as opposed to refusing a
/// statement): pool timeouts, I/O errors, a closed pool, or a server shutting down.
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => true,
        sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => true,
        // 57P01 admin_shutdown, 57P02 crash_shutdown, 57P03 cannot_connect_now, 08* connection.
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57P")),
        _ => false,
    }
}

/// The innermost cause of an sqlx error, once: sqlx nests the server's message in its own
/// `Display`, which repeated it (with "at line 948") when wrapped again.
fn reason(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.message().to_string(),
        sqlx::Error::Io(io) => io.to_string(),
        other => other.to_string(),
    }
}

pub fn connect_options(url: &str) -> Result<PgConnectOptions, DbError> {
    let opts = PgConnectOptions::from_str(url).map_err(|e| DbError::Url(e.to_string()))?;
    Ok(opts
        .application_name("etlq")
        // Batched claims and completions cost enough to trigger PostgreSQL's JIT, which then
        // compiles every execution: measured at ~9% of all CPU in the queue benchmark, for
        // statements that run in milliseconds. Session-level, so other clients are unaffected.
        .options([("jit", "off")])
        .log_statements(tracing::log::LevelFilter::Trace))
}

fn describe(opts: &PgConnectOptions) -> String {
    format!(
        "{}:{}/{}",
        opts.get_host(),
        opts.get_port(),
        opts.get_database().unwrap_or("postgres")
    )
}

/// Creates the configured database when it does not exist (the embedded defaults name `etlq`).
pub async fn ensure_database(url: &str) -> Result<(), DbError> {
    let opts = connect_options(url)?;
    let Some(name) = opts.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let admin = opts.clone().database("postgres");
    let mut conn = admin.connect().await.map_err(|e| DbError::Connect {
        target: describe(&admin),
        reason: reason(&e),
    })?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let ddl = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
        match sqlx::query(sqlx::AssertSqlSafe(ddl))
            .execute(&mut conn)
            .await
        {
            Ok(_) => tracing::info!(database = %name, "created database"),
            // Another process created it concurrently.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e.into()),
        }
    }
    conn.close().await.ok();
    Ok(())
}

/// How long a pooled connection may have sat idle and still be handed out without a ping.
/// sqlx pings every connection as it comes back to the pool, so one used this recently was
/// checked a moment ago; pinging it again on acquire put a round trip in front of every
/// statement (a quarter of a single enqueue's latency). One idle longer, which the server may
/// have dropped or restarted under since, is pinged first — as pgx's pool, River's driver,
/// does by default.
pub const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// The options of every pool etlq opens: [`pool_options_pinging_after`] with
/// [`PING_IF_IDLE_FOR`].
pub fn pool_options() -> PgPoolOptions {
    pool_options_pinging_after(PING_IF_IDLE_FOR)
}

/// Pool options that hand out a connection idle for less than `idle` without a ping. One
/// that broke meanwhile fails its statement with an I/O error or the server's 57P01, which
/// callers treat as PostgreSQL unreachable (a worker retries, the API answers 503), and is
/// closed when it comes back.
pub fn pool_options_pinging_after(idle: Duration) -> PgPoolOptions {
    PgPoolOptions::new()
        .test_before_acquire(false)
        .before_acquire(move |conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= idle {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

/// The pools one process uses. `control` is small and separate so lease renewals and worker
/// heartbeats never queue behind claims, completions and sink writes on `main`: a live worker
/// must never lose a job because its own pool was busy (ARCHITECTURE.md invariant).
#[derive(Clone, Debug)]
pub struct Pools {
    pub(crate) main: PgPool,
    pub(crate) control: PgPool,
}

/// Connections of the control pool (lease renewals, heartbeats, fleet commands).
pub const CONTROL_POOL_SIZE: u32 = 2;

impl Pools {
    /// Builds the control pool beside an existing main pool (tests and benchmarks connect the
    /// main pool themselves). The control pool connects lazily.
    pub fn from_main(main: PgPool, control_acquire_timeout: Duration) -> Pools {
        let control = pool_options()
            .max_connections(CONTROL_POOL_SIZE)
            .acquire_timeout(control_acquire_timeout)
            .connect_lazy_with((*main.connect_options()).clone());
        Pools { main, control }
    }

    /// Migrates the database the pools point at.
    pub async fn migrate(&self) -> Result<(), DbError> {
        MIGRATOR.run(&self.main).await?;
        // Said once at startup, so that a mixed fleet is visible in the logs (ADR 0025).
        let applied = {
            use sqlx::migrate::Migrate;
            let mut conn = self.main.acquire().await?;
            conn.list_applied_migrations(&MIGRATOR.table_name).await?
        };
        let newer: Vec<i64> = applied
            .iter()
            .map(|m| m.version)
            .filter(|v| !MIGRATOR.version_exists(*v))
            .collect();
        if !newer.is_empty() {
            tracing::warn!(
                ?newer,
                "the database has migrations this release does not know: a newer release \
                 migrated it (a rolling deploy in progress?); running on its schema"
            );
        }
        // Finished jobs need today's partition (and the next days'): every process that
        // migrates makes sure they exist before it moves a job (ADR 0017).
        sqlx::query("SELECT etlq_ensure_history_partitions($1)")
            .bind(PARTITIONS_AHEAD_DAYS)
            .execute(&self.main)
            .await?;
        Ok(())
    }

    /// Starts a transaction on the main pool; stores take `&mut Tx` for operations that must
    /// commit together.
    pub async fn begin(&self) -> Result<Tx, DbError> {
        Ok(Tx(self.main.begin().await?))
    }

    /// Closes both pools (tests, and the end of a CLI command).
    pub async fn close(&self) {
        self.main.close().await;
        self.control.close().await;
    }
}

/// A transaction spanning several stores. Dropped without `commit`, it rolls back.
pub struct Tx(pub(crate) sqlx::Transaction<'static, Postgres>);

impl Tx {
    pub async fn commit(self) -> Result<(), DbError> {
        Ok(self.0.commit().await?)
    }

    pub(crate) fn conn(&mut self) -> &mut sqlx::PgConnection {
        &mut self.0
    }
}

/// Between attempts to reach PostgreSQL at startup: a steady poll.
const STARTUP_BACKOFF: Backoff =
    Backoff::new(Duration::from_millis(500), Duration::from_millis(500));

/// Pools for the configured database, waiting up to `wait` for PostgreSQL to accept
/// connections.
pub async fn connect(settings: &DatabaseSettings, wait: Duration) -> Result<Pools, DbError> {
    let main = connect_main(settings, wait).await?;
    Ok(Pools::from_main(
        main,
        Duration::from_millis(settings.control_acquire_timeout_ms),
    ))
}

async fn connect_main(settings: &DatabaseSettings, wait: Duration) -> Result<PgPool, DbError> {
    let opts = connect_options(&settings.url)?;
    let deadline = tokio::time::Instant::now() + wait;
    let mut pauses = STARTUP_BACKOFF.delays();
    loop {
        if settings.create_if_missing
            && let Err(e) = ensure_database(&settings.url).await
        {
            if tokio::time::Instant::now() >= deadline || !e.is_unavailable() {
                return Err(e);
            }
            tracing::warn!(error = %e, "PostgreSQL not ready; retrying");
            tokio::time::sleep(pauses.next().expect("endless")).await;
            continue;
        }
        let attempt = pool_options()
            .max_connections(settings.max_connections)
            .acquire_timeout(Duration::from_millis(settings.acquire_timeout_ms))
            .connect_with(opts.clone())
            .await;
        match attempt {
            Ok(pool) => return Ok(pool),
            // The server answered: waiting will not create the database.
            Err(sqlx::Error::Database(d)) if d.code().as_deref() == Some("3D000") => {
                return Err(DbError::MissingDatabase {
                    database: opts.get_database().unwrap_or("postgres").to_string(),
                    server: format!("{}:{}", opts.get_host(), opts.get_port()),
                });
            }
            Err(e) if tokio::time::Instant::now() >= deadline || !is_unavailable(&e) => {
                return Err(DbError::Connect {
                    target: describe(&opts),
                    reason: reason(&e),
                });
            }
            Err(e) => {
                tracing::warn!(error = %reason(&e), "PostgreSQL not ready; retrying");
                tokio::time::sleep(pauses.next().expect("endless")).await;
            }
        }
    }
}
