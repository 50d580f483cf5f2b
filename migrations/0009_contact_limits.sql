-- Contact safety across campaigns: the channel a run reaches people on (a
-- suppression may cover one channel), whether its campaign is exempt from the
-- per-contact caps, and its dedupe window; each job's dedupe key.

ALTER TABLE runs ADD COLUMN channel TEXT NOT NULL DEFAULT 'sms';
ALTER TABLE runs ADD COLUMN limits_exempt INTEGER NOT NULL DEFAULT 0;
-- set when the campaign dedupes: one Execution per key within this window
ALTER TABLE runs ADD COLUMN dedupe_within_ms INTEGER;
ALTER TABLE jobs ADD COLUMN dedupe_key TEXT;

-- A claim looks up the phone's earlier contacts (caps) across every run.
CREATE INDEX jobs_phone ON jobs (phone);
-- A claim looks up earlier jobs with the same key (dedupe).
CREATE INDEX jobs_dedupe ON jobs (dedupe_key) WHERE dedupe_key IS NOT NULL;
