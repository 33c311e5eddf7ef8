-- The happy path's transitions live in the job's own row (issue 18, item 1; ADR 0018).
--
-- A job that is enqueued, claimed once and finishes its last stage wrote three event rows
-- (enqueued, claimed, stage_completed): three heap inserts and three index entries, more than
-- half of the WAL a no-op job wrote. Each of those facts is already, or now, a column of the
-- row the job keeps in history anyway:
--
--   enqueued        created_at                        (rows with enqueued_in_row)
--   claimed         started_at, lease_owner (ran_by, ran_version once it ended), for the
--                   job's first claim (first_claim_in_row)
--   stage_completed finished_at, final_stage, final_stage_ms, for the stage that finished the
--                   job ('running' → 'succeeded')
--
-- Every other transition is still a stored row: every claim after the first, stage
-- completions that do not finish the job, retries, releases, rescues, cancels, deaths,
-- dead-letter retries, and a source's enqueue (it names the source). A first attempt
-- that ends any other way than success writes its claim out as a stored `claimed` row in the
-- same statement; the row's claim is read only while the job runs or once it succeeded, and
-- the next claim clears first_claim_in_row, so no claim is lost or told twice. The claim
-- itself writes no column it did not write before: its row version stays as small as it was.
--
-- `job_events` keeps its name and its columns for every reader (SPEC §3, §6: every transition
-- is a row of it, appearing in the transaction that made it): it becomes a view, the union of
-- the stored rows — the partitioned table, now `job_event_log` — and the transitions read
-- from `jobs` (`id` NULL for those). The history views read it as before.

ALTER TABLE jobs ADD COLUMN enqueued_in_row boolean NOT NULL DEFAULT false;
ALTER TABLE jobs ADD COLUMN first_claim_in_row boolean NOT NULL DEFAULT false;
-- Jobs from before this migration have their `enqueued` and `claimed` events; jobs from now
-- on do not (the metadata-only defaults above are what the old rows read).
ALTER TABLE jobs ALTER COLUMN enqueued_in_row SET DEFAULT true;
ALTER TABLE jobs ALTER COLUMN first_claim_in_row SET DEFAULT true;
-- Who ran the job's last attempt, set when it ends (lease_owner is cleared then).
ALTER TABLE jobs ADD COLUMN ran_by text;
ALTER TABLE jobs ADD COLUMN ran_version text;
ALTER TABLE jobs ADD COLUMN final_stage text;
ALTER TABLE jobs ADD COLUMN final_stage_ms double precision;

-- Room on each page of live jobs for the claim's new row version: an update that stays on
-- its page logs only the bytes that changed (and no extra lock record for leaving the page).
-- Queue benchmark, 40,000 no-op jobs: 66 B less WAL per job (793 → 725 B without full-page
-- images), the same speed. Pages already written keep their fill until rewritten.
ALTER TABLE jobs_live SET (fillfactor = 50);

DROP VIEW audit_trail;
DROP VIEW job_timeline;
DROP VIEW stage_runs;

ALTER TABLE job_events RENAME TO job_event_log;
-- Day partitions follow their parent's name (etlq_ensure_history_partitions).
DO $$
DECLARE p record;
BEGIN
    FOR p IN SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              WHERE i.inhparent = 'job_event_log'::regclass LOOP
        EXECUTE format('ALTER TABLE %I RENAME TO %I', p.relname,
                       'job_event_log' || substr(p.relname, length('job_events') + 1));
    END LOOP;
END $$;

CREATE VIEW job_events AS
SELECT e.id, e.job_id, e.at, e.event, e.from_state, e.to_state, e.stage, e.attempt,
       e.fencing_token, e.worker_id, e.worker_version, e.duration_ms, e.error
  FROM job_event_log e
UNION ALL
SELECT NULL::bigint, j.id, j.created_at, 'enqueued', NULL::text, 'queued', NULL::text,
       NULL::integer, NULL::bigint, NULL::text, NULL::text, NULL::double precision, NULL::text
  FROM jobs j WHERE j.enqueued_in_row
