//! PostgreSQL twin of `sqlite/pushed.rs` (being ported).
#![allow(unused)]

use std::collections::HashMap;

use super::Pg;
use crate::domain::*;
use crate::store::*;

pub(crate) async fn push(pg: &Pg, open: &NewRun, rows: &[PushRow], now: i64) -> Result<(i64, Vec<PushResult>)> {
    unimplemented!("postgres pushed::push")
}
