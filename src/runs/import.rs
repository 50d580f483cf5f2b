//! Expansion: a campaign's CSV streamed into one job per contact, in batched
//! transactions, with every row accounted for as imported, rejected or duplicate.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use crate::campaign::{Campaign, expand};
use crate::contacts::{ContactReader, ContactsError, Row};
use crate::domain::{ImportRow, JobSpec, Rejection, RowOutcome, RunState};
use crate::store::{Store, StoreError};

/// Rows written per batch, in one transaction unless another write waits
/// for a SQLite ledger (see `Store::import_batch`), while other writes share
/// the ledger and on PostgreSQL: large enough to amortise the commit, small
/// enough that memory stays flat. (A cancel is seen within a batch on
/// SQLite, whose batches give way to it, and after it on PostgreSQL.)
pub const BATCH_ROWS: usize = 2_000;

/// Rows per batch while an import has a SQLite ledger to itself (see
/// `Store::import_in_small_batches`). A commit writes every page its rows
/// dirtied to the log; a large run's phones land on random pages of the
/// unique (phone, run) index, so 2,000 rows wrote about a page each, and a
/// million-row import took 10.3-10.8 s where batches growing to 65,536 rows
/// took 6.4-6.5 s (peak RSS 104 -> 127 MB, the batch and half of one more
/// in memory; how far ahead the reader may be is set in `import_run`).
pub const LONE_BATCH_ROWS: usize = 65_536;

