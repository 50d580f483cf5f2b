//! PostgreSQL twin of `sqlite/jobs.rs`: jobs imported in batched
//! transactions, claimed by due time, outcomes guarded by id and state, and
//! the audit record of Studio calls.
//!
//! What differs from SQLite, where several instances share the ledger:
//! - a claim takes its rows with `FOR UPDATE SKIP LOCKED`, so two instances
//!   never claim the same job and never wait on each other for one; it writes
//!   this instance as the job's lease owner, for [`LEASE_MS`];
//! - the per-contact caps and dedupe checks, which SQLite serialises with its
//!   one writer, hold a transaction-scoped advisory lock ([`claim_lock`]) from
//!   before the checks until the claims commit;
//! - an outcome applies only to a job still leased to this instance (or to
//!   none), and clears the lease;
//! - [`recover_dispatching`] takes back only jobs whose lease ran out.

use std::collections::{BTreeMap, HashSet};

use deadpool_postgres::Transaction;
use tokio_postgres::Row;

use super::{LEASE_MS, Pg, parsed};
use crate::domain::{
    CollectedOutcome, ContactLimits, ImportRow, JobOutcome, JobReason, JobState, OutcomeState, Parameters, Phone,
    ReasonKind, RowOutcome,
};
use crate::store::{
    BatchCounts, CallSummary, ClaimedJob, JobRow, OutcomeJob, RefusedRow, Result, SettledJob, StoreError, StudioCall,
};

const JOB_COLUMNS: &str = "id, run_id, line, phone, state, reason, execution_sid, attempts, due_at, expires_at, \
     sent_at, finished_at, last_error, execution_ended_at, ended_reason, outcome_state, execution_status, ended_in, \
     outcome, outcome_notes";

/// The columns a claim returns, in [`claimed_from_row`]'s order.
const CLAIMED_COLUMNS: &str = "id, run_id, phone, zone, parameters, attempts, failures, throttles, expires_at, \
     attempt_started_at, ambiguous_since, conflict_sid, conflict_since";

/// The advisory lock (one per ledger schema) that serialises the claims
/// checking per-contact caps or dedupe keys across instances, as SQLite's
/// single writer does.
fn claim_lock() -> &'static str {
    "SELECT pg_advisory_xact_lock(hashtext('flowcast claim checks ' || current_schema()))"
}

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
        parameters: Parameters::from_ledger(r.try_get(base + 4)?),
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

/// Writes a batch of imported rows in one transaction. A phone already in the
/// run is a duplicate: the first row stays, this one is recorded as such.
///
/// The run's counts and `import_line` (the last CSV line this batch covers)
/// are updated in the same transaction, so a resumed import starts after it.
pub(crate) async fn import_batch(
    pg: &Pg,
    run_id: i64,
    items: &[ImportRow],
    last_line: u64,
    default_due: i64,
    now: i64,
) -> Result<BatchCounts> {
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    let counts = insert_batch(&tx, run_id, items, last_line, default_due, now).await?;
    tx.commit().await?;
    Ok(counts)
}

