-- A create that Studio answered with its Execution was kept as a row of
-- `studio_calls` beside the job row that already says all of it (the job's
-- `execution_sid` and `sent_at`, its phone, its run's sender, its
-- Parameters). Such a create is now kept by its job row alone, marked here;
-- every other call is a row of `studio_calls` as before, and so is a create
-- whose job was no longer in flight when its answer came. Rows written
-- before keep their calls as they were. (A constant default adds the column
-- without rewriting the table.)

ALTER TABLE jobs ADD COLUMN create_on_row SMALLINT NOT NULL DEFAULT 0;

-- Every Studio call of the ledger in one place: the rows of `studio_calls`,
-- and the creates kept on their job rows (no `id`; their time is the job's
-- `sent_at`, taken as the answer came back). A later migration that changes
-- a column this view reads drops it first and makes it again after.
--
-- During a rolling upgrade an instance of the version before this one may
-- still purge: it copies the flag with the rest of the row, so a purged
-- job may keep its create's record (its SID and time, no personal data).
CREATE VIEW studio_call_trail AS
SELECT id, run_id, job_id, at, operation, request, http_status, response, outcome, execution_sid, note
FROM studio_calls
UNION ALL
SELECT NULL, run_id, id, sent_at, 'create', '', NULL, NULL, 'ok', execution_sid, NULL
FROM jobs
WHERE create_on_row = 1;
