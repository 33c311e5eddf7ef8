//! The default sink: the `sink_documents` table, partitioned by dataset version (ADR 0009).
//!
//! A version is written into a fresh table of its own, not yet attached (readers cannot see
//! it): `COPY` (binary) on up to [`COPY_STREAMS`] connections at once, then, in one
//! transaction, its primary key built in one sorted pass, its count and checksum read back
//! (verify needs no second read), and the table attached as the version's partition. A crash
//! at any point leaves either nothing visible or the whole version; a re-run drops what an
//! earlier attempt left and starts over. Removing a version detaches and drops its table.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use futures_util::StreamExt;
use futures_util::future::try_join_all;
use sqlx::PgPool;
use sqlx::postgres::PgConnection;
use tokio::sync::mpsc;

use super::{
    Dataset, DocStream, Document, DocumentSink, SinkError, StoredDoc, Summary, VersionItem,
};
use crate::db::Pools;

/// COPY binary: signature, flags, header extension length.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// Bytes buffered before a COPY message is sent.
const COPY_CHUNK: usize = 1 << 20;
/// Connections one sync copies on at once (each is one PostgreSQL backend parsing jsonb).
/// Only connections the pool has free right away are used beyond the first.
const COPY_STREAMS: usize = 4;

/// The only owner of `sink_documents` and its partitions.
#[derive(Clone)]
pub struct PgSink {
    pool: PgPool,
}

impl PgSink {
    pub fn new(pools: &Pools) -> Self {
        PgSink {
            pool: pools.main.clone(),
        }
    }
}

/// A version's table. Versions are job ids (integers), so the name needs no quoting.
fn table(version: i64) -> String {
    format!("sink_documents_v{version}")
}

fn unavailable(e: sqlx::Error) -> SinkError {
    match &e {
        // Bad JSON or a value PostgreSQL refuses: retrying cannot help.
        // The database's own text stays in the log: a job's error says what happened.
        sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("22")) => {
            let code = d.code().map(|c| c.into_owned()).unwrap_or_default();
            tracing::warn!(error = %e, sqlstate = %code, "PostgreSQL refused a record");
            SinkError::Rejected(format!(
                "PostgreSQL refused a value in this dataset (SQLSTATE {code}; the worker's log has the detail)"
            ))
        }
        _ => SinkError::Unavailable(e.to_string()),
    }
}

/// One row of `COPY … (dataset_version, doc_id, bu_id, connector, body, content_hash) FROM
/// STDIN (FORMAT binary)`.
fn copy_row(buf: &mut Vec<u8>, ds: &Dataset, d: &Document) {
    let text = |buf: &mut Vec<u8>, s: &str| {
        buf.extend_from_slice(&(s.len() as i32).to_be_bytes());
        buf.extend_from_slice(s.as_bytes());
    };
    buf.extend_from_slice(&6i16.to_be_bytes());
    buf.extend_from_slice(&8i32.to_be_bytes());
    buf.extend_from_slice(&ds.version.to_be_bytes());
    text(buf, &d.id);
    text(buf, &ds.bu_id);
    text(buf, &ds.connector);
    // jsonb's binary form: a version byte, then the JSON text.
    buf.extend_from_slice(&(d.body.len() as i32 + 1).to_be_bytes());
    buf.push(1);
    buf.extend_from_slice(d.body.as_bytes());
    buf.extend_from_slice(&8i32.to_be_bytes());
    buf.extend_from_slice(&d.hash.to_be_bytes());
}

/// Copies the batches it receives into `part` on its own connection. When its channel
/// closes, finishes the COPY (committing those rows to the still unattached table) if the
/// stream was complete, else aborts it.
async fn copy_stream(
    conn: &mut PgConnection,
    part: &str,
    ds: &Dataset,
    mut batches: mpsc::Receiver<Vec<Document>>,
    complete: &AtomicBool,
    written: &AtomicUsize,
) -> Result<u64, SinkError> {
    let mut copy = conn
        .copy_in_raw(&format!(
            "COPY {part} (dataset_version, doc_id, bu_id, connector, body, content_hash) \
             FROM STDIN (FORMAT binary)"
        ))
        .await
        .map_err(unavailable)?;
    let mut buf = Vec::with_capacity(COPY_CHUNK + 64 * 1024);
    buf.extend_from_slice(COPY_HEADER);
    while let Some(docs) = batches.recv().await {
        for d in &docs {
            copy_row(&mut buf, ds, d);
            if buf.len() >= COPY_CHUNK {
                copy.send(buf.as_slice()).await.map_err(unavailable)?;
                buf.clear();
            }
        }
        // Sent per batch as well: a batch is in PostgreSQL (its progress visible in
        // pg_stat_progress_copy) before the next one is awaited.
        if !buf.is_empty() {
            copy.send(buf.as_slice()).await.map_err(unavailable)?;
            buf.clear();
        }
        written.fetch_add(docs.len(), Ordering::Relaxed);
    }
    if !complete.load(Ordering::Acquire) {
        let _ = copy.abort("the records stream ended early").await;
        return Err(SinkError::Unavailable(
            "the records stream ended before its last document".into(),
        ));
    }
    buf.extend_from_slice(&(-1i16).to_be_bytes());
    copy.send(buf.as_slice()).await.map_err(unavailable)?;
    copy.finish().await.map_err(unavailable)
}

