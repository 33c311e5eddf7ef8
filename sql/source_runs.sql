-- Source runs: every listing (schedule, manual, reconcile, resume) and Event Grid delivery,
-- newest first, with what it saw. A listing cut by kill -9 shows outcome `cut`; skip reasons
-- carry up to five example keys each. `psql -v source=nightly_gl -f sql/source_runs.sql`.
\if :{?source}
\else
\set source ''
\endif
SELECT r.id, r.source, r.trigger, r.slot, r.worker_id, r.started_at,
       round(extract(epoch FROM r.finished_at - r.started_at) * 1000) AS took_ms,
       r.outcome, r.listed, r.new, r.duplicate, r.skipped,
       (SELECT string_agg(k || '=' || (v ->> 'count'), ', ') FROM jsonb_each(r.reasons) AS e(k, v)) AS reasons,
       r.error
  FROM source_runs r
 WHERE :'source' = '' OR r.source = :'source'
 ORDER BY r.id DESC
 LIMIT 50;

-- Each source's schedule: the next slot (the database's clock decides), pause, and whether a
-- listing holds it now.
SELECT source, spec, next_slot, last_slot, paused, lease_owner, lease_until, requested_at
  FROM source_schedules
 WHERE :'source' = '' OR source = :'source'
 ORDER BY source;