/// [`import_batch`]'s writes, inside the caller's transaction (a run created
/// with its rows, a pushed contact).
///
/// The jobs go in with one multi-row `INSERT … SELECT FROM UNNEST`, the
/// refused and duplicate rows with another. Within the batch the first row
/// with a phone is kept, as SQLite's row-by-row inserts keep it.
pub(crate) async fn insert_batch(
    tx: &Transaction<'_>,
    run_id: i64,
    items: &[ImportRow],
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
    // Without a dedupe rule no key matches: `dedupe_key = NULL` is never true.
    let dedupe_since = dedupe_within.map_or(i64::MAX, |w| now.saturating_sub(w));

    // The jobs to insert (the first row of each phone in this batch), in order.
    let mut phones: Vec<&str> = Vec::new();
    let mut lines: Vec<i64> = Vec::new();
    let mut zones: Vec<&str> = Vec::new();
    let mut parameters: Vec<&str> = Vec::new();
    let mut dues: Vec<i64> = Vec::new();
    let mut expiries: Vec<Option<i64>> = Vec::new();
    let mut keys: Vec<Option<&str>> = Vec::new();
    let mut seen: HashSet<&str> = HashSet::new();
    for item in items {
        if let ImportRow::Job(spec) = item
            && seen.insert(spec.phone.as_str())
        {
            phones.push(spec.phone.as_str());
            lines.push(spec.line as i64);
            zones.push(spec.zone.name());
            parameters.push(spec.parameters.as_json());
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
        let insert_jobs = tx
            .prepare_cached(
                "INSERT INTO jobs (run_id, phone, line, zone, parameters, due_at, expires_at, created_at, updated_at, \
                                   dedupe_key, state, reason, finished_at) \
                 SELECT $1, u.phone, u.line, u.zone, u.parameters, u.due_at, u.expires_at, $2, $2, u.dedupe_key, \
                        CASE WHEN s.phone IS NULL AND d.id IS NULL THEN 'pending' ELSE 'skipped' END, \
                        CASE WHEN s.phone IS NOT NULL \
                                  THEN 'suppressed: scope ' || s.scope || COALESCE(', ' || s.reason, '') \
                             WHEN d.id IS NOT NULL THEN 'already_sent: run ' || d.run_id || ', job ' || d.id END, \
                        CASE WHEN s.phone IS NULL AND d.id IS NULL THEN NULL ELSE $2 END \
                 FROM UNNEST($3::text[], $4::bigint[], $5::text[], $6::text[], $7::bigint[], $8::bigint[], $9::text[]) \
                      WITH ORDINALITY AS u(phone, line, zone, parameters, due_at, expires_at, dedupe_key, ord) \
                 LEFT JOIN LATERAL (SELECT phone, scope, reason FROM suppressions \
                                    WHERE phone = u.phone AND scope IN ('all', $10, $11, $12) \
                                    ORDER BY seq LIMIT 1) s ON TRUE \
                 LEFT JOIN LATERAL (SELECT j.run_id, j.id FROM jobs j JOIN runs r ON r.id = j.run_id \
                                    WHERE j.dedupe_key = u.dedupe_key AND r.campaign = $11 AND j.sent_at > $13 \
                                    ORDER BY j.id LIMIT 1) d ON TRUE \
                 ORDER BY u.ord \
                 ON CONFLICT (run_id, phone) DO NOTHING \
                 RETURNING phone",
            )
            .await?;
        let rows = tx
            .query(
                &insert_jobs,
                &[
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
                    &dedupe_since,
                ],
            )
            .await?;
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
        match item {
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
                 SELECT $1, u.line, u.raw_phone, u.outcome, u.reason \
                 FROM UNNEST($2::bigint[], $3::text[], $4::text[], $5::text[]) \
                      WITH ORDINALITY AS u(line, raw_phone, outcome, reason, ord) \
                 ORDER BY u.ord",
            )
            .await?;
        tx.execute(&insert_rows, &[&run_id, &row_lines, &raw_phones, &outcomes, &reasons]).await?;
    }
    let update_run = tx
        .prepare_cached(
            "UPDATE runs SET rows_total = rows_total + $2, imported = imported + $3, rejected = rejected + $4, \
             duplicates = duplicates + $5, import_line = GREATEST(import_line, $6) WHERE id = $1",
        )
        .await?;
    tx.execute(
        &update_run,
        &[
            &run_id,
            &(counts.imported + counts.rejected + counts.duplicates),
            &counts.imported,
            &counts.rejected,
            &counts.duplicates,
            &(last_line as i64),
        ],
    )
    .await?;
    Ok(counts)
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
        let claim_all = tx
            .prepare_cached(&format!(
                "WITH due AS (SELECT id FROM jobs \
                              WHERE run_id = $1 AND state = 'pending' AND due_at <= $2 \
                                AND (expires_at IS NULL OR expires_at > $2 OR ambiguous_since IS NOT NULL) \
                                AND (NOT $4::boolean OR ambiguous_since IS NOT NULL) \
                              ORDER BY due_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) \
                 UPDATE jobs j SET state = 'dispatching', attempt_started_at = $2, updated_at = $2, \
                                   lease_owner = $5, lease_until = $6 \
                 FROM due WHERE j.id = due.id AND j.state = 'pending' \
                 RETURNING j.due_at, {}",
                CLAIMED_COLUMNS.split(", ").map(|c| format!("j.{c}")).collect::<Vec<_>>().join(", ")
            ))
            .await?;
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
    tx.execute(claim_lock(), &[]).await?;
    let due = tx
        .prepare_cached(
            "SELECT id, phone, dedupe_key, expires_at, ambiguous_since FROM jobs \
             WHERE run_id = $1 AND state = 'pending' AND due_at <= $2 \
               AND (expires_at IS NULL OR expires_at > $2 OR ambiguous_since IS NOT NULL) \
               AND (NOT $4::boolean OR ambiguous_since IS NOT NULL) \
             ORDER BY due_at, id LIMIT $3 FOR UPDATE SKIP LOCKED",
        )
        .await?;
    let mut candidates: Vec<Candidate> = Vec::new();
    for r in tx.query(&due, &[&run_id, &now, &limit, &only_ambiguous]).await? {
        candidates.push((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?));
    }
    let claim = tx
        .prepare_cached(&format!(
            "UPDATE jobs SET state = 'dispatching', attempt_started_at = $2, updated_at = $2, \
                             lease_owner = $3, lease_until = $4 \
             WHERE id = $1 AND state = 'pending' RETURNING {CLAIMED_COLUMNS}"
        ))
        .await?;
    let mut jobs = Vec::new();
    for (id, phone, key, expires_at, ambiguous_since) in candidates {
        // An attempt whose fate is unknown is reconciled before anything
        // else: it may already be the contact the checks would count.
        if ambiguous_since.is_none() {
            if let (Some(within), Some(key)) = (dedupe_within, key.as_deref()) {
                match earlier_with_key(&tx, &campaign, key, id, now.saturating_sub(within)).await? {
                    Some(Earlier { run, job, in_flight: false }) => {
                        let reason = JobReason::with_detail(ReasonKind::AlreadySent, format!("run {run}, job {job}"));
                        skip(&tx, id, &reason, now).await?;
                        continue;
                    }
                    Some(Earlier { in_flight: true, .. }) => {
                        // Its attempt may yet fail: look again shortly rather
                        // than skip on a send that never happened.
                        defer(&tx, id, now + IN_FLIGHT_RECHECK_MS, now).await?;
                        continue;
                    }
                    None => {}
                }
            }
            if let Some(caps) = caps {
                let Contacts { sent, in_flight } =
                    contacts_of(&tx, &phone, id, now.saturating_sub(caps.horizon_ms())).await?;
                // Only Executions known to be sent move the job on, or end it.
                let allowed = caps.next_allowed(&sent, now);
                if allowed > now {
                    if expires_at.is_some_and(|e| e <= allowed) || allowed == i64::MAX {
                        let reason = JobReason::with_detail(ReasonKind::FrequencyCap, caps.describe());
                        skip(&tx, id, &reason, now).await?;
                    } else {
                        defer(&tx, id, allowed, now).await?;
                    }
                    continue;
                }
                // Attempts still out may yet count, or may send nothing (an
                // opt-out, a 409, a failure): not now, but look again shortly
                // rather than a day later on a send that never happened.
                if !in_flight.is_empty() && caps.next_allowed(&[sent, in_flight].concat(), now) > now {
                    defer(&tx, id, now + IN_FLIGHT_RECHECK_MS, now).await?;
                    continue;
                }
            }
        }
        if let Some(row) = tx.query_opt(&claim, &[&id, &now, &pg.instance, &lease_until]).await? {
            jobs.push(claimed_from_row(&row, 0)?);
        }
    }
    tx.commit().await?;
    Ok(jobs)
}

/// A due job before the checks: id, phone, dedupe key, expiry, and the start
/// of an attempt of unknown fate.
type Candidate = (i64, String, Option<String>, Option<i64>, Option<i64>);

/// How soon a job held back only by another job's attempt still out (its
/// dedupe key, or a contact the caps would count) looks again.
const IN_FLIGHT_RECHECK_MS: i64 = 1_000;

/// An earlier job of the same campaign with the same dedupe key.
struct Earlier {
    run: i64,
    job: i64,
    /// Its attempt is out (or its fate unknown): not yet known to be sent.
    in_flight: bool,
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

/// The instants (ms) of a phone's contacts by campaigns that count.
struct Contacts {
    /// Executions sent.
    sent: Vec<i64>,
    /// Attempts out, or of unknown fate: they may yet be contacts, or not.
    in_flight: Vec<i64>,
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
    let mut contacts = Contacts { sent: Vec::new(), in_flight: Vec::new() };
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
    for o in outcomes {
        if apply_outcome(&tx, &pg.instance, o, outcome_after_ms).await? {
            applied += 1;
        } else {
            tracing::warn!(job = o.job_id, "job changed state while in flight; its outcome was not recorded");
        }
    }
    insert_calls(&tx, calls).await?;
    tx.commit().await?;
    Ok(applied)
}

/// The guard every outcome's update ends with: `$1` the job, `$2` this
/// instance.
const IN_FLIGHT_HERE: &str = "WHERE id = $1 AND state = 'dispatching' AND (lease_owner IS NULL OR lease_owner = $2)";

async fn apply_outcome(tx: &Transaction<'_>, instance: &str, o: &SettledJob, outcome_after_ms: i64) -> Result<bool> {
    let (job_id, attempts_sent, now) = (o.job_id, o.attempts_sent, o.at);
    let clear = "lease_owner = NULL, lease_until = NULL";
    let changed = match &o.outcome {
        JobOutcome::Sent { sid } => {
            let stmt = tx
                .prepare_cached(&format!(
                    "UPDATE jobs SET state = 'sent', reason = NULL, execution_sid = $3, attempts = attempts + $4, \
                     ambiguous_since = NULL, conflict_sid = NULL, sent_at = $5, finished_at = $5, updated_at = $5, \
                     outcome_state = 'open', outcome_due_at = $5 + $6, {clear} {IN_FLIGHT_HERE}"
                ))
                .await?;
            tx.execute(&stmt, &[&job_id, &instance, sid, &attempts_sent, &now, &outcome_after_ms]).await?
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
/// still holds is a live instance's request in flight, and stays its own.
pub(crate) async fn recover_dispatching(pg: &Pg, run_id: i64, now: i64) -> Result<usize> {
    let client = pg.client().await?;
    let stmt = client
        .prepare_cached(
            "UPDATE jobs SET state = 'pending', ambiguous_since = COALESCE(ambiguous_since, attempt_started_at, $2), \
             due_at = LEAST(due_at, $2), updated_at = $2, lease_owner = NULL, lease_until = NULL \
             WHERE run_id = $1 AND state = 'dispatching' AND (lease_until IS NULL OR lease_until < $2)",
        )
        .await?;
    Ok(client.execute(&stmt, &[&run_id, &now]).await? as usize)
}

/// The earliest due time among a run's pending jobs that have not expired by
/// `now` (expired ones are never claimed; [`expire_overdue`] settles them).
pub(crate) async fn next_due_at(pg: &Pg, run_id: i64, now: i64) -> Result<Option<i64>> {
    let client = pg.client().await?;
    let stmt = client
        .prepare_cached(
            "SELECT MIN(due_at) FROM jobs WHERE run_id = $1 AND state = 'pending' \
             AND (expires_at IS NULL OR expires_at > $2 OR ambiguous_since IS NOT NULL)",
        )
        .await?;
    Ok(client.query_one(&stmt, &[&run_id, &now]).await?.try_get(0)?)
}

/// Settles every pending job of a run whose `expires` has passed as `expired`,
/// in one statement: expired jobs never take a send slot. A job whose last
/// attempt's fate is unknown is left to be claimed: Studio is asked first
/// whether that attempt created an Execution. Returns how many.
///
/// A job another instance is claiming right now is left for the next sweep.
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

/// Jobs per state across every run (for metrics).
pub(crate) async fn jobs_by_state(pg: &Pg) -> Result<Vec<(JobState, i64)>> {
    let client = pg.client().await?;
    let stmt = client.prepare_cached("SELECT state, COUNT(*) FROM jobs GROUP BY state ORDER BY state").await?;
    client.query(&stmt, &[]).await?.iter().map(|r| Ok((parsed(r, 0)?, r.try_get(1)?))).collect()
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
pub(crate) async fn outcome_counts(pg: &Pg, run_id: i64, name: &str) -> Result<Vec<(Option<String>, i64)>> {
    let client = pg.client().await?;
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

/// The audit trail of one job, oldest first.
pub(crate) async fn calls_for_job(pg: &Pg, job_id: i64) -> Result<Vec<CallSummary>> {
    let client = pg.client().await?;
    let stmt = client
        .prepare_cached(
            "SELECT operation, outcome, execution_sid, note FROM studio_calls WHERE job_id = $1 ORDER BY id",
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
async fn insert_calls(tx: &Transaction<'_>, calls: &[StudioCall]) -> Result<()> {
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
