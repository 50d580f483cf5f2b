-- Every job and import row named its run by a foreign key. PostgreSQL checks
-- a foreign key by a query of its own for each row inserted (a lookup of the
-- run with a lock on it, planned and started per row), and in a profile of a
-- 300,000-row import into the local server those checks were a quarter of
-- the server's time; without them the import ran at 36,588 and 40,068
-- rows/s instead of 28,088 and 26,802 (alternately).
--
-- The key guarded nothing the code leaves open: no statement deletes a run
-- (a purge marks it purged and keeps its row), and every batch of jobs or
-- import rows is written in a transaction that reads its run first and
-- refuses a run that is not there.

ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_run_id_fkey;
ALTER TABLE import_rows DROP CONSTRAINT IF EXISTS import_rows_run_id_fkey;
