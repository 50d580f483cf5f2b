//! Jobs: import in batched transactions, claim by due time, outcomes guarded by
//! id and state, and the audit record of Studio calls.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use rusqlite::{Connection, OptionalExtension, params};

use super::{corrupt, parsed};
use crate::domain::{
    CollectedOutcome, ContactLimits, ImportRow, JobOutcome, JobReason, JobSpec, JobState, OutcomeState, Parameters,
    Phone, RowOutcome, RunState,
};
use crate::store::claim_checks::{Candidate, Contacts, Earlier, Verdict, caps_verdict, dedupe_verdict};
use crate::store::{
    BatchCounts, CallSummary, ClaimedJob, JobRow, OutcomeJob, RefusedRow, Result, SettledJob, StudioCall,
};

const JOB_COLUMNS: &str = "id, run_id, line, phone, state, reason, execution_sid, attempts, due_at, expires_at, \
     sent_at, finished_at, last_error, execution_ended_at, ended_reason, outcome_state, execution_status, ended_in, \
     outcome, outcome_notes";

/// A JSON object column (`NULL` reads as empty).
fn object(r: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<serde_json::Map<String, serde_json::Value>> {
    let text: Option<String> = r.get(idx)?;
    match text {
        None => Ok(serde_json::Map::new()),
        Some(text) => serde_json::from_str(&text).map_err(|e| corrupt(idx, e.to_string())),
    }
}

fn job_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    let reason: Option<String> = r.get(5)?;
    Ok(JobRow {
        id: r.get(0)?,
        run_id: r.get(1)?,
        line: r.get(2)?,
        phone: Phone::from_e164(r.get(3)?),
        state: parsed(r, 4)?,
        reason: reason.map(|t| JobReason::parse(&t).map_err(|e| corrupt(5, e))).transpose()?,
        execution_sid: r.get(6)?,
        attempts: r.get(7)?,
        due_at: r.get(8)?,
        expires_at: r.get(9)?,
        sent_at: r.get(10)?,
        finished_at: r.get(11)?,
        last_error: r.get(12)?,
        execution_ended_at: r.get(13)?,
        ended_reason: r.get(14)?,
        outcome_state: r.get::<_, Option<String>>(15)?.map(|t| t.parse().map_err(|e| corrupt(15, e))).transpose()?,
        execution_status: r.get(16)?,
        ended_in: r.get(17)?,
        outcome: object(r, 18)?,
        outcome_notes: object(r, 19)?,
    })
}

/// Rows an import writes between two looks at whether another write waits
/// for the ledger.
const SLICE_ROWS: usize = 64;

/// An import transaction of more rows than this that ends its batch was
/// written with the ledger to itself: batches written beside other writes
/// are 2,000 rows at most (`runs::import::BATCH_ROWS`), and a write that
/// waited cuts the transaction short. Its commit leaves the log to the
/// checkpointer's thread (see `checkpointer::LONE_IMPORT_PAGES`).
const LONE_COMMIT_ROWS: usize = 4_096;

/// Writes a batch of imported rows, in one transaction unless another write
/// waits for the ledger. A phone already in the run is a duplicate: the
/// first row stays, this one is recorded as such.
///
/// Every [`SLICE_ROWS`] rows, if another write waits for the writer (a
/// claim, an outcome, a cancel), what is written so far is committed and the
/// writer handed to it: written as one transaction, a 2,000-row batch held
/// the writer 80 ms at the median beside a busy dispatcher, back to back, and
/// sends fell to 6 % of a 1,000/s rate. Alone, the batch stays one
/// transaction: committing every 256 rows regardless made a million-row
/// import 30-48 % slower (each commit writes the phone index's pages that
/// the rows' random inserts dirtied).
///
/// Each commit carries the run's counts and `import_line` for the rows it
/// holds (the last CSV line of its slice, the batch's own at the end), so a
/// resumed import starts after what was committed. A run cancelled before
/// the batch or while the writer was handed over gets no more of it: its
/// pending jobs were cancelled, and the rest would be pending in a run that
/// is over (a batch can be 65,536 rows: see `runs::import::LONE_BATCH_ROWS`).
pub fn import_batch(
    db: &super::Sqlite,
    run_id: i64,
    items: &[ImportRow],
    last_line: u64,
    default_due: i64,
    now: i64,
) -> Result<BatchCounts> {
    let mut counts = BatchCounts::default();
    // An empty batch still moves the run's last line on.
    let mut slices = items.chunks(SLICE_ROWS).chain(items.is_empty().then_some(items)).peekable();
    loop {
        let mut conn = db.writer();
        let tx = super::write_transaction(&mut conn)?;
        if super::runs::run_state(&tx, run_id)? == RunState::Cancelled {
            return Ok(counts);
        }
        let mut rows = 0;
        while let Some(slice) = slices.next() {
            rows += slice.len();
            let covers = match slices.peek() {
                Some(_) => slice.last().map_or(last_line, ImportRow::line),
                None => last_line,
            };
            counts += insert_batch(&tx, run_id, slice, covers, default_due, now)?;
            if slices.peek().is_some() && db.writes_waiting() {
                break;
            }
        }
        // A transaction cut short by a waiting write is not one: that write
        // commits next, and must not find the log left long.
        let lone = rows > LONE_COMMIT_ROWS && slices.peek().is_none();
        if lone {
            db.checkpointer.large_commit();
            super::checkpointer::leave_log_to_thread(&tx)?;
        }
        let committed = tx.commit();
        if lone && let Err(e) = super::checkpointer::checkpoint_long_log(&conn) {
            // Setting a number on the connection: not seen to fail. The
            // batch's outcome is the commit's either way.
            tracing::warn!(error = %e, "the ledger writer's checkpoint limit could not be put back");
        }
        committed?;
        if slices.peek().is_none() {
            return Ok(counts);
        }
        conn.unlock_fair();
        db.handed_over();
    }
}

