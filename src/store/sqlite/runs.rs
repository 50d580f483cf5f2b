//! Runs: one firing of a campaign, with its frozen settings and import counts.

use std::collections::BTreeMap;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::{corrupt, millis, parsed};
use crate::domain::{ConflictPolicy, FlowSid, ImportRow, JobState, NotifyRule, RunState, SendWindow};
use crate::store::{BatchCounts, NewRun, Result, RunCounts, RunRow, StoreError};

const RUN_COLUMNS: &str = "id, campaign, kind, trigger, scheduled_at, flow_sid, from_addr, on_conflict, \
     max_wait_ms, rate, window_start, window_end, state, state_reason, rows_total, imported, rejected, duplicates, \
     created_at, expanded_at, finished_at, outcome_fields, channel, limits_exempt, dedupe_within_ms, purged_at";

fn run_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    let flow: String = r.get(5)?;
    let flow = FlowSid::parse(&flow).map_err(|e| corrupt(5, e.to_string()))?;
    let max_wait: Option<i64> = r.get(8)?;
    let on_conflict: String = r.get(7)?;
    let policy = ConflictPolicy::from_parts(&on_conflict, max_wait.map(|ms| Duration::from_millis(ms.max(0) as u64)))
        .map_err(|e| corrupt(7, e))?;
    let window = match (r.get::<_, Option<String>>(10)?, r.get::<_, Option<String>>(11)?) {
        (Some(start), Some(end)) => Some(SendWindow::parse(&start, &end).map_err(|e| corrupt(10, e))?),
        _ => None,
    };
    let outcomes: String = r.get(21)?;
    let outcomes = serde_json::from_str(&outcomes).map_err(|e| corrupt(21, format!("outcome fields: {e}")))?;
    Ok(RunRow {
        id: r.get(0)?,
        campaign: r.get(1)?,
        kind: parsed(r, 2)?,
        trigger: parsed(r, 3)?,
        scheduled_at: r.get(4)?,
        flow,
        from: r.get(6)?,
        policy,
        rate: r.get(9)?,
        window,
        outcomes,
        state: parsed(r, 12)?,
        state_reason: r.get(13)?,
        rows_total: r.get(14)?,
        imported: r.get(15)?,
        rejected: r.get(16)?,
        duplicates: r.get(17)?,
        created_at: r.get(18)?,
        expanded_at: r.get(19)?,
        finished_at: r.get(20)?,
        channel: parsed(r, 22)?,
        limits_exempt: r.get(23)?,
        dedupe_within_ms: r.get(24)?,
        purged_at: r.get(25)?,
    })
}

/// Records a new run in state `expanding`. `None` if the campaign already has a
/// run with this key (the same tick or content never makes two runs).
pub fn create_run(conn: &Connection, run: &NewRun, now: i64) -> Result<Option<i64>> {
    let inserted = super::exec(
        conn,
        "INSERT OR IGNORE INTO runs (campaign, kind, trigger, run_key, scheduled_at, source, flow_sid, \
         from_addr, on_conflict, max_wait_ms, rate, window_start, window_end, state, created_at, outcome_fields, \
         channel, limits_exempt, dedupe_within_ms, notify_url, notify_events) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)",
        params![
            run.campaign,
            run.kind.as_str(),
            run.trigger.as_str(),
            run.run_key,
            run.scheduled_at,
            run.source,
            run.flow.as_str(),
            run.from,
            run.policy.name(),
            run.policy.max_wait().map(millis),
            run.rate,
            run.window.map(|w| w.start_text()),
            run.window.map(|w| w.end_text()),
            RunState::Expanding.as_str(),
            now,
            serde_json::to_string(&run.outcomes).expect("outcome fields serialise"),
            run.channel.as_str(),
            run.limits_exempt,
            run.dedupe_within.map(millis),
            run.notify.as_ref().map(|n| n.url.as_str()),
            run.notify.as_ref().map(NotifyRule::events_column)
        ],
    )?;
    Ok((inserted == 1).then(|| conn.last_insert_rowid()))
}

/// The run of `campaign` keyed `run_key`, if there is one.
pub fn run_by_key(conn: &Connection, campaign: &str, run_key: &str) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT id FROM runs WHERE campaign = ?1 AND run_key = ?2")?
        .query_row(params![campaign, run_key], |r| r.get(0))
        .optional()?)
}

/// Records a run and all its contacts in one transaction, already imported
/// (`active`): a crash leaves either the whole run or nothing, so a retried
/// request never finds half a run. `Err(id)` (inside `Ok`) when the campaign
/// already has a run with this key.
pub fn create_run_with_rows(
    conn: &mut Connection,
    run: &NewRun,
    rows: &[ImportRow],
    now: i64,
) -> Result<std::result::Result<(i64, BatchCounts), i64>> {
    let tx = super::write_transaction(conn)?;
    let Some(id) = create_run(&tx, run, now)? else {
        let existing = run_by_key(&tx, &run.campaign, &run.run_key)?.ok_or(StoreError::RunNotFound(0))?;
        return Ok(Err(existing));
    };
    let last_line = rows.iter().map(ImportRow::line).max().unwrap_or(1);
    let counts = super::jobs::insert_batch(&tx, id, rows, last_line, now, now)?;
    super::exec(
        &tx,
        "UPDATE runs SET expanded_at = ?2, state = 'active' WHERE id = ?1 AND state = 'expanding'",
        params![id, now],
    )?;
    tx.commit()?;
    Ok(Ok((id, counts)))
}

