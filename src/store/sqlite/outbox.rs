//! The outbox of signed events: read what is due (in order per job), and
//! record each delivery attempt.

use rusqlite::{Connection, OptionalExtension, params};

use crate::store::{OUTBOX_SENDABLE, OutboxCounts, OutboxEvent, Result};

const COLUMNS: &str = "id, event_id, event_type, run_id, job_id, url, body, created_at, attempts, next_attempt_at, delivered_at, \
     gave_up_at, last_error";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxEvent> {
    Ok(OutboxEvent {
        id: r.get(0)?,
        event_id: r.get(1)?,
        event_type: r.get(2)?,
        run_id: r.get(3)?,
        job_id: r.get(4)?,
        url: r.get(5)?,
        body: r.get(6)?,
        created_at: r.get(7)?,
        attempts: r.get(8)?,
        next_attempt_at: r.get(9)?,
        delivered_at: r.get(10)?,
        gave_up_at: r.get(11)?,
        last_error: r.get(12)?,
    })
}

/// Events due for an attempt, oldest first. An event waits while an earlier
/// event of the same job is still undelivered: receivers see a job's events
/// in the order they happened.
pub fn due(conn: &Connection, now: i64, limit: u32) -> Result<Vec<OutboxEvent>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM outbox o WHERE {OUTBOX_SENDABLE} AND next_attempt_at <= ?1 ORDER BY id LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![now, limit], from_row)?.collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// When the next event that [`due`] would return comes due, if any: an event
/// waiting for an earlier one of its job does not count (counted, a job's
/// second event already due behind a first one in backoff had the deliverer
/// asking again every 10 ms until the first one's retry).
pub fn next_due(conn: &Connection) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT next_attempt_at FROM outbox o WHERE {OUTBOX_SENDABLE} ORDER BY next_attempt_at LIMIT 1"
        ))?
        .query_row([], |r| r.get(0))
        .optional()?)
}

/// A delivered event; one whose run a purge has passed meanwhile goes (see
/// [`forget_if_purged`]).
pub fn delivered(conn: &mut Connection, id: i64, now: i64) -> Result<()> {
    super::purge::zeroing(conn, |conn| delivered_in(conn, id, now))
}

fn delivered_in(conn: &mut Connection, id: i64, now: i64) -> Result<()> {
    let tx = super::write_transaction(conn)?;
    tx.prepare_cached("UPDATE outbox SET delivered_at = ?2, attempts = attempts + 1, last_error = NULL WHERE id = ?1")?
        .execute(params![id, now])?;
    forget_if_purged(&tx, id)?;
    tx.commit()?;
    Ok(())
}

/// A failed attempt: try again at `retry_at`, or give up (`None`).
pub fn failed(conn: &mut Connection, id: i64, error: &str, retry_at: Option<i64>, now: i64) -> Result<()> {
    super::purge::zeroing(conn, |conn| failed_in(conn, id, error, retry_at, now))
}

fn failed_in(conn: &mut Connection, id: i64, error: &str, retry_at: Option<i64>, now: i64) -> Result<()> {
    let tx = super::write_transaction(conn)?;
    tx.prepare_cached(
        "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, \
             next_attempt_at = COALESCE(?3, next_attempt_at), gave_up_at = CASE WHEN ?3 IS NULL THEN ?4 END \
         WHERE id = ?1",
    )?
    .execute(params![id, error, retry_at, now])?;
    forget_if_purged(&tx, id)?;
    tx.commit()?;
    Ok(())
}

/// Deletes event `id` if it is done with and a purge has passed its run or
/// job, with secure delete on as in the purge (its body is overwritten, not
/// left in a free page), in the transaction that records its end (a crash
/// between the two would leave it for good: no purge comes back to a purged
/// run). A purge's steps delete the events they find done, so whichever of
/// the two commits first, the event does not stay: before this end is
/// recorded the purge keeps it and this finds it purged; after, the purge
/// deletes it.
fn forget_if_purged(conn: &Connection, id: i64) -> Result<()> {
    conn.prepare_cached(&format!(
        "DELETE FROM outbox AS o WHERE o.id = ?1 AND {}",
        crate::store::outbox_done_after_purge()
    ))?
    .execute([id])?;
    Ok(())
}

/// Delivered and given-up events from the tally the outbox's triggers keep;
/// pending ones counted through the index that holds only them (not a read
/// of every event ever written).
pub fn counts(conn: &Connection) -> Result<OutboxCounts> {
    Ok(conn
        .prepare_cached(COUNTS_SQL)?
        .query_row([], |r| Ok(OutboxCounts { pending: r.get(0)?, delivered: r.get(1)?, gave_up: r.get(2)? }))?)
}

pub(super) const COUNTS_SQL: &str = "SELECT (SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL AND gave_up_at IS NULL), delivered, gave_up \
     FROM outbox_tally WHERE id = 1";

