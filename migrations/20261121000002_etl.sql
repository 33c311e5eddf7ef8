-- etlq ETL pipeline: the PostgreSQL document sink, dataset manifests, promotions, and the
-- audit log (SPEC §2, §6).

-- The default document sink. One row per document per dataset version (= the job id that
-- produced it); doc_id is derived from (bu_id, connector, key columns), so a re-run of sync
-- replaces rows instead of adding them.
CREATE TABLE sink_documents (
    dataset_version bigint      NOT NULL,
    doc_id          text        NOT NULL,
    bu_id           text        NOT NULL,
    connector       text        NOT NULL,
    body            jsonb       NOT NULL,
    -- Hash of the body as written by extract; verify sums these per version.
    content_hash    bigint      NOT NULL,
    synced_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dataset_version, doc_id)
);

-- The promoted version of each (bu_id, connector): what readers use.
CREATE TABLE dataset_manifests (
    bu_id        text        NOT NULL,
    connector    text        NOT NULL,
    version      bigint      NOT NULL,
    records      bigint      NOT NULL,
    checksum     text        NOT NULL,
    -- Promotions of this dataset so far.
    generation   bigint      NOT NULL DEFAULT 1,
    promoted_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bu_id, connector)
);

-- Readers cache datasets and poll this one number: it changes exactly once per promotion.
CREATE TABLE cache_manifest (
    id         boolean     PRIMARY KEY DEFAULT true CHECK (id),
    counter    bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO cache_manifest DEFAULT VALUES;

-- One row per promote stage that committed, keyed by job: a re-run finds it and does nothing.
CREATE TABLE promotions (
    job_id           bigint      PRIMARY KEY,
    bu_id            text        NOT NULL,
    connector        text        NOT NULL,
    -- 'promoted': the manifest now points at this version; 'stale': a newer version was
    -- already promoted, so this one was recorded as superseded instead.
    outcome          text        NOT NULL CHECK (outcome IN ('promoted', 'stale')),
    previous_version bigint,
    cache_counter    bigint      NOT NULL,
    promoted_at      timestamptz NOT NULL DEFAULT now()
);

-- Versions no longer promoted; the cleaner deletes their documents and artifacts after the
-- retention period.
CREATE TABLE superseded_versions (
    version        bigint      PRIMARY KEY,
    bu_id          text        NOT NULL,
    connector      text        NOT NULL,
    superseded_by  bigint      NOT NULL,
    superseded_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at     timestamptz
);
CREATE INDEX superseded_pending_idx ON superseded_versions (superseded_at) WHERE deleted_at IS NULL;

-- Who did what through the API, and from which build.
CREATE TABLE audit_log (
    id        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    -- The bearer token's name, or 'anonymous' when tokens are off.
    actor     text        NOT NULL,
    -- service/version, e.g. 'etlq-api/0.1.0'.
    source    text        NOT NULL,
    action    text        NOT NULL,
    job_id    bigint,
    bu_id     text,
    connector text,
    detail    jsonb
);
CREATE INDEX audit_log_job_idx ON audit_log (job_id) WHERE job_id IS NOT NULL;

-- Uploads and every stage transition in one place: the API's actions with their actor, and
-- each worker transition with the worker, its build, and on whose behalf the job runs.
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
