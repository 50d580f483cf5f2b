//! Contacts pushed to a campaign with `trigger = "api"`: each lands in the
//! campaign's open run for the day, in one transaction per request, and a
//! contact's key (given, or the request's Idempotency-Key with its place)
//! maps to the job it made, so a repeated push is a no-op.

use rusqlite::{Connection, OptionalExtension, params};

use super::parsed;
use crate::domain::{ImportRow, JobState};
use crate::store::{NewRun, PushOutcome, PushResult, PushRow, Result};

pub fn push(conn: &mut Connection, open: &NewRun, rows: &[PushRow], now: i64) -> Result<(i64, Vec<PushResult>)> {
    let tx = super::write_transaction(conn)?;
    let run_id = match super::runs::run_by_key(&tx, &open.campaign, &open.run_key)? {
        Some(id) => id,
        None => super::runs::create_run(&tx, open, now)?.ok_or(crate::store::StoreError::RunNotFound(0))?,
    };
    // Yesterday's open run takes no more contacts: its import is complete, so
    // it finishes once its jobs are settled.
    super::exec(
        &tx,
        "UPDATE runs SET expanded_at = ?3, state = CASE WHEN state = 'expanding' THEN 'active' ELSE state END \
         WHERE campaign = ?1 AND trigger = 'contacts' AND expanded_at IS NULL AND id != ?2",
        params![open.campaign, run_id, now],
    )?;
    let rows_so_far: i64 = tx.query_row("SELECT rows_total FROM runs WHERE id = ?1", [run_id], |r| r.get(0))?;
    let mut results = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        if let Some(key) = &row.key
            && let Some(job) = tx
                .prepare_cached("SELECT job_id FROM push_keys WHERE campaign = ?1 AND key = ?2")?
                .query_row(params![open.campaign, key], |r| r.get::<_, i64>(0))
                .optional()?
        {
            results.push(with_state(&tx, job, PushOutcome::Existing)?);
            continue;
        }
        // Pushed contacts are numbered on, as if one growing CSV.
        let line = (rows_so_far + i as i64 + 2) as u64;
        let item = match &row.item {
            ImportRow::Job(spec) => ImportRow::Job(crate::domain::JobSpec { line, ..spec.clone() }),
            ImportRow::Rejected(r) => ImportRow::Rejected(crate::domain::Rejection { line, ..r.clone() }),
        };
        let counts = super::jobs::insert_batch(&tx, run_id, std::slice::from_ref(&item), line, now, now)?;
        let ImportRow::Job(spec) = &item else {
            let reason = match &item {
                ImportRow::Rejected(r) => r.reason.clone(),
                ImportRow::Job(_) => unreachable!(),
            };
            results.push(PushResult { job: None, outcome: PushOutcome::Rejected, state: None, reason: Some(reason) });
            continue;
        };
        let job: i64 = tx
            .prepare_cached("SELECT id FROM jobs WHERE run_id = ?1 AND phone = ?2")?
            .query_row(params![run_id, spec.phone.as_str()], |r| r.get(0))?;
        let outcome = if counts.duplicates > 0 { PushOutcome::Duplicate } else { PushOutcome::Created };
        if let (Some(key), PushOutcome::Created) = (&row.key, outcome) {
            tx.prepare_cached("INSERT INTO push_keys (campaign, key, job_id, created_at) VALUES (?1, ?2, ?3, ?4)")?
                .execute(params![open.campaign, key, job, now])?;
        }
        results.push(with_state(&tx, job, outcome)?);
    }
    tx.commit()?;
    Ok((run_id, results))
}

fn with_state(conn: &Connection, job: i64, outcome: PushOutcome) -> Result<PushResult> {
    let (state, reason): (JobState, Option<String>) = conn
        .prepare_cached("SELECT state, reason FROM jobs WHERE id = ?1")?
        .query_row([job], |r| Ok((parsed(r, 0)?, r.get(1)?)))?;
    Ok(PushResult { job: Some(job), outcome, state: Some(state), reason })
}
