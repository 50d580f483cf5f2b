-- Signed outbound events: each run records where its events go (frozen from
-- the campaign's `notify`, or flowcast.toml's), and triggers write an event to
-- the outbox in the same transaction as the state change it reports, whatever
-- code made the change. A deliverer POSTs them in order, retrying until it
-- gives up.

ALTER TABLE runs ADD COLUMN notify_url TEXT;
-- the event types to send, as ",outcome,job.failed," (commas around each)
ALTER TABLE runs ADD COLUMN notify_events TEXT;

CREATE TABLE outbox (
    id               INTEGER PRIMARY KEY,
    -- the event's own id: receivers dedupe by it
    event_id         TEXT    NOT NULL UNIQUE,
    event_type       TEXT    NOT NULL,
    run_id           INTEGER NOT NULL,
    job_id           INTEGER,
    url              TEXT    NOT NULL,
    body             TEXT    NOT NULL,
    created_at       INTEGER NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    delivered_at     INTEGER,
    gave_up_at       INTEGER,
    last_error       TEXT
);

CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE delivered_at IS NULL AND gave_up_at IS NULL;
CREATE INDEX outbox_job ON outbox (job_id) WHERE job_id IS NOT NULL;

-- A job that ends failed or skipped (at import, at claim or after a create).
CREATE TRIGGER outbox_job_ended AFTER UPDATE OF state ON jobs
WHEN NEW.state IN ('failed', 'skipped') AND OLD.state IS NOT NEW.state
BEGIN
    INSERT INTO outbox (event_id, event_type, run_id, job_id, url, body, created_at, next_attempt_at)
    SELECT e.id, 'job.' || NEW.state, NEW.run_id, NEW.id, r.notify_url,
           json_object('id', e.id, 'type', 'job.' || NEW.state,
                       'time', strftime('%Y-%m-%dT%H:%M:%fZ', e.at / 1000.0, 'unixepoch'),
                       'campaign', r.campaign, 'run', NEW.run_id, 'job', NEW.id, 'phone', NEW.phone,
                       'state', NEW.state, 'reason', NEW.reason, 'outcome', NULL),
           e.at, e.at
    FROM runs r,
         (SELECT 'evt_' || lower(hex(randomblob(16))) AS id,
                 CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) AS at) e
    WHERE r.id = NEW.run_id AND r.notify_url IS NOT NULL
      AND instr(r.notify_events, ',job.' || NEW.state || ',') > 0;
END;

-- (A purge re-inserts jobs with their phones hashed: those are no event.)
CREATE TRIGGER outbox_job_skipped_at_import AFTER INSERT ON jobs
WHEN NEW.state = 'skipped' AND NEW.phone NOT LIKE 'hash:%'
BEGIN
    INSERT INTO outbox (event_id, event_type, run_id, job_id, url, body, created_at, next_attempt_at)
    SELECT e.id, 'job.skipped', NEW.run_id, NEW.id, r.notify_url,
           json_object('id', e.id, 'type', 'job.skipped',
                       'time', strftime('%Y-%m-%dT%H:%M:%fZ', e.at / 1000.0, 'unixepoch'),
                       'campaign', r.campaign, 'run', NEW.run_id, 'job', NEW.id, 'phone', NEW.phone,
                       'state', NEW.state, 'reason', NEW.reason, 'outcome', NULL),
           e.at, e.at
    FROM runs r,
         (SELECT 'evt_' || lower(hex(randomblob(16))) AS id,
                 CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) AS at) e
    WHERE r.id = NEW.run_id AND r.notify_url IS NOT NULL AND instr(r.notify_events, ',job.skipped,') > 0;
END;

-- A sent job's outcome read back from Studio (known, or given up on).
CREATE TRIGGER outbox_outcome AFTER UPDATE OF outcome_state ON jobs
WHEN NEW.outcome_state IN ('known', 'unknown') AND OLD.outcome_state IS NOT NEW.outcome_state
BEGIN
    INSERT INTO outbox (event_id, event_type, run_id, job_id, url, body, created_at, next_attempt_at)
    SELECT e.id, 'outcome', NEW.run_id, NEW.id, r.notify_url,
           json_object('id', e.id, 'type', 'outcome',
                       'time', strftime('%Y-%m-%dT%H:%M:%fZ', e.at / 1000.0, 'unixepoch'),
                       'campaign', r.campaign, 'run', NEW.run_id, 'job', NEW.id, 'phone', NEW.phone,
                       'state', NEW.state, 'reason', NEW.reason,
                       'outcome', json_object('state', NEW.outcome_state, 'status', NEW.execution_status,
                                              'ended_in', NEW.ended_in,
                                              'values', json(COALESCE(NEW.outcome, '{}')))),
           e.at, e.at
    FROM runs r,
         (SELECT 'evt_' || lower(hex(randomblob(16))) AS id,
                 CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) AS at) e
    WHERE r.id = NEW.run_id AND r.notify_url IS NOT NULL AND instr(r.notify_events, ',outcome,') > 0;
END;

-- A run whose every job is settled.
CREATE TRIGGER outbox_run_finished AFTER UPDATE OF state ON runs
WHEN NEW.state = 'finished' AND OLD.state IS NOT 'finished'
     AND NEW.notify_url IS NOT NULL AND instr(NEW.notify_events, ',run.finished,') > 0
BEGIN
    INSERT INTO outbox (event_id, event_type, run_id, job_id, url, body, created_at, next_attempt_at)
    SELECT e.id, 'run.finished', NEW.id, NULL, NEW.notify_url,
           json_object('id', e.id, 'type', 'run.finished',
                       'time', strftime('%Y-%m-%dT%H:%M:%fZ', e.at / 1000.0, 'unixepoch'),
                       'campaign', NEW.campaign, 'run', NEW.id, 'job', NULL, 'phone', NULL,
                       'state', NEW.state, 'reason', NEW.state_reason, 'outcome', NULL,
                       'jobs', (SELECT json_group_object(state, n)
                                FROM (SELECT state, COUNT(*) AS n FROM jobs WHERE run_id = NEW.id GROUP BY state))),
           e.at, e.at
    FROM (SELECT 'evt_' || lower(hex(randomblob(16))) AS id,
                 CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) AS at) e;
END;
