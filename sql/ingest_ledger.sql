-- The ingest ledger: every blob a source took (one row per source, key and etag), newest
-- first, with the job it became and that job's state now. Filter by source with
-- `psql -v source=nightly_gl -f sql/ingest_ledger.sql` (default: every source).
\if :{?source}
\else
\set source ''
\endif
SELECT id, source, blob_key, etag, size, last_modified, found_by, found_at,
       coalesce(event_id, 'run ' || run_id) AS found_in, bu_id, connector, job_id, job_state,
       lag_ms
  FROM ingest_history
 WHERE :'source' = '' OR source = :'source'
 ORDER BY id DESC
 LIMIT 100;