/// [`import_batch`]'s writes, inside the caller's transaction.
pub(super) fn insert_batch(
    tx: &Connection,
    run_id: i64,
    items: &[ImportRow],
    last_line: u64,
    default_due: i64,
    now: i64,
) -> Result<BatchCounts> {
    let mut counts = BatchCounts::default();
    let (campaign, kind, channel, dedupe_within, mut run_keys): (String, String, String, Option<i64>, Option<String>) =
        tx.prepare_cached("SELECT campaign, kind, channel, dedupe_within_ms, parameter_keys FROM runs WHERE id = ?1")?
            .query_row([run_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?;
    // A suppressed contact's job, and one whose dedupe key was already sent by
    // this campaign within the window (a cumulative CSV dropped again), is
    // recorded and ends `skipped` at once: counted and reported like any
    // other, never sent, and costing no send slot. The claim checks the key
    // again for runs that overlap.
    //
    // Each check is a point read inside this transaction, so it sees the list
    // and the sends as they stand when the batch is written; the jobs the
    // batch inserts are neither suppressions nor sent, so reading before they
    // are inserted sees the same. A check is only made when it can match: not
    // against an empty list, not for a run without a dedupe rule or a job
    // without a key.
    let any_suppressed: bool =
        tx.prepare_cached("SELECT EXISTS (SELECT 1 FROM suppressions)")?.query_row([], |r| r.get(0))?;
    // The entry added first (lowest rowid) among those covering the run names
    // the reason. `+scope` reads the phone's few entries in one index range
    // instead of seeking once per scope and sorting what was found.
    let mut suppression = any_suppressed
        .then(|| {
            tx.prepare_cached(
                "SELECT 'suppressed: scope ' || scope || COALESCE(', ' || reason, '') FROM suppressions \
                 WHERE rowid = (SELECT MIN(rowid) FROM suppressions \
                                WHERE phone = ?1 AND +scope IN ('all', ?2, ?3, ?4))",
            )
        })
        .transpose()?;
    let dedupe_since = dedupe_within.map(|w| now - w);
    // The campaign's earliest job that sent the key within the window.
    let mut sent_before = dedupe_since
        .map(|_| {
            tx.prepare_cached(
                "SELECT 'already_sent: run ' || j.run_id || ', job ' || j.id \
                 FROM jobs j JOIN runs r ON r.id = j.run_id \
                 WHERE j.dedupe_key = ?1 AND r.campaign = ?2 AND j.sent_at > ?3 ORDER BY j.id LIMIT 1",
            )
        })
        .transpose()?;
    let mut insert_row = tx.prepare_cached(
        "INSERT INTO import_rows (run_id, line, raw_phone, outcome, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let mut jobs: Vec<(&JobSpec, Option<String>)> = Vec::with_capacity(JOBS_PER_STATEMENT);
    // Whether each of `jobs` was inserted, in the same order.
    let mut inserted: Vec<bool> = Vec::with_capacity(JOBS_PER_STATEMENT);
    let mut rest = items;
    while !rest.is_empty() {
        // The rows up to the next JOBS_PER_STATEMENT jobs, rejected ones
        // included, so that import_rows is written in file order.
        let mut end = 0;
        jobs.clear();
        while end < rest.len() && jobs.len() < JOBS_PER_STATEMENT {
            if let ImportRow::Job(spec) = &rest[end] {
                let mut skip: Option<String> = None;
                if let Some(stmt) = &mut suppression {
                    skip = stmt
                        .query_row(params![spec.phone.as_str(), kind, campaign, channel], |r| r.get(0))
                        .optional()?;
                }
                if skip.is_none()
                    && let (Some(stmt), Some(key), Some(since)) = (&mut sent_before, &spec.dedupe_key, dedupe_since)
                {
                    skip = stmt.query_row(params![key, campaign, since], |r| r.get(0)).optional()?;
                }
                jobs.push((spec, skip));
            }
            end += 1;
        }
        let (window, after) = rest.split_at(end);
        rest = after;
        // The run's first job names the keys its jobs' Parameters are stored
        // against (see `insert_jobs`).
        if run_keys.is_none()
            && let Some(keys) = jobs.first().and_then(|(spec, _)| spec.parameters.keys())
        {
            super::exec(tx, "UPDATE runs SET parameter_keys = ?2 WHERE id = ?1", params![run_id, keys])?;
            run_keys = Some(keys.to_string());
        }
        insert_jobs(tx, run_id, run_keys.as_deref(), &jobs, default_due, now, &mut inserted)?;
        debug_assert_eq!(inserted.len(), jobs.len());
        // A job whose phone the run already had, from an earlier batch or an
        // earlier row of this one, was not inserted: the first row stays and
        // this one is recorded as a duplicate.
        let mut was_inserted = inserted.iter();
        for item in window {
            match item {
                ImportRow::Job(spec) => {
                    if was_inserted.next().copied().unwrap_or(false) {
                        counts.imported += 1;
                    } else {
                        counts.duplicates += 1;
                        insert_row.execute(params![
                            run_id,
                            spec.line as i64,
                            spec.phone.as_str(),
                            RowOutcome::Duplicate.as_str(),
                            format!("duplicate phone {}; the first row with it is kept", spec.phone)
                        ])?;
                    }
                }
                ImportRow::Rejected(r) => {
                    counts.rejected += 1;
                    insert_row.execute(params![
                        run_id,
                        r.line as i64,
                        r.raw_phone,
                        RowOutcome::Rejected.as_str(),
                        r.reason
                    ])?;
                }
            }
        }
    }
    super::exec(
        tx,
        "UPDATE runs SET rows_total = rows_total + ?2, imported = imported + ?3, rejected = rejected + ?4, \
         duplicates = duplicates + ?5, import_line = MAX(import_line, ?6), jobs_version = jobs_version + 1 \
         WHERE id = ?1",
        params![
            run_id,
            counts.imported + counts.rejected + counts.duplicates,
            counts.imported,
            counts.rejected,
            counts.duplicates,
            last_line as i64
        ],
    )?;
    // Jobs added to a run whose summary was kept (a push or a late batch
    // landing in a run already over) make the kept one wrong: it goes, and
    // the version bump above stops a count from before this batch being kept.
    super::exec(tx, "DELETE FROM run_summaries WHERE run_id = ?1", [run_id])?;
    Ok(counts)
}

/// Jobs written per INSERT statement, a power of two: a shorter remainder is
/// written by the statements for the powers of two it is made of.
///
/// Each INSERT into `jobs` costs more than a job's own writes: the
/// `jobs_finished` index's condition evaluated afresh, a cursor opened on
/// the table and on each of its indexes (and, until migration 0021, a
/// statement journal: see there). Under callgrind a one-job INSERT took
/// about 79,000 instructions; 64 jobs to a statement, about 36,000 a job
/// (100 or 250 saved little more).
const JOBS_PER_STATEMENT: usize = 64;

/// The values an imported job is written with, one placeholder each.
const JOB_VALUES: usize = 13;

/// The INSERT of `n` jobs (a power of two up to [`JOBS_PER_STATEMENT`]).
///
/// It has no `RETURNING`: SQLite keeps the rows a statement returns in a
/// table of their own until it ends, and each was then read back into a
/// set of phones (without that, the writer's 24,600 instructions a row
/// under callgrind became 17,600). The count of rows changed says which
/// were inserted when it is the whole chunk, as it is unless a phone is
/// already in the run or repeated in the chunk; otherwise, or when a job
/// is inserted skipped (its event needs its id), the rows are read back
/// by id (see [`inserted_since`]).
fn insert_jobs_sql(n: usize) -> &'static str {
    static SQL: OnceLock<Vec<String>> = OnceLock::new();
    let row = format!("({})", vec!["?"; JOB_VALUES].join(", "));
    sized_sql(&SQL, JOBS_PER_STATEMENT, n, |k| {
        format!(
            "INSERT OR IGNORE INTO jobs (run_id, phone, line, zone, parameters, due_at, expires_at, \
                                         created_at, updated_at, dedupe_key, state, reason, finished_at) \
             VALUES {}",
            vec![row.as_str(); k].join(", ")
        )
    })
}

/// The jobs inserted after the job `after` (the table's last before the
/// INSERT), in id order: their phone, id and reason (set when skipped).
/// Inside the writing transaction no one else inserts, and a new row's id
/// is above every id in the table (an `INTEGER PRIMARY KEY` takes the
/// largest plus one), so these are exactly the INSERT's rows.
fn inserted_since(tx: &Connection, after: i64) -> Result<Vec<(String, i64, Option<String>)>> {
    let mut stmt = tx.prepare_cached("SELECT phone, id, reason FROM jobs WHERE id > ?1 ORDER BY id")?;
    let rows = stmt.query_map([after], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Splits `items` into runs whose lengths are powers of two up to `max`,
/// longest first: one statement per length, prepared once and cached, then
/// writes any number of rows.
fn power_of_two_chunks<T>(items: &[T], max: usize) -> impl Iterator<Item = &[T]> {
    let mut rest = items;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let (chunk, after) = rest.split_at(1 << rest.len().min(max).ilog2());
        rest = after;
        Some(chunk)
    })
}

/// The statement for `n` rows (a power of two up to `max`), built by `make`
/// for every such length the first time one is asked for.
fn sized_sql(
    cache: &'static OnceLock<Vec<String>>,
    max: usize,
    n: usize,
    make: impl Fn(usize) -> String,
) -> &'static str {
    let all = cache.get_or_init(|| (0..=max.trailing_zeros()).map(|k| make(1 << k)).collect());
    &all[n.trailing_zeros() as usize]
}

/// Inserts `jobs` in order, each `skipped` with its reason when it has one
/// (and its `job.skipped` event written, when the run notifies it); a phone
/// the run already has (the unique (phone, run) index) is not inserted.
/// Sets `inserted` to whether each of `jobs` was inserted, in order.
///
/// A job whose Parameters have the run's keys (`run_keys`, kept on the run)
/// stores its values alone, a JSON array: the keys, repeated by every job of
/// a run, were a tenth of a finished job's bytes. Any other job stores a JSON
/// object, as every job did before migration 0025.
fn insert_jobs(
    tx: &Connection,
    run_id: i64,
    run_keys: Option<&str>,
    jobs: &[(&JobSpec, Option<String>)],
    default_due: i64,
    now: i64,
    inserted: &mut Vec<bool>,
) -> Result<()> {
    inserted.clear();
    for chunk in power_of_two_chunks(jobs, JOBS_PER_STATEMENT) {
        let last_before: i64 =
            tx.prepare_cached("SELECT COALESCE(MAX(id), 0) FROM jobs")?.query_row([], |r| r.get(0))?;
        let mut stmt = tx.prepare_cached(insert_jobs_sql(chunk.len()))?;
        for (i, (spec, skip)) in chunk.iter().enumerate() {
            let at = i * JOB_VALUES;
            stmt.raw_bind_parameter(at + 1, run_id)?;
            stmt.raw_bind_parameter(at + 2, spec.phone.as_str())?;
            stmt.raw_bind_parameter(at + 3, spec.line as i64)?;
            stmt.raw_bind_parameter(at + 4, spec.zone.name())?;
            match spec.parameters.values() {
                Some(values) if spec.parameters.keys() == run_keys => stmt.raw_bind_parameter(at + 5, values)?,
                _ => stmt.raw_bind_parameter(at + 5, spec.parameters.to_object()?.as_ref())?,
            }
            stmt.raw_bind_parameter(at + 6, spec.due_at.map_or(default_due, |t| t.timestamp_millis()))?;
            stmt.raw_bind_parameter(at + 7, spec.expires_at.map(|t| t.timestamp_millis()))?;
            stmt.raw_bind_parameter(at + 8, now)?;
            stmt.raw_bind_parameter(at + 9, now)?;
            stmt.raw_bind_parameter(at + 10, spec.dedupe_key.as_deref())?;
            stmt.raw_bind_parameter(at + 11, if skip.is_some() { "skipped" } else { "pending" })?;
            stmt.raw_bind_parameter(at + 12, skip.as_deref())?;
            stmt.raw_bind_parameter(at + 13, skip.is_some().then_some(now))?;
        }
        let changed = stmt.raw_execute()?;
        let start = inserted.len();
        if changed == chunk.len() && chunk.iter().all(|(_, skip)| skip.is_none()) {
            inserted.resize(start + chunk.len(), true);
            continue;
        }
        // Which were inserted: the first of the chunk's jobs with each phone
        // the rows inserted have (a later one with the same phone is the
        // duplicate the unique index ignored).
        inserted.resize(start + chunk.len(), false);
        let rows = inserted_since(tx, last_before)?;
        let mut event = None;
        for (phone, id, reason) in rows {
            if let Some(i) = chunk.iter().position(|(spec, _)| spec.phone.as_str() == phone) {
                inserted[start + i] = true;
            }
            if let Some(reason) = reason {
                let event = match &mut event {
                    Some(event) => event,
                    None => event.insert(tx.prepare_cached(SKIPPED_EVENT)?),
                };
                event.execute(params![run_id, id, phone, reason])?;
            }
        }
    }
    Ok(())
}

/// The `job.skipped` event of a job inserted skipped (suppressed, or its
/// dedupe key already sent), for a run that notifies it: ?1 the run, ?2
/// the job, ?3 its phone, ?4 its reason. The same event as the triggers
/// write for a job that ends later (see migrations/0012_notify.sql); it
/// is written here rather than by a trigger on INSERT because the
/// functions in such a trigger make SQLite keep a statement journal for
/// every multi-row INSERT into `jobs` (see migrations/0021_one_phone_index.sql).
const SKIPPED_EVENT: &str = "\
    INSERT INTO outbox (event_id, event_type, run_id, job_id, url, body, created_at, next_attempt_at) \
    SELECT e.id, 'job.skipped', r.id, ?2, r.notify_url, \
           json_object('id', e.id, 'type', 'job.skipped', \
                       'time', strftime('%Y-%m-%dT%H:%M:%fZ', e.at / 1000.0, 'unixepoch'), \
                       'campaign', r.campaign, 'run', r.id, 'job', ?2, 'phone', ?3, \
                       'state', 'skipped', 'reason', ?4, 'outcome', NULL), \
           e.at, e.at \
    FROM runs r, \
         (SELECT 'evt_' || lower(hex(randomblob(16))) AS id, \
                 CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER) AS at) e \
    WHERE r.id = ?1 AND r.notify_url IS NOT NULL AND instr(r.notify_events, ',job.skipped,') > 0";

/// Claims up to `limit` due pending jobs of a run, earliest due first, marking
/// them `dispatching` with the attempt's start time, in one committed
/// transaction.
///
/// With `only_ambiguous`, only jobs whose last attempt's outcome is unknown
/// are claimed (recovery reconciles those first).
///
/// The per-contact caps (unless the run's campaign is exempt) and the run's
/// dedupe rule are checked here, inside the claiming transaction: a write
/// transaction holds the ledger's one write lock, so every other claim — this
/// process's other runs, or another process — sees this one's jobs as
/// `dispatching` and counts them. A job over a cap counting the Executions
/// sent is moved to the first instant the caps allow, or ends `skipped`
/// (`frequency_cap`) when that is past its expiry; a job whose key already got
/// an Execution ends `skipped` (`already_sent`). A job held back only by
/// attempts still out (its key's, or its phone's) looks again shortly: those
/// may yet send nothing.
pub fn claim_due(
    conn: &mut Connection,
    run_id: i64,
    now: i64,
    limit: usize,
    only_ambiguous: bool,
    limits: &ContactLimits,
) -> Result<Vec<ClaimedJob>> {
    let tx = super::write_transaction(conn)?;
    let Some((campaign, exempt, dedupe_within, run_keys)) = tx
        .prepare_cached(
            "SELECT campaign, limits_exempt, dedupe_within_ms, parameter_keys FROM runs \
             WHERE id = ?1 AND state IN ('active', 'expanding')",
        )?
        .query_row([run_id], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, bool>(1)?,
                r.get::<_, Option<i64>>(2)?,
                r.get::<_, Option<String>>(3)?,
            ))
        })
        .optional()?
    else {
        return Ok(Vec::new());
    };
    // The keys the run's jobs stored their Parameters' values against.
    let run_keys: Option<Arc<str>> = run_keys.map(Into::into);
    let caps = (!exempt && !limits.is_unlimited()).then_some(limits);
    // Two statements rather than one with `(?4 = 0 OR ambiguous_since IS NOT
    // NULL)`: planned without the flag's value (see `configure`), one
    // statement could not leave out the term it makes moot.
    let sql = claim_sql(only_ambiguous);
    let candidates: Vec<(Candidate, ClaimedJob)> = tx
        .prepare_cached(sql)?
        .query_map(params![run_id, now, limit as i64], |r| {
            let candidate = Candidate {
                id: r.get(0)?,
                phone: r.get(1)?,
                dedupe_key: r.get(2)?,
                expires_at: r.get(3)?,
                ambiguous_since: r.get(4)?,
            };
            let zone: String = r.get(6)?;
            let job = ClaimedJob {
                id: candidate.id,
                run_id: r.get(5)?,
                phone: Phone::from_e164(candidate.phone.clone()),
                // The zone was a valid IANA name when the job was imported; a
                // name a newer tz database dropped falls back to UTC.
                zone: zone.parse().unwrap_or(chrono_tz::UTC),
                parameters: Parameters::from_ledger(r.get(7)?, run_keys.as_ref()),
                attempts: r.get(8)?,
                failures: r.get(9)?,
                throttles: r.get(10)?,
                expires_at: candidate.expires_at,
                attempt_started_at: now,
                ambiguous_since: candidate.ambiguous_since,
                conflict_sid: r.get(11)?,
                conflict_since: r.get(12)?,
            };
            Ok((candidate, job))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut jobs = Vec::with_capacity(candidates.len());
    // The jobs are marked `dispatching` together after the checks, so a key
    // taken by a job earlier in this claim is not in the ledger yet: it is
    // remembered here, and a later job with it waits as for one in flight.
    let mut keys_taken: HashMap<String, i64> = HashMap::new();
    for (candidate, job) in candidates {
        let id = candidate.id;
        if candidate.needs_checks() {
            let mut verdict = None;
            if let (Some(within), Some(key)) = (dedupe_within, candidate.dedupe_key.as_deref()) {
                // A sent job in the ledger decides first (it skips this one),
                // as the ledger's own order has it; else one taken here waits.
                let earlier = match (earlier_with_key(&tx, &campaign, key, id, now - within)?, keys_taken.get(key)) {
                    (Some(sent), _) if !sent.in_flight => Some(sent),
                    (_, Some(&job)) => Some(Earlier { run: run_id, job, in_flight: true }),
                    (in_ledger, None) => in_ledger,
                };
                verdict = dedupe_verdict(earlier, now);
            }
            if let (None, Some(caps)) = (&verdict, caps) {
                let contacts = contacts_of(&tx, &candidate.phone, id, now - caps.horizon_ms())?;
                verdict = caps_verdict(caps, contacts, candidate.expires_at, now);
            }
            match verdict {
                Some(Verdict::Skip(reason)) => {
                    skip(&tx, id, &reason, now)?;
                    continue;
                }
                Some(Verdict::Defer(due_at)) => {
                    defer(&tx, id, due_at, now)?;
                    continue;
                }
                None => {}
            }
        }
        if let (Some(_), Some(key)) = (dedupe_within, candidate.dedupe_key) {
            keys_taken.entry(key).or_insert(id);
        }
        jobs.push(job);
    }
    let marked = mark_dispatching(&tx, &jobs, now)?;
    jobs.retain(|job| marked.contains(&job.id));
    tx.commit()?;
    Ok(jobs)
}

/// A claim's read of a run's due pending jobs (with the claim's `ORDER BY`
/// and `LIMIT`, through `jobs_claim` in due order: its condition,
/// `state = 'pending'`, is in the WHERE as written there).
pub(super) const DUE: &str = "SELECT id, phone, dedupe_key, expires_at, ambiguous_since, run_id, zone, parameters, attempts, \
            failures, throttles, conflict_sid, conflict_since FROM jobs \
     WHERE run_id = ?1 AND state = 'pending' AND due_at <= ?2 \
       AND (expires_at IS NULL OR expires_at > ?2 OR ambiguous_since IS NOT NULL)";

/// A claim's read: [`DUE`] in due order, of every due job or of those
/// whose last attempt's fate is unknown.
pub(super) fn claim_sql(only_ambiguous: bool) -> &'static str {
    static AMBIGUOUS: OnceLock<String> = OnceLock::new();
    static ANY: OnceLock<String> = OnceLock::new();
    if only_ambiguous {
        AMBIGUOUS.get_or_init(|| format!("{DUE} AND ambiguous_since IS NOT NULL ORDER BY due_at, id LIMIT ?3"))
    } else {
        ANY.get_or_init(|| format!("{DUE} ORDER BY due_at, id LIMIT ?3"))
    }
}

