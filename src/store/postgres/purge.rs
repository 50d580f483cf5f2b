//! PostgreSQL twin of `sqlite/purge.rs` (being ported).
#![allow(unused)]

use std::collections::HashMap;

use super::Pg;
use crate::domain::*;
use crate::store::*;
pub(crate) use crate::store::sqlite::purge::{JobBatch, keyed_hash};

pub(crate) async fn due_runs(pg: &Pg, before: i64) -> Result<Vec<i64>> {
    unimplemented!("postgres purge::due_runs")
}

pub(crate) async fn count_run(pg: &Pg, run_id: i64) -> Result<(u64, u64, u64)> {
    unimplemented!("postgres purge::count_run")
}

pub(crate) async fn before_first_job(pg: &Pg, run_id: i64) -> Result<i64> {
    unimplemented!("postgres purge::before_first_job")
}

pub(crate) async fn salt(pg: &Pg) -> Result<String> {
    unimplemented!("postgres purge::salt")
}

pub(crate) async fn purge_jobs(pg: &Pg, run_id: i64, salt: &str, after: i64, limit: i64) -> Result<JobBatch> {
    unimplemented!("postgres purge::purge_jobs")
}

pub(crate) async fn purge_import_rows(pg: &Pg, run_id: i64, limit: i64) -> Result<u64> {
    unimplemented!("postgres purge::purge_import_rows")
}

pub(crate) async fn finish(pg: &Pg, run_id: i64, now: i64) -> Result<Option<u64>> {
    unimplemented!("postgres purge::finish")
}

pub(crate) async fn checkpoint(pg: &Pg) -> Result<bool> {
    unimplemented!("postgres purge::checkpoint")
}

pub(crate) async fn used_bytes(pg: &Pg) -> Result<u64> {
    unimplemented!("postgres purge::used_bytes")
}
