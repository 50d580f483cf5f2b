//! Kept run summaries (see `store::summaries` for when one is kept): the
//! counts and outcome values of a run from one read, the keeping, and the
//! ledger-wide counts per state built from them.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};

use super::parsed;
use crate::domain::RunState;
use crate::store::summaries::{Found, RunSummary, decode, is_settled};
use crate::store::{Result, RunCounts, StoreError};

/// Run `run_id`'s kept summary, or its counts and outcome values (of
/// `fields`) now, with whether it is settled, all from one read transaction
/// so that the summary and the verdict describe the same moment.
pub fn summary(conn: &Connection, run_id: i64, fields: &[String]) -> Result<Found> {
    let tx = conn.unchecked_transaction()?;
    let kept = tx
        .prepare_cached("SELECT counts, outcomes FROM run_summaries WHERE run_id = ?1")?
        .query_row([run_id], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .optional()?;
    if let Some((counts, outcomes)) = kept {
        return Ok(Found::Kept(decode(run_id, &counts, &outcomes)?));
    }
    let (state, imported, version) = tx
        .prepare_cached("SELECT state, expanded_at IS NOT NULL, jobs_version FROM runs WHERE id = ?1")?
        .query_row([run_id], |r| Ok((parsed::<RunState>(r, 0)?, r.get::<_, bool>(1)?, r.get::<_, i64>(2)?)))
        .optional()?
        .ok_or(StoreError::RunNotFound(run_id))?;
    let counts = super::runs::run_counts(&tx, run_id)?;
    let mut outcomes = BTreeMap::new();
    for field in fields {
        outcomes.insert(field.clone(), super::jobs::outcome_counts(&tx, run_id, field)?);
    }
    let open_outcomes: bool = tx.prepare_cached(OPEN_OUTCOMES)?.query_row([run_id], |r| r.get(0))?;
    let settled = is_settled(state, imported, &counts, open_outcomes);
    Ok(Found::Live { summary: RunSummary { counts, outcomes }, settled, version })
}

/// Keeps a settled run's summary, unless one is kept already or the run's
/// jobs changed since the read it was counted from (`version` then differs).
pub fn keep(conn: &Connection, run_id: i64, counts: &str, outcomes: &str, version: i64, now: i64) -> Result<bool> {
    let kept = super::exec(
        conn,
        "INSERT OR IGNORE INTO run_summaries (run_id, counts, outcomes, computed_at) \
         SELECT id, ?2, ?3, ?4 FROM runs WHERE id = ?1 AND jobs_version = ?5",
        params![run_id, counts, outcomes, now, version],
    )?;
    Ok(kept == 1)
}

/// Settled runs with no kept summary, oldest first.
pub fn settled_without(conn: &Connection, limit: u32) -> Result<Vec<i64>> {
    let mut stmt = conn.prepare_cached(SETTLED_WITHOUT)?;
    let ids = stmt.query_map([limit], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    Ok(ids)
}

pub(super) const OPEN_OUTCOMES: &str =
    "SELECT EXISTS (SELECT 1 FROM jobs WHERE run_id = ?1 AND outcome_state = 'open')";

pub(super) const SETTLED_WITHOUT: &str = "SELECT id FROM runs r WHERE state IN ('finished', 'cancelled') AND expanded_at IS NOT NULL \
       AND NOT EXISTS (SELECT 1 FROM run_summaries WHERE run_id = r.id) \
       AND NOT EXISTS (SELECT 1 FROM jobs WHERE run_id = r.id AND state IN ('pending', 'dispatching')) \
       AND NOT EXISTS (SELECT 1 FROM jobs WHERE run_id = r.id AND outcome_state = 'open') \
     ORDER BY id LIMIT ?1";

/// Jobs per state over the whole ledger: the kept summaries' counts, plus the
/// runs without one counted through `jobs_page` (run, state), one run at
/// a time, so that nothing sorts the whole jobs table.
pub fn jobs_by_state(conn: &Connection) -> Result<RunCounts> {
    let tx = conn.unchecked_transaction()?;
    let mut total = BTreeMap::new();
    let kept: Vec<(i64, String)> = tx
        .prepare_cached("SELECT run_id, counts FROM run_summaries")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    for (run_id, counts) in kept {
        for (state, n) in decode(run_id, &counts, "{}")?.counts.0 {
            *total.entry(state).or_insert(0) += n;
        }
    }
    let live: Vec<i64> = tx
        .prepare_cached("SELECT id FROM runs WHERE id NOT IN (SELECT run_id FROM run_summaries)")?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for run_id in live {
        for (state, n) in super::runs::run_counts(&tx, run_id)?.0 {
            *total.entry(state).or_insert(0) += n;
        }
    }
    Ok(RunCounts(total))
}
