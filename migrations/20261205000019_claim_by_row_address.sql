-- The claim updates the rows it locked by their place in jobs_live, not by id (issue 18,
-- item 1; ADR 0024, "The claim by row address").
--
-- `picked` reads each due job through jobs_live_claim_idx and locks it FOR UPDATE SKIP LOCKED;
-- the UPDATE then found the same rows again through the id index (500 descents for a claim of
-- 500). A row this statement holds locked cannot be updated by any other, so its version is
-- still at the address (ctid) `picked` read it from, and the UPDATE reads it there with a TID
-- scan. A job some other statement updated between this statement's snapshot and its lock is
-- read by the lock at its newer address, which the snapshot does not see: it is left unclaimed
-- (and unlocked at commit) for the next claim, never claimed twice. Only the function's body
-- changes: a previous release calls it by the same name and arguments. scripts/bench-claim-plan
-- (200 claims of 500 from a 110,000-job backlog, alternating rounds): 0.93-0.97x per claim.

CREATE OR REPLACE FUNCTION etlq_claim(max_jobs bigint, owner text, lease_s double precision,
                           owner_version text, claim_kinds text[])
RETURNS TABLE (id bigint, kind text, payload jsonb, checkpoint jsonb, attempts integer,
               max_attempts integer, fencing_token bigint, waited_s double precision)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan AS $$
-- The output columns share names with jobs' columns: every reference here is qualified.
#variable_conflict use_column
DECLARE
    claimed_jobs bigint;
BEGIN
    RETURN QUERY
    WITH picked AS (
        -- Each kind's due jobs in order from its own part of jobs_live_claim_idx, then the
        -- best of them: queued jobs of kinds this process does not run are never read. Rows
        -- locked here and cut by the outer LIMIT are free again at commit.
        SELECT p.id, p.row_at, p.prev_state, p.due_at,
               -- A job's first claim is kept in its row (started_at, lease_owner); any later
               -- one writes its `claimed` event (ADR 0018).
               (p.first_claim_in_row AND p.started_at IS NULL) AS first_claim,
               row_number() OVER (ORDER BY p.priority, p.due_at, p.id) AS ord
        FROM unnest(claim_kinds) AS k(kind)
        CROSS JOIN LATERAL (
            SELECT j.id, j.ctid AS row_at, j.state AS prev_state, j.run_at AS due_at,
                   j.priority, j.started_at, j.first_claim_in_row
            FROM jobs_live j
            WHERE j.kind = k.kind AND j.state IN ('queued', 'retrying') AND j.run_at <= now()
            ORDER BY j.priority, j.run_at, j.id
            LIMIT max_jobs
            FOR UPDATE SKIP LOCKED
        ) p
        ORDER BY p.priority, p.due_at, p.id
        LIMIT max_jobs
    ),
    claimed AS (
        UPDATE jobs_live j
        SET state = 'running', attempts = j.attempts + 1, lease_owner = owner,
            lease_expires_at = now() + make_interval(secs => lease_s),
            fencing_token = j.fencing_token + 1,
            started_at = coalesce(j.started_at, now()), updated_at = now(),
            first_claim_in_row = picked.first_claim
        FROM picked
        -- Each row where `picked` locked it: no other statement can update a row this one
        -- holds FOR UPDATE, so its version stays where it was read, and a TID scan reads it
        -- there instead of descending the id index a second time (migration 19). The ANY
        -- keeps the plan on TIDs; a bare join to the CTE hash-joins against a scan of the
        -- whole partition.
        WHERE j.ctid = picked.row_at AND j.ctid = ANY (ARRAY(SELECT picked.row_at FROM picked))
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
    GET DIAGNOSTICS claimed_jobs = ROW_COUNT;
    -- Every claimed job left 'queued' or 'retrying' for 'running': a departure each; nothing
    -- finished, so no day's count changes.
    IF claimed_jobs > 0 THEN
        INSERT INTO job_minute_deltas (minute, arrived, departed, succeeded, failed, dead)
        VALUES (date_trunc('minute', now()), 0, claimed_jobs, 0, 0, 0);
    END IF;
END $$;
