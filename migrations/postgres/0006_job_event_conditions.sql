-- The trigger that writes a job's events ran its function for every row
-- inserted into or updated in `jobs`: every imported job, every claim and
-- every recorded send, most of which are no event. The function read the
-- job's run (one query per row) before finding there was nothing to write;
-- a million-row import into a local server ran at 17,755 rows/s.
--
-- The same function now runs only for the rows it may write an event for,
-- decided by each trigger's WHEN condition (evaluated by the server without
-- calling the function): a job inserted skipped; a job that became failed or
-- skipped, or whose outcome became known or unknown. Those are the cases
-- the function itself tests first, so what it writes is unchanged.

DROP TRIGGER outbox_jobs ON jobs;

CREATE TRIGGER outbox_jobs_inserted AFTER INSERT ON jobs
FOR EACH ROW WHEN (NEW.state = 'skipped')
EXECUTE FUNCTION flowcast_job_event();

CREATE TRIGGER outbox_jobs_changed AFTER UPDATE ON jobs
FOR EACH ROW WHEN ((NEW.state IN ('failed', 'skipped') AND OLD.state IS DISTINCT FROM NEW.state)
                   OR (NEW.outcome_state IN ('known', 'unknown')
                       AND OLD.outcome_state IS DISTINCT FROM NEW.outcome_state))
EXECUTE FUNCTION flowcast_job_event();
