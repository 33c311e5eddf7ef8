-- Datasets over time (issue 20): roll back to a superseded version, and the cleaner's claim.
-- DatasetStore (src/datasets/store.rs) owns these tables.

-- What a superseded version holds, so a rollback can point the manifest at it without reading
-- it back (NULL for rows from before this migration: a rollback then sums the sink).
ALTER TABLE superseded_versions
    ADD COLUMN records bigint,
    ADD COLUMN checksum text,
    -- Set by the cleaner, under the dataset's lock, before it deletes anything: from then on
    -- the version cannot be rolled back to, and a cleaner cut off midway finishes the job.
    ADD COLUMN delete_started_at timestamptz;

-- Every rollback, keyed by the generation it made: the history next to `promotions`.
CREATE TABLE rollbacks (
    bu_id         text        NOT NULL,
    connector     text        NOT NULL,
    generation    bigint      NOT NULL,
    from_version  bigint      NOT NULL,
    to_version    bigint      NOT NULL,
    cache_counter bigint      NOT NULL,
    actor         text        NOT NULL,
    reason        text        NOT NULL,
    at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (bu_id, connector, generation)
);
