//! PostgreSQL twin of `sqlite/campaigns.rs`: campaigns as the service last saw
//! them, and their schedules' progress.

use tokio_postgres::Row;

use super::{Pg, parsed};
use crate::store::{CampaignRow, Result};

const COLUMNS: &str =
    "name, kind, source, content_hash, schedule, timezone, enabled, last_tick_at, next_fire_at, removed_at, updated_at";

fn from_row(r: &Row) -> Result<CampaignRow> {
    Ok(CampaignRow {
        name: r.try_get(0)?,
        kind: parsed(r, 1)?,
        source: r.try_get(2)?,
        content_hash: r.try_get(3)?,
        schedule: r.try_get(4)?,
        timezone: r.try_get(5)?,
        enabled: r.try_get(6)?,
        last_tick_at: r.try_get(7)?,
        next_fire_at: r.try_get(8)?,
        removed_at: r.try_get(9)?,
        updated_at: r.try_get(10)?,
    })
}

/// Records the campaign's current file. Its schedule progress is kept, unless
/// the schedule or zone changed: then ticks count from `now`, so that editing a
/// schedule does not fire the new schedule's past ticks as "missed".
pub(crate) async fn upsert_campaign(pg: &Pg, row: &CampaignRow, now: i64) -> Result<()> {
    let client = pg.client().await?;
    client
        .execute(
            "INSERT INTO campaigns (name, kind, source, content_hash, schedule, timezone, enabled, last_tick_at, \
                                    next_fire_at, removed_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, $10) \
             ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, source = excluded.source, \
                 content_hash = excluded.content_hash, enabled = excluded.enabled, removed_at = NULL, \
                 updated_at = excluded.updated_at, \
                 last_tick_at = CASE WHEN campaigns.schedule IS NOT DISTINCT FROM excluded.schedule \
                                          AND campaigns.timezone = excluded.timezone \
                                     THEN campaigns.last_tick_at ELSE excluded.last_tick_at END, \
                 next_fire_at = CASE WHEN campaigns.schedule IS NOT DISTINCT FROM excluded.schedule \
                                          AND campaigns.timezone = excluded.timezone \
                                     THEN campaigns.next_fire_at ELSE excluded.next_fire_at END, \
                 schedule = excluded.schedule, timezone = excluded.timezone",
            &[
                &row.name,
                &row.kind.as_str(),
                &row.source,
                &row.content_hash,
                &row.schedule,
                &row.timezone,
                &row.enabled,
                &row.last_tick_at.unwrap_or(now),
                &row.next_fire_at,
                &now,
            ],
        )
        .await?;
    Ok(())
}

pub(crate) async fn get_campaign(pg: &Pg, name: &str) -> Result<Option<CampaignRow>> {
    let client = pg.client().await?;
    let row = client.query_opt(&format!("SELECT {COLUMNS} FROM campaigns WHERE name = $1"), &[&name]).await?;
    row.as_ref().map(from_row).transpose()
}

pub(crate) async fn list_campaigns(pg: &Pg) -> Result<Vec<CampaignRow>> {
    let client = pg.client().await?;
    // `COLLATE "C"`: byte order, as SQLite sorts text.
    let rows = client.query(&format!("SELECT {COLUMNS} FROM campaigns ORDER BY name COLLATE \"C\""), &[]).await?;
    rows.iter().map(from_row).collect()
}

/// Records that every tick up to `last_tick_at` is handled, and the next one.
pub(crate) async fn set_ticks(pg: &Pg, name: &str, last_tick_at: i64, next_fire_at: Option<i64>) -> Result<()> {
    let client = pg.client().await?;
    client
        .execute(
            "UPDATE campaigns SET last_tick_at = GREATEST(COALESCE(last_tick_at, $2), $2), next_fire_at = $3 \
             WHERE name = $1",
            &[&name, &last_tick_at, &next_fire_at],
        )
        .await?;
    Ok(())
}

