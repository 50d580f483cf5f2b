//! PostgreSQL twin of `sqlite/jobs.rs`: jobs imported in batched
//! transactions, claimed by due time, outcomes guarded by id and state, and
//! the audit record of Studio calls.
//!
//! What differs from SQLite, where several instances share the ledger:
//! - a claim takes its rows with `FOR UPDATE SKIP LOCKED`, so two instances
//!   never claim the same job and never wait on each other for one; it writes
//!   this instance as the job's lease owner, for [`LEASE_MS`];
//! - the per-contact caps and dedupe checks, which SQLite serialises with its
//!   one writer, hold a transaction-scoped advisory lock ([`CLAIM_LOCK`]) from
//!   before the checks until the claims commit;
//! - an outcome applies only to a job still leased to this instance (or to
//!   none), and clears the lease;
//! - [`recover_dispatching`] takes back only jobs whose lease ran out.

use std::borrow::{Borrow, Cow};
use std::collections::{BTreeMap, HashMap, HashSet};

use deadpool_postgres::Transaction;
use tokio_postgres::Row;

use super::{LEASE_MS, Pg, parsed};
use crate::domain::{
    CollectedOutcome, ContactLimits, ImportRow, JobOutcome, JobReason, JobState, OutcomeState, Parameters, Phone,
    RowOutcome,
};
use crate::store::claim_checks::{Candidate, Contacts, Earlier, Verdict, caps_verdict, dedupe_verdict};
use crate::store::{
    BatchCounts, CallSummary, ClaimedJob, JobRow, OutcomeJob, RefusedRow, Result, SettledJob, StoreError, StudioCall,
};

const JOB_COLUMNS: &str = "id, run_id, line, phone, state, reason, execution_sid, attempts, due_at, expires_at, \
     sent_at, finished_at, last_error, execution_ended_at, ended_reason, outcome_state, execution_status, ended_in, \
     outcome, outcome_notes";

/// The columns a claim returns, in [`claimed_from_row`]'s order.
const CLAIMED_COLUMNS: &str = "id, run_id, phone, zone, parameters, attempts, failures, throttles, expires_at, \
     attempt_started_at, ambiguous_since, conflict_sid, conflict_since";

/// The advisory lock (one per ledger schema: test ledgers in other schemas
/// of one database do not wait on each other) that serialises the claims
/// checking per-contact caps or dedupe keys across instances, as SQLite's
/// single writer does. Held from before the checks until the claims commit.
const CLAIM_LOCK: &str = "SELECT pg_advisory_xact_lock(hashtext('flowcast claim checks ' || current_schema()))";

fn corrupt(idx: usize, message: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("column {idx}: {message}"))
}

/// A JSON object column (`NULL` reads as empty).
fn object(r: &Row, idx: usize) -> Result<serde_json::Map<String, serde_json::Value>> {
    let text: Option<String> = r.try_get(idx)?;
    match text {
        None => Ok(serde_json::Map::new()),
        Some(text) => serde_json::from_str(&text).map_err(|e| corrupt(idx, e)),
    }
}

fn job_from_row(r: &Row) -> Result<JobRow> {
    let reason: Option<String> = r.try_get(5)?;
    let outcome_state: Option<String> = r.try_get(15)?;
    Ok(JobRow {
        id: r.try_get(0)?,
        run_id: r.try_get(1)?,
        line: r.try_get(2)?,
        phone: Phone::from_e164(r.try_get(3)?),
        state: parsed(r, 4)?,
        reason: reason.map(|t| JobReason::parse(&t).map_err(|e| corrupt(5, e))).transpose()?,
        execution_sid: r.try_get(6)?,
        attempts: r.try_get(7)?,
        due_at: r.try_get(8)?,
        expires_at: r.try_get(9)?,
        sent_at: r.try_get(10)?,
        finished_at: r.try_get(11)?,
        last_error: r.try_get(12)?,
        execution_ended_at: r.try_get(13)?,
        ended_reason: r.try_get(14)?,
        outcome_state: outcome_state.map(|t| t.parse::<OutcomeState>().map_err(|e| corrupt(15, e))).transpose()?,
        execution_status: r.try_get(16)?,
        ended_in: r.try_get(17)?,
        outcome: object(r, 18)?,
        outcome_notes: object(r, 19)?,
    })
}

/// A claimed job from [`CLAIMED_COLUMNS`], starting at column `base`.
fn claimed_from_row(r: &Row, base: usize) -> Result<ClaimedJob> {
    let zone: String = r.try_get(base + 3)?;
    Ok(ClaimedJob {
        id: r.try_get(base)?,
        run_id: r.try_get(base + 1)?,
        phone: Phone::from_e164(r.try_get(base + 2)?),
        // The zone was a valid IANA name when the job was imported; a name a
        // newer tz database dropped falls back to UTC.
        zone: zone.parse().unwrap_or(chrono_tz::UTC),
        // This ledger keeps each job's Parameters whole.
        parameters: Parameters::from_ledger(r.try_get(base + 4)?, None),
        attempts: r.try_get(base + 5)?,
        failures: r.try_get(base + 6)?,
        throttles: r.try_get(base + 7)?,
        expires_at: r.try_get(base + 8)?,
        attempt_started_at: r.try_get(base + 9)?,
        ambiguous_since: r.try_get(base + 10)?,
        conflict_sid: r.try_get(base + 11)?,
        conflict_since: r.try_get(base + 12)?,
    })
}

/// Parts an import batch is written in, side by side (see [`import_batch`]):
/// one server backend each.
pub(crate) const IMPORT_PARTS: usize = 2;

/// Rows from which a batch is written in parts. A smaller one (a small CSV,
/// the end of a large one) is one transaction, its jobs numbered in file
/// order: below a thousand rows a batch is over in milliseconds, and a
/// second connection and commit would be most of its cost.
const PARTS_FROM: usize = 1_000;

/// Writes a batch of imported rows. A phone already in the run is a
/// duplicate: the first row stays, this one is recorded as such.
///
/// The rows are split into [`IMPORT_PARTS`] parts by phone text
/// ([`crate::domain::part_of`]), and the parts are written side by side,
/// each in one transaction on a connection of its own: the server's work
/// for a row (the jobs' index entries, the `ON CONFLICT` probe) is what
/// bounds an import, and one backend does it on one core. A job's rows (a
/// number and its duplicates) are all in one part, in file order, so the
/// first row of a phone is still the one kept. Each part's transaction
/// updates the run's counts with its own rows and records the last CSV line
/// it covers for that part (a part may commit while the other fails; see
/// `runs::import_resume` for how an import resumes then). Each part's jobs
/// are numbered in file order; the two parts' numbers interleave as their
/// rows go in. (Numbers taken in file order beforehand and given to the
/// parts were tried: the two parts then wrote between each other's entries
/// on the same index pages, and the server spent more than the second
/// backend won back.)
///
/// Both connections are taken before either part begins; with no second
/// one to be had at once (every connection of the pool in use), the batch
/// is one transaction, so a connection that never comes cannot leave half
/// a batch written.
pub(crate) async fn import_batch(
    pg: &Pg,
    run_id: i64,
    items: &[ImportRow],
    last_line: u64,
    default_due: i64,
    now: i64,
) -> Result<BatchCounts> {
    let mut first = pg.client().await?;
    let second = if items.len() >= PARTS_FROM { pg.spare_client().await } else { None };
    let Some(second) = second else {
        let tx = first.transaction().await?;
        let counts = insert_batch(&tx, run_id, items, None, last_line, default_due, now).await?;
        tx.commit().await?;
        return Ok(counts);
    };
    let mut parts: Vec<Vec<&ImportRow>> = vec![Vec::new(); IMPORT_PARTS];
    for item in items {
        parts[item.part(IMPORT_PARTS)].push(item);
    }
    // Every part is written, an empty one too: it covers the batch's lines.
    let writes = parts.iter().zip([first, second]).enumerate().map(|(index, (rows, mut client))| async move {
        let tx = client.transaction().await?;
        let part = Some(Part { index, of: IMPORT_PARTS });
        let counts = insert_batch(&tx, run_id, rows, part, last_line, default_due, now).await?;
        tx.commit().await?;
        Ok::<_, StoreError>(counts)
    });
    // Each part runs to its end, even when another fails: what it wrote
    // commits, and is not read again on resume.
    let mut counts = BatchCounts::default();
    for part in futures_util::future::join_all(writes).await {
        counts += part?;
    }
    Ok(counts)
}

/// Which part of an import batch a transaction writes (see [`import_batch`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Part {
    pub index: usize,
    pub of: usize,
}

