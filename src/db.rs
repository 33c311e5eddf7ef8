//! Connection pool, database creation and migrations.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::configuration::DatabaseSettings;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("invalid database url: {0}")]
    Url(sqlx::Error),
    #[error("cannot reach PostgreSQL at {target}: {source}")]
    Connect { target: String, source: sqlx::Error },
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

pub fn connect_options(url: &str) -> Result<PgConnectOptions, DbError> {
    let opts = PgConnectOptions::from_str(url).map_err(DbError::Url)?;
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
    let mut conn = admin.connect().await.map_err(|source| DbError::Connect {
        target: describe(&admin),
        source,
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

/// A pool for the configured database, waiting up to `wait` for PostgreSQL to accept connections.
pub async fn connect(settings: &DatabaseSettings, wait: Duration) -> Result<PgPool, DbError> {
    let opts = connect_options(&settings.url)?;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if settings.create_if_missing
            && let Err(e) = ensure_database(&settings.url).await
        {
            if tokio::time::Instant::now() >= deadline {
                return Err(e);
            }
            tracing::warn!(error = %e, "PostgreSQL not ready; retrying");
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        }
        let attempt = PgPoolOptions::new()
            .max_connections(settings.max_connections)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts.clone())
            .await;
        match attempt {
            Ok(pool) => return Ok(pool),
            Err(source) if tokio::time::Instant::now() >= deadline => {
                return Err(DbError::Connect {
                    target: describe(&opts),
                    source,
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "PostgreSQL not ready; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}
