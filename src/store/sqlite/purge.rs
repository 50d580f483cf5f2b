//! Retention: the SQL that removes the personal data of runs that are over,
//! leaving their counts, states and a keyed hash of each phone.
//!
//! Personal data lives in four places: a job's phone, Parameters (CSV
//! values), contact's zone, outcome values and notes (replies), last error and
//! reason details (Studio's messages quote the number); the import's rejected
//! and duplicate rows (raw phones and the reasons quoting them); and the
//! Studio calls' request and response bodies (`To`, Parameters, Studio's
//! answers). Runs and campaigns hold the campaign's own settings, and the
//! suppression list is never touched. A run is purged in batches of jobs, one
//! short write transaction each, so the writer is never held for long; every
//! step is idempotent, so a purge that stopped half-way is finished by the
//! next one.

use std::sync::OnceLock;

use rusqlite::{Connection, OptionalExtension, params};
use sha2::{Digest, Sha256};

use crate::domain::{Phone, hex, mask_phones_in};
use crate::store::Result;

/// Runs whose personal data is due to go: over (finished or cancelled)
/// before `before`, not purged yet, and with no job pending or in flight (a
/// cancelled run's request in flight records its outcome first).
pub fn due_runs(conn: &Connection, before: i64) -> Result<Vec<i64>> {
    let mut stmt = conn.prepare_cached(DUE_RUNS)?;
    let ids = stmt.query_map([before], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
    Ok(ids)
}

pub(super) const DUE_RUNS: &str = "SELECT id FROM runs r WHERE state IN ('finished', 'cancelled') AND purged_at IS NULL \
       AND COALESCE(finished_at, created_at) < ?1 \
       AND NOT EXISTS (SELECT 1 FROM jobs WHERE run_id = r.id AND state IN ('pending', 'dispatching')) \
     ORDER BY id";

/// Whether run `id` may be purged now (checked again inside each write, since
/// the list was read before).
fn still_due(conn: &Connection, run_id: i64) -> Result<bool> {
    Ok(conn.prepare_cached(STILL_DUE)?.query_row([run_id], |_| Ok(())).optional()?.is_some())
}

pub(super) const STILL_DUE: &str = "SELECT 1 FROM runs r WHERE id = ?1 AND state IN ('finished', 'cancelled') AND purged_at IS NULL \
       AND NOT EXISTS (SELECT 1 FROM jobs WHERE run_id = r.id AND state IN ('pending', 'dispatching'))";

/// What purging run `id` removes: (jobs, Studio calls, import rows).
pub fn count_run(conn: &Connection, run_id: i64) -> Result<(u64, u64, u64)> {
    Ok(conn
        .prepare_cached(
            "SELECT (SELECT COUNT(*) FROM jobs WHERE run_id = ?1), \
                (SELECT COUNT(*) FROM studio_calls WHERE job_id IN (SELECT id FROM jobs WHERE run_id = ?1)) \
              + (SELECT COUNT(*) FROM studio_calls WHERE job_id IS NULL AND run_id = ?1) \
              + (SELECT COUNT(*) FROM jobs WHERE run_id = ?1 AND create_on_row = 1), \
                (SELECT COUNT(*) FROM import_rows WHERE run_id = ?1)",
        )?
        .query_row([run_id], |r| {
            let count = |i| r.get::<_, i64>(i).map(|n| n.max(0) as u64);
            Ok((count(0)?, count(1)?, count(2)?))
        })?)
}

/// The id just before run `run_id`'s first job: where its purge starts.
pub fn before_first_job(conn: &Connection, run_id: i64) -> Result<i64> {
    let first: Option<i64> = conn.prepare_cached(first_job_sql())?.query_row([run_id], |r| r.get(0))?;
    Ok(first.map_or(i64::MAX, |id| id - 1))
}

/// A run's first job id: the least of each state's first, one seek of
/// `jobs_page` (run, state, id) per state; a `MIN(id)` over the run as a
/// whole would read every entry of the run.
pub(super) fn first_job_sql() -> &'static str {
    static SQL: OnceLock<String> = OnceLock::new();
    SQL.get_or_init(|| {
        let firsts = super::union_over_job_states(|state| {
            format!("SELECT MIN(id) AS id FROM jobs WHERE run_id = ?1 AND state = '{state}'")
        });
        format!("SELECT MIN(id) FROM ({firsts})")
    })
}

