-- Campaigns as the service last saw them, and where their schedules stand.
-- The scheduler's memory lives here, so a restart neither loses nor repeats a tick.

CREATE TABLE campaigns (
    name          TEXT    PRIMARY KEY,
    kind          TEXT    NOT NULL,
    source        TEXT    NOT NULL,
    -- hash of the campaign file and its CSV: a one-off campaign runs once per content
    content_hash  TEXT    NOT NULL,
    schedule      TEXT,
    timezone      TEXT    NOT NULL,
    enabled       INTEGER NOT NULL,
    -- the last schedule tick handled (fired, or skipped as too old); ticks after it
    -- are due
    last_tick_at  INTEGER,
    -- the next tick, for status and the dashboard
    next_fire_at  INTEGER,
    -- the file is gone: no new runs; runs already started finish
    removed_at    INTEGER,
    updated_at    INTEGER NOT NULL
);
