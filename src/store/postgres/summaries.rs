//! PostgreSQL twin of `sqlite/summaries.rs`: kept run summaries (see
//! `store::summaries` for when one is kept).

use std::collections::BTreeMap;

use deadpool_postgres::GenericClient;
use tokio_postgres::IsolationLevel;

use super::{Pg, parsed};
use crate::domain::RunState;
use crate::store::summaries::{Found, RunSummary, decode, is_settled};
use crate::store::{Result, RunCounts, StoreError};

/// Run `run_id`'s kept summary, or its counts and outcome values (of
/// `fields`) now, with whether it is settled, all from one snapshot
/// (repeatable read) so that the summary and the verdict describe the same
/// moment.
pub(crate) async fn summary(pg: &Pg, run_id: i64, fields: &[String]) -> Result<Found> {
    let mut client = pg.client().await?;
    let tx = client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?;
    let stmt = tx.prepare_cached("SELECT counts, outcomes FROM run_summaries WHERE run_id = $1").await?;
    if let Some(row) = tx.query_opt(&stmt, &[&run_id]).await? {
        return Ok(Found::Kept(decode(run_id, row.try_get(0)?, row.try_get(1)?)?));
    }
    let stmt = tx.prepare_cached("SELECT state, expanded_at IS NOT NULL, jobs_version FROM runs WHERE id = $1").await?;
    let row = tx.query_opt(&stmt, &[&run_id]).await?.ok_or(StoreError::RunNotFound(run_id))?;
    let (state, imported, version): (RunState, bool, i64) = (parsed(&row, 0)?, row.try_get(1)?, row.try_get(2)?);
    let counts = super::runs::run_counts_in(&tx, run_id).await?;
    let mut outcomes = BTreeMap::new();
    for field in fields {
        outcomes.insert(field.clone(), super::jobs::outcome_counts_in(&tx, run_id, field).await?);
    }
    let stmt =
        tx.prepare_cached("SELECT EXISTS (SELECT 1 FROM jobs WHERE run_id = $1 AND outcome_state = 'open')").await?;
    let open_outcomes: bool = tx.query_one(&stmt, &[&run_id]).await?.try_get(0)?;
    tx.commit().await?;
    let settled = is_settled(state, imported, &counts, open_outcomes);
    Ok(Found::Live { summary: RunSummary { counts, outcomes }, settled, version })
}

/// Keeps a settled run's summary, unless one is kept already or the run's
/// jobs changed since the read it was counted from (`version` then differs).
/// The run's row is share-locked, so a write that bumps the version
/// meanwhile (an import or push batch, a purge step) either commits first
/// (and the insert sees the new version) or waits and then deletes what was
/// kept.
pub(crate) async fn keep(pg: &Pg, run_id: i64, counts: &str, outcomes: &str, version: i64, now: i64) -> Result<bool> {
    let client = pg.client().await?;
    let stmt = client
        .prepare_cached(
            "INSERT INTO run_summaries (run_id, counts, outcomes, computed_at) \
             SELECT id, $2, $3, $4 FROM runs WHERE id = $1 AND jobs_version = $5 FOR SHARE \
             ON CONFLICT (run_id) DO NOTHING",
        )
        .await?;
    Ok(client.execute(&stmt, &[&run_id, &counts, &outcomes, &now, &version]).await? == 1)
}

/// Settled runs with no kept summary, oldest first.
pub(crate) async fn settled_without(pg: &Pg, limit: u32) -> Result<Vec<i64>> {
    let client = pg.client().await?;
    let stmt = client
        .prepare_cached(&format!(
            "SELECT id FROM runs r WHERE state IN ('finished', 'cancelled') AND expanded_at IS NOT NULL \
               AND NOT EXISTS (SELECT 1 FROM run_summaries WHERE run_id = r.id) AND {} \
               AND NOT EXISTS (SELECT 1 FROM jobs WHERE run_id = r.id AND outcome_state = 'open') \
             ORDER BY id LIMIT $1",
            super::jobs::no_open_jobs("r.id")
        ))
        .await?;
    client.query(&stmt, &[&i64::from(limit)]).await?.iter().map(|r| Ok(r.try_get(0)?)).collect()
}

/// Jobs per state over the whole ledger: the kept summaries' counts, plus the
/// runs without one counted through `jobs_page` (by run), from one snapshot.
pub(crate) async fn jobs_by_state(pg: &Pg) -> Result<RunCounts> {
    let mut client = pg.client().await?;
    let tx = client.build_transaction().isolation_level(IsolationLevel::RepeatableRead).read_only(true).start().await?;
    let mut total = BTreeMap::new();
    let stmt = tx.prepare_cached("SELECT run_id, counts FROM run_summaries").await?;
    for row in tx.query(&stmt, &[]).await? {
        for (state, n) in decode(row.try_get(0)?, row.try_get(1)?, "{}")?.counts.0 {
            *total.entry(state).or_insert(0) += n;
        }
    }
    // One run at a time: a join of jobs against the kept summaries would
    // read the whole jobs table however many runs are kept.
    let stmt = tx.prepare_cached("SELECT id FROM runs WHERE id NOT IN (SELECT run_id FROM run_summaries)").await?;
    for row in tx.query(&stmt, &[]).await? {
        for (state, n) in super::runs::run_counts_in(&tx, row.try_get(0)?).await?.0 {
            *total.entry(state).or_insert(0) += n;
        }
    }
    tx.commit().await?;
    Ok(RunCounts(total))
}
