-- Open dead letters, newest first, with the job's last error and history length.
SELECT d.job_id, d.kind, d.bu_id, d.connector, d.failed_stage, d.attempts, d.dead_at,
       left(d.reason, 200) AS reason,
       (SELECT count(*) FROM job_events t WHERE t.job_id = d.job_id) AS events
FROM dead_letters d
WHERE d.retried_at IS NULL
ORDER BY d.dead_at DESC
LIMIT 200;

-- Dead letters by reason, to spot one cause behind many failures.
SELECT d.kind, d.failed_stage, left(d.reason, 120) AS reason, count(*) AS jobs,
       min(d.dead_at) AS first, max(d.dead_at) AS last
FROM dead_letters d
WHERE d.retried_at IS NULL
GROUP BY 1, 2, 3
ORDER BY jobs DESC
LIMIT 50;