/// Jobs marked `dispatching` per UPDATE, a power of two (see
/// [`JOBS_PER_STATEMENT`]): one statement for the batch opens its cursors
/// on the table and each index it changes once, not once a job.
const CLAIMS_PER_STATEMENT: usize = 64;

/// Marks `jobs` (pending, read in this transaction) `dispatching` from `now`;
/// returns the ids it marked.
///
/// The statement has no `RETURNING`: SQLite loads every column of each old
/// row for one (under callgrind, 3,100 of the 36,000 instructions a job took
/// in the `sqlite3` shell), and the count of rows changed says the same when
/// it is the whole chunk, as it is for jobs read pending in this transaction.
///
/// Nothing in it may abort half-way, so SQLite keeps no statement journal
/// for it (a copy of every page it changes first): `OR FAIL` for its NOT
/// NULL columns (any error rolls the whole claim back anyway), and it names
/// no column a trigger watches (the event triggers fire on `reason` and
/// `execution_status`, migration 0026), as
/// `a_claim_and_a_send_keep_no_statement_journal…` below checks. With the
/// journal and the trigger programs compiled in, this UPDATE cost 6,500
/// more instructions a job under callgrind (the dispatch scenario).
fn mark_dispatching(tx: &Connection, jobs: &[ClaimedJob], now: i64) -> Result<HashSet<i64>> {
    static SQL: OnceLock<Vec<String>> = OnceLock::new();
    let mut marked = HashSet::with_capacity(jobs.len());
    for chunk in power_of_two_chunks(jobs, CLAIMS_PER_STATEMENT) {
        let sql = sized_sql(&SQL, CLAIMS_PER_STATEMENT, chunk.len(), claim_update);
        let mut stmt = tx.prepare_cached(sql)?;
        stmt.raw_bind_parameter(1, now)?;
        for (i, job) in chunk.iter().enumerate() {
            stmt.raw_bind_parameter(i + 2, job.id)?;
        }
        let changed = stmt.raw_execute()?;
        let ids = chunk.iter().map(|job| job.id);
        if changed == chunk.len() {
            marked.extend(ids);
        } else {
            // Not all were pending after all: the ones this statement marked
            // are those `dispatching` from `now`.
            let mut mine = tx.prepare_cached(
                "SELECT 1 FROM jobs WHERE id = ?1 AND state = 'dispatching' AND attempt_started_at = ?2",
            )?;
            for id in ids {
                if mine.exists(params![id, now])? {
                    marked.insert(id);
                }
            }
        }
    }
    Ok(marked)
}

/// The UPDATE that marks `k` jobs `dispatching` (`?1` the time, then their ids).
fn claim_update(k: usize) -> String {
    format!(
        "UPDATE OR FAIL jobs SET state = 'dispatching', attempt_started_at = ?1, updated_at = ?1 \
         WHERE id IN ({}) AND state = 'pending'",
        (2..k + 2).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ")
    )
}

/// The earliest job of `campaign` other than `job_id` whose key is `key` and
/// that got (or may be getting) an Execution since `since`.
fn earlier_with_key(conn: &Connection, campaign: &str, key: &str, job_id: i64, since: i64) -> Result<Option<Earlier>> {
    Ok(conn
        .prepare_cached(
            "SELECT j.run_id, j.id, j.sent_at IS NULL FROM jobs j JOIN runs r ON r.id = j.run_id \
             WHERE j.dedupe_key = ?1 AND r.campaign = ?2 AND j.id != ?3 \
               AND (j.sent_at > ?4 OR j.state = 'dispatching' OR j.ambiguous_since IS NOT NULL) \
             ORDER BY j.sent_at IS NULL, j.id LIMIT 1",
        )?
        .query_row(params![key, campaign, job_id, since], |r| {
            Ok(Earlier { run: r.get(0)?, job: r.get(1)?, in_flight: r.get(2)? })
        })
        .optional()?)
}

/// `phone`'s contacts since `since` by campaigns that count (not exempt).
fn contacts_of(conn: &Connection, phone: &str, job_id: i64, since: i64) -> Result<Contacts> {
    let mut stmt = conn.prepare_cached(
        "SELECT COALESCE(j.sent_at, j.attempt_started_at, j.ambiguous_since), j.sent_at IS NOT NULL \
         FROM jobs j JOIN runs r ON r.id = j.run_id \
         WHERE j.phone = ?1 AND j.id != ?2 AND r.limits_exempt = 0 \
           AND (j.sent_at > ?3 OR j.state = 'dispatching' OR j.ambiguous_since IS NOT NULL)",
    )?;
    let mut contacts = Contacts::default();
    for row in stmt.query_map(params![phone, job_id, since], |r| Ok((r.get::<_, Option<i64>>(0)?, r.get(1)?)))? {
        match row? {
            (Some(at), true) => contacts.sent.push(at),
            (Some(at), false) => contacts.in_flight.push(at),
            (None, _) => {}
        }
    }
    Ok(contacts)
}

/// Ends a pending job `skipped` at claim time. Naming `reason` is what
/// writes its `job.skipped` event (the trigger fires on it: migration 0026).
fn skip(conn: &Connection, id: i64, reason: &JobReason, now: i64) -> Result<()> {
    conn.prepare_cached(
        "UPDATE jobs SET state = 'skipped', reason = ?2, finished_at = ?3, updated_at = ?3 \
         WHERE id = ?1 AND state = 'pending'",
    )?
    .execute(params![id, reason.to_string(), now])?;
    Ok(())
}

/// Moves a pending job's due time to `due_at`.
fn defer(conn: &Connection, id: i64, due_at: i64, now: i64) -> Result<()> {
    conn.prepare_cached("UPDATE jobs SET due_at = ?2, updated_at = ?3 WHERE id = ?1 AND state = 'pending'")?
        .execute(params![id, due_at, now])?;
    Ok(())
}

/// Records a batch of attempt outcomes and Studio calls in one transaction
/// (one commit instead of two per job). Until it commits, the jobs stay
/// `dispatching`; a crash before then leaves them to reconciliation, never to
/// a blind resend. Returns how many outcomes applied.
///
/// A job that is sent is due to be read back `outcome_after_ms` later.
pub fn record_outcomes(
    conn: &mut Connection,
    outcomes: &[SettledJob],
    calls: &[StudioCall],
    outcome_after_ms: i64,
) -> Result<usize> {
    if outcomes.is_empty() && calls.is_empty() {
        return Ok(0);
    }
    let tx = super::write_transaction(conn)?;
    // Executions created, nearly every outcome of a run, are written first,
    // through one statement prepared once, the rest after; that order is
    // free only when each job has one outcome in the batch (it is settled
    // once per claim). With two for one job, all go one at a time in the
    // batch's order, so the first to find the job `dispatching` is the one
    // recorded.
    let mut ids = HashSet::with_capacity(outcomes.len());
    let one_each = outcomes.iter().all(|o| ids.insert(o.job_id));
    fn sid_of(o: &SettledJob, one_each: bool) -> Option<&str> {
        match &o.outcome {
            JobOutcome::Sent { sid } if one_each => Some(sid),
            _ => None,
        }
    }
    // A create Studio answered is kept by its job row when the job is
    // recorded sent with that Execution here (see `calls_left_for_rows`).
    let answered: HashSet<(i64, &str)> = calls.iter().filter_map(StudioCall::answered_create).collect();
    let batched: Vec<SentRow> = outcomes
        .iter()
        .filter_map(|o| {
            let sid = sid_of(o, one_each)?;
            Some((o.job_id, sid, o.attempts_sent, o.at, answered.contains(&(o.job_id, sid))))
        })
        .collect();
    let marked = mark_sent(&tx, &batched, outcome_after_ms)?;
    let mut on_rows: HashMap<i64, &str> =
        batched.iter().filter(|b| b.4 && marked.contains(&b.0)).map(|b| (b.0, b.1)).collect();
    let mut applied = 0;
    for o in outcomes {
        let recorded = match sid_of(o, one_each) {
            Some(_) => marked.contains(&o.job_id),
            None => {
                let on_row = match &o.outcome {
                    JobOutcome::Sent { sid } => answered.get(&(o.job_id, sid.as_str())).copied(),
                    _ => None,
                };
                let recorded = apply_outcome(&tx, o, outcome_after_ms, on_row.is_some())?;
                if let (true, Some((job, sid))) = (recorded, on_row) {
                    on_rows.insert(job, sid);
                }
                recorded
            }
        };
        if recorded {
            applied += 1;
        } else {
            tracing::warn!(job = o.job_id, "job changed state while in flight; its outcome was not recorded");
        }
    }
    insert_calls(&tx, &crate::store::calls_left_for_rows(calls, on_rows))?;
    tx.commit()?;
    Ok(applied)
}

/// A job recorded sent: its id, the Execution's SID, the creates sent, when,
/// and whether its row keeps the create Studio answered (`create_on_row`).
type SentRow<'a> = (i64, &'a str, i64, i64, bool);

/// Records `sent` (job id, Execution SID, attempts sent, when) for jobs still
/// `dispatching`: each job is sent, its Execution's outcome due
/// `outcome_after_ms` later. Returns the ids it recorded.
///
/// A sent job's zone is blanked, as a purge blanks it: it served the job's
/// send window alone, and a sent job is never sent again (15 bytes a job on
/// a ledger of ten million).
///
/// One statement a job, by its id: SQLite changes such a row in one pass
/// and keeps no statement journal for it, where one statement for many jobs
/// (a multi-row write that, while the SID index was an expression, called a
/// function, which SQLite takes as a statement that may abort) copied each
/// page it changed to one first; under callgrind the single-row statements
/// cost 1,900 fewer instructions a job. `OR FAIL` and no trigger, as in
/// [`mark_dispatching`]; `reason` is not named (a claimed job has none: only
/// a job that ended has one). No `RETURNING`, as there: one row changed is
/// the job recorded, and its SID's key is written (`execution_keys`).
fn mark_sent(tx: &Connection, sent: &[SentRow], outcome_after_ms: i64) -> Result<HashSet<i64>> {
    let mut marked = HashSet::with_capacity(sent.len());
    let mut stmt = tx.prepare_cached(SENT_UPDATE)?;
    let mut key = tx.prepare_cached(super::executions::KEY_OF_SENT)?;
    for &(job_id, sid, attempts_sent, sent_at, on_row) in sent {
        if stmt.execute(params![job_id, sid, attempts_sent, sent_at, on_row, outcome_after_ms])? == 1 {
            key.execute(params![job_id, sid])?;
            marked.insert(job_id);
        }
    }
    Ok(marked)
}

/// The send of one job (see [`mark_sent`]). It must not name `reason` or
/// `execution_status`: the event triggers fire on those.
const SENT_UPDATE: &str = "UPDATE OR FAIL jobs SET state = 'sent', execution_sid = ?2, \
         attempts = attempts + ?3, ambiguous_since = NULL, conflict_sid = NULL, \
         sent_at = ?4, finished_at = ?4, updated_at = ?4, \
         outcome_state = 'open', outcome_due_at = ?4 + ?6, create_on_row = ?5, zone = '' \
     WHERE id = ?1 AND state = 'dispatching'";

