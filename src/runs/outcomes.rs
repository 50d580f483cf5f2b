//! A run's outcome summaries: each field's values, answers missing, mean and
//! (for `nps`) the Net Promoter Score, from the ledger's counts.

use std::collections::BTreeMap;

use crate::domain::FieldSummary;
use crate::store::{RunRow, Store, StoreError};

/// Each outcome field of `run`, summarised over the jobs read back so far.
pub async fn outcome_summaries(store: &Store, run: &RunRow) -> Result<BTreeMap<String, FieldSummary>, StoreError> {
    let mut out = BTreeMap::new();
    for field in &run.outcomes {
        let counts = store.outcome_counts(run.id, &field.name).await?;
        out.insert(field.name.clone(), FieldSummary::from_counts(field.kind, &counts));
    }
    Ok(out)
}
