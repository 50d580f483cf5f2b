-- A run's summary (its jobs per state, and each outcome field's values with
-- how often each was given), kept once the run is settled: over (finished or
-- cancelled), its import complete, no job pending or in flight, no outcome
-- still to be read back.
-- From then on nothing the dispatcher or the outcome reader does changes it,
-- so status, the API and /metrics read one row instead of recounting every
-- job of the run and parsing every outcome on each request (seconds for a
-- million-job run). Retention's purge, which blanks outcome values, deletes
-- the row when it finishes a run; the next read summarises it again.
--
-- counts:   {"sent": 970, "failed": 20, ...}
-- outcomes: {"field": [[value as JSON text or null, count], ...], ...}

CREATE TABLE run_summaries (
    run_id      INTEGER PRIMARY KEY REFERENCES runs (id),
    counts      TEXT    NOT NULL,
    outcomes    TEXT    NOT NULL,
    computed_at INTEGER NOT NULL
);
