-- The triggers that write a job's `job.failed` / `job.skipped` event and its
-- `outcome` event fired on any UPDATE naming `state` and `outcome_state`, so
-- SQLite compiled both into every claim (state → dispatching) and every
-- record of a send (state → sent, outcome_state → open), where their WHEN
-- conditions were always false. A trigger program calls functions
-- (randomblob, json_object) and inserts under NOT NULL constraints, and
-- either makes SQLite treat the statement as one that may abort half-way:
-- each multi-row claim and send then copied every page it changed to a
-- statement journal first (about 8,300 instructions a job under callgrind).
--
-- They now fire on a column that every statement ending a job failed or
-- skipped sets (`reason`), and on one that every statement settling an
-- outcome sets (`execution_status`), and that the claim and the send never
-- name. Their conditions and bodies are as they were: the events written
-- are the same, for the same transitions.

DROP TRIGGER outbox_job_ended;
CREATE TRIGGER outbox_job_ended AFTER UPDATE OF reason ON jobs
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

DROP TRIGGER outbox_outcome;
CREATE TRIGGER outbox_outcome AFTER UPDATE OF execution_status ON jobs
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