/// [`import_batch`]'s writes, inside the caller's transaction (a run created
/// with its rows, a pushed contact: `part` None, the whole of the rows).
///
/// The jobs go in with one multi-row `INSERT … SELECT FROM UNNEST`, the
/// refused and duplicate rows with another. Within the batch the first row
/// with a phone is kept, as SQLite's row-by-row inserts keep it.
pub(crate) async fn insert_batch<R: Borrow<ImportRow>>(
    tx: &Transaction<'_>,
    run_id: i64,
    items: &[R],
    part: Option<Part>,
    last_line: u64,
    default_due: i64,
    now: i64,
) -> Result<BatchCounts> {
    let mut counts = BatchCounts::default();
    let run = tx
        .query_opt("SELECT campaign, kind, channel, dedupe_within_ms FROM runs WHERE id = $1", &[&run_id])
        .await?
        .ok_or(StoreError::RunNotFound(run_id))?;
    let (campaign, kind, channel, dedupe_within): (String, String, String, Option<i64>) =
        (run.try_get(0)?, run.try_get(1)?, run.try_get(2)?, run.try_get(3)?);
    // With a dedupe rule, a key the campaign sent since then matches.
    let dedupe_since = dedupe_within.map(|w| now.saturating_sub(w));

    // The jobs to insert (the first row of each phone in this batch), in order.
    let mut phones: Vec<&str> = Vec::new();
    let mut lines: Vec<i64> = Vec::new();
    let mut zones: Vec<&str> = Vec::new();
    let mut parameters: Vec<Cow<str>> = Vec::new();
    let mut dues: Vec<i64> = Vec::new();
    let mut expiries: Vec<Option<i64>> = Vec::new();
    let mut keys: Vec<Option<&str>> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for item in items {
        if let ImportRow::Job(spec) = item.borrow()
            && seen.insert(spec.phone.as_str())
        {
            phones.push(spec.phone.as_str());
            lines.push(spec.line as i64);
            zones.push(spec.zone.name());
            parameters.push(spec.parameters.to_object()?);
            dues.push(spec.due_at.map_or(default_due, |t| t.timestamp_millis()));
            expiries.push(spec.expires_at.map(|t| t.timestamp_millis()));
            keys.push(spec.dedupe_key.as_deref());
        }
    }
    let mut inserted: HashSet<String> = HashSet::new();
    if !phones.is_empty() {
        // A suppressed contact's job, and one whose dedupe key was already
        // sent by this campaign within the window (a cumulative CSV dropped
        // again), is recorded and ends `skipped` at once: counted and reported
        // like any other, never sent, and costing no send slot. The claim
        // checks the key again for runs that overlap.
        let insert_jobs = tx.prepare_cached(&insert_jobs_sql(dedupe_since.is_some())).await?;
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![
            &run_id,
            &now,
            &phones,
            &lines,
            &zones,
            &parameters,
            &dues,
            &expiries,
            &keys,
            &kind,
            &campaign,
            &channel,
        ];
        if let Some(since) = &dedupe_since {
            params.push(since);
        }
        let rows = tx.query(&insert_jobs, &params).await?;
        for row in rows {
            inserted.insert(row.try_get(0)?);
        }
    }

    // The rows that are no job: refused, or a phone already in the run.
    let mut row_lines: Vec<i64> = Vec::new();
    let mut raw_phones: Vec<String> = Vec::new();
    let mut outcomes: Vec<&str> = Vec::new();
    let mut reasons: Vec<String> = Vec::new();
    for item in items {
        match item.borrow() {
            ImportRow::Job(spec) => {
                // Each inserted phone counts once: for the first row with it.
                if inserted.remove(spec.phone.as_str()) {
                    counts.imported += 1;
                } else {
                    counts.duplicates += 1;
                    row_lines.push(spec.line as i64);
                    raw_phones.push(spec.phone.as_str().to_string());
                    outcomes.push(RowOutcome::Duplicate.as_str());
                    reasons.push(format!("duplicate phone {}; the first row with it is kept", spec.phone));
                }
            }
            ImportRow::Rejected(r) => {
                counts.rejected += 1;
                row_lines.push(r.line as i64);
                raw_phones.push(r.raw_phone.clone());
                outcomes.push(RowOutcome::Rejected.as_str());
                reasons.push(r.reason.clone());
            }
        }
    }
    if !row_lines.is_empty() {
        let insert_rows = tx
            .prepare_cached(
                "INSERT INTO import_rows (run_id, line, raw_phone, outcome, reason) \
                 SELECT $1::bigint, u.line, u.raw_phone, u.outcome, u.reason \
                 FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[]) \
                      WITH ORDINALITY AS u(line, raw_phone, outcome, reason, ord) \
                 ORDER BY u.ord",
            )
            .await?;
        tx.execute(&insert_rows, &[&run_id, &row_lines, &raw_phones, &outcomes, &reasons]).await?;
    }
    let rows = counts.imported + counts.rejected + counts.duplicates;
    let last_line = last_line as i64;
    match part {
        None => {
            let update_run = tx
                .prepare_cached(
                    "UPDATE runs SET rows_total = rows_total + $2, imported = imported + $3, rejected = rejected + $4, \
                     duplicates = duplicates + $5, import_line = GREATEST(import_line, $6), \
                     jobs_version = jobs_version + 1 \
                     WHERE id = $1",
                )
                .await?;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
                [&run_id, &rows, &counts.imported, &counts.rejected, &counts.duplicates, &last_line];
            tx.execute(&update_run, &params).await?;
        }
        Some(Part { index, of }) => {
            // The part's own line, and `import_line` moved to the least line
            // of all parts (a part not written since the migration is
            // through `import_line`). Two parts' updates of the row take
            // turns, and the second computes from the first's committed row.
            let update_run = tx
                .prepare_cached(
                    "UPDATE runs SET rows_total = rows_total + $2, imported = imported + $3, rejected = rejected + $4, \
                     duplicates = duplicates + $5, \
                     import_part_lines[$7] = GREATEST(COALESCE(import_part_lines[$7], import_line), $6), \
                     import_line = GREATEST(import_line, \
                         (SELECT MIN(CASE WHEN i = $7 THEN $6 ELSE COALESCE(import_part_lines[i], import_line) END) \
                          FROM generate_series(1, $8::int) i)), \
                     jobs_version = jobs_version + 1 \
                     WHERE id = $1",
                )
                .await?;
            let (element, of) = (index as i32 + 1, of as i32);
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] =
                [&run_id, &rows, &counts.imported, &counts.rejected, &counts.duplicates, &last_line, &element, &of];
            tx.execute(&update_run, &params).await?;
        }
    }
    // Jobs added to a run whose summary was kept (a push or a late batch
    // landing in a run already over) make the kept one wrong: it goes, and
    // the version bump above (which waits for a keep holding the run's row)
    // stops a count from before this batch being kept.
    let forget = tx.prepare_cached("DELETE FROM run_summaries WHERE run_id = $1").await?;
    tx.execute(&forget, &[&run_id]).await?;
    Ok(counts)
}

/// The statement that inserts an import batch's jobs (`$1` run, `$2` now,
/// `$3`–`$9` the rows' phones, lines, zones, Parameters, due and expiry times
/// and dedupe keys, `$10`–`$12` the run's kind, campaign and channel; with
/// `dedupe`, `$13` the earliest send that counts), each `pending` or, when
/// suppressed or already sent by key, `skipped` with its reason.
///
/// The suppression list is read once for the batch's phones (a lateral read
/// per row, each a rescan with a sort of its own, cost a third of the
/// statement in the `psql` shell). The campaign's earlier jobs by key are
/// read only for a run with a dedupe rule, and per row, through
/// `jobs_dedupe` (a batch-wide read was tried: under the server's generic
/// plan, which cannot know the array's size, it read every job of the
/// campaign's runs, and the import slowed).
fn insert_jobs_sql(dedupe: bool) -> String {
    let earlier = if dedupe {
        "LEFT JOIN LATERAL (SELECT j.run_id, j.id FROM jobs j JOIN runs r ON r.id = j.run_id \
                            WHERE j.dedupe_key = u.dedupe_key AND r.campaign = $11::text AND j.sent_at > $13::bigint \
                            ORDER BY j.id LIMIT 1) d ON TRUE"
    } else {
        "CROSS JOIN (SELECT NULL::bigint AS run_id, NULL::bigint AS id) d"
    };
    format!(
        "WITH s AS (SELECT DISTINCT ON (phone) phone, scope, reason FROM suppressions \
                    WHERE phone = ANY($3::text[]) AND scope IN ('all', $10::text, $11::text, $12::text) \
                    ORDER BY phone, seq) \
         INSERT INTO jobs (run_id, phone, line, zone, parameters, due_at, expires_at, created_at, \
                           updated_at, dedupe_key, state, reason, finished_at) \
         SELECT $1::bigint, u.phone, u.line, u.zone, u.parameters, u.due_at, u.expires_at, $2::bigint, \
                $2::bigint, u.dedupe_key, \
                CASE WHEN s.phone IS NULL AND d.id IS NULL THEN 'pending' ELSE 'skipped' END, \
                CASE WHEN s.phone IS NOT NULL \
                          THEN 'suppressed: scope ' || s.scope || COALESCE(', ' || s.reason, '') \
                     WHEN d.id IS NOT NULL THEN 'already_sent: run ' || d.run_id || ', job ' || d.id END, \
                CASE WHEN s.phone IS NULL AND d.id IS NULL THEN NULL ELSE $2::bigint END \
         FROM UNNEST($3::text[], $4::bigint[], $5::text[], $6::text[], $7::bigint[], $8::bigint[], $9::text[]) \
              WITH ORDINALITY AS u(phone, line, zone, parameters, due_at, expires_at, dedupe_key, ord) \
         LEFT JOIN s ON s.phone = u.phone \
         {earlier} \
         ORDER BY u.ord \
         ON CONFLICT (run_id, phone) DO NOTHING \
         RETURNING phone"
    )
}

/// A run's due jobs, earliest first (`$1` run, `$2` now, `$3` limit, `$4`
/// only those whose last attempt is ambiguous), as `jobs_claim` holds them:
/// pending, by (run, due time, id), so a claim reads the first entries of one
/// range and sorts nothing.
const DUE_JOBS: &str = "FROM jobs WHERE run_id = $1 AND state = 'pending' AND due_at <= $2 \
       AND (expires_at IS NULL OR expires_at > $2 OR ambiguous_since IS NOT NULL) \
       AND (NOT $4::boolean OR ambiguous_since IS NOT NULL) \
     ORDER BY due_at, id LIMIT $3 FOR UPDATE SKIP LOCKED";

/// The due jobs a claim with checks to make reads first.
fn due_to_check_sql() -> String {
    format!("SELECT id, phone, dedupe_key, expires_at, ambiguous_since {DUE_JOBS}")
}

/// The claim with nothing to check: one statement takes the due rows and
/// claims them (`$5` this instance, `$6` its lease's end).
fn claim_all_sql() -> String {
    format!(
        "WITH due AS (SELECT id {DUE_JOBS}) \
         UPDATE jobs j SET state = 'dispatching', attempt_started_at = $2, updated_at = $2, \
                           lease_owner = $5, lease_until = $6 \
         FROM due WHERE j.id = due.id AND j.state = 'pending' \
         RETURNING j.due_at, {}",
        CLAIMED_COLUMNS.split(", ").map(|c| format!("j.{c}")).collect::<Vec<_>>().join(", ")
    )
}

/// Claims up to `limit` due pending jobs of a run, earliest due first, marking
/// them `dispatching` with the attempt's start time and this instance's lease,
/// in one committed transaction.
///
/// With `only_ambiguous`, only jobs whose last attempt's outcome is unknown
/// are claimed (recovery reconciles those first).
///
/// Rows are taken with `FOR UPDATE SKIP LOCKED`: a job another instance is
/// claiming is passed over, never waited for. The per-contact caps (unless
/// the run's campaign is exempt) and the run's dedupe rule are checked as
/// SQLite checks them, under an advisory lock held until the claims commit,
/// so the checks of every instance see each other's claims as `dispatching`.
/// A run with neither claims in one statement.
pub(crate) async fn claim_due(
    pg: &Pg,
    run_id: i64,
    now: i64,
    limit: usize,
    only_ambiguous: bool,
    limits: &ContactLimits,
) -> Result<Vec<ClaimedJob>> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let lease_until = now.saturating_add(LEASE_MS);
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    let run = tx
        .query_opt(
            &tx.prepare_cached(
                "SELECT campaign, limits_exempt, dedupe_within_ms FROM runs \
                 WHERE id = $1 AND state IN ('active', 'expanding')",
            )
            .await?,
            &[&run_id],
        )
        .await?;
    let Some(run) = run else {
        return Ok(Vec::new());
    };
    let (campaign, exempt, dedupe_within): (String, bool, Option<i64>) =
        (run.try_get(0)?, run.try_get(1)?, run.try_get(2)?);
    let caps = (!exempt && !limits.is_unlimited()).then_some(limits);

    if caps.is_none() && dedupe_within.is_none() {
        // Nothing to check: one statement takes the due rows and claims them.
        let claim_all = tx.prepare_cached(&claim_all_sql()).await?;
        let rows = tx.query(&claim_all, &[&run_id, &now, &limit, &only_ambiguous, &pg.instance, &lease_until]).await?;
        tx.commit().await?;
        // Earliest due first, as the rows were chosen.
        let mut jobs: Vec<(i64, ClaimedJob)> = Vec::with_capacity(rows.len());
        for row in &rows {
            let due: i64 = row.try_get(0)?;
            let job = claimed_from_row(row, 1)?;
            jobs.push((due, job));
        }
        jobs.sort_by_key(|(due, job)| (*due, job.id));
        return Ok(jobs.into_iter().map(|(_, job)| job).collect());
    }

    // Checks to make: one claimer at a time across instances, from here to
    // the commit.
    tx.execute(CLAIM_LOCK, &[]).await?;
    let due = tx.prepare_cached(&due_to_check_sql()).await?;
    let mut candidates: Vec<Candidate> = Vec::new();
    for r in tx.query(&due, &[&run_id, &now, &limit, &only_ambiguous]).await? {
        candidates.push(Candidate {
            id: r.try_get(0)?,
            phone: r.try_get(1)?,
            dedupe_key: r.try_get(2)?,
            expires_at: r.try_get(3)?,
            ambiguous_since: r.try_get(4)?,
        });
    }
    let claim = tx
        .prepare_cached(&format!(
            "UPDATE jobs SET state = 'dispatching', attempt_started_at = $2, updated_at = $2, \
                             lease_owner = $3, lease_until = $4 \
             WHERE id = $1 AND state = 'pending' RETURNING {CLAIMED_COLUMNS}"
        ))
        .await?;
    let mut jobs = Vec::new();
    for candidate in candidates {
        let id = candidate.id;
        if candidate.needs_checks() {
            let mut verdict = None;
            if let (Some(within), Some(key)) = (dedupe_within, candidate.dedupe_key.as_deref()) {
                let earlier = earlier_with_key(&tx, &campaign, key, id, now.saturating_sub(within)).await?;
                verdict = dedupe_verdict(earlier, now);
            }
            if let (None, Some(caps)) = (&verdict, caps) {
                let contacts = contacts_of(&tx, &candidate.phone, id, now.saturating_sub(caps.horizon_ms())).await?;
                verdict = caps_verdict(caps, contacts, candidate.expires_at, now);
            }
            match verdict {
                Some(Verdict::Skip(reason)) => {
                    skip(&tx, id, &reason, now).await?;
                    continue;
                }
                Some(Verdict::Defer(due_at)) => {
                    defer(&tx, id, due_at, now).await?;
                    continue;
                }
                None => {}
            }
        }
        if let Some(row) = tx.query_opt(&claim, &[&id, &now, &pg.instance, &lease_until]).await? {
            jobs.push(claimed_from_row(&row, 0)?);
        }
    }
    tx.commit().await?;
    Ok(jobs)
}

