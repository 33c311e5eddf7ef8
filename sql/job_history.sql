-- A job's full timeline: every transition, per-stage durations, and the worker version that
-- ran each stage. Usage: psql "$DATABASE_URL" -v job_id=42 -f sql/job_history.sql
\if :{?job_id}
\else
\set job_id 0
\echo 'no -v job_id=N given: showing the most recent job'
\endif
SELECT t.seq, t.event_id, t.at, t.event, t.from_state, t.to_state, t.stage, t.attempt,
       t.worker_id, t.worker_version, round(t.stage_duration_ms::numeric, 1) AS stage_ms,
       t.since_previous_ms, t.error
FROM job_timeline t
WHERE t.job_id = CASE WHEN :job_id = 0 THEN (SELECT max(id) FROM jobs) ELSE :job_id END
ORDER BY t.seq;
