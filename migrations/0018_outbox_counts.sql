-- The outbox keeps every event until the retention purge, delivered or not:
-- millions of rows on a ledger of millions of jobs. Counting them by state
-- (for `flowcast status` and `GET /api/outbox`) read every one of them, 2.6-3.0
-- s for five million; and a page of pending or given-up events walked every
-- delivered event before the first of them (pending ones are the newest).
--
-- Delivered and given-up events are now counted as they change, by triggers
-- (whatever code changes them, a purge included), in one row; pending ones
-- are counted through the partial index below, which holds only them. The
-- two partial indexes by id make the pending and given-up pages range reads
-- of those events alone.

CREATE TABLE outbox_tally (
    id        INTEGER PRIMARY KEY CHECK (id = 1),
    delivered INTEGER NOT NULL,
    gave_up   INTEGER NOT NULL
);

-- One read of the whole outbox, once, at this upgrade.
INSERT INTO outbox_tally (id, delivered, gave_up)
SELECT 1, COALESCE(SUM(delivered_at IS NOT NULL), 0), COALESCE(SUM(gave_up_at IS NOT NULL), 0) FROM outbox;

CREATE TRIGGER outbox_tally_insert AFTER INSERT ON outbox
WHEN NEW.delivered_at IS NOT NULL OR NEW.gave_up_at IS NOT NULL
BEGIN
    UPDATE outbox_tally SET delivered = delivered + (NEW.delivered_at IS NOT NULL),
                            gave_up = gave_up + (NEW.gave_up_at IS NOT NULL) WHERE id = 1;
END;

CREATE TRIGGER outbox_tally_update AFTER UPDATE OF delivered_at, gave_up_at ON outbox
WHEN (OLD.delivered_at IS NULL) IS NOT (NEW.delivered_at IS NULL) OR (OLD.gave_up_at IS NULL) IS NOT (NEW.gave_up_at IS NULL)
BEGIN
    UPDATE outbox_tally SET delivered = delivered + (NEW.delivered_at IS NOT NULL) - (OLD.delivered_at IS NOT NULL),
                            gave_up = gave_up + (NEW.gave_up_at IS NOT NULL) - (OLD.gave_up_at IS NOT NULL) WHERE id = 1;
END;

CREATE TRIGGER outbox_tally_delete AFTER DELETE ON outbox
WHEN OLD.delivered_at IS NOT NULL OR OLD.gave_up_at IS NOT NULL
BEGIN
    UPDATE outbox_tally SET delivered = delivered - (OLD.delivered_at IS NOT NULL),
                            gave_up = gave_up - (OLD.gave_up_at IS NOT NULL) WHERE id = 1;
END;

CREATE INDEX outbox_pending ON outbox (id) WHERE delivered_at IS NULL AND gave_up_at IS NULL;
CREATE INDEX outbox_gave_up ON outbox (id) WHERE gave_up_at IS NOT NULL;
