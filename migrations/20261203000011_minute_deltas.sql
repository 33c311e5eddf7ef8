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

CREATE OR REPLACE FUNCTION etlq_count_finished() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_counts (day, kind, state, n)
    SELECT x.day, x.kind, x.state, sum(x.d)
      FROM (SELECT (finished_at AT TIME ZONE 'UTC')::date AS day, kind, state, 1 AS d
              FROM new_rows WHERE finished_at IS NOT NULL
            UNION ALL
            SELECT (finished_at AT TIME ZONE 'UTC')::date, kind, state, -1
              FROM old_rows WHERE finished_at IS NOT NULL) x
     GROUP BY 1, 2, 3
    HAVING sum(x.d) <> 0;
    INSERT INTO job_minute_deltas (minute, arrived, departed, succeeded, failed, dead)
    SELECT date_trunc('minute', now()),
           count(*) FILTER (WHERE n.state IN ('queued', 'retrying')
                              AND o.state NOT IN ('queued', 'retrying')),
           count(*) FILTER (WHERE o.state IN ('queued', 'retrying')
                              AND n.state NOT IN ('queued', 'retrying')),
           count(*) FILTER (WHERE n.state = 'succeeded'),
           count(*) FILTER (WHERE o.state = 'running'
                              AND (n.state = 'retrying' OR (n.state = 'dead' AND n.rescue_streak = 0))),
           count(*) FILTER (WHERE n.state = 'dead')
      FROM old_rows o JOIN new_rows n ON n.id = o.id
     WHERE o.state <> n.state
    HAVING count(*) > 0;
    RETURN NULL;
END $$;

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
