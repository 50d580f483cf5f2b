-- Outcomes read back from Studio: what each Execution ended with.
--
-- A run freezes its campaign's outcome fields (a JSON array of {name, path,
-- type}). A sent job's outcome is `open` until flowcast has read its Execution
-- back, then `known`, or `unknown` when the Execution was still running after
-- the outcome timeout (or is gone). `outcome_due_at` is when to ask next.

ALTER TABLE runs ADD COLUMN outcome_fields TEXT NOT NULL DEFAULT '[]';

ALTER TABLE jobs ADD COLUMN outcome_state TEXT;
ALTER TABLE jobs ADD COLUMN outcome_due_at INTEGER;
ALTER TABLE jobs ADD COLUMN outcome_polls INTEGER NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN execution_status TEXT;
ALTER TABLE jobs ADD COLUMN ended_in TEXT;
-- field name → value (JSON object), and field name → why a value is kept as text
ALTER TABLE jobs ADD COLUMN outcome TEXT;
ALTER TABLE jobs ADD COLUMN outcome_notes TEXT;

-- Jobs sent before outcomes existed are read back too, from now on.
UPDATE jobs SET outcome_state = 'open', outcome_due_at = sent_at WHERE state = 'sent';

CREATE INDEX jobs_outcome_due ON jobs (outcome_due_at) WHERE outcome_state = 'open';
CREATE INDEX jobs_outcome_run ON jobs (run_id, outcome_state) WHERE outcome_state IS NOT NULL;
