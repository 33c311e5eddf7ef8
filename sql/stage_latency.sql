-- Stage latency percentiles per job kind and stage over the last day (change the interval
-- with -v since="'7 days'").
\if :{?since}
\else
\set since '''1 day'''
\endif
SELECT r.kind, r.stage, count(*) AS runs,
       round(percentile_cont(0.50) WITHIN GROUP (ORDER BY r.duration_ms)::numeric, 1) AS p50_ms,
       round(percentile_cont(0.95) WITHIN GROUP (ORDER BY r.duration_ms)::numeric, 1) AS p95_ms,
       round(percentile_cont(0.99) WITHIN GROUP (ORDER BY r.duration_ms)::numeric, 1) AS p99_ms,
       round(max(r.duration_ms)::numeric, 1) AS max_ms
FROM stage_runs r
WHERE r.finished_at > now() - :since::interval
GROUP BY r.kind, r.stage
ORDER BY r.kind, min(r.finished_at);
