//! The outbox of signed events: read what is due (in order per job), and
//! record each delivery attempt.

use rusqlite::{Connection, params};

use crate::store::{OutboxCounts, OutboxEvent, Result};

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
        "SELECT {COLUMNS} FROM outbox o WHERE delivered_at IS NULL AND gave_up_at IS NULL AND next_attempt_at <= ?1 \
           AND (job_id IS NULL OR NOT EXISTS (SELECT 1 FROM outbox e WHERE e.job_id = o.job_id AND e.id < o.id \
                                              AND e.delivered_at IS NULL AND e.gave_up_at IS NULL)) \
         ORDER BY id LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![now, limit], from_row)?.collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// When the next undelivered event is due, if any.
pub fn next_due(conn: &Connection) -> Result<Option<i64>> {
    Ok(conn.query_row(
        "SELECT MIN(next_attempt_at) FROM outbox WHERE delivered_at IS NULL AND gave_up_at IS NULL",
        [],
        |r| r.get(0),
    )?)
}

pub fn delivered(conn: &Connection, id: i64, now: i64) -> Result<()> {
    conn.prepare_cached(
        "UPDATE outbox SET delivered_at = ?2, attempts = attempts + 1, last_error = NULL WHERE id = ?1",
    )?
    .execute(params![id, now])?;
    Ok(())
}

/// A failed attempt: try again at `retry_at`, or give up (`None`).
pub fn failed(conn: &Connection, id: i64, error: &str, retry_at: Option<i64>, now: i64) -> Result<()> {
    conn.prepare_cached(
        "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, \
             next_attempt_at = COALESCE(?3, next_attempt_at), gave_up_at = CASE WHEN ?3 IS NULL THEN ?4 END \
         WHERE id = ?1",
    )?
    .execute(params![id, error, retry_at, now])?;
    Ok(())
}

pub fn counts(conn: &Connection) -> Result<OutboxCounts> {
    Ok(conn.query_row(
        "SELECT COALESCE(SUM(delivered_at IS NULL AND gave_up_at IS NULL), 0), \
                COALESCE(SUM(delivered_at IS NOT NULL), 0), COALESCE(SUM(gave_up_at IS NOT NULL), 0) FROM outbox",
        [],
        |r| Ok(OutboxCounts { pending: r.get(0)?, delivered: r.get(1)?, gave_up: r.get(2)? }),
    )?)
}

/// A page of events by id; `state` is `pending`, `delivered`, `gave_up` or
/// `None` for all.
pub fn page(conn: &Connection, state: Option<&str>, after: i64, limit: u32) -> Result<Vec<OutboxEvent>> {
    let filter = match state {
        Some("pending") => "delivered_at IS NULL AND gave_up_at IS NULL",
        Some("delivered") => "delivered_at IS NOT NULL",
        Some("gave_up") => "gave_up_at IS NOT NULL",
        _ => "1",
    };
    let mut stmt =
        conn.prepare(&format!("SELECT {COLUMNS} FROM outbox WHERE id > ?1 AND {filter} ORDER BY id LIMIT ?2"))?;
    let rows = stmt.query_map(params![after, limit], from_row)?.collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}
