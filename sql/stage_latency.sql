-- Stage latency percentiles per job kind and stage over the last day (change the interval
-- with -v since="'7 days'").
\if :{?since}
\else
\set since '''1 day'''
\endif
SELECT j.kind, e.stage, count(*) AS runs,
       round(percentile_cont(0.50) WITHIN GROUP (ORDER BY e.duration_ms)::numeric, 1) AS p50_ms,
       round(percentile_cont(0.95) WITHIN GROUP (ORDER BY e.duration_ms)::numeric, 1) AS p95_ms,
       round(percentile_cont(0.99) WITHIN GROUP (ORDER BY e.duration_ms)::numeric, 1) AS p99_ms,
       round(max(e.duration_ms)::numeric, 1) AS max_ms
FROM job_events e
JOIN jobs j ON j.id = e.job_id
WHERE e.event = 'stage_completed' AND e.at > now() - :since::interval
GROUP BY j.kind, e.stage
ORDER BY j.kind, min(e.id);
