-- Every worker process: mode, in-flight jobs, version, and whether it is live (heartbeat
-- within 15 s, the default worker.worker_ttl_ms).
SELECT w.id, w.host, w.pid, w.version, w.roles, w.mode, w.in_flight, w.concurrency,
       w.started_at, now() - w.heartbeat_at AS since_heartbeat,
       (w.stopped_at IS NULL AND w.heartbeat_at > now() - interval '15 seconds') AS live,
       w.stopped_at,
       (SELECT count(*) FROM jobs j WHERE j.state = 'running' AND j.lease_owner = w.id
          AND j.finished_at IS NULL) AS leases_held
FROM workers w
ORDER BY live DESC, w.started_at DESC;

-- Fleet verdict for deploy scripts: SafeToStop only when every live worker is.
SELECT CASE
         WHEN bool_and(mode = 'SafeToStop') IS NOT FALSE THEN 'SafeToStop'
         WHEN bool_and(mode = 'Normal') THEN 'Normal'
         ELSE 'PreparingForStop'
       END AS fleet_mode,
       count(*) AS live_workers
FROM workers
WHERE stopped_at IS NULL AND heartbeat_at > now() - interval '15 seconds';
