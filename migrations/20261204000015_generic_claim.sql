-- The claim in a function whose plan is generic (issue 18, item 1; ADR 0024).
--
-- As a prepared statement the claim was planned again at every call: PostgreSQL kept choosing
-- a custom plan (the generic one's estimate, with LIMIT and the kinds unknown, is the
-- higher), 0.43 ms of every claim, 2.5 µs of a no-op job's 25-28 µs of server CPU
-- (pg_stat_statements, 100,000 jobs). `plan_cache_mode = force_generic_plan` for the whole
-- pool would also reach the API's filters (ADR 0018): set on this function it reaches this
-- statement only, planned once per connection. The generic plan is the custom one's: each
-- kind's part of jobs_live_claim_idx, then the rows by id (checked with stale and fresh
-- statistics behind a 200,000-job backlog; the suite's claim tests run through it).
--
-- The statement is the one JobStore::claim sent before, unchanged but for the names.
CREATE FUNCTION etlq_claim(max_jobs bigint, owner text, lease_s double precision,
                           owner_version text, claim_kinds text[])
RETURNS TABLE (id bigint, kind text, payload jsonb, checkpoint jsonb, attempts integer,
               max_attempts integer, fencing_token bigint, waited_s double precision)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
-- The output columns share names with jobs' columns: every reference here is qualified.
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH picked AS (
        -- Each kind's due jobs in order from its own part of jobs_live_claim_idx, then the
        -- best of them: queued jobs of kinds this process does not run are never read. Rows
        -- locked here and cut by the outer LIMIT are free again at commit.
        SELECT p.id, p.prev_state, p.due_at,
               -- A job's first claim is kept in its row (started_at, lease_owner); any later
               -- one writes its `claimed` event (ADR 0018).
               (p.first_claim_in_row AND p.started_at IS NULL) AS first_claim,
               row_number() OVER (ORDER BY p.priority, p.due_at, p.id) AS ord
        FROM unnest(claim_kinds) AS k(kind)
        CROSS JOIN LATERAL (
            SELECT j.id, j.state AS prev_state, j.run_at AS due_at, j.priority, j.started_at,
                   j.first_claim_in_row
            FROM jobs j
            WHERE j.kind = k.kind AND j.state IN ('queued', 'retrying') AND j.run_at <= now()
              AND j.finished_at IS NULL -- jobs_live only
            ORDER BY j.priority, j.run_at, j.id
            LIMIT max_jobs
            FOR UPDATE SKIP LOCKED
        ) p
        ORDER BY p.priority, p.due_at, p.id
        LIMIT max_jobs
    ),
    claimed AS (
        UPDATE jobs j
        SET state = 'running', attempts = j.attempts + 1, lease_owner = owner,
            lease_expires_at = now() + make_interval(secs => lease_s),
            fencing_token = j.fencing_token + 1,
            started_at = coalesce(j.started_at, now()), updated_at = now(),
            first_claim_in_row = picked.first_claim
        FROM picked
        -- The ANY keeps the plan on the primary key; a bare join to the CTE hash-joins
        -- against a scan of the whole table, which grows with history.
        WHERE j.id = picked.id AND j.id = ANY (ARRAY(SELECT picked.id FROM picked))
          AND j.finished_at IS NULL
        RETURNING j.id, j.kind, j.payload, j.checkpoint, j.attempts, j.max_attempts,
                  j.fencing_token, j.stage, picked.prev_state, picked.ord, picked.first_claim,
                  extract(epoch FROM now() - picked.due_at)::float8 AS waited_s
    ),
    ev AS (
        INSERT INTO job_event_log (job_id, event, from_state, to_state, stage, attempt,
                                   fencing_token, worker_id, worker_version)
        SELECT c.id, 'claimed', c.prev_state, 'running', c.stage, c.attempts, c.fencing_token,
               owner, owner_version
        FROM claimed c WHERE NOT c.first_claim
    )
    SELECT c.id, c.kind, c.payload, c.checkpoint, c.attempts, c.max_attempts, c.fencing_token,
           c.waited_s
    FROM claimed c ORDER BY c.ord;
END $$;
