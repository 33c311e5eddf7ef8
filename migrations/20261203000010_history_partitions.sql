-- Finished jobs leave the hot table in the statement that finishes them (issue 18, ADR 0017).
--
-- `jobs` becomes a table partitioned by `finished_at`: its DEFAULT partition `jobs_live`
-- holds every job still queued, retrying or running (finished_at IS NULL), and one partition
-- per UTC day holds the jobs that finished that day. An UPDATE that sets `finished_at` moves
-- the row from `jobs_live` into its day in the same statement (PostgreSQL's row movement: a
-- delete and an insert, atomically), and a dead-letter retry that clears it moves it back.
-- So `jobs` stays the one table every read and every `sql/*.sql` queries, the claim and the
-- completion touch only the small live partition, and retention drops whole days
-- (`history.retention_days`) instead of deleting rows. `job_events` is partitioned by day on
-- `at` the same way.
--
-- Idempotency keys move to `job_keys`: a unique index on a partitioned table must include
-- the partition key, so uniqueness across live and finished jobs needs a table of its own.
--
-- Existing rows are copied; whatever finished before today sits in one `_before` partition
-- that retention drops as a whole.

DROP VIEW audit_trail;
DROP VIEW ingest_history;
DROP VIEW job_timeline;
DROP VIEW stage_runs;

ALTER TABLE jobs RENAME TO jobs_old;
ALTER TABLE job_events RENAME TO job_events_old;
ALTER INDEX job_events_failures_idx RENAME TO job_events_old_failures_idx;
ALTER INDEX job_events_at_brin RENAME TO job_events_old_at_brin;
DROP TRIGGER jobs_notify_insert ON jobs_old;
DROP TRIGGER jobs_notify_requeue ON jobs_old;
ALTER TABLE jobs_old RENAME CONSTRAINT jobs_pkey TO jobs_old_pkey;
ALTER INDEX jobs_claim_idx RENAME TO jobs_old_claim_idx;
ALTER INDEX jobs_lease_idx RENAME TO jobs_old_lease_idx;
ALTER INDEX jobs_idempotency_key_idx RENAME TO jobs_old_idempotency_key_idx;
ALTER INDEX jobs_unhappy_idx RENAME TO jobs_old_unhappy_idx;
ALTER INDEX jobs_bu_id_idx RENAME TO jobs_old_bu_id_idx;
ALTER INDEX jobs_unreclaimed_idx RENAME TO jobs_old_unreclaimed_idx;
ALTER INDEX jobs_source_blob_idx RENAME TO jobs_old_source_blob_idx;

