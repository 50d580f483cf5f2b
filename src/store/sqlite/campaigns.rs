//! Campaigns as the service last saw them, and their schedules' progress.

use rusqlite::{Connection, OptionalExtension, params};

use super::parsed;
use crate::store::{CampaignRow, Result};

const COLUMNS: &str =
    "name, kind, source, content_hash, schedule, timezone, enabled, last_tick_at, next_fire_at, removed_at, updated_at";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<CampaignRow> {
    Ok(CampaignRow {
        name: r.get(0)?,
        kind: parsed(r, 1)?,
        source: r.get(2)?,
        content_hash: r.get(3)?,
        schedule: r.get(4)?,
        timezone: r.get(5)?,
        enabled: r.get(6)?,
        last_tick_at: r.get(7)?,
        next_fire_at: r.get(8)?,
        removed_at: r.get(9)?,
        updated_at: r.get(10)?,
    })
}

/// Records the campaign's current file. Its schedule progress is kept, unless
/// the schedule or zone changed: then ticks count from `now`, so that editing a
/// schedule does not fire the new schedule's past ticks as "missed".
pub fn upsert_campaign(conn: &Connection, row: &CampaignRow, now: i64) -> Result<()> {
    super::exec(
        conn,
        "INSERT INTO campaigns (name, kind, source, content_hash, schedule, timezone, enabled, last_tick_at, \
                                    next_fire_at, removed_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, NULL, ?10) \
             ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, source = excluded.source, \
                 content_hash = excluded.content_hash, enabled = excluded.enabled, removed_at = NULL, \
                 updated_at = excluded.updated_at, \
                 last_tick_at = CASE WHEN campaigns.schedule IS excluded.schedule AND campaigns.timezone = excluded.timezone \
                                     THEN campaigns.last_tick_at ELSE excluded.last_tick_at END, \
                 next_fire_at = CASE WHEN campaigns.schedule IS excluded.schedule AND campaigns.timezone = excluded.timezone \
                                     THEN campaigns.next_fire_at ELSE excluded.next_fire_at END, \
                 schedule = excluded.schedule, timezone = excluded.timezone",
        params![
            row.name,
            row.kind.as_str(),
            row.source,
            row.content_hash,
            row.schedule,
            row.timezone,
            row.enabled,
            row.last_tick_at.unwrap_or(now),
            row.next_fire_at,
            now
        ],
    )?;
    Ok(())
}

pub fn get_campaign(conn: &Connection, name: &str) -> Result<Option<CampaignRow>> {
    Ok(conn.query_row(&format!("SELECT {COLUMNS} FROM campaigns WHERE name = ?1"), [name], from_row).optional()?)
}

pub fn list_campaigns(conn: &Connection) -> Result<Vec<CampaignRow>> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM campaigns ORDER BY name"))?;
    let rows = stmt.query_map([], from_row)?.collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// Records that every tick up to `last_tick_at` is handled, and the next one.
pub fn set_ticks(conn: &Connection, name: &str, last_tick_at: i64, next_fire_at: Option<i64>) -> Result<()> {
    super::exec(
        conn,
        "UPDATE campaigns SET last_tick_at = MAX(COALESCE(last_tick_at, ?2), ?2), next_fire_at = ?3 WHERE name = ?1",
        params![name, last_tick_at, next_fire_at],
    )?;
    Ok(())
}

/// The campaign's file is gone: it fires no new runs.
pub fn mark_campaign_removed(conn: &Connection, name: &str, now: i64) -> Result<()> {
    super::exec(
        conn,
        "UPDATE campaigns SET removed_at = ?2, next_fire_at = NULL WHERE name = ?1 AND removed_at IS NULL",
        params![name, now],
    )?;
    Ok(())
}
