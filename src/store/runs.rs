//! Runs: one firing of a campaign, with its frozen settings and import counts.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, params};

use super::{Result, Store, StoreError};
use crate::domain::{JobState, RunState};

/// What a new run records about its campaign.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub campaign: String,
    pub kind: String,
    pub trigger: String,
    pub run_key: String,
    pub scheduled_at: i64,
    pub source: String,
    pub flow_sid: String,
    pub from_addr: String,
    pub on_conflict: String,
    pub max_wait_ms: Option<i64>,
    pub rate: Option<u32>,
    pub window: Option<(String, String)>,
}

/// A run as the ledger has it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRow {
    pub id: i64,
    pub campaign: String,
    pub kind: String,
    pub trigger: String,
    pub scheduled_at: i64,
    pub flow_sid: String,
    pub from_addr: String,
    pub on_conflict: String,
    pub max_wait_ms: Option<i64>,
    pub rate: Option<u32>,
    pub window_start: Option<String>,
    pub window_end: Option<String>,
    pub state: String,
    pub state_reason: Option<String>,
    pub rows_total: i64,
    pub imported: i64,
    pub rejected: i64,
    pub duplicates: i64,
    pub created_at: i64,
    pub expanded_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// Jobs per state for one run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RunCounts(pub BTreeMap<String, i64>);

impl RunCounts {
    pub fn get(&self, state: JobState) -> i64 {
        self.0.get(state.as_str()).copied().unwrap_or(0)
    }

    /// Jobs still to be settled.
    pub fn open(&self) -> i64 {
        self.get(JobState::Pending) + self.get(JobState::Dispatching)
    }

    pub fn total(&self) -> i64 {
        self.0.values().sum()
    }
}

const RUN_COLUMNS: &str = "id, campaign, kind, trigger, scheduled_at, flow_sid, from_addr, on_conflict, \
     max_wait_ms, rate, window_start, window_end, state, state_reason, rows_total, imported, rejected, duplicates, \
          created_at, expanded_at, finished_at";

fn run_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: r.get(0)?,
        campaign: r.get(1)?,
        kind: r.get(2)?,
        trigger: r.get(3)?,
        scheduled_at: r.get(4)?,
        flow_sid: r.get(5)?,
        from_addr: r.get(6)?,
        on_conflict: r.get(7)?,
        max_wait_ms: r.get(8)?,
        rate: r.get(9)?,
        window_start: r.get(10)?,
        window_end: r.get(11)?,
        state: r.get(12)?,
        state_reason: r.get(13)?,
        rows_total: r.get(14)?,
        imported: r.get(15)?,
        rejected: r.get(16)?,
        duplicates: r.get(17)?,
        created_at: r.get(18)?,
        expanded_at: r.get(19)?,
        finished_at: r.get(20)?,
    })
}

impl Store {
    /// Records a new run in state `expanding`. `None` if the campaign already has a
    /// run with this key (the same tick or content never makes two runs).
    pub fn create_run(&self, run: &NewRun, now: i64) -> Result<Option<i64>> {
        let conn = self.conn();
        let inserted = conn.execute(
            "INSERT OR IGNORE INTO runs (campaign, kind, trigger, run_key, scheduled_at, source, flow_sid, \
             from_addr, on_conflict, max_wait_ms, rate, window_start, window_end, state, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 'expanding', ?14)",
            params![
                run.campaign,
                run.kind,
                run.trigger,
                run.run_key,
                run.scheduled_at,
                run.source,
                run.flow_sid,
                run.from_addr,
                run.on_conflict,
                run.max_wait_ms,
                run.rate,
                run.window.as_ref().map(|w| w.0.as_str()),
                run.window.as_ref().map(|w| w.1.as_str()),
                now
            ],
        )?;
        Ok((inserted == 1).then(|| conn.last_insert_rowid()))
    }

    /// Just a run's state (checked before every create, so kept cheap).
    pub fn run_state(&self, id: i64) -> Result<String> {
        self.conn()
            .prepare_cached("SELECT state FROM runs WHERE id = ?1")?
            .query_row([id], |r| r.get(0))
            .optional()?
            .ok_or(StoreError::RunNotFound(id))
    }