CREATE TABLE jobs (
    id                   bigint GENERATED ALWAYS AS IDENTITY,
    kind                 text        NOT NULL,
    payload              jsonb       NOT NULL DEFAULT '{}'::jsonb,
    state                text        NOT NULL DEFAULT 'queued'
                         CHECK (state IN ('queued', 'running', 'retrying', 'succeeded', 'dead', 'cancelled')),
    stage                text,
    checkpoint           jsonb       NOT NULL DEFAULT '{}'::jsonb,
    progress             jsonb,
    attempts             integer     NOT NULL DEFAULT 0,
    max_attempts         integer     NOT NULL DEFAULT 5 CHECK (max_attempts > 0),
    priority             smallint    NOT NULL DEFAULT 0,
    run_at               timestamptz NOT NULL DEFAULT now(),
    lease_owner          text,
    lease_expires_at     timestamptz,
    fencing_token        bigint      NOT NULL DEFAULT 0,
    -- Unique through `job_keys` (a partitioned table's unique index would need finished_at).
    idempotency_key      text,
    last_error           text,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    started_at           timestamptz,
    -- The partition key: NULL while the job is live, the moment it finished otherwise.
    finished_at          timestamptz,
    rescue_streak        integer     NOT NULL DEFAULT 0,
    outputs_reclaimed_at timestamptz,
    CHECK ((state = 'running') = (lease_owner IS NOT NULL)),
    CHECK (state <> 'running' OR lease_expires_at IS NOT NULL),
    -- Finished exactly when the state is final: what puts a row in the right partition.
    CONSTRAINT jobs_finished_when_final
        CHECK ((finished_at IS NULL) = (state IN ('queued', 'running', 'retrying')))
) PARTITION BY RANGE (finished_at);

-- Live jobs. The CHECK lets PostgreSQL create a day's partition without scanning this one.
CREATE TABLE jobs_live PARTITION OF jobs DEFAULT;
ALTER TABLE jobs_live ADD CONSTRAINT jobs_live_unfinished CHECK (finished_at IS NULL);

CREATE TABLE job_events (
    id             bigint GENERATED ALWAYS AS IDENTITY,
    job_id         bigint      NOT NULL,
    at             timestamptz NOT NULL DEFAULT now(),
    event          text        NOT NULL,
    from_state     text,
    to_state       text,
    stage          text,
    attempt        integer,
    fencing_token  bigint,
    worker_id      text,
    worker_version text,
    duration_ms    double precision,
    error          text
) PARTITION BY RANGE (at);

-- Everything that happened before today, in one partition each, dropped as a whole.
DO $$
DECLARE today timestamptz := date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
BEGIN
    EXECUTE format('CREATE TABLE jobs_before PARTITION OF jobs FOR VALUES FROM (MINVALUE) TO (%L)', today);
    EXECUTE format('CREATE TABLE job_events_before PARTITION OF job_events FOR VALUES FROM (MINVALUE) TO (%L)', today);
END $$;

-- Today and `days_ahead` days after it, for both tables; returns partitions created. Run by
-- every `serve` at start and by the history service (maintenance/history.rs) every pass.
-- Creating a partition takes a short ACCESS EXCLUSIVE lock on `jobs`, so it happens once a
-- day per table, days ahead, under a lock timeout set by the caller.
CREATE FUNCTION etlq_ensure_history_partitions(days_ahead integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    d date;
    t text;
    made integer := 0;
BEGIN
    FOR d IN SELECT g::date FROM generate_series((now() AT TIME ZONE 'UTC')::date,
                                                 (now() AT TIME ZONE 'UTC')::date + days_ahead,
                                                 interval '1 day') AS g LOOP
        FOREACH t IN ARRAY ARRAY['jobs', 'job_events'] LOOP
            IF to_regclass(format('%I', t || '_p' || to_char(d, 'YYYYMMDD'))) IS NULL THEN
                EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                               t || '_p' || to_char(d, 'YYYYMMDD'), t,
                               d::timestamp AT TIME ZONE 'UTC',
                               (d + 1)::timestamp AT TIME ZONE 'UTC');
                made := made + 1;
            END IF;
        END LOOP;
    END LOOP;
    RETURN made;
END $$;

-- The day partitions of `jobs` and `job_events` that ended before `keep` ago, oldest first,
-- with their upper bound (read from the catalogue, so `_before` is included).
CREATE FUNCTION etlq_expired_history_partitions(keep interval)
RETURNS TABLE (parent text, partition text, ends timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT p.relname::text, c.relname::text,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz
      FROM pg_inherits i
      JOIN pg_class c ON c.oid = i.inhrelid
      JOIN pg_class p ON p.oid = i.inhparent
     WHERE p.relname IN ('jobs', 'job_events')
       AND p.relnamespace = current_schema()::regnamespace
       AND c.relname NOT IN ('jobs_live')
       AND substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz
           <= now() - keep
     ORDER BY 3;
$$;

-- Drops one partition that has ended, with what only its jobs used: their idempotency keys,
-- dead letters and counts (older days' counts went with older partitions: oldest first).
-- Returns the finished jobs it held; NULL (and drops nothing) for any other table.
CREATE FUNCTION etlq_drop_history_partition(part text) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    parent_table text;
    ended date;
    n bigint := 0;
BEGIN
    SELECT e.parent, (e.ends AT TIME ZONE 'UTC')::date INTO parent_table, ended
      FROM etlq_expired_history_partitions(interval '0') e WHERE e.partition = part;
    IF parent_table IS NULL THEN
        RETURN NULL;
    END IF;
    IF parent_table = 'jobs' THEN
        EXECUTE format('SELECT count(*) FROM %I', part) INTO n;
        EXECUTE format('DELETE FROM job_keys WHERE job_id IN
                          (SELECT id FROM %I WHERE idempotency_key IS NOT NULL)', part);
        EXECUTE format('DELETE FROM dead_letters WHERE job_id IN
                          (SELECT id FROM %I WHERE state = ''dead'')', part);
        -- The same lock as the counts' compaction (queue/history.rs), which would otherwise
        -- write a dropped day's sum back.
        PERFORM pg_advisory_xact_lock(hashtext('etlq_job_counts'));
        DELETE FROM job_counts WHERE day < ended;
    END IF;
    EXECUTE format('DROP TABLE %I', part);
    RETURN n;
END $$;

SELECT etlq_ensure_history_partitions(7);

INSERT INTO jobs OVERRIDING SYSTEM VALUE SELECT * FROM jobs_old;
-- Ids go on from the old table's (is_called = false: the next id is exactly this one).
SELECT setval(pg_get_serial_sequence('jobs', 'id'), coalesce((SELECT max(id) FROM jobs_old), 0) + 1, false);
INSERT INTO job_events OVERRIDING SYSTEM VALUE SELECT * FROM job_events_old;
SELECT setval(pg_get_serial_sequence('job_events', 'id'),
              coalesce((SELECT max(id) FROM job_events_old), 0) + 1, false);

-- Not unique: ids come from the identity only (GENERATED ALWAYS), and a unique index here
-- would have to include finished_at.
CREATE INDEX jobs_id_idx ON jobs (id);
-- Claims and rescues read live jobs only (their statements say `finished_at IS NULL`): their
-- indexes exist on jobs_live alone, not on every day of history.
CREATE INDEX jobs_live_claim_idx ON jobs_live (kind, priority, run_at, id) WHERE state IN ('queued', 'retrying');
CREATE INDEX jobs_live_lease_idx ON jobs_live (lease_expires_at) WHERE state = 'running';
-- Idempotency keys are looked up in job_keys; no index on jobs.idempotency_key.
CREATE INDEX jobs_unhappy_idx ON jobs (state, id) WHERE state IN ('dead', 'cancelled');
CREATE INDEX jobs_bu_id_idx ON jobs ((payload ->> 'bu_id'), id) WHERE payload ? 'bu_id';
CREATE INDEX jobs_unreclaimed_idx ON jobs (finished_at)
    WHERE kind = 'etl' AND state IN ('dead', 'cancelled') AND outputs_reclaimed_at IS NULL;
CREATE INDEX jobs_source_blob_idx ON jobs ((payload->>'source_blob')) WHERE kind = 'etl';

CREATE INDEX job_events_job_idx ON job_events (job_id, id);
CREATE INDEX job_events_at_brin ON job_events USING brin (at) WITH (autosummarize = on);
CREATE INDEX job_events_failures_idx ON job_events (at) WHERE event IN ('stage_failed', 'dead');

-- One row per idempotency key, live or finished; dropped with its job's partition.
CREATE TABLE job_keys (
    key    text PRIMARY KEY,
    job_id bigint NOT NULL
);
INSERT INTO job_keys (key, job_id)
SELECT idempotency_key, id FROM jobs_old WHERE idempotency_key IS NOT NULL;

-- Finished jobs counted by day, kind and state, kept by the statement that moves them, so
-- the overview and unfiltered counts read a few rows instead of the whole history. Rows are
-- deltas, only ever inserted, so finishers never wait on each other (an upsert of one shared
-- row made every completion queue behind the others' commits, holding its jobs' row locks —
-- and the lease renewals behind those); the stats rollup sums them up every pass.
CREATE TABLE job_counts (
    day   date   NOT NULL,
    kind  text   NOT NULL,
    state text   NOT NULL,
    n     bigint NOT NULL
);
INSERT INTO job_counts (day, kind, state, n)
SELECT (finished_at AT TIME ZONE 'UTC')::date, kind, state, count(*)
  FROM jobs_old WHERE finished_at IS NOT NULL GROUP BY 1, 2, 3;

-- Every UPDATE of `jobs`, moved rows included, is in these transition tables: a row that
-- became finished counts +1 on its day, one that stopped being finished (a retry) -1.
CREATE FUNCTION etlq_count_finished() RETURNS trigger LANGUAGE plpgsql AS $$
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
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_count_finished AFTER UPDATE ON jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION etlq_count_finished();

CREATE TRIGGER jobs_notify_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION etlq_notify_jobs_inserted();

-- A row that moves partitions fires no UPDATE row trigger; the dead-letter retry (the one
-- move back into `jobs_live`) notifies by itself.
CREATE TRIGGER jobs_notify_requeue AFTER UPDATE OF state ON jobs
    FOR EACH ROW WHEN (NEW.state = 'queued' AND OLD.state IS DISTINCT FROM 'queued')
    EXECUTE FUNCTION etlq_notify_jobs();

DROP TABLE jobs_old;
DROP TABLE job_events_old;
-- The store draws ids for keyed jobs before inserting them (job_keys first): a stable name.
ALTER SEQUENCE jobs_id_seq1 RENAME TO jobs_id_seq;
ALTER SEQUENCE job_events_id_seq1 RENAME TO job_events_id_seq;

CREATE VIEW job_timeline AS
SELECT e.job_id,
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
WINDOW w AS (PARTITION BY e.job_id ORDER BY e.id);

CREATE VIEW stage_runs AS
SELECT e.job_id, j.kind, e.stage, e.attempt, e.worker_id, e.worker_version, e.duration_ms, e.at AS finished_at
FROM job_events e JOIN jobs j ON j.id = e.job_id
WHERE e.event = 'stage_completed';

CREATE VIEW audit_trail AS
SELECT a.at, a.job_id, a.action, NULL::text AS stage, a.actor, a.source,
       a.actor AS on_behalf_of, a.bu_id, a.connector, a.detail
  FROM audit_log a
UNION ALL
SELECT e.at, e.job_id, e.event, e.stage,
       coalesce(e.worker_id, 'system'),
       'etlq-worker/' || coalesce(e.worker_version, 'unknown'),
       j.payload ->> 'uploaded_by', j.payload ->> 'bu_id', j.payload ->> 'connector',
       CASE WHEN e.error IS NOT NULL THEN jsonb_build_object('error', e.error) END
  FROM job_events e
  JOIN jobs j ON j.id = e.job_id
 WHERE j.kind = 'etl';

CREATE VIEW ingest_history AS
SELECT l.id, l.source, l.blob_key, l.etag, l.size, l.last_modified, l.found_by, l.found_at,
       l.run_id, l.event_id, l.bu_id, l.connector, l.job_id,
       j.state AS job_state,
       round(extract(epoch FROM l.found_at - l.last_modified) * 1000)::bigint AS lag_ms
  FROM ingest_ledger l
  LEFT JOIN jobs j ON j.id = l.job_id;
