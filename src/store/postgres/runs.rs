//! PostgreSQL twin of `sqlite/runs.rs` (being ported).
#![allow(unused)]

use std::collections::HashMap;

use super::Pg;
use crate::domain::*;
use crate::store::*;

pub(crate) async fn create_run(pg: &Pg, run: &NewRun, now: i64) -> Result<Option<i64>> {
    unimplemented!("postgres runs::create_run")
}

pub(crate) async fn run_by_key(pg: &Pg, campaign: &str, run_key: &str) -> Result<Option<i64>> {
    unimplemented!("postgres runs::run_by_key")
}

pub(crate) async fn create_run_with_rows(pg: &Pg, run: &NewRun, rows: &[ImportRow], now: i64) -> Result<std::result::Result<(i64, BatchCounts), i64>> {
    unimplemented!("postgres runs::create_run_with_rows")
}

pub(crate) async fn run_state(pg: &Pg, id: i64) -> Result<RunState> {
    unimplemented!("postgres runs::run_state")
}

pub(crate) async fn get_run(pg: &Pg, id: i64) -> Result<RunRow> {
    unimplemented!("postgres runs::get_run")
}

pub(crate) async fn list_runs(pg: &Pg, campaign: Option<&str>, limit: u32) -> Result<Vec<RunRow>> {
    unimplemented!("postgres runs::list_runs")
}

pub(crate) async fn unfinished_runs(pg: &Pg) -> Result<Vec<RunRow>> {
    unimplemented!("postgres runs::unfinished_runs")
}

pub(crate) async fn finish_expansion(pg: &Pg, id: i64, now: i64) -> Result<()> {
    unimplemented!("postgres runs::finish_expansion")
}

pub(crate) async fn import_line(pg: &Pg, id: i64) -> Result<u64> {
    unimplemented!("postgres runs::import_line")
}

pub(crate) async fn set_run_state(pg: &Pg, id: i64, from: RunState, to: RunState, reason: Option<&str>, now: i64) -> Result<bool> {
    unimplemented!("postgres runs::set_run_state")
}

pub(crate) async fn finish_run_if_done(pg: &Pg, id: i64, now: i64) -> Result<bool> {
    unimplemented!("postgres runs::finish_run_if_done")
}

pub(crate) async fn run_counts(pg: &Pg, id: i64) -> Result<RunCounts> {
    unimplemented!("postgres runs::run_counts")
}
