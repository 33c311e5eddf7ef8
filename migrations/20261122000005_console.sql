-- The console's overview (queue/stats.rs, issue 10).

-- The last hour minute by minute, rolled up from job_events once a minute has settled
-- (maintenance/stats_rollup.rs), so the overview reads ~60 rows plus the last few minutes'
-- events instead of every event of the hour. Written by the rollup service only; nothing on
-- the job hot path touches it.
CREATE TABLE job_event_minutes (
    minute    timestamptz PRIMARY KEY,
    arrived   bigint NOT NULL,
    departed  bigint NOT NULL,
    succeeded bigint NOT NULL,
    failed    bigint NOT NULL,
    dead      bigint NOT NULL
);

-- Recent failures, newest first: partial, so only the rare failure events pay for it.
CREATE INDEX job_events_failures_idx ON job_events (at) WHERE event IN ('stage_failed', 'dead');

-- A BRIN range not yet summarised matches every query, so the overview's scan of the last
-- minutes would read the whole unsummarised tail; autosummarize asks autovacuum to summarise
-- each range of pages as soon as it fills.
ALTER INDEX job_events_at_brin SET (autosummarize = on);
