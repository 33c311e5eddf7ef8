//! The default sink: the `sink_documents` table, written with one `unnest` upsert per batch.

use sqlx::PgPool;

use super::{Dataset, Document, DocumentSink, SinkError, Summary};

#[derive(Clone)]
pub struct PgSink {
    pool: PgPool,
}

impl PgSink {
    pub fn new(pool: PgPool) -> Self {
        PgSink { pool }
    }
}

fn unavailable(e: sqlx::Error) -> SinkError {
    match &e {
        // Bad JSON or a value PostgreSQL refuses: retrying cannot help.
        sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("22")) => {
            SinkError::Rejected(e.to_string())
        }
        _ => SinkError::Unavailable(e.to_string()),
    }
}

#[async_trait::async_trait]
impl DocumentSink for PgSink {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn upsert(&self, ds: &Dataset, docs: &[Document]) -> Result<(), SinkError> {
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
        Ok(())
    }

    async fn summary(&self, ds: &Dataset) -> Result<Summary, SinkError> {
        let (count, checksum): (i64, String) = sqlx::query_as(
            "SELECT count(*), coalesce(sum(content_hash), 0)::text
               FROM sink_documents WHERE dataset_version = $1",
        )
        .bind(ds.version)
        .fetch_one(&self.pool)
        .await
        .map_err(unavailable)?;
        let checksum = checksum
            .parse()
            .map_err(|e| SinkError::Rejected(format!("checksum {checksum:?}: {e}")))?;
        Ok(Summary { count, checksum })
    }

    async fn delete_version(&self, ds: &Dataset) -> Result<u64, SinkError> {
        let r = sqlx::query("DELETE FROM sink_documents WHERE dataset_version = $1")
            .bind(ds.version)
            .execute(&self.pool)
            .await
            .map_err(unavailable)?;
        Ok(r.rows_affected())
    }
}
