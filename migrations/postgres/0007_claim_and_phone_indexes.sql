-- The claim index held every job by (run, state, due time). A claim asks for
-- a run's pending jobs in (due time, id) order: the index gave the due time
-- but not the id, so every claim read all of the run's pending jobs and
-- sorted them to take the first few. On a 20,000-job run served by one
-- instance (statement log of the local server) the claim took 6.8 ms a
-- statement, 4.0 of the backends' 11.5 s, and the "next due job" query
-- another 1.1 s. It also moved each job's entry at every state change, and
-- kept finished jobs, which no claim reads.
--
-- Now it holds the pending jobs alone, in the order a claim takes them: the
-- claim and the next-due query read the first entries of one range. A query
-- reads through a partial index only if its WHERE holds the index's
-- condition as written: `state = 'pending'`.
--
-- A job also had two indexes by phone: the unique (run, phone) that keeps a
-- phone once per run, and `jobs_phone`, by which a claim's per-contact caps
-- find the phone's jobs across runs. One unique index by (phone, run) does
-- both (an import's `ON CONFLICT (run_id, phone)` finds it: the columns are
-- the same set). Every change of a job's state writes a new entry into each
-- of the table's indexes whose condition the row meets (PostgreSQL cannot
-- update a row in place when a column an index reads changes), so each index
-- dropped is one write fewer per import, claim, send and outcome.
--
-- What asks whether a run has open jobs (to finish it, to keep its summary,
-- to purge it) read the claim index by (run, state); it now asks for the
-- run's pending jobs (the claim index) and its dispatching ones apart. Those
-- are found by `jobs_leased`, which held the dispatching jobs by lease end
-- alone and now holds them by (run, lease end): a run's range of it.
--
-- The index of a run's jobs by outcome state held every sent job for as long
-- as the ledger kept it; what reads it asks whether a run still awaits an
-- outcome, which the jobs whose outcome is open answer alone.

DROP INDEX jobs_claim;
CREATE INDEX jobs_claim ON jobs (run_id, due_at, id) WHERE state = 'pending';

ALTER TABLE jobs DROP CONSTRAINT jobs_run_id_phone_key;
DROP INDEX jobs_phone;
CREATE UNIQUE INDEX jobs_phone_run ON jobs (phone, run_id);

DROP INDEX jobs_leased;
CREATE INDEX jobs_leased ON jobs (run_id, lease_until) WHERE state = 'dispatching';

DROP INDEX jobs_outcome_run;
CREATE INDEX jobs_outcome_open ON jobs (run_id) WHERE outcome_state = 'open';