/// The earliest job of `campaign` other than `job_id` whose key is `key` and
/// that got (or may be getting) an Execution since `since`.
async fn earlier_with_key(
    tx: &Transaction<'_>,
    campaign: &str,
    key: &str,
    job_id: i64,
    since: i64,
) -> Result<Option<Earlier>> {
    let stmt = tx
        .prepare_cached(
            "SELECT j.run_id, j.id, j.sent_at IS NULL FROM jobs j JOIN runs r ON r.id = j.run_id \
             WHERE j.dedupe_key = $1 AND r.campaign = $2 AND j.id <> $3 \
               AND (j.sent_at > $4 OR j.state = 'dispatching' OR j.ambiguous_since IS NOT NULL) \
             ORDER BY j.sent_at IS NULL, j.id LIMIT 1",
        )
        .await?;
    match tx.query_opt(&stmt, &[&key, &campaign, &job_id, &since]).await? {
        Some(r) => Ok(Some(Earlier { run: r.try_get(0)?, job: r.try_get(1)?, in_flight: r.try_get(2)? })),
        None => Ok(None),
    }
}

/// `phone`'s contacts since `since` by campaigns that count (not exempt).
async fn contacts_of(tx: &Transaction<'_>, phone: &str, job_id: i64, since: i64) -> Result<Contacts> {
    let stmt = tx
        .prepare_cached(
            "SELECT COALESCE(j.sent_at, j.attempt_started_at, j.ambiguous_since), j.sent_at IS NOT NULL \
             FROM jobs j JOIN runs r ON r.id = j.run_id \
             WHERE j.phone = $1 AND j.id <> $2 AND NOT r.limits_exempt \
               AND (j.sent_at > $3 OR j.state = 'dispatching' OR j.ambiguous_since IS NOT NULL)",
        )
        .await?;
    let mut contacts = Contacts::default();
    for row in tx.query(&stmt, &[&phone, &job_id, &since]).await? {
        match (row.try_get::<_, Option<i64>>(0)?, row.try_get::<_, bool>(1)?) {
            (Some(at), true) => contacts.sent.push(at),
            (Some(at), false) => contacts.in_flight.push(at),
            (None, _) => {}
        }
    }
    Ok(contacts)
}

/// Ends a pending job `skipped` at claim time.
async fn skip(tx: &Transaction<'_>, id: i64, reason: &JobReason, now: i64) -> Result<()> {
    let stmt = tx
        .prepare_cached(
            "UPDATE jobs SET state = 'skipped', reason = $2, finished_at = $3, updated_at = $3 \
             WHERE id = $1 AND state = 'pending'",
        )
        .await?;
    tx.execute(&stmt, &[&id, &reason.to_string(), &now]).await?;
    Ok(())
}

/// Moves a pending job's due time to `due_at`.
async fn defer(tx: &Transaction<'_>, id: i64, due_at: i64, now: i64) -> Result<()> {
    let stmt =
        tx.prepare_cached("UPDATE jobs SET due_at = $2, updated_at = $3 WHERE id = $1 AND state = 'pending'").await?;
    tx.execute(&stmt, &[&id, &due_at, &now]).await?;
    Ok(())
}

/// Records a batch of attempt outcomes and Studio calls in one transaction
/// (one commit instead of two per job). Until it commits, the jobs stay
/// `dispatching`; a crash before then leaves them to reconciliation, never to
/// a blind resend. Returns how many outcomes applied.
///
/// A job that is sent is due to be read back `outcome_after_ms` later. An
/// outcome applies only while the job is `dispatching` under this instance's
/// lease (or none): a job whose lease ran out and that another instance took
/// over is that instance's to settle. The lease is cleared.
pub(crate) async fn record_outcomes(
    pg: &Pg,
    outcomes: &[SettledJob],
    calls: &[StudioCall],
    outcome_after_ms: i64,
) -> Result<usize> {
    if outcomes.is_empty() && calls.is_empty() {
        return Ok(0);
    }
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    let mut applied = 0;
    // Rows are locked in id order, as every statement that locks several
    // jobs does, so that two of them never wait on each other: all of them
    // first, in one statement, when there are several.
    let mut ordered: Vec<&SettledJob> = outcomes.iter().collect();
    ordered.sort_by_key(|o| o.job_id);
    if ordered.len() > 1 {
        let ids: Vec<i64> = ordered.iter().map(|o| o.job_id).collect();
        // Only the jobs still in flight here, as each update's guard: a job
        // another instance took over is not this batch's to lock.
        let lock = tx
            .prepare_cached(
                "SELECT id FROM jobs WHERE id = ANY($1) AND state = 'dispatching' \
                   AND (lease_owner IS NULL OR lease_owner = $2) ORDER BY id FOR UPDATE",
            )
            .await?;
        tx.execute(&lock, &[&ids, &pg.instance]).await?;
    }
    let (sent, others): (Vec<&SettledJob>, Vec<&SettledJob>) =
        ordered.into_iter().partition(|o| matches!(o.outcome, JobOutcome::Sent { .. }));
    let mut not_applied: Vec<i64> = Vec::new();
    // A create Studio answered is kept by its job row when the job is
    // recorded sent with that Execution here (see `calls_left_for_rows`).
    // A job with two `sent` outcomes in one batch (never seen: a job is
    // settled once per claim) would be updated by either row of the one
    // statement, so neither is taken as keeping its create.
    let mut sent_once: HashMap<i64, usize> = HashMap::new();
    for o in &sent {
        *sent_once.entry(o.job_id).or_default() += 1;
    }
    let answered: HashSet<(i64, &str)> = calls
        .iter()
        .filter_map(StudioCall::answered_create)
        .filter(|(job, _)| sent_once.get(job) == Some(&1))
        .collect();
    let mut on_rows: HashMap<i64, &str> = HashMap::new();
    if !sent.is_empty() {
        let recorded = record_sent(&tx, &pg.instance, &sent, &answered, outcome_after_ms).await?;
        applied += recorded.len();
        not_applied.extend(sent.iter().map(|o| o.job_id).filter(|id| !recorded.contains(id)));
        for o in &sent {
            if let JobOutcome::Sent { sid } = &o.outcome
                && recorded.contains(&o.job_id)
                && let Some(&(job, sid)) = answered.get(&(o.job_id, sid.as_str()))
            {
                on_rows.insert(job, sid);
            }
        }
    }
    for o in others {
        if apply_outcome(&tx, &pg.instance, o, outcome_after_ms).await? {
            applied += 1;
        } else {
            not_applied.push(o.job_id);
        }
    }
    for job in not_applied {
        tracing::warn!(job, "job changed state while in flight; its outcome was not recorded");
    }
    insert_calls(&tx, &crate::store::calls_left_for_rows(calls, on_rows)).await?;
    tx.commit().await?;
    Ok(applied)
}

