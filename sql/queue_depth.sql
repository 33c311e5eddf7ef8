-- Queue depth by kind and state, with the oldest claimable job's wait.
SELECT kind, state, count(*) AS jobs, min(run_at) AS oldest_run_at,
       CASE WHEN state IN ('queued', 'retrying') THEN now() - min(run_at) END AS oldest_wait
FROM jobs
WHERE state IN ('queued', 'retrying', 'running')
  AND finished_at IS NULL -- live jobs: reads jobs_live only
GROUP BY kind, state
ORDER BY kind, state;