/// Records one outcome of a job still `dispatching`; whether it did. A job
/// sent keeps its create's record on its row if `create_on_row`.
fn apply_outcome(conn: &Connection, settled: &SettledJob, outcome_after_ms: i64, create_on_row: bool) -> Result<bool> {
    let SettledJob { job_id, ref outcome, attempts_sent, at: now, .. } = *settled;
    let changed = match outcome {
        JobOutcome::Sent { sid } => {
            mark_sent(conn, &[(job_id, sid.as_str(), attempts_sent, now, create_on_row)], outcome_after_ms)?.len()
        }
        // Ending failed or skipped names `reason`, which writes the job's
        // event (the trigger fires on it: migration 0026).
        JobOutcome::Skipped { reason, sid } => super::exec(
            conn,
            "UPDATE jobs SET state = 'skipped', reason = ?2, execution_sid = ?3, attempts = attempts + ?4, \
                 ambiguous_since = NULL, finished_at = ?5, updated_at = ?5 WHERE id = ?1 AND state = 'dispatching'",
            params![job_id, reason.to_string(), sid, attempts_sent, now],
        )?,
        JobOutcome::Failed { reason, last_error } => super::exec(
            conn,
            "UPDATE jobs SET state = 'failed', reason = ?2, last_error = COALESCE(?3, last_error), \
                 attempts = attempts + ?4, ambiguous_since = NULL, finished_at = ?5, updated_at = ?5 \
                 WHERE id = ?1 AND state = 'dispatching'",
            params![job_id, reason.to_string(), last_error, attempts_sent, now],
        )?,
        JobOutcome::Expired => super::exec(
            conn,
            "UPDATE jobs SET state = 'expired', reason = 'expired', attempts = attempts + ?2, \
                 finished_at = ?3, updated_at = ?3 WHERE id = ?1 AND state = 'dispatching'",
            params![job_id, attempts_sent, now],
        )?,
        JobOutcome::Retry { due_at, failures, throttled, ambiguous_since, conflict, last_error } => super::exec(
            conn,
            "UPDATE jobs SET state = 'pending', due_at = ?2, failures = ?3, throttles = throttles + ?4, \
                 ambiguous_since = ?5, conflict_sid = ?6, conflict_since = ?7, last_error = COALESCE(?8, last_error), \
                 attempts = attempts + ?9, updated_at = ?10 WHERE id = ?1 AND state = 'dispatching'",
            params![
                job_id,
                due_at,
                failures,
                i64::from(*throttled),
                ambiguous_since,
                conflict.as_ref().map(|c| c.0.as_str()),
                conflict.as_ref().map(|c| c.1),
                last_error,
                attempts_sent,
                now
            ],
        )?,
        JobOutcome::Cancelled => super::exec(
            conn,
            "UPDATE jobs SET state = 'cancelled', reason = 'run cancelled', attempts = attempts + ?2, \
                 finished_at = ?3, updated_at = ?3 WHERE id = ?1 AND state = 'dispatching'",
            params![job_id, attempts_sent, now],
        )?,
        JobOutcome::Release => super::exec(
            conn,
            "UPDATE jobs SET state = 'pending', attempts = attempts + ?2, updated_at = ?3 \
                 WHERE id = ?1 AND state = 'dispatching'",
            params![job_id, attempts_sent, now],
        )?,
    };
    Ok(changed == 1)
}

/// Jobs left `dispatching` by a process that died: back to `pending`, marked
/// ambiguous from their attempt's start, so Studio is asked before any resend.
pub fn recover_dispatching(conn: &Connection, run_id: i64, now: i64) -> Result<usize> {
    Ok(super::exec(conn, RECOVER, params![run_id, now])?)
}

pub(super) const RECOVER: &str = "UPDATE jobs SET state = 'pending', ambiguous_since = COALESCE(ambiguous_since, attempt_started_at, ?2), \
     due_at = MIN(due_at, ?2), updated_at = ?2 WHERE run_id = ?1 AND state = 'dispatching'";

/// The earliest due time among a run's pending jobs that have not expired by
/// `now` (expired ones are never claimed; [`expire_overdue`] settles them).
pub fn next_due_at(conn: &Connection, run_id: i64, now: i64) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached(NEXT_DUE)?
        .query_row(params![run_id, now], |r| r.get::<_, Option<i64>>(0))
        .optional()?
        .flatten())
}

pub(super) const NEXT_DUE: &str = "SELECT MIN(due_at) FROM jobs WHERE run_id = ?1 AND state = 'pending' \
     AND (expires_at IS NULL OR expires_at > ?2 OR ambiguous_since IS NOT NULL)";

/// Settles every pending job of a run whose `expires` has passed as `expired`,
/// in one statement: expired jobs never take a send slot. A job whose last
/// attempt's fate is unknown is left to be claimed: Studio is asked first
/// whether that attempt created an Execution. Returns how many.
pub fn expire_overdue(conn: &Connection, run_id: i64, now: i64) -> Result<usize> {
    Ok(conn
        .prepare_cached(
            "UPDATE jobs SET state = 'expired', reason = 'expired', finished_at = ?2, updated_at = ?2 \
             WHERE run_id = ?1 AND state = 'pending' AND expires_at IS NOT NULL AND expires_at <= ?2 \
               AND ambiguous_since IS NULL",
        )?
        .execute(params![run_id, now])?)
}

/// One page of a run's jobs in id order, after job id `after`, optionally in
/// one state (keyset paging: stable while the run changes).
pub fn jobs_page(
    conn: &Connection,
    run_id: i64,
    state: Option<JobState>,
    after: i64,
    limit: u32,
) -> Result<Vec<JobRow>> {
    let mut stmt = conn.prepare_cached(jobs_page_sql(state.is_some()))?;
    let rows = match state {
        Some(state) => stmt.query_map(params![run_id, after, limit, state.as_str()], job_from_row)?,
        None => stmt.query_map(params![run_id, after, limit], job_from_row)?,
    };
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// [`jobs_page`]'s query, of one state (`?4`) or of every one: range reads
/// of `jobs_page` (run, state, id) from `after` on, in id order, so a page
/// costs its own rows however large the run. A page of every state takes
/// each state's first `limit` ids after `after` and merges them: at most
/// `limit` ids a state are read, in index order.
pub(super) fn jobs_page_sql(one_state: bool) -> &'static str {
    static ONE: OnceLock<String> = OnceLock::new();
    static EVERY: OnceLock<String> = OnceLock::new();
    if one_state {
        ONE.get_or_init(|| {
            format!("SELECT {JOB_COLUMNS} FROM jobs WHERE run_id = ?1 AND state = ?4 AND id > ?2 ORDER BY id LIMIT ?3")
        })
    } else {
        EVERY.get_or_init(|| {
            let ranges = super::union_over_job_states(|state| {
                format!(
                    "SELECT id FROM (SELECT id FROM jobs WHERE run_id = ?1 AND state = '{state}' AND id > ?2 \
                     ORDER BY id LIMIT ?3)"
                )
            });
            format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id IN ({ranges} ORDER BY id LIMIT ?3) ORDER BY id")
        })
    }
}

/// The latest jobs that ended failed, skipped or expired, across runs,
/// through `jobs_finished` (its condition, as written there, is in the WHERE).
pub fn recent_problems(conn: &Connection, limit: u32) -> Result<Vec<JobRow>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE (state = 'failed' OR state = 'skipped' OR state = 'expired') \
         ORDER BY finished_at DESC, id DESC LIMIT ?1"
    ))?;
    let rows = stmt.query_map(params![limit], job_from_row)?.collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// Studio says Execution `sid` ended: record it on the job it belongs to, and
/// make every `wait`-policy job blocked on it due now. Repeated or late
/// deliveries change nothing further. Returns (jobs recorded, jobs woken).
pub fn record_execution_end(
    conn: &mut Connection,
    sid: &str,
    ended_at: i64,
    reason: Option<&str>,
    now: i64,
) -> Result<(usize, usize)> {
    let tx = super::write_transaction(conn)?;
    // An ended Execution's outcome can be read at once.
    let recorded = super::exec(
        &tx,
        &format!(
            "UPDATE jobs SET execution_ended_at = COALESCE(execution_ended_at, ?2), \
             ended_reason = COALESCE(ended_reason, ?3), updated_at = ?4, \
             outcome_due_at = CASE WHEN outcome_state = 'open' THEN MIN(COALESCE(outcome_due_at, ?4), ?4) \
                                   ELSE outcome_due_at END \
             WHERE {} AND state = 'sent'",
            super::executions::BY_EXECUTION
        ),
        params![sid, ended_at, reason, now],
    )?;
    let woken = super::exec(
        &tx,
        "UPDATE jobs SET due_at = MIN(due_at, ?2), updated_at = ?2 WHERE conflict_sid = ?1 AND state = 'pending'",
        params![sid, now],
    )?;
    tx.commit()?;
    Ok((recorded, woken))
}

