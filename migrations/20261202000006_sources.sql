-- Sources: blobs that arrive by themselves (issue 16, ADR 0012). SourceStore
-- (src/sources/store.rs) is the only owner of these three tables.

-- One row per configured source: the durable schedule. A tick fires when a process wins the
-- compare-and-set on `next_slot` (the database's clock decides what is due); `lease_until`
-- keeps two listings of one source from overlapping and lets a tick cut by kill -9 be taken
-- over once it lapses.
CREATE TABLE source_schedules (
    source      text PRIMARY KEY,
    -- The schedule text next_slot was computed from: a changed schedule recomputes it.
    spec        text        NOT NULL,
    next_slot   timestamptz,
    last_slot   timestamptz,
    paused      boolean     NOT NULL DEFAULT false,
    paused_by   text,
    paused_at   timestamptz,
    -- The tick running now (NULL when none): who runs it and until when it is theirs.
    lease_owner text,
    lease_until timestamptz,
    -- A tick asked for by hand (POST /v1/sources/{name}/tick) and not yet run.
    requested_at timestamptz,
    requested_by text,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- History: every listing (scheduled, asked for, reconcile, or `resume`: one taken over from a
-- process that died or stopped mid-way) and every Event Grid delivery, with its counts. A
-- listing cut by kill -9 stays unfinished until its lease lapses and another process takes
-- it over, marking it `cut`.
CREATE TABLE source_runs (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source      text        NOT NULL,
    trigger     text        NOT NULL CHECK (trigger IN ('schedule', 'manual', 'reconcile', 'eventgrid', 'resume')),
    slot        timestamptz,
    worker_id   text,
    started_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    outcome     text CHECK (outcome IN ('ok', 'failed', 'cut')),
    -- Blobs listed (or BlobCreated events received), new to the ledger, already in it, and
    -- skipped or ignored, with the reasons: {"path_mismatch": {"count": 2, "examples": [...]}}.
    listed      bigint      NOT NULL DEFAULT 0,
    new         bigint      NOT NULL DEFAULT 0,
    duplicate   bigint      NOT NULL DEFAULT 0,
    skipped     bigint      NOT NULL DEFAULT 0,
    reasons     jsonb       NOT NULL DEFAULT '{}'::jsonb,
    error       text
);
CREATE INDEX source_runs_source_idx ON source_runs (source, id DESC);

-- The ingest ledger: one row per (source, blob key, etag), inserted with ON CONFLICT DO
-- NOTHING in the transaction that enqueues its job. No foreign key to jobs: finished jobs
-- are deleted by retention, the ledger is what remembers a blob was taken.
CREATE TABLE ingest_ledger (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source        text        NOT NULL,
    blob_key      text        NOT NULL,
    etag          text        NOT NULL,
    size          bigint      NOT NULL,
    last_modified timestamptz,
    found_by      text        NOT NULL CHECK (found_by IN ('watch', 'eventgrid', 'reconcile')),
    found_at      timestamptz NOT NULL DEFAULT now(),
    run_id        bigint,
    event_id      text,
    bu_id         text        NOT NULL,
    connector     text        NOT NULL,
    job_id        bigint,
    CONSTRAINT ingest_ledger_once UNIQUE (source, blob_key, etag)
);
CREATE INDEX ingest_ledger_source_idx ON ingest_ledger (source, id DESC);
CREATE INDEX ingest_ledger_job_idx ON ingest_ledger (job_id);

-- For humans: each ledger row with its job's state now (NULL once retention deleted the job)
-- and the lag from the blob's last change to its job's enqueue.
CREATE VIEW ingest_history AS
SELECT l.id, l.source, l.blob_key, l.etag, l.size, l.last_modified, l.found_by, l.found_at,
       l.run_id, l.event_id, l.bu_id, l.connector, l.job_id,
       j.state AS job_state,
       round(extract(epoch FROM l.found_at - l.last_modified) * 1000)::bigint AS lag_ms
  FROM ingest_ledger l
  LEFT JOIN jobs j ON j.id = l.job_id;