/// A page of events by id; `state` is `pending`, `delivered`, `gave_up` or
/// `None` for all. Each filter is written as its partial index's condition,
/// so that a pending or given-up page reads only those events.
pub fn page(conn: &Connection, state: Option<&str>, after: i64, limit: u32) -> Result<Vec<OutboxEvent>> {
    let mut stmt = conn.prepare(&page_sql(state))?;
    let rows = stmt.query_map(params![after, limit], from_row)?.collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

pub(super) fn page_sql(state: Option<&str>) -> String {
    let filter = match state {
        Some("pending") => "delivered_at IS NULL AND gave_up_at IS NULL",
        Some("delivered") => "delivered_at IS NOT NULL",
        Some("gave_up") => "gave_up_at IS NOT NULL",
        _ => "1",
    };
    format!("SELECT {COLUMNS} FROM outbox WHERE id > ?1 AND {filter} ORDER BY id LIMIT ?2")
}

#[cfg(test)]
mod tests {
    use rusqlite::{Connection, params};

    use super::super::Sqlite;
    use super::super::tests::plan_of;
    use super::{COUNTS_SQL, counts, page_sql};

    fn add(conn: &Connection, id: i64, delivered: Option<i64>, gave_up: Option<i64>) {
        conn.execute(
            "INSERT INTO outbox (id, event_id, event_type, run_id, job_id, url, body, created_at, next_attempt_at, \
                                 delivered_at, gave_up_at) VALUES (?1, 'evt_' || ?1, 'job.failed', 1, ?1, 'u', '{}', 0, 0, ?2, ?3)",
            params![id, delivered, gave_up],
        )
        .unwrap();
    }

    /// The counts as a read of every event gives them.
    fn counted(conn: &Connection) -> (i64, i64, i64) {
        conn.query_row(
            "SELECT COALESCE(SUM(delivered_at IS NULL AND gave_up_at IS NULL), 0), \
                    COALESCE(SUM(delivered_at IS NOT NULL), 0), COALESCE(SUM(gave_up_at IS NOT NULL), 0) FROM outbox",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
    }

    fn kept(conn: &Connection) -> (i64, i64, i64) {
        let c = counts(conn).unwrap();
        (c.pending, c.delivered, c.gave_up)
    }

    /// Whatever writes an event (written delivered, delivered, given up, put
    /// back, deleted by a purge), the kept counts are the ones a read of
    /// every event gives.
    #[test]
    fn the_outbox_counts_follow_every_change_to_its_events() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Sqlite::open(&dir.path().join("flowcast.db")).unwrap();
        let mut conn = ledger.writer();
        assert_eq!(kept(&conn), (0, 0, 0));
        for id in 1..=6 {
            add(&conn, id, None, None);
        }
        add(&conn, 7, Some(5), None);
        add(&conn, 8, None, Some(5));
        assert_eq!(kept(&conn), (6, 1, 1));
        super::delivered(&mut conn, 1, 10).unwrap();
        super::delivered(&mut conn, 2, 10).unwrap();
        super::failed(&mut conn, 3, "HTTP 500", Some(20), 10).unwrap();
        super::failed(&mut conn, 4, "HTTP 410", None, 10).unwrap();
        // Delivered again (a duplicate answer) changes nothing.
        super::delivered(&mut conn, 1, 11).unwrap();
        assert_eq!(kept(&conn), (3, 3, 2));
        conn.execute("UPDATE outbox SET gave_up_at = NULL, next_attempt_at = 30 WHERE id = 4", []).unwrap();
        conn.execute("DELETE FROM outbox WHERE id IN (1, 5, 8)", []).unwrap();
        assert_eq!(kept(&conn), counted(&conn));
        assert_eq!(kept(&conn), (3, 2, 0));
    }

    /// The next due time is that of an event the deliverer may send: a job's
    /// second event waits for its first, however early its own time.
    #[test]
    fn the_next_due_time_skips_an_event_waiting_for_an_earlier_one_of_its_job() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Sqlite::open(&dir.path().join("flowcast.db")).unwrap();
        let mut conn = ledger.writer();
        assert_eq!(super::next_due(&conn).unwrap(), None);
        add(&conn, 1, None, None);
        add(&conn, 2, None, None);
        add(&conn, 3, None, None);
        conn.execute("UPDATE outbox SET job_id = 7, next_attempt_at = 1000 WHERE id = 1", []).unwrap();
        conn.execute("UPDATE outbox SET job_id = 7, next_attempt_at = 10 WHERE id = 2", []).unwrap();
        conn.execute("UPDATE outbox SET job_id = 8, next_attempt_at = 500 WHERE id = 3", []).unwrap();
        assert_eq!(super::next_due(&conn).unwrap(), Some(500), "event 2 waits for event 1 (its job's first)");
        super::delivered(&mut conn, 1, 20).unwrap();
        assert_eq!(super::next_due(&conn).unwrap(), Some(10));
    }

    /// A ledger from before the kept counts has them from its events once
    /// upgraded.
    #[test]
    fn an_upgraded_ledger_counts_the_events_it_already_had() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("flowcast.db")).unwrap();
        super::super::migrations().to_version(&mut conn, 16).unwrap();
        add(&conn, 1, None, None);
        add(&conn, 2, Some(5), None);
        add(&conn, 3, Some(5), None);
        add(&conn, 4, None, Some(5));
        super::super::migrations().to_latest(&mut conn).unwrap();
        assert_eq!(kept(&conn), (1, 2, 1));
    }

    /// Counting the outbox and a page of pending or given-up events read
    /// those events alone: the outbox keeps every event until the retention
    /// purge, and a read of all of them took seconds at millions.
    #[test]
    fn the_outbox_counts_and_pages_read_no_event_they_do_not_show() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Sqlite::open(&dir.path().join("flowcast.db")).unwrap();
        let conn = ledger.reader();
        let counts = plan_of(&conn, COUNTS_SQL);
        assert!(counts.contains("outbox_tally"), "{counts}");
        assert!(!counts.split("; ").any(|step| step == "SCAN outbox"), "no read of every event: {counts}");
        assert!(counts.contains("INDEX outbox_pending") || counts.contains("INDEX outbox_due"), "{counts}");
        for (state, index) in [("pending", "outbox_pending (id>?)"), ("gave_up", "outbox_gave_up (id>?)")] {
            let page = plan_of(&conn, &page_sql(Some(state)));
            assert!(page.contains(&format!("USING INDEX {index}")), "{state}: {page}");
            assert!(!page.contains("TEMP B-TREE"), "{state}: {page}");
        }
    }
}
