//! PostgreSQL twin of `sqlite/jobs.rs` (being ported).
#![allow(unused)]

use std::collections::HashMap;

use super::Pg;
use crate::domain::*;
use crate::store::*;

pub(crate) async fn import_batch(
    pg: &Pg,
    run_id: i64,
    items: &[ImportRow],
    last_line: u64,
    default_due: i64,
    now: i64,
) -> Result<BatchCounts> {
    unimplemented!("postgres jobs::import_batch")
}

pub(crate) async fn claim_due(
    pg: &Pg,
    run_id: i64,
    now: i64,
    limit: usize,
    only_ambiguous: bool,
    limits: &ContactLimits,
) -> Result<Vec<ClaimedJob>> {
    unimplemented!("postgres jobs::claim_due")
}

pub(crate) async fn record_outcomes(
    pg: &Pg,
    outcomes: &[SettledJob],
    calls: &[StudioCall],
    outcome_after_ms: i64,
) -> Result<usize> {
    unimplemented!("postgres jobs::record_outcomes")
}

pub(crate) async fn recover_dispatching(pg: &Pg, run_id: i64, now: i64) -> Result<usize> {
    unimplemented!("postgres jobs::recover_dispatching")
}

pub(crate) async fn next_due_at(pg: &Pg, run_id: i64, now: i64) -> Result<Option<i64>> {
    unimplemented!("postgres jobs::next_due_at")
}

pub(crate) async fn expire_overdue(pg: &Pg, run_id: i64, now: i64) -> Result<usize> {
    unimplemented!("postgres jobs::expire_overdue")
}

pub(crate) async fn jobs_page(
    pg: &Pg,
    run_id: i64,
    state: Option<JobState>,
    after: i64,
    limit: u32,
) -> Result<Vec<JobRow>> {
    unimplemented!("postgres jobs::jobs_page")
}

pub(crate) async fn recent_problems(pg: &Pg, limit: u32) -> Result<Vec<JobRow>> {
    unimplemented!("postgres jobs::recent_problems")
}

pub(crate) async fn jobs_by_state(pg: &Pg) -> Result<Vec<(JobState, i64)>> {
    unimplemented!("postgres jobs::jobs_by_state")
}

pub(crate) async fn record_execution_end(
    pg: &Pg,
    sid: &str,
    ended_at: i64,
    reason: Option<&str>,
    now: i64,
) -> Result<(usize, usize)> {
    unimplemented!("postgres jobs::record_execution_end")
}

pub(crate) async fn due_outcomes(
    pg: &Pg,
    run: Option<i64>,
    now: i64,
    limit: u32,
    all: bool,
) -> Result<Vec<OutcomeJob>> {
    unimplemented!("postgres jobs::due_outcomes")
}

pub(crate) async fn open_outcomes(pg: &Pg, run: Option<i64>) -> Result<i64> {
    unimplemented!("postgres jobs::open_outcomes")
}

pub(crate) async fn next_outcome_due(pg: &Pg, run: Option<i64>) -> Result<Option<i64>> {
    unimplemented!("postgres jobs::next_outcome_due")
}

pub(crate) async fn record_collected(
    pg: &Pg,
    job_id: i64,
    state: OutcomeState,
    collected: &CollectedOutcome,
    now: i64,
) -> Result<bool> {
    unimplemented!("postgres jobs::record_collected")
}

pub(crate) async fn reschedule_outcome(pg: &Pg, job_id: i64, due_at: i64, now: i64) -> Result<()> {
    unimplemented!("postgres jobs::reschedule_outcome")
}

pub(crate) async fn outcome_counts(pg: &Pg, run_id: i64, name: &str) -> Result<Vec<(Option<String>, i64)>> {
    unimplemented!("postgres jobs::outcome_counts")
}

pub(crate) async fn refused_rows(pg: &Pg, run_id: i64) -> Result<Vec<RefusedRow>> {
    unimplemented!("postgres jobs::refused_rows")
}

pub(crate) async fn calls_for_job(pg: &Pg, job_id: i64) -> Result<Vec<CallSummary>> {
    unimplemented!("postgres jobs::calls_for_job")
}
