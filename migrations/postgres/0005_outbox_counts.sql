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
    d_delivered BIGINT := 0;
    d_gave_up   BIGINT := 0;
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        d_delivered := d_delivered + (NEW.delivered_at IS NOT NULL)::INT;
        d_gave_up := d_gave_up + (NEW.gave_up_at IS NOT NULL)::INT;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
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

CREATE TRIGGER outbox_tally_delete AFTER DELETE ON outbox
FOR EACH ROW WHEN (OLD.delivered_at IS NOT NULL OR OLD.gave_up_at IS NOT NULL)
EXECUTE FUNCTION flowcast_outbox_tally();

CREATE INDEX outbox_pending ON outbox (id) WHERE delivered_at IS NULL AND gave_up_at IS NULL;
CREATE INDEX outbox_gave_up ON outbox (id) WHERE gave_up_at IS NOT NULL;