/// Rows the reader hands over at a time.
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
pub(super) fn to_item(campaign: &Campaign, row: Row, now: DateTime<Utc>) -> ImportRow {
    match row {
        Row::Contact(contact) => match expand(campaign, &contact, now) {
            Ok(spec) => ImportRow::Job(spec),
            Err(reason) => ImportRow::Rejected(Rejection {
                line: contact.line,
                raw_phone: contact.phone.as_str().to_string(),
                reason,
            }),
        },
        Row::Rejected(r) => ImportRow::Rejected(r),
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
pub async fn import_run(
    store: &Store,
    campaign: &Campaign,
    run_id: i64,
    now_ms: i64,
    mut progress: impl AsyncFnMut(&ImportCounts),
) -> Result<ImportCounts, ImportError> {
    let Some(contacts) = &campaign.contacts else {
        return Err(ContactsError::Pushed { campaign: campaign.name.clone() }.into());
    };
    let mut reader = ContactReader::open(contacts, campaign.read_options())?;
    let now = DateTime::from_timestamp_millis(now_ms).unwrap_or_default();
    let resume = store.import_resume(run_id).await?;
    let resume_after = resume.first();
    // Reading the CSV, normalising phones and rendering each row run on a
    // blocking thread; the ledger writes each batch on the blocking pool
    // meanwhile. A bounded channel keeps memory flat. It holds a whole
    // large batch, so the reader need not stop half a batch ahead while one
    // is written: a million-row import took 78,700-87,300 rows/s with half
    // a batch and 92,800-100,900 with a whole one, alternately, peak RSS
    // 114 -> 124 MB. Dropping the receiver (a cancel) stops the reader at
    // its next chunk.
    let (chunks, mut received) =
        tokio::sync::mpsc::channel::<Result<Vec<ImportRow>, ContactsError>>(LONE_BATCH_ROWS / READ_CHUNK);
    let owned = campaign.clone();
    let reading = tokio::task::spawn_blocking(move || {
        loop {
            let mut chunk = Vec::with_capacity(READ_CHUNK);
            let mut failed = None;
            while chunk.len() < READ_CHUNK {
                match reader.next_row() {
                    Ok(Some(row)) => {
                        let line = match &row {
                            Row::Contact(c) => c.line,
                            Row::Rejected(r) => r.line,
                        };
                        if !resume.has(line) {
                            chunk.push(to_item(&owned, row, now));
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            let last = chunk.len() < READ_CHUNK || failed.is_some();
            if !chunk.is_empty() && chunks.blocking_send(Ok(chunk)).is_err() {
                return;
            }
            if let Some(e) = failed {
                let _ = chunks.blocking_send(Err(e));
                return;
            }
            if last {
                return;
            }
        }
    });
    // The first batch is small, so that a run's first jobs can be claimed
    // at once; while the import has the ledger to itself each batch is
    // twice the one before, up to LONE_BATCH_ROWS.
    let mut limit = BATCH_ROWS;
    let mut batch = Vec::with_capacity(limit);
    let mut last_line = resume_after;
    let written = async {
        loop {
            let chunk = received.recv().await.transpose()?;
            let done = chunk.is_none();
            for item in chunk.into_iter().flatten() {
                last_line = last_line.max(item.line());
                batch.push(item);
            }
            if batch.len() >= limit || (done && !batch.is_empty()) {
                let rows = std::mem::take(&mut batch);
                let written = store.import_batch(run_id, rows, last_line, now_ms, now_ms).await?;
                limit = if store.import_in_small_batches() { BATCH_ROWS } else { (limit * 2).min(LONE_BATCH_ROWS) };
                batch = Vec::with_capacity(limit);
                crate::telemetry::import_rows(
                    written.imported as u64,
                    written.rejected as u64,
                    written.duplicates as u64,
                );
                progress(&counts_of(store, run_id).await?).await;
                // A cancel issued during expansion wins: stop writing jobs.
                if store.run_state(run_id).await? == RunState::Cancelled {
                    break;
                }
            }
            if done {
                break;
            }
        }
        Ok::<(), ImportError>(())
    }
    .await;
    // Ends the reader if it is still going (a cancel, a failed write): its next
    // send fails.
    drop(received);
    let _ = reading.await;
    written?;
    store.finish_expansion(run_id, now_ms).await?;
    counts_of(store, run_id).await
}

async fn counts_of(store: &Store, run_id: i64) -> Result<ImportCounts, ImportError> {
    let run = store.get_run(run_id).await?;
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
    /// Contacts the suppression list keeps from this campaign.
    pub suppressed: i64,
    pub counts: ImportCounts,
    pub first: Vec<JobSpec>,
    pub refused: Vec<(Rejection, RowOutcome)>,
    pub earliest_due: Option<chrono::DateTime<chrono::Utc>>,
    pub latest_due: Option<chrono::DateTime<chrono::Utc>>,
    /// Imported jobs that would expire unsent: due (or, with a send window,
    /// let out) at or after their `expires` time.
    pub would_expire: i64,
}

/// Expands a campaign without writing anything, for `--dry-run` and `validate`.
/// Duplicates are found with an in-memory set of phones here, since there is no
/// ledger to ask.
///
/// `suppressed` holds the phones the suppression list keeps from this
/// campaign ([`suppressed_phones`]); their jobs would end `skipped`.
pub fn dry_run(
    campaign: &Campaign,
    keep_first: usize,
    now: DateTime<Utc>,
    suppressed: &HashSet<String>,
) -> Result<DryRun, ContactsError> {
    let Some(contacts) = &campaign.contacts else {
        return Err(ContactsError::Pushed { campaign: campaign.name.clone() });
    };
    let mut reader = ContactReader::open(contacts, campaign.read_options())?;
    let mut out = DryRun::default();
    let mut seen = HashSet::new();
    while let Some(row) = reader.next_row()? {
        out.counts.rows += 1;
        match to_item(campaign, row, now) {
            ImportRow::Job(spec) => {
                if !seen.insert(spec.phone.as_str().to_string()) {
                    out.counts.duplicates += 1;
                    let reason = format!("duplicate phone {}; the first row with it is kept", spec.phone);
                    out.refused.push((
                        Rejection { line: spec.line, raw_phone: spec.phone.as_str().to_string(), reason },
                        RowOutcome::Duplicate,
                    ));
                    continue;
                }
                out.counts.imported += 1;
                if suppressed.contains(spec.phone.as_str()) {
                    out.suppressed += 1;
                    continue;
                }
                // The dispatcher expires a job whose expiry is at or before the
                // moment it is claimed, which is its due time at the earliest.
                if spec.expires_at.is_some_and(|expires| expires <= spec.due_at.unwrap_or(now)) {
                    out.would_expire += 1;
                }
                if let Some(due) = spec.due_at {
                    out.earliest_due = Some(out.earliest_due.map_or(due, |d| d.min(due)));
                    out.latest_due = Some(out.latest_due.map_or(due, |d| d.max(due)));
                }
                if out.first.len() < keep_first {
                    out.first.push(spec);
                }
            }
            ImportRow::Rejected(r) => {
                out.counts.rejected += 1;
                out.refused.push((r, RowOutcome::Rejected));
            }
        }
    }
    Ok(out)
}

/// The phones the suppression list keeps from `campaign` (its entries in
/// scope `all`, the campaign's kind, or its name).
pub async fn suppressed_phones(store: &Store, campaign: &Campaign) -> Result<HashSet<String>, StoreError> {
    let covering = crate::domain::Scope::covering(&campaign.name, campaign.kind, campaign.channel);
    let mut phones = HashSet::new();
    let mut after = 0;
    loop {
        let page = store.suppressions(after, 1_000).await?;
        for entry in &page {
            if covering.contains(&entry.scope.as_text()) {
                phones.insert(entry.phone.as_str().to_string());
            }
        }
        match page.last() {
            Some(last) if page.len() == 1_000 => after = last.id,
            _ => return Ok(phones),
        }
    }
}
