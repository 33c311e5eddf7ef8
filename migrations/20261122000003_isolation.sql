-- Poison-pill guard: rescues of a job in a row without its worker ever reporting back (a stage
-- completing, failing or being released resets it). At worker.max_consecutive_rescues the
-- rescuer dead-letters the job instead of handing it to the next victim.
ALTER TABLE jobs ADD COLUMN rescue_streak integer NOT NULL DEFAULT 0;

-- The `test` job kind's evidence table is a test aid: the release build does not have it.
-- Builds with the `test-aids` feature create it at startup.
DROP TABLE IF EXISTS test_stage_runs;