/// Records the Executions created for `sent` in one statement (the most
/// common outcome by far: one statement per job cost a round trip and an
/// executor start each). Each applies only under the guard of
/// [`IN_FLIGHT_HERE`], as one at a time would; returns the jobs it applied to.
///
/// A job whose create's answer is in `answered` (job, SID) keeps that
/// create's record on its row (`create_on_row`). Its zone is blanked, as on
/// SQLite: it served the job's send window alone.
async fn record_sent(
    tx: &Transaction<'_>,
    instance: &str,
    sent: &[&SettledJob],
    answered: &HashSet<(i64, &str)>,
    outcome_after_ms: i64,
) -> Result<HashSet<i64>> {
    let mut ids = Vec::with_capacity(sent.len());
    let mut sids = Vec::with_capacity(sent.len());
    let mut attempts = Vec::with_capacity(sent.len());
    let mut ats = Vec::with_capacity(sent.len());
    let mut on_row = Vec::with_capacity(sent.len());
    for o in sent {
        let JobOutcome::Sent { sid } = &o.outcome else { continue };
        ids.push(o.job_id);
        sids.push(sid.as_str());
        attempts.push(o.attempts_sent);
        ats.push(o.at);
        on_row.push(i16::from(answered.contains(&(o.job_id, sid.as_str()))));
    }
    let stmt = tx
        .prepare_cached(
            "UPDATE jobs j SET state = 'sent', reason = NULL, execution_sid = u.sid, \
                 attempts = j.attempts + u.attempts, ambiguous_since = NULL, conflict_sid = NULL, \
                 sent_at = u.at, finished_at = u.at, updated_at = u.at, outcome_state = 'open', \
                 outcome_due_at = u.at + $5::bigint, lease_owner = NULL, lease_until = NULL, \
                 create_on_row = u.on_row, zone = '' \
             FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $7::smallint[]) \
                  AS u(id, sid, attempts, at, on_row) \
             WHERE j.id = u.id AND j.state = 'dispatching' AND (j.lease_owner IS NULL OR j.lease_owner = $6) \
             RETURNING j.id",
        )
        .await?;
    let rows = tx.query(&stmt, &[&ids, &sids, &attempts, &ats, &outcome_after_ms, &instance, &on_row]).await?;
    rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

/// The guard every outcome's update ends with: `$1` the job, `$2` this
/// instance.
const IN_FLIGHT_HERE: &str = "WHERE id = $1 AND state = 'dispatching' AND (lease_owner IS NULL OR lease_owner = $2)";

async fn apply_outcome(tx: &Transaction<'_>, instance: &str, o: &SettledJob, outcome_after_ms: i64) -> Result<bool> {
    let (job_id, attempts_sent, now) = (o.job_id, o.attempts_sent, o.at);
    let clear = "lease_owner = NULL, lease_until = NULL";
    let changed = match &o.outcome {
        // Written as a batch's are (one statement for them all).
        JobOutcome::Sent { .. } => {
            return Ok(record_sent(tx, instance, &[o], &HashSet::new(), outcome_after_ms).await?.contains(&job_id));
        }
        JobOutcome::Skipped { reason, sid } => {
            let stmt = tx
                .prepare_cached(&format!(
                    "UPDATE jobs SET state = 'skipped', reason = $3, execution_sid = $4, attempts = attempts + $5, \
                     ambiguous_since = NULL, finished_at = $6, updated_at = $6, {clear} {IN_FLIGHT_HERE}"
                ))
                .await?;
            tx.execute(&stmt, &[&job_id, &instance, &reason.to_string(), sid, &attempts_sent, &now]).await?
        }
        JobOutcome::Failed { reason, last_error } => {
            let stmt = tx
                .prepare_cached(&format!(
                    "UPDATE jobs SET state = 'failed', reason = $3, last_error = COALESCE($4, last_error), \
                     attempts = attempts + $5, ambiguous_since = NULL, finished_at = $6, updated_at = $6, \
                     {clear} {IN_FLIGHT_HERE}"
                ))
                .await?;
            tx.execute(&stmt, &[&job_id, &instance, &reason.to_string(), last_error, &attempts_sent, &now]).await?
        }
        JobOutcome::Expired => {
            let stmt = tx
                .prepare_cached(&format!(
                    "UPDATE jobs SET state = 'expired', reason = 'expired', attempts = attempts + $3, \
                     finished_at = $4, updated_at = $4, {clear} {IN_FLIGHT_HERE}"
                ))
                .await?;
            tx.execute(&stmt, &[&job_id, &instance, &attempts_sent, &now]).await?
        }
        JobOutcome::Retry { due_at, failures, throttled, ambiguous_since, conflict, last_error } => {
            let stmt = tx
                .prepare_cached(&format!(
                    "UPDATE jobs SET state = 'pending', due_at = $3, failures = $4, throttles = throttles + $5, \
                     ambiguous_since = $6, conflict_sid = $7, conflict_since = $8, \
                     last_error = COALESCE($9, last_error), attempts = attempts + $10, updated_at = $11, \
                     {clear} {IN_FLIGHT_HERE}"
                ))
                .await?;
            tx.execute(
                &stmt,
                &[
                    &job_id,
                    &instance,
                    due_at,
                    failures,
                    &i64::from(*throttled),
                    ambiguous_since,
                    &conflict.as_ref().map(|c| c.0.as_str()),
                    &conflict.as_ref().map(|c| c.1),
                    last_error,
                    &attempts_sent,
                    &now,
                ],
            )
            .await?
        }
        JobOutcome::Cancelled => {
            let stmt = tx
                .prepare_cached(&format!(
                    "UPDATE jobs SET state = 'cancelled', reason = 'run cancelled', attempts = attempts + $3, \
                     finished_at = $4, updated_at = $4, {clear} {IN_FLIGHT_HERE}"
                ))
                .await?;
            tx.execute(&stmt, &[&job_id, &instance, &attempts_sent, &now]).await?
        }
        JobOutcome::Release => {
            let stmt = tx
                .prepare_cached(&format!(
                    "UPDATE jobs SET state = 'pending', attempts = attempts + $3, updated_at = $4, \
                     {clear} {IN_FLIGHT_HERE}"
                ))
                .await?;
            tx.execute(&stmt, &[&job_id, &instance, &attempts_sent, &now]).await?
        }
    };
    Ok(changed == 1)
}

/// Jobs left `dispatching` by an instance that died: those whose lease ran
/// out (or that have none) go back to `pending`, marked ambiguous from their
/// attempt's start, so Studio is asked before any resend. A job whose lease
/// still holds is a live instance's request in flight, and stays its own;
/// so does one whose row is locked right now (its outcome being written):
/// the next sweep sees what that write left.
pub(crate) async fn recover_dispatching(pg: &Pg, run_id: i64, now: i64) -> Result<usize> {
    let client = pg.client().await?;
    let stmt = client
        .prepare_cached(
            "UPDATE jobs SET state = 'pending', ambiguous_since = COALESCE(ambiguous_since, attempt_started_at, $2), \
             due_at = LEAST(due_at, $2), updated_at = $2, lease_owner = NULL, lease_until = NULL \
             WHERE id IN (SELECT id FROM jobs \
                          WHERE run_id = $1 AND state = 'dispatching' AND (lease_until IS NULL OR lease_until < $2) \
                          ORDER BY id FOR UPDATE SKIP LOCKED)",
        )
        .await?;
    Ok(client.execute(&stmt, &[&run_id, &now]).await? as usize)
}

/// A condition that holds when run `run` (a column or parameter) has no open
/// job, neither pending nor dispatching: asked as two questions, each a
/// range of a partial index (`jobs_claim` holds the pending jobs by run,
/// `jobs_leased` the dispatching ones), where `state IN (…)` has none.
pub(crate) fn no_open_jobs(run: &str) -> String {
    format!(
        "NOT EXISTS (SELECT 1 FROM jobs WHERE run_id = {run} AND state = 'pending') \
         AND NOT EXISTS (SELECT 1 FROM jobs WHERE run_id = {run} AND state = 'dispatching')"
    )
}

/// The earliest due time of a run's pending jobs not expired by `$2`.
const NEXT_DUE: &str = "SELECT due_at FROM jobs WHERE run_id = $1 AND state = 'pending' \
     AND (expires_at IS NULL OR expires_at > $2 OR ambiguous_since IS NOT NULL) \
     ORDER BY due_at LIMIT 1";

/// The earliest due time among a run's pending jobs that have not expired by
/// `now` (expired ones are never claimed; [`expire_overdue`] settles them).
pub(crate) async fn next_due_at(pg: &Pg, run_id: i64, now: i64) -> Result<Option<i64>> {
    let client = pg.client().await?;
    // The first entry of the run's range in `jobs_claim` that passes, rather
    // than MIN(): on a table not yet analyzed the planner chose to aggregate
    // over every pending job of the run (1.7 ms a call at 20,000).
    let stmt = client.prepare_cached(NEXT_DUE).await?;
    Ok(client.query_opt(&stmt, &[&run_id, &now]).await?.map(|r| r.try_get(0)).transpose()?)
}

/// Settles every pending job of a run whose `expires` has passed as `expired`,
/// in one statement: expired jobs never take a send slot. A job whose last
/// attempt's fate is unknown is left to be claimed: Studio is asked first
/// whether that attempt created an Execution. Returns how many.
///
/// A job another instance is claiming right now is waited for, then seen as
/// it was left (no longer `pending` if claimed).
pub(crate) async fn expire_overdue(pg: &Pg, run_id: i64, now: i64) -> Result<usize> {
    let client = pg.client().await?;
    let stmt = client
        .prepare_cached(
            "UPDATE jobs SET state = 'expired', reason = 'expired', finished_at = $2, updated_at = $2 \
             WHERE run_id = $1 AND state = 'pending' AND expires_at IS NOT NULL AND expires_at <= $2 \
               AND ambiguous_since IS NULL",
        )
        .await?;
    Ok(client.execute(&stmt, &[&run_id, &now]).await? as usize)
}

/// One page of a run's jobs in id order, after job id `after`, optionally in
/// one state (keyset paging: stable while the run changes).
pub(crate) async fn jobs_page(
    pg: &Pg,
    run_id: i64,
    state: Option<JobState>,
    after: i64,
    limit: u32,
) -> Result<Vec<JobRow>> {
    let client = pg.client().await?;
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE run_id = $1 AND ($2::text IS NULL OR state = $2) AND id > $3 \
             ORDER BY id LIMIT $4"
        ))
        .await?;
    client
        .query(&stmt, &[&run_id, &state.map(JobState::as_str), &after, &i64::from(limit)])
        .await?
        .iter()
        .map(job_from_row)
        .collect()
}

/// The latest jobs that ended failed, skipped or expired, across runs.
pub(crate) async fn recent_problems(pg: &Pg, limit: u32) -> Result<Vec<JobRow>> {
    let client = pg.client().await?;
    // SQLite sorts NULL first, so last when descending.
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE state IN ('failed', 'skipped', 'expired') \
             ORDER BY finished_at DESC NULLS LAST, id DESC LIMIT $1"
        ))
        .await?;
    client.query(&stmt, &[&i64::from(limit)]).await?.iter().map(job_from_row).collect()
}

/// Studio says Execution `sid` ended: record it on the job it belongs to, and
/// make every `wait`-policy job blocked on it due now. Repeated or late
/// deliveries change nothing further. Returns (jobs recorded, jobs woken).
pub(crate) async fn record_execution_end(
    pg: &Pg,
    sid: &str,
    ended_at: i64,
    reason: Option<&str>,
    now: i64,
) -> Result<(usize, usize)> {
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    // An ended Execution's outcome can be read at once.
    let recorded = tx
        .execute(
            "UPDATE jobs SET execution_ended_at = COALESCE(execution_ended_at, $2), \
             ended_reason = COALESCE(ended_reason, $3), updated_at = $4, \
             outcome_due_at = CASE WHEN outcome_state = 'open' THEN LEAST(COALESCE(outcome_due_at, $4), $4) \
                                   ELSE outcome_due_at END \
             WHERE execution_sid = $1 AND state = 'sent'",
            &[&sid, &ended_at, &reason, &now],
        )
        .await?;
    let woken = tx
        .execute(
            "UPDATE jobs SET due_at = LEAST(due_at, $2), updated_at = $2 WHERE conflict_sid = $1 AND state = 'pending'",
            &[&sid, &now],
        )
        .await?;
    tx.commit().await?;
    Ok((recorded as usize, woken as usize))
}

/// Sent jobs whose outcome is open and due by `now` (with `all`, due or not),
/// optionally of one run, earliest due first.
pub(crate) async fn due_outcomes(
    pg: &Pg,
    run: Option<i64>,
    now: i64,
    limit: u32,
    all: bool,
) -> Result<Vec<OutcomeJob>> {
    let client = pg.client().await?;
    let stmt = client
        .prepare_cached(
            "SELECT id, run_id, execution_sid, sent_at, outcome_polls, phone FROM jobs \
             WHERE outcome_state = 'open' AND ($1::bigint IS NULL OR run_id = $1) \
               AND ($3::boolean OR outcome_due_at <= $2) AND execution_sid IS NOT NULL \
             ORDER BY outcome_due_at NULLS FIRST, id LIMIT $4",
        )
        .await?;
    client
        .query(&stmt, &[&run, &now, &all, &i64::from(limit)])
        .await?
        .iter()
        .map(|r| {
            Ok(OutcomeJob {
                id: r.try_get(0)?,
                run_id: r.try_get(1)?,
                execution_sid: r.try_get(2)?,
                sent_at: r.try_get::<_, Option<i64>>(3)?.unwrap_or(0),
                polls: r.try_get(4)?,
                phone: Phone::from_e164(r.try_get(5)?),
            })
        })
        .collect()
}

