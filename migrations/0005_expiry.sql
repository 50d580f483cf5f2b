-- Jobs whose `expires` has passed are settled `expired` in bulk by the ledger,
-- without ever being claimed (a claim takes a send slot). This index makes
-- finding them a range read, cheap enough to run on every dispatch sweep.

CREATE INDEX jobs_expiry ON jobs (run_id, expires_at) WHERE state = 'pending' AND expires_at IS NOT NULL;
