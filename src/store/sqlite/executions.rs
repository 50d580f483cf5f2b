//! What an operator's look at a run's Executions reads from the ledger: which
//! job an Execution belongs to, and over which span of time a run created its
//! Executions (so that Studio's list can be narrowed to it). The audit records
//! of the ends themselves go through [`super::jobs::record_outcomes`], like
//! every other Studio call.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension};

use crate::domain::Phone;
use crate::store::{ExecutionJob, Result};

/// The sent jobs that carry Execution SID `?1`, found through
/// `execution_keys` (by eight characters of the SID; the whole SID is
/// compared on the row). Only a sent job has a key (see [`KEY_OF_SENT`]).
pub(super) const BY_EXECUTION: &str =
    "id IN (SELECT job_id FROM execution_keys WHERE key = substr(?1, 3, 8)) AND execution_sid = ?1";

/// Writes the key of job `?1`, sent with Execution `?2`, that
/// [`BY_EXECUTION`] finds it by.
pub(super) const KEY_OF_SENT: &str = "INSERT OR IGNORE INTO execution_keys (key, job_id) VALUES (substr(?2, 3, 8), ?1)";

/// The sent jobs that created Executions `sids`, by SID; a SID no job
/// created is left out. (A skipped job may carry someone else's active SID;
/// it did not create it.)
pub fn jobs_for_executions(conn: &Connection, sids: &[String]) -> Result<HashMap<String, ExecutionJob>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT id, run_id, phone FROM jobs WHERE {BY_EXECUTION} AND state = 'sent' ORDER BY id LIMIT 1"
    ))?;
    let mut found = HashMap::with_capacity(sids.len());
    for sid in sids {
        let job = stmt
            .query_row([sid], |r| {
                Ok(ExecutionJob { job_id: r.get(0)?, run_id: r.get(1)?, phone: Phone::from_e164(r.get(2)?) })
            })
            .optional()?;
        if let Some(job) = job {
            found.insert(sid.clone(), job);
        }
    }
    Ok(found)
}

/// The latest `sent_at` of a run's sent jobs: no Execution of the run was
/// created after it (the create had answered by then).
pub fn last_sent_at(conn: &Connection, run_id: i64) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached("SELECT MAX(sent_at) FROM jobs WHERE run_id = ?1 AND state = 'sent'")?
        .query_row([run_id], |r| r.get(0))?)
}
