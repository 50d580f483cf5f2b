-- Runs dispatch while their CSV is still being imported. Each import batch
-- commits its jobs together with the run's counts and the last CSV line it
-- covered, so an interrupted import resumes exactly where it stopped.

ALTER TABLE runs ADD COLUMN import_line INTEGER NOT NULL DEFAULT 1;