/// Sent jobs whose outcome is open and due by `now` (with `all`, due or not),
/// optionally of one run, earliest due first.
pub fn due_outcomes(conn: &Connection, run: Option<i64>, now: i64, limit: u32, all: bool) -> Result<Vec<OutcomeJob>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, run_id, execution_sid, sent_at, outcome_polls, phone FROM jobs \
         WHERE outcome_state = 'open' AND (?1 IS NULL OR run_id = ?1) AND (?3 OR outcome_due_at <= ?2) \
           AND execution_sid IS NOT NULL \
         ORDER BY outcome_due_at, id LIMIT ?4",
    )?;
    let rows = stmt
        .query_map(params![run, now, all, limit], |r| {
            Ok(OutcomeJob {
                id: r.get(0)?,
                run_id: r.get(1)?,
                execution_sid: r.get(2)?,
                sent_at: r.get::<_, Option<i64>>(3)?.unwrap_or(0),
                polls: r.get(4)?,
                phone: Phone::from_e164(r.get(5)?),
            })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// How many sent jobs' outcomes are still open, optionally of one run.
pub fn open_outcomes(conn: &Connection, run: Option<i64>) -> Result<i64> {
    Ok(conn
        .prepare_cached("SELECT COUNT(*) FROM jobs WHERE outcome_state = 'open' AND (?1 IS NULL OR run_id = ?1)")?
        .query_row(params![run], |r| r.get(0))?)
}

/// The earliest time an open outcome is due, optionally of one run.
pub fn next_outcome_due(conn: &Connection, run: Option<i64>) -> Result<Option<i64>> {
    Ok(conn
        .prepare_cached(
            "SELECT MIN(outcome_due_at) FROM jobs WHERE outcome_state = 'open' AND (?1 IS NULL OR run_id = ?1)",
        )?
        .query_row(params![run], |r| r.get(0))?)
}

/// Records what was read back from a job's Execution, ending its outcome as
/// `state` (known, or unknown when given up on). Naming `execution_status`
/// is what writes the `outcome` event (the trigger fires on it: migration
/// 0026).
pub fn record_collected(
    conn: &Connection,
    job_id: i64,
    state: OutcomeState,
    collected: &CollectedOutcome,
    now: i64,
) -> Result<bool> {
    let changed = conn.prepare_cached(
        "UPDATE jobs SET outcome_state = ?2, execution_status = ?3, ended_in = ?4, outcome = ?5, outcome_notes = ?6, \
             outcome_due_at = NULL, outcome_polls = outcome_polls + 1, updated_at = ?7 \
         WHERE id = ?1 AND outcome_state = 'open'",
    )?
    .execute(params![
        job_id,
        state.as_str(),
        collected.status,
        collected.ended_in,
        serde_json::Value::Object(collected.values.clone()).to_string(),
        (!collected.notes.is_empty()).then(|| serde_json::Value::Object(collected.notes.clone()).to_string()),
        now
    ])?;
    Ok(changed == 1)
}

/// Asks about a job's Execution again at `due_at` (it was still running, or
/// Studio could not answer).
pub fn reschedule_outcome(conn: &Connection, job_id: i64, due_at: i64, now: i64) -> Result<()> {
    conn.prepare_cached(
        "UPDATE jobs SET outcome_due_at = ?2, outcome_polls = outcome_polls + 1, updated_at = ?3 \
         WHERE id = ?1 AND outcome_state = 'open'",
    )?
    .execute(params![job_id, due_at, now])?;
    Ok(())
}

/// [`outcome_counts`]'s query. Only sent jobs have an outcome state: the
/// state in the WHERE makes it a range of `jobs_page` (the run's sent jobs)
/// rather than every job of the run, each row read to test its outcome.
pub(super) const OUTCOME_COUNTS: &str = "SELECT json_extract(outcome, ?2) AS v, COUNT(*) FROM jobs \
     WHERE run_id = ?1 AND state = 'sent' AND outcome_state IN ('known', 'unknown') GROUP BY v";

/// How often each value of outcome field `name` was given in a run, among jobs
/// whose outcome was read back or given up on (`None`: no answer). Values are
/// JSON text.
pub fn outcome_counts(conn: &Connection, run_id: i64, name: &str) -> Result<Vec<(Option<String>, i64)>> {
    // A JSON path with the key quoted, so any field name is one key.
    let path = format!("$.{}", serde_json::Value::String(name.to_string()));
    let mut stmt = conn.prepare_cached(OUTCOME_COUNTS)?;
    let rows = stmt
        .query_map(params![run_id, path], |r| {
            let value = match r.get_ref(0)? {
                rusqlite::types::ValueRef::Null => None,
                rusqlite::types::ValueRef::Integer(n) => Some(n.to_string()),
                rusqlite::types::ValueRef::Real(f) => Some(f.to_string()),
                rusqlite::types::ValueRef::Text(t) => {
                    Some(serde_json::Value::String(String::from_utf8_lossy(t).into_owned()).to_string())
                }
                rusqlite::types::ValueRef::Blob(_) => None,
            };
            Ok((value, r.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// The rows an import refused or found duplicated, in file order.
pub fn refused_rows(conn: &Connection, run_id: i64) -> Result<Vec<RefusedRow>> {
    let mut stmt = conn
        .prepare_cached("SELECT line, raw_phone, outcome, reason FROM import_rows WHERE run_id = ?1 ORDER BY line")?;
    let rows = stmt
        .query_map([run_id], |r| {
            Ok(RefusedRow { line: r.get(0)?, raw_phone: r.get(1)?, outcome: parsed(r, 2)?, reason: r.get(3)? })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// The audit trail of one job, oldest first: its rows in the order they
/// were written (their times come from different processes' clocks, their
/// ids do not), and a create kept on the job row where its own row would
/// have been: after the last row timed at or before its send (the calls of
/// its attempt), before any later one (an end, a fetch).
pub fn calls_for_job(conn: &Connection, job_id: i64) -> Result<Vec<CallSummary>> {
    let mut stmt = conn.prepare_cached(
        "SELECT operation, outcome, execution_sid, note FROM studio_call_trail t WHERE job_id = ?1 \
         ORDER BY COALESCE(id, (SELECT MAX(c.id) FROM studio_calls c WHERE c.job_id = ?1 AND c.at <= t.at), 0), \
                  id IS NULL",
    )?;
    let rows = stmt
        .query_map([job_id], |r| {
            Ok(CallSummary { operation: r.get(0)?, outcome: r.get(1)?, execution_sid: r.get(2)?, note: r.get(3)? })
        })?
        .collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// Studio calls written per INSERT, a power of two (see [`CLAIMS_PER_STATEMENT`]).
const CALLS_PER_STATEMENT: usize = 32;

/// Appends `calls` to the audit trail, in order.
fn insert_calls(conn: &Connection, calls: &[&StudioCall]) -> Result<()> {
    static SQL: OnceLock<Vec<String>> = OnceLock::new();
    for chunk in power_of_two_chunks(calls, CALLS_PER_STATEMENT) {
        let sql = sized_sql(&SQL, CALLS_PER_STATEMENT, chunk.len(), |k| {
            format!(
                "INSERT INTO studio_calls (run_id, job_id, at, operation, request, http_status, response, outcome, \
                                           execution_sid, note) VALUES {}",
                vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; k].join(", ")
            )
        });
        let mut stmt = conn.prepare_cached(sql)?;
        for (i, call) in chunk.iter().enumerate() {
            let at = 1 + i * 10;
            stmt.raw_bind_parameter(at, call.run_id)?;
            stmt.raw_bind_parameter(at + 1, call.job_id)?;
            stmt.raw_bind_parameter(at + 2, call.at)?;
            stmt.raw_bind_parameter(at + 3, call.operation)?;
            stmt.raw_bind_parameter(at + 4, &call.request)?;
            stmt.raw_bind_parameter(at + 5, call.http_status)?;
            stmt.raw_bind_parameter(at + 6, &call.response)?;
            stmt.raw_bind_parameter(at + 7, &call.outcome)?;
            stmt.raw_bind_parameter(at + 8, &call.execution_sid)?;
            stmt.raw_bind_parameter(at + 9, &call.note)?;
        }
        stmt.raw_execute()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::domain::{
        CampaignKind, Channel, ConflictPolicy, ContactLimits, ImportRow, JobOutcome, JobReason, JobSpec, JobState,
        Parameters, Phone, ReasonKind, Rejection, RowOutcome, RunState, Scope,
    };
    use crate::store::{BatchCounts, NewRun, SettledJob, Store, StudioCall};

    /// 2026-06-01T00:00:00Z.
    const T0: i64 = 1_780_272_000_000;
    const DAY: i64 = 86_400_000;

    fn phone(i: usize) -> String {
        format!("+1201555{i:04}")
    }

    /// A run of reminder campaign `campaign` on SMS, deduping over
    /// `dedupe_days` when given.
    async fn new_run(store: &Store, campaign: &str, key: &str, dedupe_days: Option<u64>) -> i64 {
        let run = NewRun {
            policy: ConflictPolicy::from_parts("skip", None).unwrap(),
            rate: None,
            limits_exempt: false,
            dedupe_within: dedupe_days.map(|d| Duration::from_secs(d * 86_400)),
            ..crate::store::postgres::runs::tests::new_run(campaign, key, None)
        };
        store.create_run(run, T0).await.unwrap().expect("a new run")
    }

    fn job(line: u64, phone_no: usize, key: Option<&str>) -> ImportRow {
        ImportRow::Job(JobSpec {
            line,
            phone: Phone::from_e164(phone(phone_no)),
            zone: chrono_tz::UTC,
            parameters: Parameters::from_map(&serde_json::Map::new()),
            due_at: None,
            expires_at: None,
            dedupe_key: key.map(str::to_string),
        })
    }

    async fn import(store: &Store, run: i64, rows: Vec<ImportRow>, now: i64) -> BatchCounts {
        let last = rows.iter().map(ImportRow::line).max().unwrap();
        store.import_batch(run, rows, last, now, now).await.unwrap()
    }

    fn counts(imported: i64, rejected: i64, duplicates: i64) -> BatchCounts {
        BatchCounts { imported, rejected, duplicates }
    }

    /// A run's jobs in id order: phone, state, reason and when it ended.
    async fn jobs(store: &Store, run: i64) -> Vec<(String, JobState, Option<String>, Option<i64>)> {
        let page = store.jobs_page(run, None, 0, 500).await.unwrap();
        page.into_iter()
            .map(|j| (j.phone.as_str().to_string(), j.state, j.reason.map(|r| r.to_string()), j.finished_at))
            .collect()
    }

    fn pending(phone_no: usize) -> (String, JobState, Option<String>, Option<i64>) {
        (phone(phone_no), JobState::Pending, None, None)
    }

    fn skipped(phone_no: usize, reason: &str, at: i64) -> (String, JobState, Option<String>, Option<i64>) {
        (phone(phone_no), JobState::Skipped, Some(reason.to_string()), Some(at))
    }

    /// A duplicate row as `refused_rows` has it: line, phone, outcome, reason.
    fn duplicate(line: i64, phone_no: usize) -> (i64, String, RowOutcome, String) {
        let p = phone(phone_no);
        (line, p.clone(), RowOutcome::Duplicate, format!("duplicate phone {p}; the first row with it is kept"))
    }

    /// A new run of campaign "c" whose `job.skipped` events are notified.
    async fn run_notifying_skips(store: &Store) -> i64 {
        let notified = NewRun {
            policy: ConflictPolicy::from_parts("skip", None).unwrap(),
            rate: None,
            limits_exempt: false,
            ..crate::store::postgres::runs::tests::new_run("c", "k1", Some(&["job.skipped"]))
        };
        store.create_run(notified, T0).await.unwrap().expect("a new run")
    }

    /// A run's refused rows as `duplicate` writes them: line, phone, outcome, reason.
    async fn refused_rows(store: &Store, run: i64) -> Vec<(i64, String, RowOutcome, String)> {
        store.refused_rows(run).await.unwrap().into_iter().map(|r| (r.line, r.raw_phone, r.outcome, r.reason)).collect()
    }

    async fn suppress(store: &Store, phone_no: usize, scope: Scope, reason: Option<&str>) {
        assert!(store.suppress(&Phone::from_e164(phone(phone_no)), &scope, reason, "cli", T0).await.unwrap());
    }

    /// A job skipped at import writes its `job.skipped` event, in job order
    /// and with the body the triggers write for the other events, when its
    /// run notifies it, also past the first INSERT of a batch; a duplicate
    /// of it writes none, and a run without `notify` none.
    #[tokio::test]
    async fn a_job_skipped_at_import_writes_its_event_once_when_its_run_notifies_it() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open_path(&tmp.path().join("ledger.db")).await.unwrap();
        suppress(&store, 1, Scope::All, Some("STOP")).await;
        suppress(&store, 70, Scope::All, None).await;
        let run = run_notifying_skips(&store).await;
        let rows = || (0..100).map(|i| job(i as u64 + 2, i, None)).chain([job(102, 1, None)]).collect::<Vec<_>>();
        assert_eq!(import(&store, run, rows(), T0).await, counts(100, 0, 1));
        let quiet = new_run(&store, "c", "k2", None).await;
        assert_eq!(import(&store, quiet, rows(), T0).await, counts(100, 0, 1));

        let events = store.outbox_page(None, 0, 10).await.unwrap();
        let page = store.jobs_page(run, None, 0, 500).await.unwrap();
        let id_of = |p: usize| page.iter().find(|j| j.phone.as_str() == phone(p)).unwrap().id;
        let got: Vec<(&str, i64, Option<i64>)> =
            events.iter().map(|e| (e.event_type.as_str(), e.run_id, e.job_id)).collect();
        assert_eq!(got, [("job.skipped", run, Some(id_of(1))), ("job.skipped", run, Some(id_of(70)))]);
        assert_eq!(events[0].url, "https://hooks.example.com/flowcast");
        let body: serde_json::Value = serde_json::from_str(&events[0].body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({
                "id": events[0].event_id, "type": "job.skipped", "time": body["time"], "campaign": "c",
                "run": run, "job": id_of(1), "phone": phone(1), "state": "skipped",
                "reason": "suppressed: scope all, STOP", "outcome": null,
            })
        );
        let time = body["time"].as_str().unwrap();
        assert!(time.starts_with("20") && time.ends_with('Z') && time.len() == 24, "{time}");
        assert!(events[0].event_id.starts_with("evt_") && events[0].event_id != events[1].event_id);
    }

    /// Within one INSERT, a phone written twice whose first row goes in
    /// skipped: that row is the job (skipped, with one event), the second a
    /// duplicate; with a row the run already had in the same INSERT, the
    /// rows written are told apart from the ones it ignored.
    #[tokio::test]
    async fn a_skipped_row_and_its_duplicate_in_one_insert_make_one_job_and_one_event() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open_path(&tmp.path().join("ledger.db")).await.unwrap();
        suppress(&store, 1, Scope::All, None).await;
        let run = run_notifying_skips(&store).await;
        assert_eq!(import(&store, run, vec![job(2, 0, None)], T0).await, counts(1, 0, 0));
        // Four rows, one INSERT: phone 1 twice (the first skipped), phone 0
        // from the first batch, and a new phone.
        let rows = vec![job(3, 1, None), job(4, 1, None), job(5, 0, None), job(6, 2, None)];
        assert_eq!(import(&store, run, rows, T0).await, counts(2, 0, 2));

        assert_eq!(jobs(&store, run).await, [pending(0), skipped(1, "suppressed: scope all", T0), pending(2)]);
        let refused = refused_rows(&store, run).await;
        assert_eq!(refused, [duplicate(4, 1), duplicate(5, 0)]);
        let page = store.jobs_page(run, None, 0, 10).await.unwrap();
        let events = store.outbox_page(None, 0, 10).await.unwrap();
        let got: Vec<(&str, Option<i64>)> = events.iter().map(|e| (e.event_type.as_str(), e.job_id)).collect();
        assert_eq!(got, [("job.skipped", Some(page[1].id))]);
        let body: serde_json::Value = serde_json::from_str(&events[0].body).unwrap();
        assert_eq!(body["phone"], phone(1));
    }

    /// Every job is checked at import against the suppression list and the
    /// run's dedupe rule as they stand when its batch is written (a
    /// suppression added between two batches of one import applies to the
    /// second), and a phone already in the run, from an earlier batch or the
    /// same one, is a duplicate.
    #[tokio::test]
    async fn two_jobs_with_one_dedupe_key_due_in_one_claim_are_not_both_claimed() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open_path(&tmp.path().join("ledger.db")).await.unwrap();
        let run = new_run(&store, "c", "k", Some(1)).await;
        // One order under two phones, and another order.
        import(&store, run, vec![job(2, 0, Some("A1")), job(3, 1, Some("A1")), job(4, 2, Some("B2"))], T0).await;
        let claimed = store.claim_due(run, T0 + 1, 10, false, ContactLimits::default()).await.unwrap();
        let phones: Vec<&str> = claimed.iter().map(|j| j.phone.as_str()).collect();
        assert_eq!(phones, vec![phone(0), phone(2)], "the second A1 waits for the first's outcome");
        let page = store.jobs_page(run, None, 0, 10).await.unwrap();
        assert_eq!(page[1].state, JobState::Pending);
        assert_eq!(page[1].due_at, T0 + 1 + crate::store::claim_checks::IN_FLIGHT_RECHECK_MS);
    }

    #[tokio::test]
    async fn a_key_sent_before_skips_a_job_even_when_an_ambiguous_job_of_this_claim_took_it() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ledger.db");
        let store = Store::open_path(&path).await.unwrap();
        let limits = ContactLimits::default();
        // Two runs of the campaign imported while neither had sent A1; then
        // the first sends it.
        let earlier = new_run(&store, "c", "k1", Some(1)).await;
        import(&store, earlier, vec![job(2, 9, Some("A1"))], T0).await;
        let run = new_run(&store, "c", "k2", Some(1)).await;
        import(&store, run, vec![job(2, 0, Some("A1")), job(3, 1, Some("A1"))], T0).await;
        let sent = store.claim_due(earlier, T0, 10, false, limits).await.unwrap();
        let outcome = JobOutcome::Sent { sid: "FN1".into() };
        let settled = vec![SettledJob { job_id: sent[0].id, outcome, attempts_sent: 1, at: T0 }];
        store.record_outcomes(settled, Vec::new(), Duration::ZERO).await.unwrap();
        // The second run's first job had an attempt of unknown fate, so it is
        // claimed unchecked (to be reconciled).
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute("UPDATE jobs SET ambiguous_since = ?2 WHERE run_id = ?1 AND line = 2", rusqlite::params![run, T0])
            .unwrap();
        let claimed = store.claim_due(run, T0 + 1, 10, false, limits).await.unwrap();
        assert_eq!(claimed.iter().map(|j| j.phone.as_str()).collect::<Vec<_>>(), vec![phone(0)]);
        let page = store.jobs_page(run, None, 0, 10).await.unwrap();
        assert_eq!(page[1].state, JobState::Skipped, "already sent by the earlier run, not held back");
        assert_eq!(
            page[1].reason.as_ref().unwrap().to_string(),
            format!("already_sent: run {earlier}, job {}", sent[0].id)
        );
    }

    /// A claim's read is compiled once and kept, though the time bound into
    /// it changes at every claim: while a plan could depend on the values
    /// bound, SQLite compiled it afresh at each claim (in a callgrind profile
    /// of dispatch, a third of each claim's instructions).
    #[tokio::test]
    async fn a_claims_read_is_compiled_once_whatever_time_it_is_bound_to() {
        let (_tmp, ledger, run) = run_of(3).await;
        let mut conn = ledger.writer();
        for now in [T0 + 1, T0 + 2, T0 + 3] {
            let claimed = super::claim_due(&mut conn, run, now, 1, false, &ContactLimits::default()).unwrap();
            assert_eq!(claimed.len(), 1, "one job at {now}");
        }
        let stmt = conn.prepare_cached(super::claim_sql(false)).unwrap();
        assert_eq!(stmt.get_status(rusqlite::StatementStatus::Run), 3, "the claims' statement, kept");
        assert_eq!(stmt.get_status(rusqlite::StatementStatus::RePrepare), 0);
    }

    #[tokio::test]
    async fn a_runs_keys_are_stored_once_and_each_job_claims_its_parameters_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ledger.db");
        let store = Store::open_path(&path).await.unwrap();
        let run = new_run(&store, "c", "k", None).await;
        let with = |line: u64, phone_no: usize, parameters: serde_json::Value| match job(line, phone_no, None) {
            ImportRow::Job(spec) => {
                ImportRow::Job(JobSpec { parameters: Parameters::from_map(parameters.as_object().unwrap()), ..spec })
            }
            refused => refused,
        };
        let refused = |line: u64| ImportRow::Rejected(Rejection { line, raw_phone: "x".into(), reason: "bad".into() });
        let usual = |i: usize| serde_json::json!({"name": format!("Ada \"{i}\""), "n": i, "clinic": null});
        // A first batch with no job names no keys; the first job does.
        import(&store, run, vec![refused(2)], T0).await;
        import(&store, run, vec![with(3, 0, usual(0)), with(4, 1, serde_json::json!({"other": "x"}))], T0).await;
        import(&store, run, vec![with(5, 2, usual(2)), with(6, 3, serde_json::json!({}))], T0).await;
        let conn = rusqlite::Connection::open(&path).unwrap();
        // A job written before the run kept keys, its Parameters an object.
        conn.execute(
            "INSERT INTO jobs (run_id, phone, line, zone, parameters, due_at, created_at, updated_at) \
             VALUES (?1, ?2, 7, 'UTC', '{\"name\":\"Old\"}', ?3, ?3, ?3)",
            rusqlite::params![run, phone(4), T0],
        )
        .unwrap();
        let keys: String =
            conn.query_row("SELECT parameter_keys FROM runs WHERE id = ?1", [run], |r| r.get(0)).unwrap();
        assert_eq!(keys, r#"["clinic","n","name"]"#);
        let stored: Vec<String> = conn
            .prepare("SELECT parameters FROM jobs WHERE run_id = ?1 ORDER BY id")
            .unwrap()
            .query_map([run], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(
            stored,
            [r#"[null,0,"Ada \"0\""]"#, r#"{"other":"x"}"#, r#"[null,2,"Ada \"2\""]"#, "{}", r#"{"name":"Old"}"#]
        );
        let claimed = store.claim_due(run, T0 + 1, 10, false, ContactLimits::default()).await.unwrap();
        let sent: Vec<serde_json::Value> = claimed
            .iter()
            .map(|j| serde_json::from_str(&j.parameters.with_flowcast_key("c", run, j.id).unwrap()).unwrap())
            .collect();
        let expected = [
            usual(0),
            serde_json::json!({"other": "x"}),
            usual(2),
            serde_json::json!({}),
            serde_json::json!({"name": "Old"}),
        ];
        assert_eq!(sent.len(), expected.len());
        for ((sent, mut want), job) in sent.into_iter().zip(expected).zip(&claimed) {
            want["flowcast"] = serde_json::json!({"campaign": "c", "run": run, "job": job.id});
            assert_eq!(sent, want);
        }
    }

    /// A new ledger with a run of `jobs` contacts imported, opened as the
    /// SQLite ledger for direct calls.
    async fn run_of(jobs: usize) -> (tempfile::TempDir, super::super::Sqlite, i64) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ledger.db");
        let store = Store::open_path(&path).await.unwrap();
        let run = new_run(&store, "c", "k", None).await;
        import(&store, run, (0..jobs).map(|i| job(i as u64 + 2, i, None)).collect(), T0).await;
        (tmp, super::super::Sqlite::open(&path).unwrap(), run)
    }

    /// What SQLite compiled `sql` into: each opcode's name and its P2.
    fn opcodes(conn: &rusqlite::Connection, sql: &str) -> Vec<(String, i64)> {
        // Its parameters left unbound (NULL): EXPLAIN does not run it.
        let mut stmt = conn.prepare(&format!("EXPLAIN {sql}")).unwrap();
        let mut rows = stmt.raw_query();
        let mut ops = Vec::new();
        while let Some(r) = rows.next().unwrap() {
            ops.push((r.get::<_, String>(1).unwrap(), r.get::<_, i64>(3).unwrap()));
        }
        ops
    }

    /// Whether SQLite takes a statement compiled into `ops` as one that may
    /// abort half-way (it then copies every page the statement changes to a
    /// statement journal first): a trigger program, a function call, or a
    /// constraint check that aborts (`OE_Abort`, 2).
    fn may_abort(ops: &[(String, i64)]) -> Vec<&(String, i64)> {
        ops.iter()
            .filter(|(op, p2)| {
                matches!(op.as_str(), "Program" | "Function" | "PureFunc")
                    || (matches!(op.as_str(), "Halt" | "HaltIfNull") && *p2 == 2)
            })
            .collect()
    }

    /// The claim names no column an event trigger watches and nothing in it
    /// may abort, so SQLite keeps no statement journal for it, nor for the
    /// send (which changes one row in one pass as well) or an import's
    /// INSERT of many jobs. Events
    /// still follow the transitions they name, through each statement that
    /// makes one (each names `reason`, or `execution_status`): a job ending
    /// `failed` or `skipped` after its create, one skipped by the claim, an
    /// outcome settled.
    #[tokio::test]
    async fn a_claim_and_a_send_keep_no_statement_journal_and_events_still_follow_their_transitions() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ledger.db");
        let store = Store::open_path(&path).await.unwrap();
        let ledger = super::super::Sqlite::open(&path).unwrap();
        for k in [1, 64] {
            let conn = ledger.writer();
            let claim = opcodes(&conn, &super::claim_update(k));
            assert!(claim.iter().any(|(op, _)| op == "HaltIfNull"), "the NOT NULL checks are there: {claim:?}");
            assert_eq!(may_abort(&claim), Vec::<&(String, i64)>::new(), "claim of {k}");
        }
        // The send writes one row in one pass, nothing in it may abort
        // either (no index on an expression: the SID's key is a table of its
        // own). Many jobs through one UPDATE … FROM, the form it replaced,
        // go through a temporary table first: a multi-row write.
        let send = opcodes(&ledger.writer(), super::SENT_UPDATE);
        assert_eq!(may_abort(&send), Vec::<&(String, i64)>::new(), "{send:?}");
        // Nor may an import's multi-row INSERT of jobs abort.
        let insert = opcodes(&ledger.writer(), super::insert_jobs_sql(64));
        assert_eq!(may_abort(&insert), Vec::<&(String, i64)>::new());
        let through_a_table = |ops: &[(String, i64)]| ops.iter().any(|(op, _)| op == "OpenEphemeral");
        assert!(!through_a_table(&send), "{send:?}");
        let many = "UPDATE OR FAIL jobs SET state = 'sent', execution_sid = v.column2 \
                    FROM (VALUES (?1, ?2), (?3, ?4)) AS v WHERE jobs.id = v.column1 AND jobs.state = 'dispatching'";
        assert!(through_a_table(&opcodes(&ledger.writer(), many)));
        // Three jobs of one run; a later run of the campaign has a job whose
        // dedupe key the first job takes.
        let run = new_run(&store, "c", "k", Some(1)).await;
        let keys = ["A1", "B1", "C1"];
        import(&store, run, (0..3).map(|i| job(i as u64 + 2, i, Some(keys[i]))).collect(), T0).await;
        let later = new_run(&store, "c", "k2", Some(1)).await;
        import(&store, later, vec![job(2, 3, Some("A1"))], T0).await;
        ledger
            .writer()
            .execute(
                "UPDATE runs SET notify_url = 'http://127.0.0.1:9/hook', \
                     notify_events = ',job.failed,job.skipped,outcome,'",
                [],
            )
            .unwrap();
        let events = || -> Vec<(String, i64)> {
            ledger
                .reader()
                .prepare("SELECT event_type, job_id FROM outbox ORDER BY id")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(|r| r.unwrap())
                .collect()
        };
        let claimed = store.claim_due(run, T0 + 1, 10, false, ContactLimits::default()).await.unwrap();
        let [sent, failed, skipped] = [claimed[0].id, claimed[1].id, claimed[2].id];
        assert_eq!(events(), [], "a claim writes no event");
        let reason = || JobReason::new(ReasonKind::Transient);
        let settled = [
            (sent, JobOutcome::Sent { sid: format!("FN{:032}", 1) }),
            (failed, JobOutcome::Failed { reason: reason(), last_error: None }),
            (skipped, JobOutcome::Skipped { reason: reason(), sid: None }),
        ]
        .map(|(job_id, outcome)| SettledJob { job_id, outcome, attempts_sent: 1, at: T0 + 2 });
        store.record_outcomes(settled.to_vec(), Vec::new(), Duration::ZERO).await.unwrap();
        let ended = [("job.failed".to_string(), failed), ("job.skipped".to_string(), skipped)];
        assert_eq!(events(), ended, "a send writes no event; a job that ends failed or skipped does");
        // A job the claim skips (its key already sent) writes its event too.
        assert!(store.claim_due(later, T0 + 3, 10, false, ContactLimits::default()).await.unwrap().is_empty());
        let duplicate = store.jobs_page(later, None, 0, 10).await.unwrap()[0].id;
        assert_eq!(events()[2..], [("job.skipped".to_string(), duplicate)]);
        let collected = crate::domain::CollectedOutcome {
            status: "ended".into(),
            ended_in: None,
            values: Default::default(),
            notes: Default::default(),
        };
        assert!(store.record_collected(sent, crate::domain::OutcomeState::Known, collected, T0 + 3).await.unwrap());
        assert_eq!(events()[3..], [("outcome".to_string(), sent)], "and a settled outcome does");
    }

    /// Rows of the batch [`importing`] writes.
    const ROWS: usize = 8_000;

    /// A batch of [`ROWS`] jobs being imported into a new run on a thread of
    /// its own, once it holds the ledger's writer.
    struct Importing {
        _tmp: tempfile::TempDir,
        ledger: std::sync::Arc<super::super::Sqlite>,
        run: i64,
        /// The batch's last CSV line.
        last: u64,
        thread: std::thread::JoinHandle<BatchCounts>,
    }

    async fn importing() -> Importing {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ledger.db");
        let store = Store::open_path(&path).await.unwrap();
        let run = new_run(&store, "c", "k", None).await;
        let ledger = std::sync::Arc::new(super::super::Sqlite::open(&path).unwrap());
        // Lines 2.. (the header is line 1), one past the last row for a
        // batch that ends on a blank line.
        let rows: Vec<ImportRow> = (0..ROWS).map(|i| job(i as u64 + 2, i, None)).collect();
        let last = ROWS as u64 + 2;
        let thread = {
            let ledger = std::sync::Arc::clone(&ledger);
            std::thread::spawn(move || super::import_batch(&ledger, run, &rows, last, T0, T0).unwrap())
        };
        // It cannot end first: 8,000 rows take 125 slices.
        while !ledger.writer.is_locked() && !thread.is_finished() {
            std::thread::yield_now();
        }
        Importing { _tmp: tmp, ledger, run, last, thread }
    }

    /// The run's imported count and last line, and its jobs.
    fn progress(conn: &rusqlite::Connection, run: i64) -> (i64, i64, i64) {
        conn.query_row(
            "SELECT imported, import_line, (SELECT COUNT(*) FROM jobs WHERE run_id = ?1) FROM runs WHERE id = ?1",
            [run],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
    }

    /// A claim or an outcome that waits for the ledger while an import batch
    /// is written goes between two of the batch's slices: it finds part of
    /// the batch committed, with the run's counts and last CSV line for that
    /// part, and the batch still ends whole, each row once.
    #[tokio::test]
    async fn a_write_waiting_for_the_ledger_goes_between_an_imports_slices() {
        let i = importing().await;
        let (imported, line, jobs) = progress(&i.ledger.writer(), i.run);
        assert!(0 < imported && imported < ROWS as i64, "part of the batch was committed first: {imported}");
        assert_eq!(imported % super::SLICE_ROWS as i64, 0, "whole slices");
        assert_eq!((line, jobs), (imported + 1, imported), "the counts and last line of what was committed");
        assert_eq!(i.thread.join().unwrap(), counts(ROWS as i64, 0, 0));
        assert_eq!(progress(&i.ledger.reader(), i.run), (ROWS as i64, i.last as i64, ROWS as i64));
    }

    /// An import alone on the ledger writes large batches; once a batch of
    /// it handed the writer to another write, small ones, for a second.
    #[tokio::test]
    async fn an_import_writes_small_batches_while_other_writes_share_the_ledger() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ledger.db");
        let store = Store::open_path(&path).await.unwrap();
        let run = new_run(&store, "c", "k", None).await;
        import(&store, run, (0..200).map(|i| job(i as u64 + 2, i, None)).collect(), T0).await;
        assert!(!store.import_in_small_batches(), "alone, nothing handed over");

        let i = importing().await;
        assert!(!i.ledger.shared_lately());
        drop(i.ledger.writer());
        i.thread.join().unwrap();
        let at = i.ledger.handed_over_at.load(std::sync::atomic::Ordering::Relaxed);
        assert!(at > 0, "the batch handed the writer over");
        assert!(i.ledger.shared_at(at + super::super::SHARED_FOR_MS - 1));
        assert!(!i.ledger.shared_at(at + super::super::SHARED_FOR_MS), "a second later, alone again");
    }

    /// The log's pages and how many of them are copied into the file, once
    /// the ledger's writer has written about `pages` pages of filler to it
    /// in one transaction (below its own checkpoint) and `rows` new jobs in
    /// one import batch, with the checkpointer's thread held all along.
    async fn log_after_import(pages: usize, rows: usize) -> (i64, i64) {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ledger.db");
        // The store, and its own checkpointer, closed before the ledger is
        // opened again alone.
        let run = new_run(&Store::open_path(&path).await.unwrap(), "c", "k", None).await;
        let ledger = super::super::Sqlite::open(&path).unwrap();
        let _thread = ledger.checkpointer.hold();
        ledger.writer().execute_batch("CREATE TABLE filler (b BLOB)").unwrap();
        {
            let mut conn = ledger.writer();
            let tx = super::super::write_transaction(&mut conn).unwrap();
            for _ in 0..pages {
                tx.execute("INSERT INTO filler (b) VALUES (zeroblob(4000))", []).unwrap();
            }
            tx.commit().unwrap();
        }
        let before = super::super::checkpointer::log_state(&ledger.reader(), "NOOP").unwrap();
        assert!(before.copied == 0 && before.pages < super::super::checkpointer::WRITER_PAGES, "{before:?}");
        let items: Vec<ImportRow> = (0..rows).map(|i| job(i as u64 + 2, i, None)).collect();
        super::import_batch(&ledger, run, &items, rows as u64 + 1, T0, T0).unwrap();
        let auto: i64 = ledger.writer().query_row("PRAGMA wal_autocheckpoint", [], |r| r.get(0)).unwrap();
        assert_eq!(auto, super::super::checkpointer::WRITER_PAGES, "the writer's own checkpoint is back");
        let after = super::super::checkpointer::log_state(&ledger.reader(), "NOOP").unwrap();
        let large = ledger.checkpointer.large_commits();
        assert_eq!(large, u64::from(rows > super::LONE_COMMIT_ROWS), "large commits told to the thread");
        (after.pages, after.copied)
    }

    /// The commit of a large import batch written alone takes the log past
    /// the writer's own checkpoint and leaves the copy to the checkpointer's
    /// thread; a batch of the size written beside other writes does not.
    #[tokio::test]
    async fn a_large_import_batch_leaves_the_logs_copy_to_the_checkpointer() {
        let limit = super::super::checkpointer::WRITER_PAGES;
        let (pages, copied) = log_after_import(limit as usize - 40, super::LONE_COMMIT_ROWS + 1).await;
        assert!(pages > limit && copied == 0, "the writer copied the log: {pages} pages, {copied} copied");
        let (pages, copied) = log_after_import(limit as usize - 40, 2_000).await;
        assert!(pages > limit && copied == pages, "the writer left the log: {pages} pages, {copied} copied");
    }

    /// A batch for a run cancelled before it (while the import read the
    /// batch's rows) writes none of them.
    #[tokio::test]
    async fn a_batch_for_a_run_cancelled_before_it_writes_nothing() {
        let (_tmp, ledger, run) = run_of(1).await;
        {
            let mut conn = ledger.writer();
            let cancel = RunState::Cancelled;
            assert!(super::super::runs::set_run_state(&mut conn, run, RunState::Expanding, cancel, None, T0).unwrap());
        }
        let rows: Vec<ImportRow> = (1..100).map(|i| job(i as u64 + 2, i, None)).collect();
        assert_eq!(super::import_batch(&ledger, run, &rows, 101, T0, T0).unwrap(), counts(0, 0, 0));
        assert_eq!(progress(&ledger.reader(), run), (1, 2, 1), "the one job from before, no more");
    }

    /// A cancel that goes between an import batch's slices ends the batch:
    /// the jobs committed before it are cancelled with the run, and no job
    /// lands pending in the cancelled run after it.
    #[tokio::test]
    async fn a_cancel_between_an_imports_slices_ends_the_batch() {
        let i = importing().await;
        let imported = {
            let mut conn = i.ledger.writer();
            let (imported, ..) = progress(&conn, i.run);
            let cancel = RunState::Cancelled;
            assert!(
                super::super::runs::set_run_state(&mut conn, i.run, RunState::Expanding, cancel, None, T0).unwrap()
            );
            imported
        };
        assert!(0 < imported && imported < ROWS as i64, "part of the batch was committed first: {imported}");
        assert_eq!(i.thread.join().unwrap(), counts(imported, 0, 0), "nothing written after the cancel");
        let states: Vec<(String, i64)> = i
            .ledger
            .reader()
            .prepare("SELECT state, COUNT(*) FROM jobs WHERE run_id = ?1 GROUP BY state")
            .unwrap()
            .query_map([i.run], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(states, vec![("cancelled".to_string(), imported)]);
    }

    /// A page of every state is the run's jobs in id order from `after` on,
    /// whatever state each is in (the per-state ranges merged); a page of one
    /// state holds that state's jobs alone, in id order.
    #[tokio::test]
    async fn pages_of_a_runs_jobs_follow_id_order_across_states() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open_path(&tmp.path().join("ledger.db")).await.unwrap();
        let run = new_run(&store, "c", "k", None).await;
        import(&store, run, (0..40).map(|i| job(i as u64 + 2, i, None)).collect(), T0).await;
        let claimed = store.claim_due(run, T0 + 1, 30, false, ContactLimits::default()).await.unwrap();
        // Of the 30 claimed, in turn: sent, expired, cancelled, failed,
        // skipped, back to pending, left in flight; the other 10 stay pending.
        let reason = || JobReason::new(ReasonKind::Transient);
        let settled: Vec<SettledJob> = claimed
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 7 != 6)
            .map(|(i, j)| {
                let outcome = match i % 7 {
                    0 => JobOutcome::Sent { sid: format!("FN{i:032}") },
                    1 => JobOutcome::Expired,
                    2 => JobOutcome::Cancelled,
                    3 => JobOutcome::Failed { reason: reason(), last_error: None },
                    4 => JobOutcome::Skipped { reason: reason(), sid: None },
                    _ => JobOutcome::Release,
                };
                SettledJob { job_id: j.id, outcome, attempts_sent: 1, at: T0 + 2 }
            })
            .collect();
        store.record_outcomes(settled, Vec::new(), Duration::ZERO).await.unwrap();
        let all = store.jobs_page(run, None, 0, 100).await.unwrap();
        let ids: Vec<i64> = all.iter().map(|j| j.id).collect();
        assert_eq!(ids.len(), 40);
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        let mut states: Vec<&str> = all.iter().map(|j| j.state.as_str()).collect();
        states.sort();
        states.dedup();
        assert_eq!(states, ["cancelled", "dispatching", "expired", "failed", "pending", "sent", "skipped"]);
        let pages = |state: Option<JobState>, size: u32| {
            let store = &store;
            async move {
                let (mut ids, mut after) = (Vec::new(), 0);
                loop {
                    let page = store.jobs_page(run, state, after, size).await.unwrap();
                    let Some(last) = page.last() else { return ids };
                    assert!(page.len() <= size as usize);
                    assert!(state.is_none_or(|s| page.iter().all(|j| j.state == s)));
                    after = last.id;
                    ids.extend(page.iter().map(|j| j.id));
                }
            }
        };
        assert_eq!(pages(None, 7).await, ids, "7 at a time");
        for &state in JobState::ALL {
            let expected: Vec<i64> = all.iter().filter(|j| j.state == state).map(|j| j.id).collect();
            assert_eq!(pages(Some(state), 3).await, expected, "{state:?}");
        }
    }

    #[tokio::test]
    async fn of_two_outcomes_for_one_job_in_a_batch_the_first_is_recorded() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open_path(&tmp.path().join("ledger.db")).await.unwrap();
        let run = new_run(&store, "c", "k", None).await;
        import(&store, run, vec![job(2, 0, None), job(3, 1, None)], T0).await;
        let claimed = store.claim_due(run, T0 + 1, 10, false, ContactLimits::default()).await.unwrap();
        let settled = |id: i64, outcome: JobOutcome| SettledJob { job_id: id, outcome, attempts_sent: 1, at: T0 + 2 };
        let sent = |sid: &str| JobOutcome::Sent { sid: sid.into() };
        let batch = vec![
            settled(claimed[0].id, JobOutcome::Expired),
            settled(claimed[0].id, sent("FN0")),
            settled(claimed[1].id, sent("FN1")),
        ];
        assert_eq!(store.record_outcomes(batch, Vec::new(), Duration::ZERO).await.unwrap(), 2);
        let page = store.jobs_page(run, None, 0, 10).await.unwrap();
        assert_eq!((page[0].state, page[0].execution_sid.as_deref()), (JobState::Expired, None));
        assert_eq!((page[1].state, page[1].execution_sid.as_deref()), (JobState::Sent, Some("FN1")));
    }

    #[tokio::test]
    async fn claims_and_outcomes_of_more_jobs_than_one_statement_holds_each_apply_once_to_their_own_job() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ledger.db");
        let store = Store::open_path(&path).await.unwrap();
        let run = new_run(&store, "c", "k", None).await;
        // 101 jobs: statements of 64, 32, 4 and 1 rows.
        import(&store, run, (0..101).map(|i| job(i as u64 + 2, i, None)).collect(), T0).await;
        let limits = ContactLimits::default();
        let claimed = store.claim_due(run, T0 + 1, 500, false, limits).await.unwrap();
        let phones: Vec<String> = claimed.iter().map(|j| j.phone.as_str().to_string()).collect();
        assert_eq!(phones, (0..101).map(phone).collect::<Vec<_>>(), "every job, in due order");
        assert!(claimed.iter().all(|j| j.attempt_started_at == T0 + 1 && j.attempts == 0));
        assert!(store.claim_due(run, T0 + 1, 500, false, limits).await.unwrap().is_empty(), "each job once");

        // Job 50 is taken out of `dispatching` behind the dispatcher's back.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute("UPDATE jobs SET state = 'cancelled' WHERE id = ?1", [claimed[50].id]).unwrap();
        let sid = |i: usize| format!("FN{i:032}");
        let settled: Vec<SettledJob> = claimed
            .iter()
            .enumerate()
            .map(|(i, j)| SettledJob {
                job_id: j.id,
                outcome: if i == 100 { JobOutcome::Expired } else { JobOutcome::Sent { sid: sid(i) } },
                attempts_sent: 1,
                at: T0 + 2 + i as i64,
            })
            .collect();
        let calls: Vec<StudioCall> = claimed
            .iter()
            .enumerate()
            .map(|(i, j)| StudioCall {
                run_id: Some(run),
                job_id: Some(j.id),
                at: T0 + 2,
                operation: "create",
                request: format!("To={}", j.phone.as_str()),
                http_status: None,
                response: Some(sid(i)),
                outcome: "ok".into(),
                execution_sid: Some(sid(i)),
                note: Some(format!("call {i}")),
            })
            .collect();
        assert_eq!(store.record_outcomes(settled, calls, Duration::from_secs(60)).await.unwrap(), 100);

        let page = store.jobs_page(run, None, 0, 500).await.unwrap();
        for (i, job) in page.iter().enumerate() {
            let expected = match i {
                50 => (JobState::Cancelled, None, None, 0),
                100 => (JobState::Expired, None, None, 1),
                _ => (JobState::Sent, Some(sid(i)), Some(T0 + 2 + i as i64), 1),
            };
            assert_eq!((job.state, job.execution_sid.clone(), job.sent_at, job.attempts), expected, "job {i}");
            let calls = store.calls_for_job(job.id).await.unwrap();
            assert_eq!(calls.len(), 1, "job {i}");
            assert_eq!(
                (calls[0].execution_sid.clone(), calls[0].note.clone()),
                (Some(sid(i)), Some(format!("call {i}")))
            );
        }
        let due: Option<i64> =
            conn.query_row("SELECT outcome_due_at FROM jobs WHERE id = ?1", [page[7].id], |r| r.get(0)).unwrap();
        assert_eq!(due, Some(T0 + 9 + 60_000), "read back a minute after its send");
    }

    #[tokio::test]
    async fn each_batch_checks_suppressions_dedupe_keys_and_duplicates_as_they_stand() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_path(&dir.path().join("ledger.db")).await.unwrap();

        // Run a of campaign "orders" sends key K0 (job 1) at T0.
        let a = new_run(&store, "orders", "a", Some(30)).await;
        let rejected =
            ImportRow::Rejected(Rejection { line: 4, raw_phone: "555".into(), reason: "not a phone number".into() });
        let rows = vec![job(2, 0, Some("K0")), job(3, 1, Some("K1")), rejected];
        assert_eq!(import(&store, a, rows, T0).await, counts(2, 1, 0));
        let claimed = store.claim_due(a, T0, 1, false, ContactLimits::default()).await.unwrap();
        assert_eq!(claimed.len(), 1);
        let sent = SettledJob {
            job_id: claimed[0].id,
            outcome: JobOutcome::Sent { sid: "FN00000000000000000000000000000001".into() },
            attempts_sent: 1,
            at: T0,
        };
        assert_eq!(store.record_outcomes(vec![sent], Vec::new(), Duration::from_secs(60)).await.unwrap(), 1);
        let ran = claimed[0].run_id;
        let already_sent = format!("already_sent: run {ran}, job {}", claimed[0].id);

        // Run b of the same campaign, a day later. Its first batch meets an
        // empty suppression list.
        let b = new_run(&store, "orders", "b", Some(30)).await;
        let (t1, t2) = (T0 + DAY, T0 + DAY + 1_000);
        let rows = vec![job(2, 2, Some("K0")), job(3, 1, Some("K1")), job(4, 8, None)];
        assert_eq!(import(&store, b, rows, t1).await, counts(3, 0, 0));

        // Suppressions added while b imports apply to its next batch.
        suppress(&store, 3, Scope::All, Some("asked")).await;
        suppress(&store, 4, Scope::Kind(CampaignKind::Reminder), None).await;
        suppress(&store, 5, Scope::Campaign("other".into()), None).await;
        // Two entries cover phone 6: the first one added is the one named.
        suppress(&store, 6, Scope::Channel(Channel::Sms), Some("by letter")).await;
        suppress(&store, 6, Scope::All, Some("later")).await;
        let rows = vec![
            // Suppressed and its key already sent: the suppression is named.
            job(5, 3, Some("K0")),
            job(6, 4, None),
            job(7, 5, None),
            job(8, 6, None),
            // In the run since the first batch.
            job(9, 2, Some("K5")),
            job(10, 7, Some("K9")),
            // Twice in this batch: the first row is kept.
            job(11, 7, None),
            job(12, 9, Some("K0")),
        ];
        assert_eq!(import(&store, b, rows, t2).await, counts(6, 0, 2));
        assert_eq!(
            jobs(&store, b).await,
            [
                skipped(2, &already_sent, t1),
                pending(1),
                pending(8),
                skipped(3, "suppressed: scope all, asked", t2),
                skipped(4, "suppressed: scope reminder", t2),
                pending(5),
                skipped(6, "suppressed: scope sms, by letter", t2),
                pending(7),
                skipped(9, &already_sent, t2),
            ]
        );
        let refused = refused_rows(&store, b).await;
        assert_eq!(refused, [duplicate(9, 2), duplicate(11, 7)]);
        let run = store.get_run(b).await.unwrap();
        assert_eq!((run.rows_total, run.imported, run.rejected, run.duplicates), (11, 9, 0, 2));

        // Another campaign: only its own scope and its own sends count.
        let c = new_run(&store, "other", "c", Some(30)).await;
        assert_eq!(import(&store, c, vec![job(2, 5, None), job(3, 10, Some("K0"))], t1).await, counts(2, 0, 0));
        assert_eq!(jobs(&store, c).await, [skipped(5, "suppressed: scope other", t1), pending(10)]);

        // The same campaign, with a window the send at T0 is outside of.
        let d = new_run(&store, "orders", "d", Some(1)).await;
        assert_eq!(import(&store, d, vec![job(2, 11, Some("K0"))], T0 + 2 * DAY).await, counts(1, 0, 0));
        assert_eq!(jobs(&store, d).await, [pending(11)]);

        // Without a dedupe rule a key is never checked.
        let e = new_run(&store, "orders", "e", None).await;
        assert_eq!(import(&store, e, vec![job(2, 12, Some("K0"))], t1).await, counts(1, 0, 0));
        assert_eq!(jobs(&store, e).await, [pending(12)]);
    }

    /// Two outcomes of one job in a batch go one at a time: the first one
    /// finds the job `dispatching` and is the one recorded; the second, the
    /// same `Sent` again, is not counted (nor its job changed).
    #[tokio::test]
    async fn a_second_outcome_of_one_job_in_a_batch_is_not_counted_as_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_path(&dir.path().join("ledger.db")).await.unwrap();
        let run = new_run(&store, "c", "k", None).await;
        import(&store, run, vec![job(2, 0, None), job(3, 1, None)], T0).await;
        let claimed = store.claim_due(run, T0 + 1, 10, false, ContactLimits::default()).await.unwrap();
        assert_eq!(claimed.len(), 2);
        let sent = |job: i64, sid: &str| SettledJob {
            job_id: job,
            outcome: JobOutcome::Sent { sid: sid.to_string() },
            attempts_sent: 1,
            at: T0 + 2,
        };
        let sid = "FN00000000000000000000000000000001";
        let twice = vec![
            sent(claimed[0].id, sid),
            sent(claimed[0].id, sid),
            sent(claimed[1].id, "FN00000000000000000000000000000002"),
        ];
        assert_eq!(store.record_outcomes(twice, Vec::new(), Duration::from_secs(60)).await.unwrap(), 2);
        let page = store.jobs_page(run, None, 0, 10).await.unwrap();
        assert_eq!(
            page.iter().map(|j| (j.state, j.attempts)).collect::<Vec<_>>(),
            [(JobState::Sent, 1), (JobState::Sent, 1)]
        );
    }

    /// A batch is written many jobs to a statement: the jobs keep file order
    /// (ids, lines, each one's own verdict), a phone repeated in a later
    /// statement of the batch or in the same one is a duplicate, and the
    /// refused rows are recorded as the file has them.
    #[tokio::test]
    async fn a_large_batch_keeps_file_order_and_finds_every_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_path(&dir.path().join("ledger.db")).await.unwrap();
        let run = new_run(&store, "orders", "a", None).await;
        suppress(&store, 99, Scope::All, None).await;
        suppress(&store, 130, Scope::All, Some("asked")).await;
        let mut rows = Vec::new();
        let mut expected = Vec::new();
        let mut refused = Vec::new();
        for i in 0..200usize {
            let line = i as u64 + 2;
            let phone_no = match i {
                // Already in the first statement's jobs; then twice in a row.
                120 => 5,
                121 => 122,
                _ => i,
            };
            if i % 10 == 7 {
                rows.push(ImportRow::Rejected(Rejection {
                    line,
                    raw_phone: format!("bad {i}"),
                    reason: "not a phone number".into(),
                }));
                refused.push((line as i64, format!("bad {i}"), RowOutcome::Rejected, "not a phone number".to_string()));
            } else if i == 120 || i == 122 {
                rows.push(job(line, phone_no, None));
                refused.push(duplicate(line as i64, phone_no));
            } else {
                rows.push(job(line, phone_no, None));
                expected.push(match phone_no {
                    99 => skipped(99, "suppressed: scope all", T0),
                    130 => skipped(130, "suppressed: scope all, asked", T0),
                    n => pending(n),
                });
            }
        }
        assert_eq!(import(&store, run, rows, T0).await, counts(178, 20, 2));
        // Once more in a second batch, and a new phone.
        assert_eq!(import(&store, run, vec![job(202, 0, None), job(203, 200, None)], T0).await, counts(1, 0, 1));
        expected.push(pending(200));
        refused.push(duplicate(202, 0));

        assert_eq!(jobs(&store, run).await, expected);
        let page = store.jobs_page(run, None, 0, 500).await.unwrap();
        assert!(page.windows(2).all(|w| w[0].line < w[1].line), "ids follow the file's lines");
        let recorded = refused_rows(&store, run).await;
        assert_eq!(recorded, refused);
    }
}
