-- The claim index held every job by (run, state, due time) for as long as
-- the ledger kept it, and `jobs_page` held every job by (run, id, state): a
-- state change moved the job's entry in both, so claiming a job (pending ->
-- dispatching) and recording its Execution (dispatching -> sent) cost four
-- b-tree writes each, and a finished job kept an entry in the claim index
-- that no claim reads (26 bytes a job on a ledger of ten million).
--
-- Now the claim index holds the pending jobs alone, by (run, due time): a
-- claim removes the job's entry (one write) and its outcome touches none.
-- `jobs_page` holds every job by (run, state), with the job's id after them
-- as in every index of the table (declared, it would be stored twice: 4
-- bytes a job). What asks for a run's jobs of one state (in flight after a
-- crash, "any still open?", a page of one state) reads a range of it; a
-- run's counts by state read it in state order, with no sort; a page of
-- every state merges the per-state ranges from the `after` id on (see
-- `jobs_page` in the code).
--
-- A query reads through a partial index only if its WHERE holds the index's
-- condition as written: `state = 'pending'`.

DROP INDEX jobs_claim;
CREATE INDEX jobs_claim ON jobs (run_id, due_at) WHERE state = 'pending';

DROP INDEX jobs_page;
CREATE INDEX jobs_page ON jobs (run_id, state);
