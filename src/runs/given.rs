//! Runs whose contacts come with the request that starts them (`POST
//! /api/campaigns/{name}/runs` with a CSV or JSON body): read with the same
//! reader and rules as a file, checked in full before anything is written, and
//! recorded with the run in one transaction — a request either makes a whole
//! run or none, so a client that retries after a lost answer never finds half
//! a run, and with the same idempotency key finds the one it made.

use std::path::Path;

use chrono::{DateTime, Utc};

use super::import::to_item;
use super::start::new_run;
use crate::campaign::Campaign;
use crate::contacts::{ContactReader, ContactsError, Row};
use crate::domain::{FlowSid, ImportRow, Trigger};
use crate::store::{BatchCounts, Store, StoreError};

/// A row of the request that was refused, by its place among the contacts
/// (0-based) and its line in the CSV text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RefusedContact {
    pub index: usize,
    pub line: u64,
    pub reason: String,
}

/// What starting a run with given contacts did.
#[derive(Debug)]
pub enum GivenStart {
    /// A new run, with its rows already imported.
    Started { id: i64, counts: BatchCounts, refused: Vec<RefusedContact> },
    /// The campaign already has a run with this key: that run.
    Existing(i64),
    /// No row could become a job; nothing was recorded.
    NothingValid(Vec<RefusedContact>),
}

#[derive(Debug, thiserror::Error)]
pub enum GivenError {
    /// The CSV as a whole cannot be read (no header, no phone column, a quote
    /// never closed).
    #[error(transparent)]
    Contacts(#[from] ContactsError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Every row of `csv` for `campaign` as the ledger records it (jobs and
/// rejections), and every refused one with its index.
pub fn read_given(
    campaign: &Campaign,
    csv: Vec<u8>,
    now: DateTime<Utc>,
) -> Result<(Vec<ImportRow>, Vec<RefusedContact>), ContactsError> {
    let mut reader = ContactReader::from_bytes(Path::new("request body"), csv, campaign.read_options())?;
    let (mut items, mut refused) = (Vec::new(), Vec::new());
    let mut index = 0;
    while let Some(row) = reader.next_row()? {
        let line = match &row {
            Row::Contact(c) => c.line,
            Row::Rejected(r) => r.line,
        };
        match to_item(campaign, row, now) {
            ImportRow::Rejected(r) => {
                refused.push(RefusedContact { index, line, reason: r.reason.clone() });
                items.push(ImportRow::Rejected(r));
            }
            job => items.push(job),
        }
        index += 1;
    }
    Ok((items, refused))
}

/// Starts a run of `campaign` keyed `run_key` with the contacts in `csv`.
/// The rows are read on a blocking thread (phone validation is the costly
/// part) and written with the run in one transaction.
pub async fn start_with_contacts(
    store: &Store,
    campaign: &Campaign,
    flow: &FlowSid,
    run_key: String,
    csv: Vec<u8>,
    now_ms: i64,
) -> Result<GivenStart, GivenError> {
    if let Some(id) = store.run_by_key(&campaign.name, &run_key).await? {
        return Ok(GivenStart::Existing(id));
    }
    let now = DateTime::from_timestamp_millis(now_ms).unwrap_or_default();
    let owned = campaign.clone();
    let (items, refused) = tokio::task::spawn_blocking(move || read_given(&owned, csv, now))
        .await
        .expect("reading contacts does not panic")?;
    if !items.iter().any(|row| matches!(row, ImportRow::Job(_))) {
        return Ok(GivenStart::NothingValid(refused));
    }
    let run = new_run(campaign, flow, Trigger::Api, run_key, now_ms);
    Ok(match store.create_run_with_rows(run, items, now_ms).await? {
        Ok((id, counts)) => GivenStart::Started { id, counts, refused },
        Err(existing) => GivenStart::Existing(existing),
    })
}

/// The open run's key for a pushed contact arriving at `now`: one open run
/// per campaign and day (in the campaign's zone), so reports and counts stay
/// per day and a phone may be reached again the next day.
fn open_run_key(campaign: &Campaign, now: DateTime<Utc>) -> String {
    format!("contacts:{}", now.with_timezone(&campaign.timezone).format("%Y-%m-%d"))
}

/// Adds pushed contacts (CSV text, record `i` keyed `keys[i]`) to the open
/// run of a `trigger = "api"` campaign, in one transaction: each becomes a
/// job due now (or at its `send_at`), with the campaign's window, expiry,
/// policies, suppression list, caps and dedupe like any other.
pub async fn push_contacts(
    store: &Store,
    campaign: &Campaign,
    flow: &FlowSid,
    csv: Vec<u8>,
    keys: Vec<Option<String>>,
    now_ms: i64,
) -> Result<(i64, Vec<crate::store::PushResult>), GivenError> {
    let now = DateTime::from_timestamp_millis(now_ms).unwrap_or_default();
    let owned = campaign.clone();
    let (items, _) = tokio::task::spawn_blocking(move || read_given(&owned, csv, now))
        .await
        .expect("reading contacts does not panic")?;
    let rows = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| crate::store::PushRow { key: keys.get(i).cloned().flatten(), item })
        .collect();
    let open = new_run(campaign, flow, Trigger::Contacts, open_run_key(campaign, now), now_ms);
    Ok(store.push_contacts(open, rows, now_ms).await?)
}