impl PgSink {
    /// Removes version `v`'s table, attached or not. Serialised per version (two cleaners, or
    /// a cleaner and a re-run, only repeat each other's work).
    async fn drop_version_table(&self, v: i64) -> Result<u64, SinkError> {
        let part = table(v);
        let mut conn = self.pool.acquire().await.map_err(unavailable)?;
        let key = i64::from_be_bytes(*b"etlqsink") ^ v;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(key)
            .execute(&mut *conn)
            .await
            .map_err(unavailable)?;
        let dropped = async {
            // Whether the table exists, and whether a detach of it is pending, in one read.
            let (exists, attached, pending): (bool, bool, bool) = sqlx::query_as(
                "SELECT to_regclass($1) IS NOT NULL,
                        i.inhrelid IS NOT NULL,
                        coalesce(i.inhdetachpending, false)
                   FROM (SELECT 1) one
                   LEFT JOIN pg_inherits i ON i.inhrelid = to_regclass($1)",
            )
            .bind(&part)
            .fetch_one(&mut *conn)
            .await
            .map_err(unavailable)?;
            if !exists {
                return Ok(0);
            }
            let rows: i64 =
                sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {part}")))
                    .fetch_one(&mut *conn)
                    .await
                    .map_err(unavailable)?;
            // CONCURRENTLY: readers of other versions are never blocked. An interrupted
            // detach is finished instead.
            let detach = if pending {
                Some(format!(
                    "ALTER TABLE sink_documents DETACH PARTITION {part} FINALIZE"
                ))
            } else if attached {
                Some(format!(
                    "ALTER TABLE sink_documents DETACH PARTITION {part} CONCURRENTLY"
                ))
            } else {
                None
            };
            if let Some(sql) = detach {
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut *conn)
                    .await
                    .map_err(unavailable)?;
            }
            sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {part}")))
                .execute(&mut *conn)
                .await
                .map_err(unavailable)?;
            Ok::<u64, SinkError>(rows as u64)
        }
        .await;
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(key)
            .execute(&mut *conn)
            .await;
        dropped
    }
}

