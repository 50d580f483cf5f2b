//! Expansion: a campaign's CSV streamed into one job per contact, in batched
//! transactions, with every row accounted for as imported, rejected or duplicate.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use crate::campaign::{Campaign, JobSpec, expand};
use crate::contacts::{ContactReader, ContactsError, Rejection, Row};
use crate::domain::{ConflictPolicy, FlowSid, RunState};
use crate::store::{ImportItem, NewRun, Store, StoreError};

/// The ledger record of a new run of `campaign`, with its settings frozen.
/// `trigger` is `manual`, `schedule` or `file`; `run_key` makes it unique.
pub fn new_run(campaign: &Campaign, flow: &FlowSid, trigger: &str, run_key: String, scheduled_at_ms: i64) -> NewRun {
    NewRun {
        campaign: campaign.name.clone(),
        kind: campaign.kind.as_str().to_string(),
        trigger: trigger.to_string(),
        run_key,
        scheduled_at: scheduled_at_ms,
        source: campaign.source.display().to_string(),
        flow_sid: flow.to_string(),
        from_addr: campaign.from.as_str().to_string(),
        on_conflict: campaign.on_conflict.name().to_string(),
        max_wait_ms: match campaign.on_conflict {
            ConflictPolicy::Wait { max_wait } => Some(max_wait.as_millis() as i64),
            _ => None,
        },
        rate: campaign.rate,
        window: campaign.send_window.map(|w| (w.start.format("%H:%M").to_string(), w.end.format("%H:%M").to_string())),
    }
}

/// Rows written per transaction: large enough to amortise the commit, small
/// enough that a cancel is seen quickly and memory stays flat.
pub const BATCH_ROWS: usize = 2_000;

/// Rows the reader thread hands over at a time.
const READ_CHUNK: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Contacts(#[from] ContactsError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How an import went: the three counts add up to `rows`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct ImportCounts {
    pub rows: i64,
    pub imported: i64,
    pub rejected: i64,
    pub duplicates: i64,
}

/// Turns one CSV row into what the ledger stores.
fn to_item(campaign: &Campaign, row: Row, now: DateTime<Utc>) -> ImportItem {
    match row {
        Row::Contact(contact) => match expand(campaign, &contact, now) {
            Ok(spec) => ImportItem::Job(spec),
            Err(reason) => ImportItem::Rejected(Rejection {
                line: contact.line,
                raw_phone: contact.phone.as_str().to_string(),
                reason,
            }),
        },
        Row::Rejected(r) => ImportItem::Rejected(r),
    }
}

