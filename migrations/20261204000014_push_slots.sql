-- Push slots as rows (issue 18, item 1; ADR 0020, revised 2026-12-04).
--
-- An advertisement's free slots were a count in its `worker_parking` row, which every push
-- decremented and every top-up incremented: an enqueue that met a top-up (or another push)
-- holding the row skipped it (SKIP LOCKED) and queued its job, so top-ups waited until half
-- the slots were taken, and pushes one after another ran the slots out first — one
-- back-to-back pickup in ten at concurrency 10 went through a claim. Now each free slot is a
-- row here: a push deletes one (SKIP LOCKED), a top-up inserts more at every freed slot, and
-- neither holds the advertisement's own row, so they never meet.
--
-- The withdrawal deletes the slots and the advertisement; deleting a slot a push holds waits
-- for that push, so afterwards every job pushed to the worker is committed, as before.
-- `worker_parking.free` stays for workers of the previous release during a rolling deploy:
-- this release writes 0 there, so those workers' enqueues push nothing to it, and its own
-- enqueues push only through slots, so nothing to theirs; their jobs are queued and claimed.
CREATE TABLE parking_slots (
    worker_id text NOT NULL,
    -- The advertisement the slot belongs to: a push joins it to the worker's current one, so
    -- a slot left from an earlier advertisement is never taken.
    generation bigint NOT NULL
);
CREATE INDEX parking_slots_worker_idx ON parking_slots (worker_id, generation);
