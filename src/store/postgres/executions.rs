//! PostgreSQL twin of `sqlite/executions.rs`: which job an Execution belongs
//! to, and over which span of time a run created its Executions. The audit
//! records of the ends themselves go through [`super::jobs::record_outcomes`],
//! like every other Studio call.

use std::collections::HashMap;

use super::Pg;
use crate::domain::Phone;
use crate::store::{ExecutionJob, Result};

/// The sent jobs that created Executions `sids`, by SID; a SID no job
/// created is left out. (A skipped job may carry someone else's active SID;
/// it did not create it.) One query for all of them: the first sent job of
/// each SID, as SQLite reads one SID at a time.
pub(crate) async fn jobs_for_executions(pg: &Pg, sids: &[String]) -> Result<HashMap<String, ExecutionJob>> {
    let mut found = HashMap::with_capacity(sids.len());
    if sids.is_empty() {
        return Ok(found);
    }
    let client = pg.client().await?;
    let stmt = client
        .prepare_cached(
            "SELECT DISTINCT ON (execution_sid) execution_sid, id, run_id, phone FROM jobs \
             WHERE execution_sid = ANY($1::text[]) AND state = 'sent' ORDER BY execution_sid, id",
        )
        .await?;
    for r in client.query(&stmt, &[&sids]).await? {
        let sid: String = r.try_get(0)?;
        let job = ExecutionJob { job_id: r.try_get(1)?, run_id: r.try_get(2)?, phone: Phone::from_e164(r.try_get(3)?) };
        found.insert(sid, job);
    }
    Ok(found)
}

/// The latest `sent_at` of a run's sent jobs: no Execution of the run was
/// created after it (the create had answered by then).
pub(crate) async fn last_sent_at(pg: &Pg, run_id: i64) -> Result<Option<i64>> {
    let client = pg.client().await?;
    let stmt = client.prepare_cached("SELECT MAX(sent_at) FROM jobs WHERE run_id = $1 AND state = 'sent'").await?;
    Ok(client.query_one(&stmt, &[&run_id]).await?.try_get(0)?)
}