/// Imports `campaign`'s contacts into run `run_id` (which must be `expanding`),
/// then marks the run's import complete. The run's jobs are claimable from the
/// first batch on, so sending starts while a large file is still being read.
///
/// An interrupted import resumes after the last CSV line the ledger has, so
/// calling this again for the same run neither loses nor repeats a row. Stops
/// early, keeping what it wrote, if the run is cancelled meanwhile. `progress`
/// sees the run's counts so far after each batch.
pub fn import_run(
    store: &Store,
    campaign: &Campaign,
    run_id: i64,
    now_ms: i64,
    mut progress: impl FnMut(&ImportCounts),
) -> Result<ImportCounts, ImportError> {
    let mut reader = ContactReader::open(&campaign.contacts, campaign.read_options())?;
    let now = DateTime::from_timestamp_millis(now_ms).unwrap_or_default();
    let resume_after = store.import_line(run_id)?;
    // Two stages on two threads: reading the CSV and normalising phones (the
    // costliest part: libphonenumber's validity patterns) on one, rendering and
    // writing to the ledger on the other. A small bounded channel keeps memory
    // flat; dropping the receiver (a cancel) stops the reader.
    let (chunks, received) = std::sync::mpsc::sync_channel::<Result<Vec<Row>, ContactsError>>(4);
    std::thread::scope(|scope| -> Result<(), ImportError> {
        scope.spawn(move || {
            loop {
                let mut chunk = Vec::with_capacity(READ_CHUNK);
                let mut failed = None;
                while chunk.len() < READ_CHUNK {
                    match reader.next_row() {
                        Ok(Some(row)) => chunk.push(row),
                        Ok(None) => break,
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                let last = chunk.len() < READ_CHUNK || failed.is_some();
                if !chunk.is_empty() && chunks.send(Ok(chunk)).is_err() {
                    return;
                }
                if let Some(e) = failed {
                    let _ = chunks.send(Err(e));
                    return;
                }
                if last {
                    return;
                }
            }
        });
        let mut batch = Vec::with_capacity(BATCH_ROWS);
        let mut last_line = resume_after;
        let mut rows = received.iter();
        loop {
            let chunk = rows.next().transpose()?;
            let done = chunk.is_none();
            for row in chunk.into_iter().flatten() {
                let line = match &row {
                    Row::Contact(c) => c.line,
                    Row::Rejected(r) => r.line,
                };
                if line > resume_after {
                    last_line = last_line.max(line);
                    batch.push(to_item(campaign, row, now));
                }
            }
            if batch.len() >= BATCH_ROWS || (done && !batch.is_empty()) {
                let written = store.import_batch(run_id, &batch, last_line, now_ms, now_ms)?;
                crate::telemetry::import_rows(
                    written.imported as u64,
                    written.rejected as u64,
                    written.duplicates as u64,
                );
                batch.clear();
                progress(&counts_of(store, run_id)?);
                // A cancel issued during expansion wins: stop writing jobs.
                if store.run_state(run_id)? == RunState::Cancelled.as_str() {
                    break;
                }
            }
            if done {
                break;
            }
        }
        // Ends the reader if it is still going (a cancel): its next send fails.
        drop(received);
        Ok(())
    })?;
    store.finish_expansion(run_id, now_ms)?;
    counts_of(store, run_id)
}

fn counts_of(store: &Store, run_id: i64) -> Result<ImportCounts, ImportError> {
    let run = store.get_run(run_id)?;
    Ok(ImportCounts {
        rows: run.rows_total,
        imported: run.imported,
        rejected: run.rejected,
        duplicates: run.duplicates,
    })
}

/// What a dry run found: the counts, the first jobs, and every refused row.
#[derive(Debug, Clone, Default)]
pub struct DryRun {
    pub counts: ImportCounts,
    pub first: Vec<JobSpec>,
    pub refused: Vec<(Rejection, &'static str)>,
    pub earliest_due: Option<chrono::DateTime<chrono::Utc>>,
    pub latest_due: Option<chrono::DateTime<chrono::Utc>>,
}

/// Expands a campaign without writing anything, for `--dry-run` and `validate`.
/// Duplicates are found with an in-memory set of phones here, since there is no
/// ledger to ask.
pub fn dry_run(campaign: &Campaign, keep_first: usize, now: DateTime<Utc>) -> Result<DryRun, ContactsError> {
    let mut reader = ContactReader::open(&campaign.contacts, campaign.read_options())?;
    let mut out = DryRun::default();
    let mut seen = HashSet::new();
    while let Some(row) = reader.next_row()? {
        out.counts.rows += 1;
        match to_item(campaign, row, now) {
            ImportItem::Job(spec) => {
                if !seen.insert(spec.phone.as_str().to_string()) {
                    out.counts.duplicates += 1;
                    let reason = format!("duplicate phone {}; the first row with it is kept", spec.phone);
                    out.refused.push((
                        Rejection { line: spec.line, raw_phone: spec.phone.as_str().to_string(), reason },
                        "duplicate",
                    ));
                    continue;
                }
                out.counts.imported += 1;
                if let Some(due) = spec.due_at {
                    out.earliest_due = Some(out.earliest_due.map_or(due, |d| d.min(due)));
                    out.latest_due = Some(out.latest_due.map_or(due, |d| d.max(due)));
                }
                if out.first.len() < keep_first {
                    out.first.push(spec);
                }
            }
            ImportItem::Rejected(r) => {
                out.counts.rejected += 1;
                out.refused.push((r, "rejected"));
            }
        }
    }
    Ok(out)
}
