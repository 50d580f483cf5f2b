//! PostgreSQL twin of `sqlite/suppressions.rs` (being ported).
#![allow(unused)]

use std::collections::HashMap;

use super::Pg;
use crate::domain::*;
use crate::store::*;

pub(crate) async fn add(pg: &Pg, phone: &Phone, scope: &Scope, reason: Option<&str>, source: &str, now: i64) -> Result<bool> {
    unimplemented!("postgres suppressions::add")
}

pub(crate) async fn remove(pg: &Pg, phone: &Phone, scope: Option<&Scope>) -> Result<usize> {
    unimplemented!("postgres suppressions::remove")
}

pub(crate) async fn page(pg: &Pg, after: i64, limit: u32) -> Result<Vec<Suppression>> {
    unimplemented!("postgres suppressions::page")
}

pub(crate) async fn covering(pg: &Pg, phone: &str, campaign: &str, kind: CampaignKind, channel: Channel) -> Result<Option<Suppression>> {
    unimplemented!("postgres suppressions::covering")
}

pub(crate) async fn before_create(pg: &Pg, run_id: i64, phone: &str) -> Result<(RunState, Option<Suppression>)> {
    unimplemented!("postgres suppressions::before_create")
}

pub(crate) async fn remove_from(pg: &Pg, phone: &Phone, sources: &[&str]) -> Result<usize> {
    unimplemented!("postgres suppressions::remove_from")
}