/// How many sent jobs' outcomes are still open, optionally of one run.
pub(crate) async fn open_outcomes(pg: &Pg, run: Option<i64>) -> Result<i64> {
    let client = pg.client().await?;
    let stmt = client
        .prepare_cached(
            "SELECT COUNT(*) FROM jobs WHERE outcome_state = 'open' AND ($1::bigint IS NULL OR run_id = $1)",
        )
        .await?;
    Ok(client.query_one(&stmt, &[&run]).await?.try_get(0)?)
}

/// The earliest time an open outcome is due, optionally of one run.
pub(crate) async fn next_outcome_due(pg: &Pg, run: Option<i64>) -> Result<Option<i64>> {
    let client = pg.client().await?;
    let stmt = client
        .prepare_cached(
            "SELECT MIN(outcome_due_at) FROM jobs WHERE outcome_state = 'open' AND ($1::bigint IS NULL OR run_id = $1)",
        )
        .await?;
    Ok(client.query_one(&stmt, &[&run]).await?.try_get(0)?)
}

/// Records what was read back from a job's Execution, ending its outcome as
/// `state` (known, or unknown when given up on).
pub(crate) async fn record_collected(
    pg: &Pg,
    job_id: i64,
    state: OutcomeState,
    collected: &CollectedOutcome,
    now: i64,
) -> Result<bool> {
    let client = pg.client().await?;
    let stmt = client
        .prepare_cached(
            "UPDATE jobs SET outcome_state = $2, execution_status = $3, ended_in = $4, outcome = $5, \
                 outcome_notes = $6, outcome_due_at = NULL, outcome_polls = outcome_polls + 1, updated_at = $7 \
             WHERE id = $1 AND outcome_state = 'open'",
        )
        .await?;
    let values = serde_json::Value::Object(collected.values.clone()).to_string();
    let notes = (!collected.notes.is_empty()).then(|| serde_json::Value::Object(collected.notes.clone()).to_string());
    let changed = client
        .execute(&stmt, &[&job_id, &state.as_str(), &collected.status, &collected.ended_in, &values, &notes, &now])
        .await?;
    Ok(changed == 1)
}

/// Asks about a job's Execution again at `due_at` (it was still running, or
/// Studio could not answer).
pub(crate) async fn reschedule_outcome(pg: &Pg, job_id: i64, due_at: i64, now: i64) -> Result<()> {
    let client = pg.client().await?;
    let stmt = client
        .prepare_cached(
            "UPDATE jobs SET outcome_due_at = $2, outcome_polls = outcome_polls + 1, updated_at = $3 \
             WHERE id = $1 AND outcome_state = 'open'",
        )
        .await?;
    client.execute(&stmt, &[&job_id, &due_at, &now]).await?;
    Ok(())
}

/// How often each value of outcome field `name` was given in a run, among jobs
/// whose outcome was read back or given up on (`None`: no answer). Values are
/// JSON text, as SQLite's `json_extract` gives them: a number as written
/// (a whole one as an integer), `true`/`false` as 1/0, a string (or an object
/// or array, as compact JSON text) as a JSON string.
#[cfg(test)]
pub(crate) async fn outcome_counts(pg: &Pg, run_id: i64, name: &str) -> Result<Vec<(Option<String>, i64)>> {
    outcome_counts_in(&pg.client().await?, run_id, name).await
}

/// Outcome value counts as above, through `client` (a transaction, for one
/// consistent read).
pub(crate) async fn outcome_counts_in<C: deadpool_postgres::GenericClient>(
    client: &C,
    run_id: i64,
    name: &str,
) -> Result<Vec<(Option<String>, i64)>> {
    let stmt = client
        .prepare_cached(
            "SELECT jsonb_typeof(outcome::jsonb -> $2), outcome::jsonb ->> $2, COUNT(*) FROM jobs \
             WHERE run_id = $1 AND outcome_state IN ('known', 'unknown') GROUP BY 1, 2",
        )
        .await?;
    let mut counts: BTreeMap<Option<String>, i64> = BTreeMap::new();
    for r in client.query(&stmt, &[&run_id, &name]).await? {
        let kind: Option<String> = r.try_get(0)?;
        let text: Option<String> = r.try_get(1)?;
        let n: i64 = r.try_get(2)?;
        *counts.entry(sqlite_json_value(kind.as_deref(), text)).or_default() += n;
    }
    Ok(counts.into_iter().collect())
}

/// A JSON value (its `jsonb_typeof` and its `->>` text) as SQLite's
/// `json_extract` reads it back and `sqlite::jobs::outcome_counts` writes it.
fn sqlite_json_value(kind: Option<&str>, text: Option<String>) -> Option<String> {
    let text = text?;
    match kind? {
        "null" => None,
        "boolean" => Some(if text == "true" { "1" } else { "0" }.to_string()),
        "number" => match text.parse::<i64>() {
            Ok(n) => Some(n.to_string()),
            Err(_) => Some(text.parse::<f64>().map_or(text, |f| f.to_string())),
        },
        "string" => Some(serde_json::Value::String(text).to_string()),
        // An object or array: SQLite gives its JSON text, minified.
        _ => {
            let compact = serde_json::from_str::<serde_json::Value>(&text).map_or(text, |v| v.to_string());
            Some(serde_json::Value::String(compact).to_string())
        }
    }
}

/// The rows an import refused or found duplicated, in file order.
pub(crate) async fn refused_rows(pg: &Pg, run_id: i64) -> Result<Vec<RefusedRow>> {
    let client = pg.client().await?;
    let stmt = client
        .prepare_cached("SELECT line, raw_phone, outcome, reason FROM import_rows WHERE run_id = $1 ORDER BY line")
        .await?;
    client
        .query(&stmt, &[&run_id])
        .await?
        .iter()
        .map(|r| {
            Ok(RefusedRow {
                line: r.try_get(0)?,
                raw_phone: r.try_get(1)?,
                outcome: parsed(r, 2)?,
                reason: r.try_get(3)?,
            })
        })
        .collect()
}

/// The audit trail of one job, oldest first, as on SQLite (see there).
pub(crate) async fn calls_for_job(pg: &Pg, job_id: i64) -> Result<Vec<CallSummary>> {
    let client = pg.client().await?;
    let stmt = client
        .prepare_cached(
            "SELECT operation, outcome, execution_sid, note FROM studio_call_trail t WHERE job_id = $1 \
             ORDER BY COALESCE(id, (SELECT MAX(c.id) FROM studio_calls c WHERE c.job_id = $1 AND c.at <= t.at), 0), \
                      id IS NULL",
        )
        .await?;
    client
        .query(&stmt, &[&job_id])
        .await?
        .iter()
        .map(|r| {
            Ok(CallSummary {
                operation: r.try_get(0)?,
                outcome: r.try_get(1)?,
                execution_sid: r.try_get(2)?,
                note: r.try_get(3)?,
            })
        })
        .collect()
}

