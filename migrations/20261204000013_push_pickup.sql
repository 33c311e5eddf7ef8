-- Push pickup (issue 18, item 1; ADR 0020).
--
-- An idle worker advertises free slots here; an enqueue that finds one hands the job to that
-- worker in its own transaction (inserted 'running' under the worker's lease, first claim in
-- the row as ADR 0018 keeps it) and tells the worker with a NOTIFY on its own channel that
-- carries the job. The worker starts the stage when the notification arrives: no claim
-- between the enqueue and the stage.
--
--   free          slots the worker reserved for pushed jobs; each push takes one
--   generation    the worker's count of its advertisements: a notification names it, so a
--                 late one from an earlier advertisement is never started twice
--   listener_pid  the backend of the worker's LISTEN connection: a worker that died (its
--                 connection closed) is pushed nothing
--   until         the advertisement lapses by itself (a worker cut off from PostgreSQL)
--
-- The worker withdraws an advertisement by deleting its row; the DELETE waits for every
-- enqueue that holds the row, so afterwards each job pushed to it is visible and the worker
-- starts any whose notification it has not had (a LISTEN connection lost meanwhile).
CREATE TABLE worker_parking (
    worker_id text PRIMARY KEY,
    kinds text[] NOT NULL,
    free integer NOT NULL CHECK (free >= 0),
    lease_s double precision NOT NULL,
    channel text NOT NULL,
    generation bigint NOT NULL,
    listener_pid integer NOT NULL,
    until timestamptz NOT NULL
);

-- Which advertisement a pushed job took its slot of (NULL for every other job): a worker that
-- withdraws looks for the jobs of that advertisement only, so a job it started under an
-- earlier one is never started again.
ALTER TABLE jobs ADD COLUMN push_generation bigint;

-- A pushed job arrives and departs in the same statement: it counts as both, so the minute
-- counts of arrivals match the jobs enqueued.
CREATE OR REPLACE FUNCTION etlq_count_arrivals() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_minute_deltas (minute, arrived, departed, succeeded, failed, dead)
    SELECT date_trunc('minute', now()), count(*), count(*) FILTER (WHERE state = 'running'),
           0, 0, 0
      FROM inserted WHERE state IN ('queued', 'retrying', 'running')
    HAVING count(*) > 0;
    RETURN NULL;
END $$;

-- A pushed job's enqueue and first claim are read from its row at the same instant
-- (created_at = started_at): the enqueue comes first.
CREATE OR REPLACE VIEW job_timeline AS
SELECT e.job_id,
       row_number() OVER w AS seq,
       e.id AS event_id,
       e.at,
       e.event,
       e.from_state,
       e.to_state,
       e.stage,
       e.attempt,
       e.worker_id,
       e.worker_version,
       e.duration_ms AS stage_duration_ms,
       round(extract(epoch FROM e.at - lag(e.at) OVER w) * 1000)::bigint AS since_previous_ms,
       e.error
FROM job_events e
WINDOW w AS (PARTITION BY e.job_id
             ORDER BY e.at, e.id NULLS FIRST,
                      CASE e.event WHEN 'enqueued' THEN 0 WHEN 'claimed' THEN 1 ELSE 2 END);