/// The campaign's file is gone: it fires no new runs.
pub(crate) async fn mark_campaign_removed(pg: &Pg, name: &str, now: i64) -> Result<()> {
    let client = pg.client().await?;
    client
        .execute(
            "UPDATE campaigns SET removed_at = $2, next_fire_at = NULL WHERE name = $1 AND removed_at IS NULL",
            &[&name, &now],
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::domain::CampaignKind;
    use crate::store::CampaignRow;
    use crate::store::postgres::runs::tests::{T0, ledger};

    fn campaign(name: &str, schedule: Option<&str>, zone: &str) -> CampaignRow {
        CampaignRow {
            name: name.into(),
            kind: CampaignKind::Survey,
            source: format!("campaigns/{name}.toml"),
            content_hash: "h1".into(),
            schedule: schedule.map(str::to_string),
            timezone: zone.into(),
            enabled: true,
            last_tick_at: None,
            next_fire_at: Some(T0 + 100),
            removed_at: None,
            updated_at: 0,
        }
    }

    #[tokio::test]
    async fn an_upsert_keeps_the_schedules_progress_unless_the_schedule_or_zone_changed() {
        let Some((store, _client)) = ledger("pg campaigns").await else { return };
        store.upsert_campaign(campaign("b", Some("0 9 * * *"), "UTC"), T0).await.unwrap();
        store.upsert_campaign(campaign("a", None, "UTC"), T0).await.unwrap();
        let b = store.get_campaign("b").await.unwrap().unwrap();
        assert_eq!((b.last_tick_at, b.next_fire_at, b.updated_at, b.enabled), (Some(T0), Some(T0 + 100), T0, true));
        store.set_ticks("b", T0 + 50, Some(T0 + 200)).await.unwrap();
        store.set_ticks("b", T0 + 10, Some(T0 + 300)).await.unwrap();
        let b = store.get_campaign("b").await.unwrap().unwrap();
        assert_eq!((b.last_tick_at, b.next_fire_at), (Some(T0 + 50), Some(T0 + 300)), "ticks never go back");
        // Same schedule and zone, new content: the progress stays.
        let edited =
            CampaignRow { content_hash: "h2".into(), enabled: false, ..campaign("b", Some("0 9 * * *"), "UTC") };
        store.upsert_campaign(edited, T0 + 1000).await.unwrap();
        let b = store.get_campaign("b").await.unwrap().unwrap();
        assert_eq!((b.content_hash.as_str(), b.enabled, b.updated_at), ("h2", false, T0 + 1000));
        assert_eq!((b.last_tick_at, b.next_fire_at), (Some(T0 + 50), Some(T0 + 300)));
        // A new zone, then a new schedule: ticks count from now.
        store.upsert_campaign(campaign("b", Some("0 9 * * *"), "Europe/Paris"), T0 + 2000).await.unwrap();
        let b = store.get_campaign("b").await.unwrap().unwrap();
        assert_eq!(
            (b.last_tick_at, b.next_fire_at, b.timezone.as_str()),
            (Some(T0 + 2000), Some(T0 + 100), "Europe/Paris")
        );
        store.set_ticks("b", T0 + 2500, None).await.unwrap();
        store.upsert_campaign(campaign("b", None, "Europe/Paris"), T0 + 3000).await.unwrap();
        let b = store.get_campaign("b").await.unwrap().unwrap();
        assert_eq!((b.last_tick_at, b.schedule), (Some(T0 + 3000), None));
        // No schedule before or after is no change.
        store.set_ticks("b", T0 + 3500, None).await.unwrap();
        store.upsert_campaign(campaign("b", None, "Europe/Paris"), T0 + 4000).await.unwrap();
        assert_eq!(store.get_campaign("b").await.unwrap().unwrap().last_tick_at, Some(T0 + 3500));
        // Removed, then back.
        store.mark_campaign_removed("b", T0 + 5000).await.unwrap();
        store.mark_campaign_removed("b", T0 + 6000).await.unwrap();
        let b = store.get_campaign("b").await.unwrap().unwrap();
        assert_eq!((b.removed_at, b.next_fire_at), (Some(T0 + 5000), None));
        store.upsert_campaign(campaign("b", None, "Europe/Paris"), T0 + 7000).await.unwrap();
        assert_eq!(store.get_campaign("b").await.unwrap().unwrap().removed_at, None);
        let names: Vec<String> = store.list_campaigns().await.unwrap().into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["a", "b"]);
        assert_eq!(store.get_campaign("c").await.unwrap(), None);
    }
}
