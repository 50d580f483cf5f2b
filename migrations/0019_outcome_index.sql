-- The index of a run's jobs by outcome state held every job that was sent,
-- for as long as the ledger kept it (19 bytes a job on a ledger of ten
-- million), and moved a job's entry when its outcome was read back. What
-- reads it asks one thing: does the run still await an outcome? This index
-- holds the jobs whose outcome is awaited and no others. (A run's outcome
-- values are counted from the rows of its sent jobs, found through the
-- index of a run's jobs by state.)
--
-- A query reads through a partial index only if its WHERE holds the index's
-- condition as written: `outcome_state = 'open'`.

DROP INDEX jobs_outcome_run;
CREATE INDEX jobs_outcome_open ON jobs (run_id) WHERE outcome_state = 'open';
