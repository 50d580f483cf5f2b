-- The index by Execution SID held each sent job's whole SID, 34 characters:
-- 47 bytes a job on a ledger of ten million, the largest index on `jobs`.
-- It is read to find the job of a SID Studio names (an Execution's end, a
-- reconciliation), and a SID's characters after its `FN` prefix are random:
-- eight of them tell one job from another but for about one pair in a
-- billion lookups. The index now holds those eight (`substr(execution_sid,
-- 3, 8)`); what reads it compares them first, then the whole SID on the
-- row, so a shared prefix costs a row read, never a wrong job.
--
-- A query reads through an index on an expression only if its WHERE holds
-- the expression as written: `substr(execution_sid, 3, 8) = substr(?, 3, 8)`.

DROP INDEX jobs_execution;
CREATE INDEX jobs_execution ON jobs (substr(execution_sid, 3, 8)) WHERE execution_sid IS NOT NULL;
