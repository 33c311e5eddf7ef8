-- etlq queue core. Table and column names are part of the product contract (SPEC §6).

CREATE TABLE jobs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind             text        NOT NULL,
    payload          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    state            text        NOT NULL DEFAULT 'queued'
                     CHECK (state IN ('queued', 'running', 'retrying', 'succeeded', 'dead', 'cancelled')),
    -- The next stage to run (NULL once the job has finished every stage).
    stage            text,
    -- {stage_name: output} for every finished stage; a resumed job skips these.
    checkpoint       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    progress         jsonb,
    attempts         integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL DEFAULT 5 CHECK (max_attempts > 0),
    priority         smallint    NOT NULL DEFAULT 0,
    run_at           timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_expires_at timestamptz,
    -- Bumped on every claim, rescue and cancel; writes carrying an older token are rejected.
    fencing_token    bigint      NOT NULL DEFAULT 0,
    idempotency_key  text,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    -- A lease is held exactly while running; worker writes use `lease_owner IS NOT NULL` as
    -- their "still running" guard (see queue/store.rs).
    CHECK ((state = 'running') = (lease_owner IS NOT NULL)),
    CHECK (state <> 'running' OR lease_expires_at IS NOT NULL)
);

-- Every job update changes `state`, so none is HOT and each one writes an entry into every
-- index: only the indexes the hot path needs are full; the rest are partial over rare rows.
-- Claim: holds only claimable rows, so it stays small however much history is kept.
CREATE INDEX jobs_claim_idx ON jobs (priority, run_at, id) WHERE state IN ('queued', 'retrying');
-- Rescue of expired leases.
CREATE INDEX jobs_lease_idx ON jobs (lease_expires_at) WHERE state = 'running';
CREATE UNIQUE INDEX jobs_idempotency_key_idx ON jobs (idempotency_key) WHERE idempotency_key IS NOT NULL;
-- History of failures (listing dead or cancelled jobs); succeeded jobs are listed by id.
CREATE INDEX jobs_unhappy_idx ON jobs (state, id) WHERE state IN ('dead', 'cancelled');
-- Jobs of a business unit (ETL jobs carry bu_id in their payload).
CREATE INDEX jobs_bu_id_idx ON jobs ((payload ->> 'bu_id'), id) WHERE payload ? 'bu_id';

-- Wake-ups: workers LISTEN on etlq_jobs. Inserts notify once per statement; updates notify
-- only when a row becomes claimable now (release, rescue, dead-letter retry), so the claim
-- and completion statements themselves never wake anybody.
CREATE FUNCTION etlq_notify_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('etlq_jobs', '');
    RETURN NULL;
END $$;

CREATE FUNCTION etlq_notify_jobs_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted WHERE state = 'queued' AND run_at <= now()) THEN
        PERFORM pg_notify('etlq_jobs', '');
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER jobs_notify_insert AFTER INSERT ON jobs
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION etlq_notify_jobs_inserted();

CREATE TRIGGER jobs_notify_requeue AFTER UPDATE OF state ON jobs
    FOR EACH ROW WHEN (NEW.state = 'queued' AND OLD.state IS DISTINCT FROM 'queued')
    EXECUTE FUNCTION etlq_notify_jobs();

-- Append-only history: one row per state transition and per finished stage,
-- written in the same transaction as the change it records.
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
    error          text,
    -- One index serves both identity and a job's history in order (one write per event).
    PRIMARY KEY (job_id, id)
);
-- Time-range scans (stage latency over the last day): BRIN costs next to nothing to maintain
-- on an append-only table.
CREATE INDEX job_events_at_brin ON job_events USING brin (at);

CREATE TABLE dead_letters (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id       bigint      NOT NULL,
    kind         text        NOT NULL,
    bu_id        text,
    connector    text,
    failed_stage text,
    attempts     integer     NOT NULL,
    reason       text        NOT NULL,
    dead_at      timestamptz NOT NULL DEFAULT now(),
    -- Set when the job is re-enqueued; the row stays as history.
    retried_at   timestamptz
);
CREATE INDEX dead_letters_open_idx ON dead_letters (dead_at, id) WHERE retried_at IS NULL;
CREATE INDEX dead_letters_job_idx ON dead_letters (job_id);

CREATE TABLE workers (
    id            text PRIMARY KEY,
    host          text        NOT NULL,
    pid           integer     NOT NULL,
    version       text        NOT NULL,
    roles         text        NOT NULL,
    mode          text        NOT NULL DEFAULT 'Normal'
                  CHECK (mode IN ('Normal', 'PreparingForStop', 'SafeToStop')),
    in_flight     integer     NOT NULL DEFAULT 0,
    concurrency   integer     NOT NULL DEFAULT 0,
    -- Fleet-wide drain/resume requests land here; each process applies a new command_seq once.
    command       text CHECK (command IN ('drain', 'resume')),
    command_seq   bigint      NOT NULL DEFAULT 0,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    stopped_at    timestamptz
);
CREATE INDEX workers_live_idx ON workers (heartbeat_at) WHERE stopped_at IS NULL;

-- Evidence table for the built-in `test` job kind: one row per stage that ran to completion,
-- written by the stage itself (independent of the checkpoint it is checking).
CREATE TABLE test_stage_runs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id      bigint      NOT NULL,
    stage       text        NOT NULL,
    attempt     integer     NOT NULL,
    worker_id   text        NOT NULL,
    pid         integer     NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX test_stage_runs_job_idx ON test_stage_runs (job_id, stage);

-- A job's timeline: every event with the time since the previous one, and for finished
-- stages how long the stage ran and which worker version ran it.
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
