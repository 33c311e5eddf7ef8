-- Jobs that look stuck: running past their lease (the rescuer should pick these up within
-- seconds), or queued and overdue with no live worker able to claim them.
SELECT j.id, j.kind, j.state, j.stage, j.attempts, j.max_attempts, j.lease_owner,
       j.lease_expires_at, now() - j.lease_expires_at AS lease_overdue,
       w.mode AS owner_mode, w.heartbeat_at AS owner_heartbeat
FROM jobs j
LEFT JOIN workers w ON w.id = j.lease_owner
WHERE j.state = 'running' AND j.lease_expires_at < now() AND j.finished_at IS NULL
UNION ALL
SELECT j.id, j.kind, j.state, j.stage, j.attempts, j.max_attempts, NULL, NULL,
       now() - j.run_at, NULL, NULL
FROM jobs j
WHERE j.state IN ('queued', 'retrying') AND j.run_at < now() - interval '5 minutes'
  AND j.finished_at IS NULL
ORDER BY 1
LIMIT 200;
