-- A run's jobs_version goes up with every write that can change the jobs of
-- a run already settled (an import or push batch that lands late, each batch
-- of a purge): a summary counted from a read is kept only if the version is
-- still the one that read saw, so a summary never outlives the jobs it
-- counted (see 0003_run_summaries.sql).

ALTER TABLE runs ADD COLUMN jobs_version BIGINT NOT NULL DEFAULT 0;
