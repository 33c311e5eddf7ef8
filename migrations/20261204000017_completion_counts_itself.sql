-- The completion counts itself too (issue 18, item 1; ADR 0024, "The completion counts itself").
--
-- As with the claim (migration 16), a worker's completion knows what it changed before the
-- counting triggers read it back through their transition tables: every row it updates was
-- 'running' (the statement applies a transition only while the lease is held), and it becomes
-- the transition's target state. The function marks its statement, the statement writes the
-- day's counts and the minute's deltas from the rows it returned, and the triggers return at
-- once while the mark is on. A previous release's bare completion during a rolling deploy, and
-- every other statement, is counted by the triggers as before.
--
-- The statement is the worker's completion as it was sent from `JobStore::apply`, its
-- parameters named.

CREATE FUNCTION etlq_apply_transitions(
    t_ids bigint[], t_tokens bigint[], t_events text[], t_to_states text[], t_stages text[],
    t_next_stages text[], t_outputs text[], t_attempt_deltas integer[], t_delays double precision[],
    t_errors text[], t_attempts integer[], t_durations double precision[],
    p_worker_id text, p_worker_version text)
RETURNS TABLE (id bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    -- Read by the counting triggers at the end of the statement below; reset right after it
    -- (a function's SET clause would not take a set_config of another setting back).
    PERFORM set_config('etlq.counted_by_statement', 'on', true);
    RETURN QUERY
    WITH input AS (
        SELECT * FROM unnest(t_ids, t_tokens, t_events, t_to_states, t_stages, t_next_stages,
                             t_outputs, t_attempt_deltas, t_delays, t_errors, t_attempts,
                             t_durations)
            AS t(id, token, event, to_state, stage, next_stage, output, attempt_delta,
                 delay_s, error, attempt, duration_ms)
    ),
    upd AS (
        UPDATE jobs j
        SET state = i.to_state,
            stage = i.next_stage,
            checkpoint = CASE WHEN i.output IS NULL THEN j.checkpoint
                              ELSE j.checkpoint || jsonb_build_object(i.stage, i.output::jsonb) END,
            attempts = j.attempts + i.attempt_delta,
            run_at = CASE WHEN i.delay_s IS NULL THEN j.run_at
                          ELSE now() + make_interval(secs => i.delay_s) END,
            last_error = CASE WHEN i.event = 'released' THEN j.last_error
                              ELSE coalesce(i.error, j.last_error) END,
            lease_owner = CASE WHEN i.to_state = 'running' THEN j.lease_owner END,
            lease_expires_at = CASE WHEN i.to_state = 'running' THEN j.lease_expires_at END,
            finished_at = CASE WHEN i.to_state IN ('succeeded', 'dead') THEN now() END,
            progress = CASE WHEN i.to_state = 'running' THEN j.progress END,
            -- The happy path in the row (ADR 0018): the stage that finished the job, and who
            -- ran the attempt, read by the job_events view.
            final_stage = CASE WHEN i.to_state = 'succeeded' THEN i.stage ELSE j.final_stage END,
            final_stage_ms = CASE WHEN i.to_state = 'succeeded' THEN i.duration_ms
                                  ELSE j.final_stage_ms END,
            ran_by = CASE WHEN i.to_state = 'running' THEN j.ran_by ELSE j.lease_owner END,
            ran_version = CASE WHEN i.to_state = 'running' THEN j.ran_version
                               ELSE p_worker_version END,
            -- The worker came back with a verdict: it did not die in this stage.
            rescue_streak = 0,
            updated_at = now()
        FROM input i
        -- "Still running" is tested as `lease_owner IS NOT NULL` (equivalent by a CHECK
        -- constraint), and in a form that names the input row, so it is checked on the joined
        -- pair and not estimated on jobs_live alone: analysed while a backlog waited and
        -- nothing ran, lease_owner looked always NULL, the planner expected one running job,
        -- and every completion scanned jobs_live once per input row (400 ms a batch of 500).
        -- `finished_at IS NULL` keeps the plan on jobs_live; a job that finishes here moves
        -- to its day's partition in this statement. The ANY, as in the claim, reads the rows
        -- by id whatever plan the cache picks: a custom plan for a batch of 500 hash-joined a
        -- scan of all of jobs_live (13 ms of 22 behind a 20,000-job backlog; 0.7 ms by id).
        WHERE j.id = i.id AND j.id = ANY (t_ids) AND j.fencing_token = i.token
          AND j.finished_at IS NULL AND (j.lease_owner IS NOT NULL OR i.id IS NULL)
        RETURNING j.id, j.kind, j.payload, j.attempts, i.event, i.to_state, i.stage, i.error,
                  i.attempt, i.duration_ms, i.token, j.started_at, j.first_claim_in_row
    ),
    ev AS (
        -- The stage that finished the job is kept in its row. A first attempt that ends
        -- otherwise writes out its claim, which the row held (ADR 0018).
        INSERT INTO job_event_log (at, job_id, event, from_state, to_state, stage, attempt,
                                   fencing_token, worker_id, worker_version, duration_ms, error)
        SELECT u.started_at, u.id, 'claimed', 'queued', 'running', NULL, 1, u.token, p_worker_id,
               p_worker_version, NULL, NULL
        FROM upd u WHERE u.to_state NOT IN ('running', 'succeeded') AND u.first_claim_in_row
        UNION ALL
        SELECT now(), u.id, u.event, 'running', u.to_state, u.stage, u.attempt, u.token,
               p_worker_id, p_worker_version, u.duration_ms, u.error
        FROM upd u WHERE u.to_state <> 'succeeded'
    ),
    dl AS (
        INSERT INTO dead_letters (job_id, kind, bu_id, connector, failed_stage, attempts, reason)
        SELECT u.id, u.kind, u.payload ->> 'bu_id', u.payload ->> 'connector', u.stage,
               u.attempts, coalesce(u.error, 'dead')
        FROM upd u WHERE u.to_state = 'dead'
    ),
    -- What etlq_count_finished would count: every job finished here, today (finished_at is
    -- now()), by kind and final state; none of them had finished before.
    counted_days AS (
        INSERT INTO job_counts (day, kind, state, n)
        SELECT (now() AT TIME ZONE 'UTC')::date, u.kind, u.to_state, count(*)
        FROM upd u WHERE u.to_state IN ('succeeded', 'dead')
        GROUP BY u.kind, u.to_state
    ),
    -- What etlq_count_minutes would count: each row went from 'running' to its target; a
    -- stage completed with another to go stays 'running' and changes nothing. Every death
    -- here is a failure (the statement sets rescue_streak to 0).
    counted_minutes AS (
        INSERT INTO job_minute_deltas (minute, arrived, departed, succeeded, failed, dead)
        SELECT date_trunc('minute', now()),
               count(*) FILTER (WHERE u.to_state IN ('queued', 'retrying')), 0,
               count(*) FILTER (WHERE u.to_state = 'succeeded'),
               count(*) FILTER (WHERE u.to_state IN ('retrying', 'dead')),
               count(*) FILTER (WHERE u.to_state = 'dead')
        FROM upd u WHERE u.to_state <> 'running'
        HAVING count(*) > 0
    )
    SELECT u.id FROM upd u;
    PERFORM set_config('etlq.counted_by_statement', '', true);
END $$;
