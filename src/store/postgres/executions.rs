//! PostgreSQL twin of `sqlite/executions.rs` (being ported).
#![allow(unused)]

use std::collections::HashMap;

use super::Pg;
use crate::domain::*;
use crate::store::*;

pub(crate) async fn jobs_for_executions(pg: &Pg, sids: &[String]) -> Result<HashMap<String, ExecutionJob>> {
    unimplemented!("postgres executions::jobs_for_executions")
}

pub(crate) async fn last_sent_at(pg: &Pg, run_id: i64) -> Result<Option<i64>> {
    unimplemented!("postgres executions::last_sent_at")
}
