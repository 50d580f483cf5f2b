-- A create that Studio answered with its Execution was kept as a row of
-- `studio_calls` (its job, its time, `create`, `ok`, the SID) beside the job
-- row that already says all of it: the job's `execution_sid` and `sent_at`,
-- its phone (To), its run's sender (From) and its Parameters. On a ledger of
-- ten million finished jobs that row and its entry in `studio_calls_job`
-- took 88 of the 427 bytes each job cost. Such a create is now kept by its
-- job row alone, marked here; every other call (a refused create, a
-- conflict, an end, a fetch, a reconciliation) is a row of `studio_calls` as
-- before. A create whose job was no longer in flight when its answer came
-- (cancelled meanwhile) has nowhere else to be kept and keeps its row.
--
-- The flag is 0 or 1: SQLite stores either in the row's header alone, no
-- byte in its body. Rows written before keep their calls as they were.

ALTER TABLE jobs ADD COLUMN create_on_row INTEGER NOT NULL DEFAULT 0;

-- Every Studio call of the ledger in one place, as `studio_calls` held them
-- before: its rows, and the creates kept on their job rows (no `id`; their
-- time is the job's `sent_at`, taken as the answer came back). A later
-- migration that builds `jobs` or `studio_calls` again (as 0021 did) drops
-- this view first and makes it again after: SQLite checks the views that
-- name a table when it is renamed, and refuses a view left naming none.
CREATE VIEW studio_call_trail AS
SELECT id, run_id, job_id, at, operation, request, http_status, response, outcome, execution_sid, note
FROM studio_calls
UNION ALL
SELECT NULL, run_id, id, sent_at, 'create', '', NULL, NULL, 'ok', execution_sid, NULL
FROM jobs
WHERE create_on_row = 1;
