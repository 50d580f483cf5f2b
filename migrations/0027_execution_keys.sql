-- A sent job is found by its Execution's SID through eight of the SID's
-- characters (migration 0022). Kept as an index on the expression
-- `substr(execution_sid, 3, 8)`, every INSERT into `jobs` and every UPDATE
-- that set a SID computed it with a function call, and SQLite takes a
-- statement that calls a function as one that may abort half-way: each
-- multi-row INSERT of an import copied every page it changed to a statement
-- journal first (under callgrind the writer's 30,700 instructions a row
-- became 24,600 without it).
--
-- The eight characters now go into a table of their own, one row a sent
-- job, written by a statement of its own in the send's transaction (the
-- same bytes as the index's entry: the key and the job's id, nothing
-- else). A lookup
-- reads the job ids under the SID's key here and compares the whole SID on
-- each job's row, as before, so a shared key costs a row read, never a
-- wrong job. Only sent jobs are looked up by SID (a skipped job may carry
-- someone else's active SID; it did not create it), so only they have a
-- key.

CREATE TABLE execution_keys (
    key    TEXT    NOT NULL,
    job_id INTEGER NOT NULL,
    PRIMARY KEY (key, job_id)
) WITHOUT ROWID;

-- Read straight through the table and sorted, rather than through the old
-- index in key order (a row read at a random page for each key): on a
-- ledger of ten million jobs 20–27 s against 63 s (Python's `sqlite3`
-- module, flowcast's cache size).
INSERT INTO execution_keys (key, job_id)
SELECT substr(execution_sid, 3, 8), id FROM jobs NOT INDEXED
WHERE state = 'sent' AND execution_sid IS NOT NULL
ORDER BY 1, 2;

DROP INDEX jobs_execution;
