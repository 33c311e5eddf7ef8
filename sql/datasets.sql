-- Promoted datasets: which version each (bu_id, connector) serves, how many promotions it
-- had, and the versions waiting for cleanup.
-- psql "$DATABASE_URL" -f sql/datasets.sql
SELECT m.bu_id, m.connector, m.version AS job_id, m.records, m.generation, m.promoted_at,
       (SELECT count(*) FROM superseded_versions s
         WHERE s.bu_id = m.bu_id AND s.connector = m.connector AND s.deleted_at IS NULL) AS superseded_pending,
       (SELECT counter FROM cache_manifest) AS cache_counter
  FROM dataset_manifests m
 ORDER BY m.bu_id, m.connector;
