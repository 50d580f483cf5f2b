-- A purge ends each run by deleting the run's own events that are done with
-- (those about the run, not about one of its jobs). The outbox had no index
-- by run, so that DELETE read every event the ledger holds, once per purged
-- run: 0.24 s for a run on a ledger of two million events in the `sqlite3`
-- shell, warm, and a ledger of ten million purging its runs one a day
-- would read gigabytes for each. The index holds the run-level events alone
-- (few: a job's events are found by `outbox_job`); 0.014 s with it.
--
-- A query reads through a partial index only if its WHERE holds the
-- index's condition as written: `job_id IS NULL`.

CREATE INDEX outbox_run ON outbox (run_id) WHERE job_id IS NULL;

-- A pushed contact's key names its job by a foreign key, and a purge
-- deletes each batch of jobs (to write them back without their personal
-- values): for every job deleted, SQLite looks for keys that still name it,
-- and with no index by job that is a read of every key. A batch of 1,000
-- jobs on a ledger of 200,000 pushed contacts took 12.4 s in the `sqlite3`
-- shell, 6 ms with the index; the purge's own delete of the batch's keys
-- read them all too.

CREATE INDEX push_keys_job ON push_keys (job_id);

-- Events a purge kept for their delivery were left behind once delivered or
-- given up, their bodies holding a phone and an outcome; the deliverer now
-- deletes them as their delivery ends. Those left before go here, once,
-- overwritten with zeros as a purge's deletes are.
PRAGMA secure_delete = ON;
DELETE FROM outbox
WHERE (delivered_at IS NOT NULL OR gave_up_at IS NOT NULL)
  AND run_id IN (SELECT id FROM runs WHERE purged_at IS NOT NULL);
PRAGMA secure_delete = FAST;
