-- A job row carried two indexes by phone: the unique (run, phone) that
-- keeps a phone once per run, and `jobs_phone`, by which a claim finds the
-- phone's contacts across every run (the frequency caps). A large import's
-- phones come in random order, so each row was a random insert into both:
-- in the `sqlite3` shell a million-row insert took 13.1 s with both and
-- 7.1 s with one. One unique index by (phone, run), `jobs_phone_run`, does
-- both jobs: the phone's entries across runs are one range of it, and a
-- phone again in the same run is the same key (an import's INSERT OR IGNORE
-- skips it). It also saves the 24 bytes a job that `jobs_phone` held.
--
-- An INSERT of many jobs in one statement also kept a statement journal (a
-- copy of every page it changed, to undo the statement alone if it
-- aborted half-way): under callgrind 7,000 of the writer's 32,000
-- instructions a row. SQLite keeps one when a statement writes several rows
-- and something in it may abort: the immediate foreign key to runs, and
-- the functions in the trigger that wrote a job's `job.skipped` event when
-- it was inserted skipped. The foreign key is now checked at commit
-- (DEFERRABLE INITIALLY DEFERRED: a job of a run that does not exist still
-- fails, with its transaction), and that event is written by the import's
-- own statement after the INSERT (`SKIPPED_EVENT` in the code), as the
-- trigger wrote it.
--
-- SQLite cannot drop a table's UNIQUE constraint in place: the table is
-- built again with the same columns, its rows copied in id order, and its
-- indexes and triggers made again as they were (but the one above). The
-- ledger is opened with foreign keys off for migrations; the references to
-- jobs from other tables hold the same ids after the copy, which a foreign
-- key check confirms before the migration commits.

CREATE TABLE jobs_rebuilt (
    id                  INTEGER PRIMARY KEY,
    run_id              INTEGER NOT NULL REFERENCES runs (id) DEFERRABLE INITIALLY DEFERRED,
    phone               TEXT    NOT NULL,
    line                INTEGER NOT NULL,
    zone                TEXT    NOT NULL,
    parameters          TEXT    NOT NULL,
    state               TEXT    NOT NULL DEFAULT 'pending',
    reason              TEXT,
    due_at              INTEGER NOT NULL,
    expires_at          INTEGER,
    -- create requests sent that Studio did not refuse with 429
    attempts            INTEGER NOT NULL DEFAULT 0,
    -- transient failures so far (bounded by the retry limit)
    failures            INTEGER NOT NULL DEFAULT 0,
    -- 429 answers so far (never counted as attempts)
    throttles           INTEGER NOT NULL DEFAULT 0,
    -- set, committed, before a create is sent
    attempt_started_at  INTEGER,
    -- start of an attempt whose outcome is unknown (timeout, 5xx, crash): Studio
    -- is asked whether it created the Execution before anything is sent again
    ambiguous_since     INTEGER,
    -- the active Execution a wait-policy job is waiting on, and since when
    conflict_sid        TEXT,
    conflict_since      INTEGER,
    execution_sid       TEXT,
    last_error          TEXT,
    created_at          INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,
    sent_at             INTEGER,
    finished_at         INTEGER,
    execution_ended_at  INTEGER,
    ended_reason        TEXT,
    outcome_state       TEXT,
    outcome_due_at      INTEGER,
    outcome_polls       INTEGER NOT NULL DEFAULT 0,
    execution_status    TEXT,
    ended_in            TEXT,
    outcome             TEXT,
    outcome_notes       TEXT,
    dedupe_key          TEXT
);

INSERT INTO jobs_rebuilt (id, run_id, phone, line, zone, parameters, state, reason, due_at, expires_at,
                          attempts, failures, throttles, attempt_started_at, ambiguous_since, conflict_sid,
                          conflict_since, execution_sid, last_error, created_at, updated_at, sent_at,
                          finished_at, execution_ended_at, ended_reason, outcome_state, outcome_due_at,
                          outcome_polls, execution_status, ended_in, outcome, outcome_notes, dedupe_key)
SELECT id, run_id, phone, line, zone, parameters, state, reason, due_at, expires_at,
       attempts, failures, throttles, attempt_started_at, ambiguous_since, conflict_sid,
       conflict_since, execution_sid, last_error, created_at, updated_at, sent_at,
       finished_at, execution_ended_at, ended_reason, outcome_state, outcome_due_at,
       outcome_polls, execution_status, ended_in, outcome, outcome_notes, dedupe_key
FROM jobs ORDER BY id;

-- A rename checks every trigger, and this one on runs reads jobs: it is
-- made again below, as it was.
DROP TRIGGER outbox_run_finished;
DROP TABLE jobs;
ALTER TABLE jobs_rebuilt RENAME TO jobs;

-- Built after the copy, by sorting: copied into a table that already had
-- it, the rows went into it in random order (slower, and the file grew by
-- the index's loose pages).
CREATE UNIQUE INDEX jobs_phone_run ON jobs (phone, run_id);
CREATE INDEX jobs_execution ON jobs (execution_sid) WHERE execution_sid IS NOT NULL;
CREATE INDEX jobs_waiting_on ON jobs (conflict_sid) WHERE conflict_sid IS NOT NULL;
CREATE INDEX jobs_expiry ON jobs (run_id, expires_at) WHERE state = 'pending' AND expires_at IS NOT NULL;
CREATE INDEX jobs_outcome_due ON jobs (outcome_due_at) WHERE outcome_state = 'open';
CREATE INDEX jobs_dedupe ON jobs (dedupe_key) WHERE dedupe_key IS NOT NULL;
CREATE INDEX jobs_finished ON jobs (finished_at) WHERE state = 'failed' OR state = 'skipped' OR state = 'expired';
CREATE INDEX jobs_outcome_open ON jobs (run_id) WHERE outcome_state = 'open';
CREATE INDEX jobs_claim ON jobs (run_id, due_at) WHERE state = 'pending';
CREATE INDEX jobs_page ON jobs (run_id, state);

-- The other triggers that write a job's or a run's events to the outbox, as
-- they were.
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
