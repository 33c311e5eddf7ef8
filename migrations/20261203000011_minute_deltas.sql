-- The overview's last hour without reading job_events (issue 18, item 5; ADR 0017).
--
-- At 2,000 jobs/s the minutes not yet rolled up (up to two, the settle lag) hold ~700,000
-- events: the overview scanned them on every request (p95 1.3 s in the million-job soak),
-- and the rollup itself scanned each minute again. The statements that change jobs now
-- append per-minute deltas here, from the same transition tables the finished-job counts
-- use; the rollup folds settled minutes into job_event_minutes and deletes their deltas, and
-- the overview sums the few hundred delta rows of the unsettled minutes.
--
-- Deltas carry the transaction's start as their minute, as events carry it in `at`, so the
-- figures are the events' own: arrived (into queued/retrying from anything else, enqueues
-- included), departed (out of them), succeeded, failed (stage failures: running → retrying,
-- and deaths a worker reported — a rescue's death has rescue_streak > 0), dead.
CREATE TABLE job_minute_deltas (
    minute    timestamptz NOT NULL,
    arrived   bigint      NOT NULL,
    departed  bigint      NOT NULL,
    succeeded bigint      NOT NULL,
    failed    bigint      NOT NULL,
    dead      bigint      NOT NULL
);
CREATE INDEX job_minute_deltas_minute_idx ON job_minute_deltas (minute);

-- The hour so far, from the events, so the chart does not go blank at the upgrade.
INSERT INTO job_minute_deltas (minute, arrived, departed, succeeded, failed, dead)
SELECT date_trunc('minute', at),
       count(*) FILTER (WHERE to_state IN ('queued', 'retrying')
                          AND coalesce(from_state, '') NOT IN ('queued', 'retrying')),
       count(*) FILTER (WHERE from_state IN ('queued', 'retrying')
                          AND coalesce(to_state, '') NOT IN ('queued', 'retrying')),
       count(*) FILTER (WHERE to_state = 'succeeded'),
       count(*) FILTER (WHERE event IN ('stage_failed', 'dead')),
       count(*) FILTER (WHERE to_state = 'dead')
  FROM job_events
 WHERE at >= coalesce((SELECT max(minute) + interval '1 minute' FROM job_event_minutes),
                      now() - interval '61 minutes')
 GROUP BY 1;

-- A trigger of its own beside etlq_count_finished (which keeps the per-day counts): both read
-- the statement's transition tables, which PostgreSQL captures once for the two. Each row's
-- old and new state are paired by grouping the union of the two tables by id (a statement
-- updates a row once), not by joining them: transition tables have no statistics, and the
-- join over each claim's and completion's few hundred rows was the worker's largest cost —
-- the queue benchmark (50,000 no-op jobs, concurrency 1000, batch 500, local cluster)
-- processed 17,068-19,509 jobs/s with it, 24,771-25,825 grouped, 24,268-26,678 with no
-- minute deltas at all.
CREATE FUNCTION etlq_count_minutes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_minute_deltas (minute, arrived, departed, succeeded, failed, dead)
    SELECT date_trunc('minute', now()),
           count(*) FILTER (WHERE t.ns IN ('queued', 'retrying')
                              AND t.os NOT IN ('queued', 'retrying')),
           count(*) FILTER (WHERE t.os IN ('queued', 'retrying')
                              AND t.ns NOT IN ('queued', 'retrying')),
           count(*) FILTER (WHERE t.ns = 'succeeded'),
           count(*) FILTER (WHERE t.os = 'running'
                              AND (t.ns = 'retrying' OR (t.ns = 'dead' AND t.streak = 0))),
           count(*) FILTER (WHERE t.ns = 'dead')
      FROM (SELECT u.id, max(u.state) FILTER (WHERE u.side = 0) AS os,
                   max(u.state) FILTER (WHERE u.side = 1) AS ns,
                   max(u.rescue_streak) FILTER (WHERE u.side = 1) AS streak
              FROM (SELECT id, state, rescue_streak, 0 AS side FROM old_rows
                    UNION ALL
                    SELECT id, state, rescue_streak, 1 FROM new_rows) u
             GROUP BY u.id) t
     WHERE t.os <> t.ns
    HAVING count(*) > 0;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_count_minutes AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION etlq_count_minutes();

CREATE FUNCTION etlq_count_arrivals() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_minute_deltas (minute, arrived, departed, succeeded, failed, dead)
    SELECT date_trunc('minute', now()), count(*), 0, 0, 0, 0
      FROM inserted WHERE state IN ('queued', 'retrying')
    HAVING count(*) > 0;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_count_arrivals AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION etlq_count_arrivals();