#[async_trait::async_trait]
impl DocumentSink for PgSink {
    fn name(&self) -> &'static str {
        "postgres"
    }

    /// Writes `docs` into the version's partition, creating it if needed (for callers that
    /// write a version in pieces; sync uses `write_version`).
    async fn upsert(
        &self,
        ds: &Dataset,
        docs: &[Document],
        written: &AtomicUsize,
    ) -> Result<(), SinkError> {
        let part = table(ds.version);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {part} PARTITION OF sink_documents FOR VALUES IN ({})",
            ds.version
        )))
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        let ids: Vec<&str> = docs.iter().map(|d| d.id.as_str()).collect();
        let bodies: Vec<&str> = docs.iter().map(|d| d.body.as_str()).collect();
        let hashes: Vec<i64> = docs.iter().map(|d| d.hash).collect();
        sqlx::query(
            r#"
            INSERT INTO sink_documents (dataset_version, doc_id, bu_id, connector, body, content_hash)
            SELECT $1, d.id, $2, $3, d.body::jsonb, d.hash
            FROM unnest($4::text[], $5::text[], $6::bigint[]) AS d(id, body, hash)
            ON CONFLICT (dataset_version, doc_id) DO UPDATE
               SET body = EXCLUDED.body, content_hash = EXCLUDED.content_hash, synced_at = now()
            "#,
        )
        .bind(ds.version)
        .bind(&ds.bu_id)
        .bind(&ds.connector)
        .bind(&ids)
        .bind(&bodies)
        .bind(&hashes)
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;
        written.fetch_add(docs.len(), Ordering::Relaxed);
        Ok(())
    }

    async fn write_version(
        &self,
        ds: &Dataset,
        items: &mut mpsc::Receiver<VersionItem>,
        written: &AtomicUsize,
    ) -> Result<Option<Summary>, SinkError> {
        let part = table(ds.version);
        self.drop_version_table(ds.version).await?;
        // Unattached, with the check ATTACH would otherwise scan the whole table to prove.
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {part} (LIKE sink_documents INCLUDING DEFAULTS, \
             CHECK (dataset_version = {}))",
            ds.version
        )))
        .execute(&self.pool)
        .await
        .map_err(unavailable)?;

        // The first connection is waited for; more are used only when free right now, so a
        // small pool never deadlocks against itself.
        let mut conns = vec![self.pool.acquire().await.map_err(unavailable)?];
        while conns.len() < COPY_STREAMS {
            match self.pool.try_acquire() {
                Some(c) => conns.push(c),
                None => break,
            }
        }
        let complete = AtomicBool::new(false);
        let (senders, receivers): (Vec<_>, Vec<_>) = conns
            .iter()
            .map(|_| mpsc::channel::<Vec<Document>>(2))
            .unzip();
        let streams = conns
            .iter_mut()
            .zip(receivers)
            .map(|(c, rx)| copy_stream(c, &part, ds, rx, &complete, written));
        let dispatch = async {
            let mut next = 0;
            while let Some(item) = items.recv().await {
                match item {
                    VersionItem::Batch(docs) => {
                        // A closed stream has failed; its error is reported by the join.
                        if senders[next % senders.len()].send(docs).await.is_err() {
                            break;
                        }
                        next += 1;
                    }
                    VersionItem::End => {
                        complete.store(true, Ordering::Release);
                        break;
                    }
                }
            }
            drop(senders);
        };
        let (copied, ()) = tokio::join!(try_join_all(streams), dispatch);
        copied?;
        drop(conns);
        if !complete.load(Ordering::Acquire) {
            return Err(SinkError::Unavailable(
                "the records stream ended before its last document".into(),
            ));
        }

        let mut tx = self.pool.begin().await.map_err(unavailable)?;
        for sql in [
            format!("ALTER TABLE {part} ADD PRIMARY KEY (dataset_version, doc_id)"),
            format!(
                "ALTER TABLE sink_documents ATTACH PARTITION {part} FOR VALUES IN ({})",
                ds.version
            ),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut *tx)
                .await
                .map_err(unavailable)?;
        }
        let stored = summary_in(&mut tx, &part).await?;
        tx.commit().await.map_err(unavailable)?;
        Ok(Some(stored))
    }

    /// What readers see: only an attached partition counts (through the parent table, which
    /// prunes to the one partition).
    async fn summary(&self, ds: &Dataset) -> Result<Summary, SinkError> {
        let (count, checksum): (i64, String) = sqlx::query_as(
            "SELECT count(*), coalesce(sum(content_hash), 0)::text FROM sink_documents WHERE dataset_version = $1",
        )
        .bind(ds.version)
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        parse_summary(count, checksum)
    }

    /// Through the parent table (only an attached partition), on the partition's primary
    /// key: `doc_id` is `COLLATE "C"`, so the index order is byte order.
    fn scan_version(&self, ds: &Dataset) -> DocStream<'_> {
        sqlx::query_as::<_, (String, i64, String)>(
            "SELECT doc_id, content_hash, body::text FROM sink_documents
              WHERE dataset_version = $1 ORDER BY doc_id",
        )
        .bind(ds.version)
        .fetch(&self.pool)
        .map(|r| {
            r.map(|(id, hash, body)| StoredDoc { id, hash, body })
                .map_err(unavailable)
        })
        .boxed()
    }

    async fn delete_version(&self, ds: &Dataset) -> Result<u64, SinkError> {
        self.drop_version_table(ds.version).await
    }
}

async fn summary_in(conn: &mut PgConnection, part: &str) -> Result<Summary, SinkError> {
    let (count, checksum): (i64, String) = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT count(*), coalesce(sum(content_hash), 0)::text FROM {part}"
    )))
    .fetch_one(conn)
    .await
    .map_err(unavailable)?;
    parse_summary(count, checksum)
}

fn parse_summary(count: i64, checksum: String) -> Result<Summary, SinkError> {
    let checksum = checksum
        .parse()
        .map_err(|e| SinkError::Rejected(format!("checksum {checksum:?}: {e}")))?;
    Ok(Summary { count, checksum })
}
