-- What dead and cancelled ETL jobs leave behind is reclaimed after a grace period (issue 20).
-- JobStore owns `jobs`: the mark says the job's sink version and run artifacts are gone, so a
-- retry of it starts from the first stage instead of a checkpoint whose outputs were deleted.
ALTER TABLE jobs ADD COLUMN outputs_reclaimed_at timestamptz;

CREATE INDEX jobs_unreclaimed_idx ON jobs (finished_at)
    WHERE kind = 'etl' AND state IN ('dead', 'cancelled') AND outputs_reclaimed_at IS NULL;

-- The uploads sweep asks which stored uploads a job still names.
CREATE INDEX jobs_source_blob_idx ON jobs ((payload->>'source_blob')) WHERE kind = 'etl';