/// The audit records of a batch of Studio calls, in order, in one statement.
async fn insert_calls(tx: &Transaction<'_>, calls: &[&StudioCall]) -> Result<()> {
    if calls.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(
            "INSERT INTO studio_calls (run_id, job_id, at, operation, request, http_status, response, outcome, \
                                       execution_sid, note) \
             SELECT u.run_id, u.job_id, u.at, u.operation, u.request, u.http_status, u.response, u.outcome, \
                    u.execution_sid, u.note \
             FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::bigint[], $7::text[], \
                         $8::text[], $9::text[], $10::text[]) \
                  WITH ORDINALITY AS u(run_id, job_id, at, operation, request, http_status, response, outcome, \
                                       execution_sid, note, ord) \
             ORDER BY u.ord",
        )
        .await?;
    let run_ids: Vec<Option<i64>> = calls.iter().map(|c| c.run_id).collect();
    let job_ids: Vec<Option<i64>> = calls.iter().map(|c| c.job_id).collect();
    let ats: Vec<i64> = calls.iter().map(|c| c.at).collect();
    let operations: Vec<&str> = calls.iter().map(|c| c.operation).collect();
    let requests: Vec<&str> = calls.iter().map(|c| c.request.as_str()).collect();
    let statuses: Vec<Option<i64>> = calls.iter().map(|c| c.http_status.map(i64::from)).collect();
    let responses: Vec<Option<&str>> = calls.iter().map(|c| c.response.as_deref()).collect();
    let outcomes: Vec<&str> = calls.iter().map(|c| c.outcome.as_str()).collect();
    let sids: Vec<Option<&str>> = calls.iter().map(|c| c.execution_sid.as_deref()).collect();
    let notes: Vec<Option<&str>> = calls.iter().map(|c| c.note.as_deref()).collect();
    tx.execute(
        &stmt,
        &[&run_ids, &job_ids, &ats, &operations, &requests, &statuses, &responses, &outcomes, &sids, &notes],
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use super::*;
    use crate::domain::{JobSpec, ReasonKind, Rejection, ResumePoint};
    use crate::store::claim_checks::IN_FLIGHT_RECHECK_MS;
    use crate::store::{Db, Ledger, Store};

    const NOW: i64 = 1_800_000_000_000;

    /// A fresh ledger in a schema of its own, and a raw client on it; `None`
    /// without `FLOWCAST_TEST_POSTGRES`.
    async fn ledger(label: &str) -> Option<(String, Store, tokio_postgres::Client)> {
        let url = crate::store::postgres::test_ledger(label).await?;
        let store = Store::open(&Ledger::parse(&url).unwrap()).await.unwrap();
        let client = raw(&url).await;
        Some((url, store, client))
    }

    async fn raw(url: &str) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    }

    fn pg(store: &Store) -> &Pg {
        match &store.db {
            Db::Postgres(pg) => pg,
            Db::Sqlite(_) => unreachable!("a PostgreSQL ledger"),
        }
    }

    /// An active run of `campaign`.
    async fn new_run(client: &tokio_postgres::Client, campaign: &str, exempt: bool, dedupe_ms: Option<i64>) -> i64 {
        client
            .query_one(
                "INSERT INTO runs (campaign, kind, trigger, run_key, scheduled_at, source, flow_sid, from_addr, \
                                   on_conflict, state, created_at, limits_exempt, dedupe_within_ms) \
                 VALUES ($1, 'reminder', 'manual', gen_random_uuid()::text, $2, 'c.csv', 'FW0', '+15550000000', \
                         'skip', 'active', $2, $3, $4) RETURNING id",
                &[&campaign, &NOW, &exempt, &dedupe_ms],
            )
            .await
            .unwrap()
            .get(0)
    }

    fn job(line: u64, phone: &str, key: Option<&str>) -> ImportRow {
        ImportRow::Job(JobSpec {
            line,
            phone: Phone::from_e164(phone.to_string()),
            zone: chrono_tz::UTC,
            parameters: Parameters::from_ledger(format!("{{\"line\":{line}}}"), None),
            due_at: None,
            expires_at: None,
            dedupe_key: key.map(str::to_string),
        })
    }

    fn phone(n: usize) -> String {
        format!("+1201555{n:04}")
    }

    fn settled(job_id: i64, outcome: JobOutcome) -> SettledJob {
        SettledJob { job_id, outcome, attempts_sent: 1, at: NOW + 10 }
    }

    async fn state_of(client: &tokio_postgres::Client, id: i64) -> (String, Option<String>, Option<i64>) {
        let r =
            client.query_one("SELECT state, lease_owner, lease_until FROM jobs WHERE id = $1", &[&id]).await.unwrap();
        (r.get(0), r.get(1), r.get(2))
    }

    /// No foreign key ties a job or an import row to its run (migration
    /// 0008): the batch's own read of its run is what refuses one that is
    /// not there.
    #[tokio::test]
    async fn a_batch_for_a_run_not_in_the_ledger_is_refused_and_writes_nothing() {
        let Some((_url, store, client)) = ledger("pg jobs no run").await else { return };
        let run = new_run(&client, "c", false, None).await;
        let rows = vec![
            job(2, &phone(0), None),
            ImportRow::Rejected(Rejection { line: 3, raw_phone: "nope".into(), reason: "not a phone".into() }),
        ];
        let missing = import_batch(pg(&store), run + 1, &rows, 3, NOW, NOW).await;
        assert!(matches!(missing, Err(StoreError::RunNotFound(id)) if id == run + 1), "{missing:?}");
        for table in ["jobs", "import_rows"] {
            let n: i64 = client.query_one(&format!("SELECT count(*) FROM {table}"), &[]).await.unwrap().get(0);
            assert_eq!(n, 0, "{table}");
        }
        // The run that is there takes the same rows.
        let counts = import_batch(pg(&store), run, &rows, 3, NOW, NOW).await.unwrap();
        assert_eq!((counts.imported, counts.rejected), (1, 1));
    }

    /// A batch is written in parts side by side (one transaction each): a
    /// number's rows are all in one part, so its first row is the one kept,
    /// and each part's jobs are numbered in file order.
    #[tokio::test]
    async fn a_batch_written_in_parts_keeps_each_phones_first_row_and_says_where_each_part_is() {
        let Some((_url, store, client)) = ledger("pg jobs parts").await else { return };
        let run = new_run(&client, "c", false, None).await;
        // 1,500 rows: 1,000 phones, the first 500 of them again later on.
        let rows: Vec<ImportRow> = (0..1500).map(|i| job(i as u64 + 2, &phone(i % 1000), None)).collect();
        let in_part_1 = rows.iter().filter(|r| r.part(IMPORT_PARTS) == 1).count();
        assert!((500..1000).contains(&in_part_1), "both parts get rows: {in_part_1}");
        let counts = import_batch(pg(&store), run, &rows, 1501, NOW, NOW).await.unwrap();
        assert_eq!((counts.imported, counts.duplicates, counts.rejected), (1000, 500, 0));
        let kept: Vec<(String, i64)> = client
            .query("SELECT phone, line FROM jobs WHERE run_id = $1 ORDER BY id", &[&run])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(kept.len(), 1000);
        for part in 0..IMPORT_PARTS {
            let lines: Vec<i64> =
                kept.iter().filter(|(p, _)| crate::domain::part_of(p, IMPORT_PARTS) == part).map(|k| k.1).collect();
            assert!(lines.iter().all(|&line| line <= 1001), "each phone's first row kept");
            assert!(lines.is_sorted(), "part {part} numbered in file order");
        }
        let duplicates = crate::store::postgres::runs::tests::refused_lines(&client, run).await;
        assert_eq!(duplicates, (1002..1502).collect::<Vec<i64>>());
        assert_eq!(store.import_line(run).await.unwrap(), 1501);
        assert_eq!(store.import_resume(run).await.unwrap(), ResumePoint::whole(1501));
        let totals: (i64, i64, i64) = client
            .query_one("SELECT rows_total, imported, duplicates FROM runs WHERE id = $1", &[&run])
            .await
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .unwrap();
        assert_eq!(totals, (1500, 1000, 500));

        // A part that committed a later batch while the other did not: the
        // line every part holds stays where the slower one is.
        let part_0: Vec<ImportRow> =
            (0..10).map(|i| job(i as u64 + 1502, &phone(2000 + i), None)).filter(|r| r.part(2) == 0).collect();
        assert!(!part_0.is_empty() && part_0.len() < 10);
        let mut writer = pg(&store).client().await.unwrap();
        let tx = writer.transaction().await.unwrap();
        let part = Some(Part { index: 0, of: IMPORT_PARTS });
        insert_batch(&tx, run, &part_0, part, 1511, NOW, NOW).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(store.import_line(run).await.unwrap(), 1501);
        // A resume reads again the lines after it that the ledger does not hold.
        let held = part_0.iter().map(ImportRow::line);
        assert_eq!(store.import_resume(run).await.unwrap(), ResumePoint::with_held(1501, held));
    }

    #[tokio::test]
    async fn import_claim_and_outcomes_round_trip() {
        let Some((_url, store, client)) = ledger("pg jobs round trip").await else { return };
        let pg = pg(&store);
        let run = new_run(&client, "c", false, Some(86_400_000)).await;
        client
            .execute(
                "INSERT INTO suppressions (phone, scope, reason, source, created_at) VALUES ($1, 'all', 'asked', 'cli', 0)",
                &[&phone(3)],
            )
            .await
            .unwrap();
        let rows = vec![
            job(2, &phone(0), Some("k0")),
            job(3, &phone(1), None),
            job(4, &phone(2), None),
            job(5, &phone(1), None),
            ImportRow::Rejected(Rejection { line: 6, raw_phone: "nope".into(), reason: "not a phone".into() }),
            job(7, &phone(3), None),
        ];
        let counts = import_batch(pg, run, &rows, 7, NOW, NOW).await.unwrap();
        assert_eq!(counts, BatchCounts { imported: 4, rejected: 1, duplicates: 1 });
        // The same rows again: every phone is a duplicate now.
        let again = import_batch(pg, run, &rows[..2], 7, NOW, NOW).await.unwrap();
        assert_eq!(again, BatchCounts { imported: 0, rejected: 0, duplicates: 2 });
        let r = client
            .query_one(
                "SELECT rows_total, imported, rejected, duplicates, import_line FROM runs WHERE id = $1",
                &[&run],
            )
            .await
            .unwrap();
        assert_eq!((r.get::<_, i64>(0), r.get::<_, i64>(1), r.get::<_, i64>(2), r.get::<_, i64>(3)), (8, 4, 1, 3));
        assert_eq!(r.get::<_, i64>(4), 7);
        let refused = refused_rows(pg, run).await.unwrap();
        assert_eq!(
            refused.iter().map(|r| (r.line, r.outcome)).collect::<Vec<_>>()[..2],
            [(2, RowOutcome::Duplicate), (3, RowOutcome::Duplicate)]
        );
        assert!(refused.iter().any(|r| r.line == 5 && r.reason.starts_with("duplicate phone +12015550001")));
        assert!(refused.iter().any(|r| r.line == 6 && r.outcome == RowOutcome::Rejected && r.reason == "not a phone"));

        let page = jobs_page(pg, run, None, 0, 100).await.unwrap();
        assert_eq!(page.len(), 4);
        let suppressed = page.iter().find(|j| j.phone.as_str() == phone(3)).unwrap();
        assert_eq!(suppressed.state, JobState::Skipped);
        assert_eq!(suppressed.reason.as_ref().unwrap().to_string(), "suppressed: scope all, asked");
        assert_eq!(suppressed.finished_at, Some(NOW));
        assert_eq!(jobs_page(pg, run, Some(JobState::Pending), 0, 100).await.unwrap().len(), 3);
        assert_eq!(recent_problems(pg, 10).await.unwrap().len(), 1);
        assert_eq!(next_due_at(pg, run, NOW).await.unwrap(), Some(NOW));

        let claimed = claim_due(pg, run, NOW, 10, false, &ContactLimits::default()).await.unwrap();
        assert_eq!(
            claimed.iter().map(|j| j.phone.as_str().to_string()).collect::<Vec<_>>(),
            [phone(0), phone(1), phone(2)]
        );
        assert_eq!(claimed[0].parameters.to_object().unwrap(), "{\"line\":2}");
        assert_eq!(claimed[0].attempt_started_at, NOW);
        for j in &claimed {
            assert_eq!(
                state_of(&client, j.id).await,
                ("dispatching".into(), Some(pg.instance.clone()), Some(NOW + LEASE_MS))
            );
        }
        assert!(claim_due(pg, run, NOW, 10, false, &ContactLimits::default()).await.unwrap().is_empty());

        let call = StudioCall {
            run_id: Some(run),
            job_id: Some(claimed[0].id),
            at: NOW + 5,
            operation: "create",
            request: "{}".into(),
            http_status: Some(201),
            response: Some("{}".into()),
            outcome: "created".into(),
            execution_sid: Some("FN1".into()),
            note: None,
        };
        let outcomes = vec![
            settled(claimed[0].id, JobOutcome::Sent { sid: "FN1".into() }),
            settled(
                claimed[1].id,
                JobOutcome::Failed {
                    reason: JobReason::with_detail(ReasonKind::Invalid, "bad"),
                    last_error: Some("400".into()),
                },
            ),
            settled(claimed[2].id, JobOutcome::Release),
            // Not dispatching: not applied.
            settled(suppressed.id, JobOutcome::Sent { sid: "FN9".into() }),
        ];
        assert_eq!(record_outcomes(pg, &outcomes, &[call], 60_000).await.unwrap(), 3);
        assert_eq!(state_of(&client, claimed[0].id).await, ("sent".into(), None, None));
        assert_eq!(state_of(&client, claimed[1].id).await, ("failed".into(), None, None));
        assert_eq!(state_of(&client, claimed[2].id).await, ("pending".into(), None, None));
        assert_eq!(state_of(&client, suppressed.id).await.0, "skipped");
        let calls = calls_for_job(pg, claimed[0].id).await.unwrap();
        assert_eq!(
            calls,
            [CallSummary {
                operation: "create".into(),
                outcome: "created".into(),
                execution_sid: Some("FN1".into()),
                note: None
            }]
        );

        // The Execution's outcome.
        assert_eq!(open_outcomes(pg, Some(run)).await.unwrap(), 1);
        assert_eq!(next_outcome_due(pg, None).await.unwrap(), Some(NOW + 10 + 60_000));
        assert!(due_outcomes(pg, Some(run), NOW + 20, 10, false).await.unwrap().is_empty());
        assert_eq!(record_execution_end(pg, "FN1", NOW + 30, Some("done"), NOW + 40).await.unwrap(), (1, 0));
        let due = due_outcomes(pg, Some(run), NOW + 40, 10, false).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].execution_sid.as_str(), due[0].sent_at), ("FN1", NOW + 10));
        let found =
            crate::store::postgres::executions::jobs_for_executions(pg, &["FN1".into(), "FN2".into()]).await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found["FN1"].job_id, claimed[0].id);
        assert_eq!(crate::store::postgres::executions::last_sent_at(pg, run).await.unwrap(), Some(NOW + 10));
        let mut values = serde_json::Map::new();
        values.insert("score".into(), serde_json::json!(9));
        values.insert("answer".into(), serde_json::json!("yes"));
        values.insert("ok".into(), serde_json::json!(true));
        let collected = CollectedOutcome {
            status: "ended".into(),
            ended_in: Some("end".into()),
            values,
            notes: Default::default(),
        };
        assert!(record_collected(pg, claimed[0].id, OutcomeState::Known, &collected, NOW + 50).await.unwrap());
        assert!(!record_collected(pg, claimed[0].id, OutcomeState::Known, &collected, NOW + 50).await.unwrap());
        assert_eq!(outcome_counts(pg, run, "score").await.unwrap(), [(Some("9".to_string()), 1)]);
        assert_eq!(outcome_counts(pg, run, "answer").await.unwrap(), [(Some("\"yes\"".to_string()), 1)]);
        assert_eq!(outcome_counts(pg, run, "ok").await.unwrap(), [(Some("1".to_string()), 1)]);
        assert_eq!(outcome_counts(pg, run, "missing").await.unwrap(), [(None, 1)]);
        let row = jobs_page(pg, run, Some(JobState::Sent), 0, 10).await.unwrap().remove(0);
        assert_eq!(row.outcome_state, Some(OutcomeState::Known));
        assert_eq!(row.execution_ended_at, Some(NOW + 30));
        assert_eq!(row.outcome["score"], serde_json::json!(9));
        let by_state: HashMap<JobState, i64> =
            crate::store::postgres::summaries::jobs_by_state(pg).await.unwrap().0.into_iter().collect();
        assert_eq!(by_state[&JobState::Pending], 1);

        // Dedupe at import: a later run of the campaign with key k0 skips it.
        let later = new_run(&client, "c", false, Some(86_400_000)).await;
        let c =
            import_batch(pg, later, &[job(2, &phone(5), Some("k0")), job(3, &phone(6), Some("k1"))], 3, NOW, NOW + 100)
                .await
                .unwrap();
        assert_eq!(c.imported, 2);
        let page = jobs_page(pg, later, None, 0, 10).await.unwrap();
        assert_eq!(page[0].state, JobState::Skipped);
        assert_eq!(
            page[0].reason.as_ref().unwrap().to_string(),
            format!("already_sent: run {run}, job {}", claimed[0].id)
        );
        assert_eq!(page[1].state, JobState::Pending);

        // Expiry.
        client.execute("UPDATE jobs SET expires_at = $2 WHERE run_id = $1", &[&later, &(NOW + 150)]).await.unwrap();
        assert_eq!(expire_overdue(pg, later, NOW + 200).await.unwrap(), 1);
        assert_eq!(next_due_at(pg, later, NOW + 200).await.unwrap(), None);
    }

    /// A claim, and the run loop's question of when the next job is due,
    /// read the first entries of the run's range in `jobs_claim`, in claim
    /// order: they sort nothing and stop early, however many jobs the run
    /// holds. (The index by (run, state, due time) gave no id order, and each
    /// claim read and sorted every pending job of the run: 6.8 ms a claim at
    /// 20,000; the next-due question, asked as MIN() of a table not yet
    /// analyzed, as this one is, read them all too.) Whether a run has open
    /// jobs reads a range of the pending and of the dispatching jobs' indexes.
    #[tokio::test]
    async fn a_claim_reads_the_first_due_jobs_in_order_and_sorts_nothing() {
        let Some((_url, _store, mut client)) = ledger("pg claim plan").await else { return };
        let run = new_run(&client, "c", false, None).await;
        client
            .execute(
                "INSERT INTO jobs (run_id, phone, line, zone, parameters, due_at, created_at, updated_at) \
                 SELECT $1, '+1201555' || lpad(n::text, 4, '0'), n, 'UTC', '{}', $2, $2, $2 \
                 FROM generate_series(1, 5000) n",
                &[&run, &NOW],
            )
            .await
            .unwrap();
        let tx = client.transaction().await.unwrap();
        // The plan through an index, whatever the planner makes of the
        // table's size.
        tx.batch_execute("SET LOCAL enable_seqscan = off; SET LOCAL enable_bitmapscan = off").await.unwrap();
        let explain = async |sql: String, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]| -> String {
            let rows = tx.query(&format!("EXPLAIN {sql}"), params).await.unwrap();
            rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>().join("\n")
        };
        let (limit, only_ambiguous, lease) = (64_i64, false, NOW + 5_000);
        for plan in [
            explain(claim_all_sql(), &[&run, &NOW, &limit, &only_ambiguous, &"bench", &lease]).await,
            explain(due_to_check_sql(), &[&run, &NOW, &limit, &only_ambiguous]).await,
            explain(NEXT_DUE.to_string(), &[&run, &NOW]).await,
        ] {
            // The rows it takes (an UPDATE's CTE; what joins them to the
            // table after is not the claim's read).
            let reading = if plan.starts_with("Update") { plan.split("\n  ->  ").next().unwrap() } else { &plan };
            assert!(reading.contains("jobs_claim"), "the claim does not read jobs_claim:\n{plan}");
            assert!(!reading.contains("Sort"), "the claim sorts:\n{plan}");
            assert!(reading.contains("Limit"), "the claim reads more than its first entries:\n{plan}");
        }
        // Whether a run has open jobs: a range of each partial index, not
        // every job of the run.
        let plan = explain(format!("SELECT 1 FROM runs r WHERE r.id = $1 AND {}", no_open_jobs("r.id")), &[&run]).await;
        assert!(plan.contains("jobs_claim") && plan.contains("jobs_leased"), "{plan}");
        assert!(!plan.contains("jobs_page"), "{plan}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_claimers_never_claim_the_same_job() {
        let Some((url, store, client)) = ledger("pg jobs two claimers").await else { return };
        let run = new_run(&client, "c", false, None).await;
        let rows: Vec<ImportRow> = (0..500).map(|n| job(n as u64 + 2, &phone(n), None)).collect();
        assert_eq!(import_batch(pg(&store), run, &rows, 501, NOW, NOW).await.unwrap().imported, 500);
        let other = Store::open(&Ledger::parse(&url).unwrap()).await.unwrap();
        let claimer = |store: Store| {
            tokio::spawn(async move {
                let mut ids = Vec::new();
                loop {
                    let claimed = store.claim_due(run, NOW, 7, false, ContactLimits::default()).await.unwrap();
                    if claimed.is_empty() {
                        return ids;
                    }
                    ids.extend(claimed.iter().map(|j| j.id));
                }
            })
        };
        let (a, b) = (claimer(store.clone()), claimer(other));
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        let mut all: Vec<i64> = a.iter().chain(&b).copied().collect();
        all.sort_unstable();
        let total = all.len();
        all.dedup();
        assert_eq!(all.len(), total, "a job claimed twice");
        assert_eq!(total, 500, "every job claimed ({} and {})", a.len(), b.len());
    }

    #[tokio::test]
    async fn recovery_takes_only_jobs_whose_lease_ran_out() {
        let Some((_url, store, client)) = ledger("pg jobs recovery").await else { return };
        let pg = pg(&store);
        let run = new_run(&client, "c", false, None).await;
        let rows: Vec<ImportRow> = (0..3).map(|n| job(n as u64 + 2, &phone(n), None)).collect();
        import_batch(pg, run, &rows, 4, NOW, NOW).await.unwrap();
        let claimed = claim_due(pg, run, NOW, 3, false, &ContactLimits::default()).await.unwrap();
        assert_eq!(claimed.len(), 3);
        let (fresh, expired, unleased) = (claimed[0].id, claimed[1].id, claimed[2].id);
        client.execute("UPDATE jobs SET lease_until = $2 WHERE id = $1", &[&expired, &(NOW - 1)]).await.unwrap();
        client
            .execute("UPDATE jobs SET lease_until = NULL, lease_owner = NULL WHERE id = $1", &[&unleased])
            .await
            .unwrap();
        // Within the live lease: the two without one come back.
        assert_eq!(recover_dispatching(pg, run, NOW + 1).await.unwrap(), 2);
        assert_eq!(state_of(&client, fresh).await.0, "dispatching");
        for id in [expired, unleased] {
            let r = client
                .query_one("SELECT state, ambiguous_since, lease_owner FROM jobs WHERE id = $1", &[&id])
                .await
                .unwrap();
            assert_eq!(r.get::<_, String>(0), "pending");
            assert_eq!(r.get::<_, Option<i64>>(1), Some(NOW), "ambiguous from the attempt's start");
            assert_eq!(r.get::<_, Option<String>>(2), None);
        }
        // Reconciliation claims the ambiguous ones first.
        let again = claim_due(pg, run, NOW + 2, 10, true, &ContactLimits::default()).await.unwrap();
        assert_eq!(again.iter().map(|j| j.id).collect::<Vec<_>>(), [expired, unleased]);
        assert_eq!(again[0].ambiguous_since, Some(NOW));
        // Once the lease runs out, the last one too.
        assert_eq!(recover_dispatching(pg, run, NOW + LEASE_MS - 1).await.unwrap(), 0);
        client
            .execute(
                "UPDATE jobs SET lease_until = $2 WHERE id = ANY($1)",
                &[&vec![expired, unleased], &(NOW + 10 * LEASE_MS)],
            )
            .await
            .unwrap();
        assert_eq!(recover_dispatching(pg, run, NOW + LEASE_MS + 1).await.unwrap(), 1);
        assert_eq!(state_of(&client, fresh).await.0, "pending");

        // An outcome from another instance's claim is not this one's to record.
        client.execute("UPDATE jobs SET lease_owner = 'elsewhere' WHERE id = $1", &[&expired]).await.unwrap();
        let outcomes = [settled(expired, JobOutcome::Release), settled(unleased, JobOutcome::Release)];
        assert_eq!(record_outcomes(pg, &outcomes, &[], 0).await.unwrap(), 1);
        assert_eq!(state_of(&client, expired).await.0, "dispatching");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn caps_hold_across_two_claimers() {
        let Some((url, store, client)) = ledger("pg jobs caps").await else { return };
        let phones = 150;
        let (run_a, run_b) = (new_run(&client, "a", false, None).await, new_run(&client, "b", false, None).await);
        let rows: Vec<ImportRow> = (0..phones).map(|n| job(n as u64 + 2, &phone(n), None)).collect();
        import_batch(pg(&store), run_a, &rows, 200, NOW, NOW).await.unwrap();
        import_batch(pg(&store), run_b, &rows, 200, NOW, NOW).await.unwrap();
        let other = Store::open(&Ledger::parse(&url).unwrap()).await.unwrap();
        let limits = ContactLimits { max_per_day: Some(1), ..Default::default() };
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let claimer = |store: Store, run: i64, record: bool| {
            let sent = Arc::clone(&sent);
            tokio::spawn(async move {
                let mut phones = Vec::new();
                loop {
                    // A claim may hold every candidate back: done once none is due.
                    if store.next_due_at(run, NOW).await.unwrap().is_none_or(|due| due > NOW) {
                        return phones;
                    }
                    let claimed = store.claim_due(run, NOW, 5, false, limits).await.unwrap();
                    phones.extend(claimed.iter().map(|j| j.phone.as_str().to_string()));
                    if record {
                        let outcomes: Vec<SettledJob> = claimed
                            .iter()
                            .map(|j| settled(j.id, JobOutcome::Sent { sid: format!("FN{}", j.id) }))
                            .collect();
                        let n = store.record_outcomes(outcomes, vec![], std::time::Duration::from_secs(60)).await;
                        sent.fetch_add(n.unwrap(), std::sync::atomic::Ordering::SeqCst);
                    }
                }
            })
        };
        // One instance settles its sends as it goes, the other leaves them in flight.
        let (a, b) = (claimer(store.clone(), run_a, true), claimer(other, run_b, false));
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        let mut all: Vec<String> = a.iter().chain(&b).cloned().collect();
        all.sort();
        let total = all.len();
        all.dedup();
        assert_eq!(all.len(), total, "a phone claimed twice within a cap of one a day ({} and {})", a.len(), b.len());
        assert_eq!(total, phones, "every phone contacted once");
        // The rest were held back, not claimed: deferred (in flight elsewhere,
        // or a day after the send).
        let held: i64 = client
            .query_one("SELECT COUNT(*) FROM jobs WHERE state = 'pending' AND due_at > $1", &[&NOW])
            .await
            .unwrap()
            .get(0);
        assert_eq!(held as usize, phones);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn dedupe_holds_across_two_claimers() {
        let Some((url, store, client)) = ledger("pg jobs dedupe").await else { return };
        let keys = 120;
        let day = Some(86_400_000);
        let (run_a, run_b) = (new_run(&client, "c", false, day).await, new_run(&client, "c", false, day).await);
        // The same keys, other phones: only the dedupe rule links them.
        let rows = |offset: usize| -> Vec<ImportRow> {
            (0..keys).map(|n| job(n as u64 + 2, &phone(n + offset), Some(&format!("k{n}")))).collect()
        };
        import_batch(pg(&store), run_a, &rows(0), 200, NOW, NOW).await.unwrap();
        import_batch(pg(&store), run_b, &rows(1000), 200, NOW, NOW).await.unwrap();
        let other = Store::open(&Ledger::parse(&url).unwrap()).await.unwrap();
        let claimer = |store: Store, run: i64, record: bool| {
            tokio::spawn(async move {
                let mut claimed_keys = Vec::new();
                loop {
                    if store.next_due_at(run, NOW).await.unwrap().is_none_or(|due| due > NOW) {
                        return claimed_keys;
                    }
                    let claimed = store.claim_due(run, NOW, 4, false, ContactLimits::default()).await.unwrap();
                    claimed_keys.extend(claimed.iter().map(|j| {
                        let n: usize = j.phone.as_str()[8..].parse().unwrap();
                        n % 1000
                    }));
                    if record {
                        let outcomes: Vec<SettledJob> = claimed
                            .iter()
                            .map(|j| settled(j.id, JobOutcome::Sent { sid: format!("FN{}", j.id) }))
                            .collect();
                        store.record_outcomes(outcomes, vec![], std::time::Duration::from_secs(60)).await.unwrap();
                    }
                }
            })
        };
        let (a, b) = (claimer(store.clone(), run_a, true), claimer(other, run_b, false));
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        let mut all: Vec<usize> = a.iter().chain(&b).copied().collect();
        all.sort_unstable();
        let total = all.len();
        all.dedup();
        assert_eq!(all.len(), total, "a key claimed twice ({} and {})", a.len(), b.len());
        assert_eq!(total, keys, "every key claimed once");
        // Those held back by a send are skipped as already sent; those held
        // back by an attempt in flight look again in a second.
        let r = client
            .query_one(
                "SELECT COUNT(*) FILTER (WHERE state = 'skipped' AND reason LIKE 'already_sent: run %'), \
                        COUNT(*) FILTER (WHERE state = 'pending' AND due_at = $1) FROM jobs",
                &[&(NOW + IN_FLIGHT_RECHECK_MS)],
            )
            .await
            .unwrap();
        assert_eq!((r.get::<_, i64>(0) + r.get::<_, i64>(1)) as usize, keys);
    }

    /// Sends recorded as one batch apply, each, only to a job still in flight
    /// under this instance's lease, and write what one at a time wrote.
    #[tokio::test]
    async fn a_batch_of_sends_applies_only_to_jobs_this_instance_holds() {
        let Some((_url, store, client)) = ledger("pg batch of sends").await else { return };
        let pg = pg(&store);
        let run = new_run(&client, "c", false, None).await;
        let rows: Vec<ImportRow> = (0..3).map(|n| job(n as u64 + 2, &phone(n), None)).collect();
        import_batch(pg, run, &rows, 4, NOW, NOW).await.unwrap();
        let ids: Vec<i64> =
            claim_due(pg, run, NOW, 10, false, &ContactLimits::default()).await.unwrap().iter().map(|j| j.id).collect();
        // Another instance took the middle one over.
        client.execute("UPDATE jobs SET lease_owner = 'other' WHERE id = $1", &[&ids[1]]).await.unwrap();
        let outcomes: Vec<SettledJob> =
            ids.iter().map(|&id| settled(id, JobOutcome::Sent { sid: format!("FN{id}") })).collect();
        assert_eq!(record_outcomes(pg, &outcomes, &[], 1_000).await.unwrap(), 2);
        for (k, &id) in ids.iter().enumerate() {
            let r = client
                .query_one(
                    "SELECT state, execution_sid, attempts, sent_at, outcome_state, outcome_due_at, lease_owner \
                     FROM jobs WHERE id = $1",
                    &[&id],
                )
                .await
                .unwrap();
            let got = (
                r.get::<_, String>(0),
                r.get::<_, Option<String>>(1),
                r.get::<_, i64>(2),
                r.get::<_, Option<i64>>(3),
                r.get::<_, Option<String>>(4),
                r.get::<_, Option<i64>>(5),
                r.get::<_, Option<String>>(6),
            );
            if k == 1 {
                assert_eq!(got, ("dispatching".into(), None, 0, None, None, None, Some("other".into())));
            } else {
                let sent = ("sent".into(), Some(format!("FN{id}")), 1, Some(NOW + 10), Some("open".into()));
                assert_eq!(got, (sent.0, sent.1, sent.2, sent.3, sent.4, Some(NOW + 1_010), None));
            }
        }
    }

    #[tokio::test]
    async fn every_outcome_applies_once() {
        let Some((_url, store, client)) = ledger("pg jobs outcomes").await else { return };
        let pg = pg(&store);
        let run = new_run(&client, "c", false, None).await;
        let rows: Vec<ImportRow> = (0..6).map(|n| job(n as u64 + 2, &phone(n), None)).collect();
        import_batch(pg, run, &rows, 7, NOW, NOW).await.unwrap();
        let ids: Vec<i64> =
            claim_due(pg, run, NOW, 10, false, &ContactLimits::default()).await.unwrap().iter().map(|j| j.id).collect();
        let outcomes = vec![
            settled(
                ids[0],
                JobOutcome::Skipped {
                    reason: JobReason::with_detail(ReasonKind::Conflict, "busy"),
                    sid: Some("FNx".into()),
                },
            ),
            settled(ids[1], JobOutcome::Expired),
            settled(
                ids[2],
                JobOutcome::Retry {
                    due_at: NOW + 500,
                    failures: 2,
                    throttled: true,
                    ambiguous_since: Some(NOW),
                    conflict: Some(("FNbusy".into(), NOW + 1)),
                    last_error: Some("503".into()),
                },
            ),
            settled(ids[3], JobOutcome::Cancelled),
            settled(ids[4], JobOutcome::Sent { sid: "FN4".into() }),
            settled(ids[5], JobOutcome::Sent { sid: "FN5".into() }),
        ];
        assert_eq!(record_outcomes(pg, &outcomes, &[], 1_000).await.unwrap(), 6);
        // Applied once: the jobs are no longer dispatching.
        assert_eq!(record_outcomes(pg, &outcomes, &[], 1_000).await.unwrap(), 0);
        let page = jobs_page(pg, run, None, 0, 10).await.unwrap();
        let states: Vec<JobState> = page.iter().map(|j| j.state).collect();
        assert_eq!(
            states,
            [
                JobState::Skipped,
                JobState::Expired,
                JobState::Pending,
                JobState::Cancelled,
                JobState::Sent,
                JobState::Sent
            ]
        );
        assert_eq!(page[0].reason.as_ref().unwrap().to_string(), "conflict: busy");
        assert_eq!(page[0].execution_sid.as_deref(), Some("FNx"));
        assert_eq!(page[1].reason.as_ref().unwrap().to_string(), "expired");
        assert_eq!(page[3].reason.as_ref().unwrap().to_string(), "run cancelled");
        assert_eq!((page[2].due_at, page[2].attempts, page[2].last_error.as_deref()), (NOW + 500, 1, Some("503")));
        let r = client
            .query_one(
                "SELECT failures, throttles, ambiguous_since, conflict_sid, conflict_since FROM jobs WHERE id = $1",
                &[&ids[2]],
            )
            .await
            .unwrap();
        assert_eq!((r.get::<_, i64>(0), r.get::<_, i64>(1)), (2, 1));
        assert_eq!(r.get::<_, Option<i64>>(2), Some(NOW));
        assert_eq!(
            (r.get::<_, Option<String>>(3).as_deref(), r.get::<_, Option<i64>>(4)),
            (Some("FNbusy"), Some(NOW + 1))
        );
        // The Execution it waits on ends: it is due now.
        assert_eq!(record_execution_end(pg, "FNbusy", NOW + 50, None, NOW + 60).await.unwrap(), (0, 1));
        assert_eq!(jobs_page(pg, run, Some(JobState::Pending), 0, 10).await.unwrap()[0].due_at, NOW + 60);
        // Outcomes: rescheduled, then read.
        assert_eq!(open_outcomes(pg, None).await.unwrap(), 2);
        assert!(due_outcomes(pg, None, NOW, 10, false).await.unwrap().is_empty());
        assert_eq!(due_outcomes(pg, None, NOW, 10, true).await.unwrap().len(), 2);
        reschedule_outcome(pg, ids[4], NOW + 5_000, NOW + 100).await.unwrap();
        let due = due_outcomes(pg, Some(run), NOW + 2_000, 10, false).await.unwrap();
        assert_eq!(due.iter().map(|o| (o.id, o.polls)).collect::<Vec<_>>(), [(ids[5], 0)]);
        assert_eq!(next_outcome_due(pg, Some(run)).await.unwrap(), Some(NOW + 10 + 1_000));
        let mut values = serde_json::Map::new();
        values.insert("score".into(), serde_json::json!(2.5));
        let mut notes = serde_json::Map::new();
        notes.insert("score".into(), serde_json::json!("kept as text"));
        let collected = CollectedOutcome { status: "active".into(), ended_in: None, values, notes };
        assert!(record_collected(pg, ids[4], OutcomeState::Unknown, &collected, NOW + 200).await.unwrap());
        assert_eq!(outcome_counts(pg, run, "score").await.unwrap(), [(Some("2.5".to_string()), 1)]);
        let row = jobs_page(pg, run, Some(JobState::Sent), 0, 10).await.unwrap().remove(0);
        assert_eq!(row.outcome_state, Some(OutcomeState::Unknown));
        assert_eq!(row.outcome_notes["score"], serde_json::json!("kept as text"));
        assert_eq!(open_outcomes(pg, Some(run)).await.unwrap(), 1);
    }

    #[test]
    fn json_values_read_as_sqlite_reads_them() {
        let v = |kind: &str, text: &str| sqlite_json_value(Some(kind), Some(text.to_string()));
        assert_eq!(v("number", "9"), Some("9".into()));
        assert_eq!(v("number", "3.0"), Some("3".into()));
        assert_eq!(v("number", "2.5"), Some("2.5".into()));
        assert_eq!(v("boolean", "false"), Some("0".into()));
        assert_eq!(v("string", "a \"b\""), Some("\"a \\\"b\\\"\"".into()));
        assert_eq!(v("array", "[1, 2]"), Some("\"[1,2]\"".into()));
        assert_eq!(sqlite_json_value(Some("null"), None), None);
        assert_eq!(sqlite_json_value(None, None), None);
    }
}
