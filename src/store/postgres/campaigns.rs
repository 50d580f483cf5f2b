//! PostgreSQL twin of `sqlite/campaigns.rs` (being ported).
#![allow(unused)]

use std::collections::HashMap;

use super::Pg;
use crate::domain::*;
use crate::store::*;

pub(crate) async fn upsert_campaign(pg: &Pg, row: &CampaignRow, now: i64) -> Result<()> {
    unimplemented!("postgres campaigns::upsert_campaign")
}

pub(crate) async fn get_campaign(pg: &Pg, name: &str) -> Result<Option<CampaignRow>> {
    unimplemented!("postgres campaigns::get_campaign")
}

pub(crate) async fn list_campaigns(pg: &Pg) -> Result<Vec<CampaignRow>> {
    unimplemented!("postgres campaigns::list_campaigns")
}

pub(crate) async fn set_ticks(pg: &Pg, name: &str, last_tick_at: i64, next_fire_at: Option<i64>) -> Result<()> {
    unimplemented!("postgres campaigns::set_ticks")
}

pub(crate) async fn mark_campaign_removed(pg: &Pg, name: &str, now: i64) -> Result<()> {
    unimplemented!("postgres campaigns::mark_campaign_removed")
}
