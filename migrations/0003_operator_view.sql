-- What Event Streams tell us about our Executions, and indexes for the
-- operator's view (jobs by Execution, recent problems).

ALTER TABLE jobs ADD COLUMN execution_ended_at INTEGER;
ALTER TABLE jobs ADD COLUMN ended_reason TEXT;

CREATE INDEX jobs_execution ON jobs (execution_sid) WHERE execution_sid IS NOT NULL;
CREATE INDEX jobs_waiting_on ON jobs (conflict_sid) WHERE conflict_sid IS NOT NULL;
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE state IN ('failed', 'skipped', 'expired');
