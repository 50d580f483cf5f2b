-- The ledger: runs, their jobs, the import's rejected and duplicate rows, and an
-- audit record of every call made to Studio. Times are Unix milliseconds (UTC).

CREATE TABLE runs (
    id            INTEGER PRIMARY KEY,
    campaign      TEXT    NOT NULL,
    kind          TEXT    NOT NULL,
    -- manual (flowcast run), schedule (a cron tick) or file (a one-off drop)
    trigger       TEXT    NOT NULL,
    -- what makes a run unique for its campaign: the tick instant, the file's
    -- content hash, or the moment of a manual start
    run_key       TEXT    NOT NULL,
    scheduled_at  INTEGER NOT NULL,
    source        TEXT    NOT NULL,
    -- the campaign's settings, frozen when the run starts so that a resume after
    -- an edit behaves like the run that was started
    flow_sid      TEXT    NOT NULL,
    from_addr     TEXT    NOT NULL,
    on_conflict   TEXT    NOT NULL,
    max_wait_ms   INTEGER,
    rate          INTEGER,
    -- the send window (HH:MM local to each contact), when the campaign has one
    window_start  TEXT,
    window_end    TEXT,
    state         TEXT    NOT NULL,
    state_reason  TEXT,
    rows_total    INTEGER NOT NULL DEFAULT 0,
    imported      INTEGER NOT NULL DEFAULT 0,
    rejected      INTEGER NOT NULL DEFAULT 0,
    duplicates    INTEGER NOT NULL DEFAULT 0,
        created_at    INTEGER NOT NULL,
    -- set when the import is complete
    expanded_at   INTEGER,
    finished_at   INTEGER,
    UNIQUE (campaign, run_key)
);

CREATE TABLE jobs (
    id                  INTEGER PRIMARY KEY,
    run_id              INTEGER NOT NULL REFERENCES runs (id),
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
    UNIQUE (run_id, phone)
);

-- Claims take the earliest due pending jobs of a run from this index.
CREATE INDEX jobs_claim ON jobs (run_id, state, due_at);

CREATE TABLE import_rows (
    run_id     INTEGER NOT NULL REFERENCES runs (id),
    line       INTEGER NOT NULL,
    raw_phone  TEXT    NOT NULL,
    -- rejected | duplicate
    outcome    TEXT    NOT NULL,
    reason     TEXT    NOT NULL
);

CREATE INDEX import_rows_run ON import_rows (run_id, line);

CREATE TABLE studio_calls (
    id             INTEGER PRIMARY KEY,
    run_id         INTEGER,
    job_id         INTEGER,
    at             INTEGER NOT NULL,
    -- create | fetch | end | list | context
    operation      TEXT    NOT NULL,
    request        TEXT    NOT NULL,
    http_status    INTEGER,
    response       TEXT,
    -- what flowcast made of the answer: created, conflict, throttled, transient, ...
    outcome        TEXT    NOT NULL,
    execution_sid  TEXT,
    note           TEXT
);

CREATE INDEX studio_calls_job ON studio_calls (job_id);
