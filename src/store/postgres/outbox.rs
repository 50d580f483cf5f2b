//! PostgreSQL twin of `sqlite/outbox.rs` (being ported).
#![allow(unused)]

use std::collections::HashMap;

use super::Pg;
use crate::domain::*;
use crate::store::*;

pub(crate) async fn due(pg: &Pg, now: i64, limit: u32) -> Result<Vec<OutboxEvent>> {
    unimplemented!("postgres outbox::due")
}

pub(crate) async fn next_due(pg: &Pg) -> Result<Option<i64>> {
    unimplemented!("postgres outbox::next_due")
}

pub(crate) async fn delivered(pg: &Pg, id: i64, now: i64) -> Result<()> {
    unimplemented!("postgres outbox::delivered")
}

pub(crate) async fn failed(pg: &Pg, id: i64, error: &str, retry_at: Option<i64>, now: i64) -> Result<()> {
    unimplemented!("postgres outbox::failed")
}

pub(crate) async fn counts(pg: &Pg) -> Result<OutboxCounts> {
    unimplemented!("postgres outbox::counts")
}

pub(crate) async fn page(pg: &Pg, state: Option<&str>, after: i64, limit: u32) -> Result<Vec<OutboxEvent>> {
    unimplemented!("postgres outbox::page")
}