/// The ledger's salt for phone hashes (made by the retention migration).
pub fn salt(conn: &Connection) -> Result<String> {
    Ok(conn.query_row("SELECT value FROM ledger_meta WHERE key = 'phone_salt'", [], |r| r.get(0))?)
}

/// `hash:` and the first 128 bits of SHA-256(salt ‖ phone), as hex. Half the
/// digest is plenty to keep (run, phone) unique (a collision among a run's
/// million phones has odds near 10⁻²⁶), and it keeps the row and the unique
/// index entry short: they hold the phone twice per job, for ever.
pub fn keyed_hash(salt: &str, phone: &str) -> String {
    let mut digest = Sha256::new();
    digest.update(salt.as_bytes());
    digest.update(phone.as_bytes());
    format!("{}{}", Phone::HASH_PREFIX, hex(&digest.finalize()[..16]))
}

/// One batch of a run's jobs purged.
#[derive(Debug, Default)]
pub struct JobBatch {
    pub jobs: u64,
    pub calls: u64,
    /// The last job id the batch covered; `None` when there was none left.
    pub last: Option<i64>,
}

/// Purges up to `limit` of run `run_id`'s jobs after job id `after`, and their
/// Studio calls, in one transaction. Nothing, if the run is not due any more.
///
/// A job keeps its id, run, line, state, reason keyword, attempts, times,
/// Execution SID, outcome state, Execution status and end widget. Its phone
/// becomes the keyed hash; Parameters become `{}`; the zone (a CSV column)
/// is emptied; outcome values, notes and the last error go; phone numbers in
/// the reason's details are masked. An open outcome is closed as `unknown`:
/// reading it back later would write values into a purged run.
///
/// The jobs are rewritten rather than updated in place: a row that shrinks
/// in place leaves its page a third full, which SQLite never merges, so the
/// space would be lost for good; deleted and inserted again (same ids, every
/// column, whatever later migrations add), they pack into full pages and the
/// emptied ones go to the free list for the next run's rows.
pub fn purge_jobs(conn: &mut Connection, run_id: i64, salt: &str, after: i64, limit: i64) -> Result<JobBatch> {
    zeroing(conn, |conn| purge_job_batch(conn, run_id, salt, after, limit))
}

