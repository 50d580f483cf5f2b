-- The outbox keeps every event until the retention purge, delivered or not:
-- millions of rows on a ledger of millions of jobs. Counting them by state
-- (for `flowcast status` and `GET /api/outbox`) read every one of them; and a
-- page of pending or given-up events walked every delivered event before the
-- first of them (pending ones are the newest).
--
-- Delivered and given-up events are now counted as they change, by a trigger
-- (whatever code changes them, a purge included), in one row; pending ones
-- are counted through the partial index below, which holds only them. The
-- two partial indexes by id make the pending and given-up pages range reads
-- of those events alone. The row is written only when an event is delivered,
-- given up or deleted, never when one is written, so the instances' job
-- writes (whose triggers write the events) do not queue on it.

-- No instance still on the previous version may deliver, give up or purge
-- events between the count below and the triggers that follow it (each
-- statement reads its own snapshot): what it changed would never be counted.
LOCK TABLE outbox IN SHARE ROW EXCLUSIVE MODE;

CREATE TABLE outbox_tally (
    id        INT    PRIMARY KEY CHECK (id = 1),
    delivered BIGINT NOT NULL,
    gave_up   BIGINT NOT NULL
);

-- One read of the whole outbox, once, at this upgrade.
INSERT INTO outbox_tally (id, delivered, gave_up)
SELECT 1, COUNT(*) FILTER (WHERE delivered_at IS NOT NULL), COUNT(*) FILTER (WHERE gave_up_at IS NOT NULL) FROM outbox;

CREATE FUNCTION flowcast_outbox_tally() RETURNS TRIGGER AS $$
DECLARE
    d_delivered BIGINT := (NEW.delivered_at IS NOT NULL)::INT;
    d_gave_up   BIGINT := (NEW.gave_up_at IS NOT NULL)::INT;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        d_delivered := d_delivered - (OLD.delivered_at IS NOT NULL)::INT;
        d_gave_up := d_gave_up - (OLD.gave_up_at IS NOT NULL)::INT;
    END IF;
    UPDATE outbox_tally SET delivered = delivered + d_delivered, gave_up = gave_up + d_gave_up WHERE id = 1;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

-- An event is written undelivered (by the job and run triggers): the WHEN
-- keeps those writes from calling the function at all.
CREATE TRIGGER outbox_tally_insert AFTER INSERT ON outbox
FOR EACH ROW WHEN (NEW.delivered_at IS NOT NULL OR NEW.gave_up_at IS NOT NULL)
EXECUTE FUNCTION flowcast_outbox_tally();

CREATE TRIGGER outbox_tally_update AFTER UPDATE OF delivered_at, gave_up_at ON outbox
FOR EACH ROW WHEN ((OLD.delivered_at IS NULL) IS DISTINCT FROM (NEW.delivered_at IS NULL)
                   OR (OLD.gave_up_at IS NULL) IS DISTINCT FROM (NEW.gave_up_at IS NULL))
EXECUTE FUNCTION flowcast_outbox_tally();

-- A purge deletes thousands of events in one statement: one update of the
-- tally for all of them (an update per row would leave as many versions of
-- the row for each next one to step over, and hold its lock from the first).
CREATE FUNCTION flowcast_outbox_tally_deleted() RETURNS TRIGGER AS $$
DECLARE
    d_delivered BIGINT;
    d_gave_up   BIGINT;
BEGIN
    SELECT COUNT(*) FILTER (WHERE delivered_at IS NOT NULL), COUNT(*) FILTER (WHERE gave_up_at IS NOT NULL)
      INTO d_delivered, d_gave_up FROM gone;
    IF d_delivered > 0 OR d_gave_up > 0 THEN
        UPDATE outbox_tally SET delivered = delivered - d_delivered, gave_up = gave_up - d_gave_up WHERE id = 1;
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER outbox_tally_delete AFTER DELETE ON outbox
REFERENCING OLD TABLE AS gone FOR EACH STATEMENT
EXECUTE FUNCTION flowcast_outbox_tally_deleted();

CREATE INDEX outbox_pending ON outbox (id) WHERE delivered_at IS NULL AND gave_up_at IS NULL;
CREATE INDEX outbox_gave_up ON outbox (id) WHERE gave_up_at IS NOT NULL;