    pub fn get_run(&self, id: i64) -> Result<RunRow> {
        self.conn()
            .query_row(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"), [id], run_from_row)
            .optional()?
            .ok_or(StoreError::RunNotFound(id))
    }

    /// Runs, newest first, optionally of one campaign.
    pub fn list_runs(&self, campaign: Option<&str>, limit: u32) -> Result<Vec<RunRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE (?1 IS NULL OR campaign = ?1) ORDER BY id DESC LIMIT ?2"
        ))?;
        let rows = stmt.query_map(params![campaign, limit], run_from_row)?.collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Runs that still have work: not finished and not cancelled.
    pub fn unfinished_runs(&self) -> Result<Vec<RunRow>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE state NOT IN ('finished', 'cancelled') ORDER BY id"
        ))?;
        let rows = stmt.query_map([], run_from_row)?.collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Import finished: the run is `active` (unless a user paused or cancelled it
    /// meanwhile). Its jobs were claimable while it was `expanding`.
    pub fn finish_expansion(&self, id: i64, now: i64) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE runs SET expanded_at = ?2, state = CASE WHEN state = 'expanding' THEN 'active' ELSE state END \
             WHERE id = ?1",
            params![id, now],
        )?;
        // Jobs written by a batch that raced a cancel are cancelled too.
        tx.execute(
            "UPDATE jobs SET state = 'cancelled', reason = 'run cancelled', updated_at = ?2, finished_at = ?2 \
             WHERE run_id = ?1 AND state = 'pending' AND (SELECT state FROM runs WHERE id = ?1) = 'cancelled'",
            params![id, now],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Where an interrupted import resumes: the last CSV line it committed.
    pub fn import_line(&self, id: i64) -> Result<u64> {
        let line: i64 = self
            .conn()
            .query_row("SELECT import_line FROM runs WHERE id = ?1", [id], |r| r.get(0))
            .optional()?
            .ok_or(StoreError::RunNotFound(id))?;
        Ok(line.max(1) as u64)
    }

    /// Sets a run's state with a reason; returns the state it had.
    pub fn set_run_state(&self, id: i64, state: RunState, reason: Option<&str>, now: i64) -> Result<String> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let old: String = tx
            .query_row("SELECT state FROM runs WHERE id = ?1", [id], |r| r.get(0))
            .optional()?
            .ok_or(StoreError::RunNotFound(id))?;
        let finished = matches!(state, RunState::Finished | RunState::Cancelled).then_some(now);
        tx.execute(
            "UPDATE runs SET state = ?2, state_reason = ?3, finished_at = COALESCE(?4, finished_at) WHERE id = ?1",
            params![id, state.as_str(), reason, finished],
        )?;
        if state == RunState::Cancelled {
            // Jobs not yet handed to Studio never will be. A job in `dispatching`
            // has a request in flight; its outcome is recorded when it returns.
            tx.execute(
                "UPDATE jobs SET state = 'cancelled', reason = 'run cancelled', updated_at = ?2, finished_at = ?2 \
                 WHERE run_id = ?1 AND state = 'pending'",
                params![id, now],
            )?;
        }
        tx.commit()?;
        Ok(old)
    }

    /// Marks the run finished when no job is open; returns whether it did.
    pub fn finish_run_if_done(&self, id: i64, now: i64) -> Result<bool> {
        let changed = self.conn().execute(
            "UPDATE runs SET state = 'finished', finished_at = ?2 WHERE id = ?1 AND state = 'active' \
             AND NOT EXISTS (SELECT 1 FROM jobs WHERE run_id = ?1 AND state IN ('pending', 'dispatching'))",
            params![id, now],
        )?;
        Ok(changed == 1)
    }

    pub fn run_counts(&self, id: i64) -> Result<RunCounts> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached("SELECT state, COUNT(*) FROM jobs WHERE run_id = ?1 GROUP BY state")?;
        let mut counts = BTreeMap::new();
        for row in stmt.query_map([id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
            let (state, n) = row?;
            counts.insert(state, n);
        }
        Ok(RunCounts(counts))
    }
}
