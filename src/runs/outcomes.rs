//! A run's summary as status and the API show it: jobs per state, and each
//! outcome field's values, answers missing, mean and (for `nps`) the Net
//! Promoter Score, from the ledger's counts (kept once the run is settled).

use std::collections::BTreeMap;

use crate::domain::FieldSummary;
use crate::store::{RunCounts, RunRow, Store, StoreError};

/// Run `run`'s jobs per state, and each of its outcome fields summarised over
/// the jobs read back so far.
pub async fn summarise(
    store: &Store,
    run: &RunRow,
    now: i64,
) -> Result<(RunCounts, BTreeMap<String, FieldSummary>), StoreError> {
    let summary = store.run_summary(run, now).await?;
    let mut out = BTreeMap::new();
    for field in &run.outcomes {
        let counts = summary.outcomes.get(&field.name).map_or(&[][..], Vec::as_slice);
        out.insert(field.name.clone(), FieldSummary::from_counts(field.kind, counts));
    }
    Ok((summary.counts, out))
}