/// Just a run's state (checked before every create, so kept cheap).
pub fn run_state(conn: &Connection, id: i64) -> Result<RunState> {
    let state: String = conn
        .prepare_cached("SELECT state FROM runs WHERE id = ?1")?
        .query_row([id], |r| r.get(0))
        .optional()?
        .ok_or(StoreError::RunNotFound(id))?;
    state.parse().map_err(StoreError::Corrupt)
}

pub fn get_run(conn: &Connection, id: i64) -> Result<RunRow> {
    conn.prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"))?
        .query_row([id], run_from_row)
        .optional()?
        .ok_or(StoreError::RunNotFound(id))
}

/// Runs, newest first, optionally of one campaign.
pub fn list_runs(conn: &Connection, campaign: Option<&str>, limit: u32) -> Result<Vec<RunRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE (?1 IS NULL OR campaign = ?1) ORDER BY id DESC LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![campaign, limit], run_from_row)?.collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// Runs that still have work: not finished and not cancelled.
pub fn unfinished_runs(conn: &Connection) -> Result<Vec<RunRow>> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE state NOT IN (?1, ?2) ORDER BY id"))?;
    let rows = stmt
        .query_map(params![RunState::Finished.as_str(), RunState::Cancelled.as_str()], run_from_row)?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// Import finished: the run is `active` (unless a user paused or cancelled it
/// meanwhile). Its jobs were claimable while it was `expanding`.
pub fn finish_expansion(conn: &mut Connection, id: i64, now: i64) -> Result<()> {
    let tx = super::write_transaction(conn)?;
    super::exec(
        &tx,
        "UPDATE runs SET expanded_at = ?2, state = CASE WHEN state = 'expanding' THEN 'active' ELSE state END \
         WHERE id = ?1",
        params![id, now],
    )?;
    // Jobs written by a batch that raced a cancel are cancelled too.
    super::exec(
        &tx,
        "UPDATE jobs SET state = 'cancelled', reason = 'run cancelled', updated_at = ?2, finished_at = ?2 \
         WHERE run_id = ?1 AND state = 'pending' AND (SELECT state FROM runs WHERE id = ?1) = 'cancelled'",
        params![id, now],
    )?;
    tx.commit()?;
    Ok(())
}

/// Where an interrupted import resumes: the last CSV line it committed.
pub fn import_line(conn: &Connection, id: i64) -> Result<u64> {
    let line: i64 = conn
        .query_row("SELECT import_line FROM runs WHERE id = ?1", [id], |r| r.get(0))
        .optional()?
        .ok_or(StoreError::RunNotFound(id))?;
    Ok(line.max(1) as u64)
}

/// Moves a run from `from` to `to` with a reason, only if it is still in
/// `from`; returns whether it was (`false`: someone else changed it first).
pub fn set_run_state(
    conn: &mut Connection,
    id: i64,
    from: RunState,
    to: RunState,
    reason: Option<&str>,
    now: i64,
) -> Result<bool> {
    let tx = super::write_transaction(conn)?;
    let finished = to.is_over().then_some(now);
    let changed = super::exec(
        &tx,
        "UPDATE runs SET state = ?3, state_reason = ?4, finished_at = COALESCE(?5, finished_at) \
         WHERE id = ?1 AND state = ?2",
        params![id, from.as_str(), to.as_str(), reason, finished],
    )?;
    if changed == 0 {
        // Tell a run that is not there from one that moved on.
        run_state(&tx, id)?;
        return Ok(false);
    }
    if to == RunState::Cancelled {
        // Jobs not yet handed to Studio never will be. A job in `dispatching`
        // has a request in flight; its outcome is recorded when it returns.
        super::exec(
            &tx,
            "UPDATE jobs SET state = 'cancelled', reason = 'run cancelled', updated_at = ?2, finished_at = ?2 \
             WHERE run_id = ?1 AND state = 'pending'",
            params![id, now],
        )?;
    }
    tx.commit()?;
    Ok(true)
}

/// Marks the run finished when no job is open; returns whether it did.
pub fn finish_run_if_done(conn: &Connection, id: i64, now: i64) -> Result<bool> {
    Ok(super::exec(conn, FINISH_IF_DONE, params![id, now])? == 1)
}

pub(super) const FINISH_IF_DONE: &str = "UPDATE runs SET state = 'finished', finished_at = ?2 \
     WHERE id = ?1 AND state = 'active' \
     AND NOT EXISTS (SELECT 1 FROM jobs WHERE run_id = ?1 AND state IN ('pending', 'dispatching'))";

/// A run's jobs per state, read from `jobs_page` in state order.
pub fn run_counts(conn: &Connection, id: i64) -> Result<RunCounts> {
    let mut stmt = conn.prepare_cached(RUN_COUNTS)?;
    let mut counts = BTreeMap::new();
    for row in stmt.query_map([id], |r| Ok((parsed::<JobState>(r, 0)?, r.get::<_, i64>(1)?)))? {
        let (state, n) = row?;
        counts.insert(state, n);
    }
    Ok(RunCounts(counts))
}

pub(super) const RUN_COUNTS: &str = "SELECT state, COUNT(*) FROM jobs WHERE run_id = ?1 GROUP BY state";