UNION ALL
-- The first claim (the one that set started_at): attempt 1, from 'queued', at no stage,
-- under the token the job still has, read while the job runs or once it succeeded. Every
-- other ending writes it out as a stored row, and any later claim clears first_claim_in_row.
SELECT NULL::bigint, j.id, j.started_at, 'claimed', 'queued', 'running', NULL::text, 1,
       j.fencing_token, CASE WHEN j.state = 'running' THEN j.lease_owner ELSE j.ran_by END,
       CASE WHEN j.state = 'running'
            THEN (SELECT w.version FROM workers w WHERE w.id = j.lease_owner)
            ELSE j.ran_version END,
       NULL::double precision, NULL::text
  FROM jobs j
 WHERE j.first_claim_in_row AND j.started_at IS NOT NULL AND j.state IN ('running', 'succeeded')
UNION ALL
SELECT NULL::bigint, j.id, j.finished_at, 'stage_completed', 'running', 'succeeded',
       j.final_stage, j.attempts, j.fencing_token, j.ran_by, j.ran_version,
       j.final_stage_ms, NULL::text
  FROM jobs j WHERE j.final_stage IS NOT NULL AND j.state = 'succeeded';

-- As before, over the view, with `seq`: the transition's place in its job's history (a
-- transition read from the row has no event_id). Within a job transitions are ordered by
-- time, then by event id: one read from the row is the only transition its transaction made
-- to the job, or (the enqueue) the first.
CREATE VIEW job_timeline AS
SELECT e.job_id,
       row_number() OVER w AS seq,
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
WINDOW w AS (PARTITION BY e.job_id ORDER BY e.at, e.id NULLS FIRST);

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

-- The partition functions name the stored table.
CREATE OR REPLACE FUNCTION etlq_ensure_history_partitions(days_ahead integer) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    d date;
    t text;
    made integer := 0;
BEGIN
    FOR d IN SELECT g::date FROM generate_series((now() AT TIME ZONE 'UTC')::date,
                                                 (now() AT TIME ZONE 'UTC')::date + days_ahead,
                                                 interval '1 day') AS g LOOP
        FOREACH t IN ARRAY ARRAY['jobs', 'job_event_log'] LOOP
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

CREATE OR REPLACE FUNCTION etlq_expired_history_partitions(keep interval)
RETURNS TABLE (parent text, partition text, ends timestamptz)
LANGUAGE sql STABLE AS $$
    SELECT p.relname::text, c.relname::text,
           substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz
      FROM pg_inherits i
      JOIN pg_class c ON c.oid = i.inhrelid
      JOIN pg_class p ON p.oid = i.inhparent
     WHERE p.relname IN ('jobs', 'job_event_log')
       AND p.relnamespace = current_schema()::regnamespace
       AND c.relname NOT IN ('jobs_live')
       AND substring(pg_get_expr(c.relpartbound, c.oid) FROM 'TO \(''([^'']+)''\)')::timestamptz
           <= now() - keep
     ORDER BY 3;
$$;

-- Writes into `job_events` still land, in `job_event_log`: those of a process of the previous
-- release during a rolling deploy, and anyone's own SQL. A stored `enqueued` or `claimed` row
-- for a job whose row also tells it (the previous release writes both events and leaves the
-- new flags at their defaults) clears the row's flag, so the view tells it once.
CREATE FUNCTION etlq_job_events_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO job_event_log (job_id, at, event, from_state, to_state, stage, attempt,
                               fencing_token, worker_id, worker_version, duration_ms, error)
    VALUES (NEW.job_id, coalesce(NEW.at, now()), NEW.event, NEW.from_state, NEW.to_state,
            NEW.stage, NEW.attempt, NEW.fencing_token, NEW.worker_id, NEW.worker_version,
            NEW.duration_ms, NEW.error)
    RETURNING id, at INTO NEW.id, NEW.at;
    IF NEW.event = 'enqueued' THEN
        UPDATE jobs SET enqueued_in_row = false WHERE id = NEW.job_id AND enqueued_in_row;
    ELSIF NEW.event = 'claimed' THEN
        UPDATE jobs SET first_claim_in_row = false WHERE id = NEW.job_id AND first_claim_in_row;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER job_events_insert INSTEAD OF INSERT ON job_events
    FOR EACH ROW EXECUTE FUNCTION etlq_job_events_insert();