fn purge_job_batch(conn: &mut Connection, run_id: i64, salt: &str, after: i64, limit: i64) -> Result<JobBatch> {
    let tx = super::write_transaction(conn)?;
    if !still_due(&tx, run_id)? {
        return Ok(JobBatch::default());
    }
    // The batch is reworked in a scratch copy kept on the writer connection
    // (in memory: temp_store = MEMORY), with the columns `jobs` has.
    tx.execute_batch(
        "CREATE TEMP TABLE IF NOT EXISTS purging AS SELECT * FROM main.jobs WHERE 0; DELETE FROM temp.purging;",
    )?;
    let copied = tx
        .prepare_cached(
            // `+run_id`: walk the table by id from `after` (a range read),
            // not the run's index entries sorted anew for every batch.
            "INSERT INTO temp.purging SELECT * FROM main.jobs WHERE +run_id = ?1 AND id > ?2 ORDER BY id LIMIT ?3",
        )?
        .execute(params![run_id, after, limit])?;
    if copied == 0 {
        return Ok(JobBatch::default());
    }
    let jobs: Vec<(i64, i64, String, Option<String>)> = tx
        .prepare_cached("SELECT rowid, id, phone, reason FROM temp.purging ORDER BY id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<rusqlite::Result<_>>()?;
    {
        let mut hash = tx.prepare_cached("UPDATE temp.purging SET phone = ?2, reason = ?3 WHERE rowid = ?1")?;
        for (rowid, _, phone, reason) in &jobs {
            // A phone already hashed (a purge that stopped half-way) stays as it is.
            let hashed = if phone.starts_with(Phone::HASH_PREFIX) { phone.clone() } else { keyed_hash(salt, phone) };
            hash.execute(params![rowid, hashed, reason.as_deref().map(mask_phones_in)])?;
        }
    }
    // A create kept on its job row goes as the job's other calls do.
    let on_rows: i64 =
        tx.prepare_cached("SELECT COUNT(*) FROM temp.purging WHERE create_on_row = 1")?.query_row([], |r| r.get(0))?;
    tx.prepare_cached(
        "UPDATE temp.purging SET parameters = '{}', zone = '', outcome = NULL, outcome_notes = NULL, \
             last_error = NULL, outcome_due_at = NULL, dedupe_key = NULL, create_on_row = 0, \
             outcome_state = CASE WHEN outcome_state = 'open' THEN 'unknown' ELSE outcome_state END",
    )?
    .execute([])?;
    let calls = on_rows as u64
        + tx.prepare_cached("DELETE FROM studio_calls WHERE job_id IN (SELECT id FROM temp.purging)")?.execute([])?
            as u64;
    // A pushed contact's key and the events about these jobs (their bodies
    // carry the phone and the outcome) go too; an event not yet delivered
    // stays until it is, or is given up.
    tx.prepare_cached(BATCH_KEYS)?.execute([])?;
    tx.prepare_cached(
        "DELETE FROM outbox WHERE job_id IN (SELECT id FROM temp.purging) \
           AND (delivered_at IS NOT NULL OR gave_up_at IS NOT NULL)",
    )?
    .execute([])?;
    tx.prepare_cached("DELETE FROM main.jobs WHERE id IN (SELECT id FROM temp.purging)")?.execute([])?;
    tx.prepare_cached("INSERT INTO main.jobs SELECT * FROM temp.purging ORDER BY id")?.execute([])?;
    tx.prepare_cached("DELETE FROM temp.purging")?.execute([])?;
    forget_summary(&tx, run_id)?;
    tx.commit()?;
    Ok(JobBatch { jobs: jobs.len() as u64, calls, last: jobs.last().map(|j| j.1) })
}

/// Deletes up to `limit` of the run's rejected and duplicate rows (the run
/// keeps their counts); returns how many.
pub fn purge_import_rows(conn: &mut Connection, run_id: i64, limit: i64) -> Result<u64> {
    zeroing(conn, |conn| {
        let tx = super::write_transaction(conn)?;
        if !still_due(&tx, run_id)? {
            return Ok(0);
        }
        let deleted = tx
            .prepare_cached(
                "DELETE FROM import_rows WHERE rowid IN (SELECT rowid FROM import_rows WHERE run_id = ?1 LIMIT ?2)",
            )?
            .execute(params![run_id, limit])?;
        tx.commit()?;
        Ok(deleted as u64)
    })
}

/// The pushed contacts' keys of a batch of jobs being purged: found through
/// `push_keys_job`, as are the keys that still name a job the batch deletes
/// (the foreign key's check).
const BATCH_KEYS: &str = "DELETE FROM push_keys WHERE job_id IN (SELECT id FROM temp.purging)";

/// The run's own events (about the run, not one of its jobs) that are done
/// with: found through `outbox_run`, which holds those alone.
const FINISH_EVENTS: &str =
    "DELETE FROM outbox WHERE run_id = ?1 AND job_id IS NULL AND (delivered_at IS NOT NULL OR gave_up_at IS NOT NULL)";

/// Ends a run's purge: its Studio calls not tied to a job go, and the run is
/// marked purged. Returns the calls deleted, `None` when the run was not due
/// (purged meanwhile by another process, say).
pub fn finish(conn: &mut Connection, run_id: i64, now: i64) -> Result<Option<u64>> {
    zeroing(conn, |conn| {
        let tx = super::write_transaction(conn)?;
        if !still_due(&tx, run_id)? {
            return Ok(None);
        }
        let calls =
            tx.prepare_cached("DELETE FROM studio_calls WHERE job_id IS NULL AND run_id = ?1")?.execute([run_id])?;
        super::exec(&tx, FINISH_EVENTS, [run_id])?;
        super::exec(&tx, "UPDATE runs SET purged_at = ?2 WHERE id = ?1", params![run_id, now])?;
        forget_summary(&tx, run_id)?;
        tx.commit()?;
        Ok(Some(calls as u64))
    })
}

/// A kept summary counts the outcome values a purge blanks (a reply's text
/// among them): each step of a purge drops it, so that one stopped half-way
/// leaves none behind, and bumps the run's `jobs_version`, so that a summary
/// counted before the step is not kept after it. The next read counts what
/// is left.
fn forget_summary(tx: &Connection, run_id: i64) -> Result<()> {
    super::exec(tx, "UPDATE runs SET jobs_version = jobs_version + 1 WHERE id = ?1", [run_id])?;
    super::exec(tx, "DELETE FROM run_summaries WHERE run_id = ?1", [run_id])?;
    Ok(())
}

/// Runs `f` with SQLite's secure delete on: what a purge deletes or rewrites
/// is overwritten with zeros, in the pages it changes and the pages it frees,
/// instead of lingering in the file until reused. The connection's setting
/// is restored after.
pub(super) fn zeroing<T>(conn: &mut Connection, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<T> {
    let before: i64 = conn.query_row("PRAGMA secure_delete", [], |r| r.get(0))?;
    conn.pragma_update(None, "secure_delete", 1)?;
    let result = f(conn);
    conn.pragma_update(None, "secure_delete", before)?;
    result
}

/// The bytes the ledger's tables and indexes take: pages in use (free pages,
/// which SQLite reuses without a VACUUM, not counted) times the page size.
pub fn used_bytes(conn: &Connection) -> Result<u64> {
    let (pages, free, size): (i64, i64, i64) = conn.query_row(
        "SELECT p.page_count, f.freelist_count, s.page_size \
         FROM pragma_page_count() p, pragma_freelist_count() f, pragma_page_size() s",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    Ok(((pages - free).max(0) * size) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run's purge ends with its own events, and each batch deletes its
    /// jobs' pushed keys: each read through an index, not a read of every
    /// event or key in the ledger.
    #[test]
    fn a_purge_finds_a_runs_own_events_and_its_jobs_keys_by_index() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = super::super::Sqlite::open(&dir.path().join("flowcast.db")).unwrap();
        let plan = super::super::tests::plan_of(&ledger.reader(), FINISH_EVENTS);
        assert!(plan.contains("USING INDEX outbox_run (run_id=?)"), "{plan}");
        assert!(!plan.split("; ").any(|step| step == "SCAN outbox"), "{plan}");
        let conn = ledger.writer();
        conn.execute_batch("CREATE TEMP TABLE IF NOT EXISTS purging AS SELECT * FROM main.jobs WHERE 0").unwrap();
        let plan = super::super::tests::plan_of(&conn, BATCH_KEYS);
        assert!(plan.contains("INDEX push_keys_job (job_id=?)"), "{plan}");
        assert!(!plan.split("; ").any(|step| step == "SCAN push_keys"), "{plan}");
    }

    #[test]
    fn a_keyed_hash_depends_on_the_salt_and_is_not_a_number() {
        let a = keyed_hash("salt-a", "+12015550123");
        assert_eq!(a, keyed_hash("salt-a", "+12015550123"));
        assert_ne!(a, keyed_hash("salt-b", "+12015550123"));
        assert_ne!(a, keyed_hash("salt-a", "+12015550124"));
        assert!(a.starts_with("hash:") && a.len() == 5 + 32, "{a}");
        assert!(!a.contains("2015550123"));
    }
}
