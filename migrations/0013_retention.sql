-- Retention: the personal data of runs over longer ago than `retention` is
-- purged, leaving counts, states and a keyed hash of each phone.
--
-- `purged_at` marks a run whose personal data is gone. `ledger_meta` keeps
-- the ledger's own random salt for those hashes: a phone hashes alike in
-- every purged run of one ledger (so "was this number contacted?" can still
-- be answered by whoever holds the ledger), and differently in another, so
-- hashes copied out of a ledger cannot be matched against a precomputed table.
-- Suppression entries are never purged.

ALTER TABLE runs ADD COLUMN purged_at INTEGER;

CREATE TABLE ledger_meta (
    key    TEXT PRIMARY KEY,
    value  TEXT NOT NULL
);

-- randomblob draws from SQLite's generator, seeded from the operating
-- system's randomness.
INSERT INTO ledger_meta (key, value) VALUES ('phone_salt', lower(hex(randomblob(32))));

-- The Studio calls a purge deletes are found through their job; the few not
-- tied to a job, through this index on their run.
CREATE INDEX studio_calls_run ON studio_calls (run_id) WHERE job_id IS NULL;
