//! The suppression list, and the checks every import and every create make
//! against it.

use std::sync::OnceLock;

use rusqlite::{Connection, OptionalExtension, params};

use super::{corrupt, parsed};
use crate::domain::{CampaignKind, Channel, Phone, RunState, Scope};
use crate::store::{Result, StoreError, Suppression};

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Suppression> {
    let scope: String = r.get(2)?;
    Ok(Suppression {
        id: r.get(0)?,
        phone: Phone::from_e164(r.get(1)?),
        scope: Scope::parse(&scope).map_err(|e| corrupt(2, e))?,
        reason: r.get(3)?,
        source: r.get(4)?,
        created_at: r.get(5)?,
    })
}

const COLUMNS: &str = "rowid, phone, scope, reason, source, created_at";

/// Adds an entry; `false` when the phone was already suppressed in that scope
/// (the first entry, with its reason and source, stays).
pub fn add(
    conn: &Connection,
    phone: &Phone,
    scope: &Scope,
    reason: Option<&str>,
    source: &str,
    now: i64,
) -> Result<bool> {
    let added = conn
        .prepare_cached(
            "INSERT OR IGNORE INTO suppressions (phone, scope, reason, source, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![phone.as_str(), scope.as_text(), reason, source, now])?;
    Ok(added == 1)
}

/// Removes a phone's entries, in one scope or (`None`) in every scope.
pub fn remove(conn: &Connection, phone: &Phone, scope: Option<&Scope>) -> Result<usize> {
    Ok(conn
        .prepare_cached("DELETE FROM suppressions WHERE phone = ?1 AND (?2 IS NULL OR scope = ?2)")?
        .execute(params![phone.as_str(), scope.map(Scope::as_text)])?)
}

/// A page of the list in the order entries were added, after entry `after`.
pub fn page(conn: &Connection, after: i64, limit: u32) -> Result<Vec<Suppression>> {
    let mut stmt =
        conn.prepare_cached(&format!("SELECT {COLUMNS} FROM suppressions WHERE rowid > ?1 ORDER BY rowid LIMIT ?2"))?;
    let rows = stmt.query_map(params![after, limit], from_row)?.collect::<rusqlite::Result<_>>()?;
    Ok(rows)
}

/// The entry that keeps `phone` from campaign `campaign` of `kind` on
/// `channel`, if any.
pub fn covering(
    conn: &Connection,
    phone: &str,
    campaign: &str,
    kind: CampaignKind,
    channel: Channel,
) -> Result<Option<Suppression>> {
    Covering::new(conn)?.find(phone, &Scope::covering(campaign, kind, channel))
}

/// [`covering`]'s lookup, its statement taken from the cache once for many
/// phones (the pre-send checks of a batch), the run's scopes bound once:
/// taking it, handing it back and binding all five values for each phone,
/// a create's check cost 9,400 instructions under callgrind, 6,200 this way.
pub(super) struct Covering<'c> {
    stmt: rusqlite::CachedStatement<'c>,
    /// The scopes bound now: most checks of a batch are of one run, and the
    /// statement keeps its bindings from one phone to the next.
    bound: Option<[String; 4]>,
}

impl<'c> Covering<'c> {
    pub(super) fn new(conn: &'c Connection) -> Result<Self> {
        // The entry added first names the reason. `+scope` reads the phone's
        // few entries in one range of the (phone, scope) key and takes the
        // lowest rowid, where `scope IN (…) ORDER BY rowid` seeks once per
        // scope and sorts what it found in a temporary b-tree on every call:
        // the dispatcher makes this check before each create, and the sort's
        // set-up cost the most.
        static SQL: OnceLock<String> = OnceLock::new();
        let sql = SQL.get_or_init(|| {
            format!(
                "SELECT {COLUMNS} FROM suppressions WHERE rowid = \
                   (SELECT MIN(rowid) FROM suppressions WHERE phone = ?1 AND +scope IN (?2, ?3, ?4, ?5))"
            )
        });
        Ok(Covering { stmt: conn.prepare_cached(sql)?, bound: None })
    }

    /// The entry that keeps `phone` from a campaign whose scopes (see
    /// [`Scope::covering`]) are `scopes`, if any.
    pub(super) fn find(&mut self, phone: &str, scopes: &[String; 4]) -> Result<Option<Suppression>> {
        if self.bound.as_ref() != Some(scopes) {
            // Unknown until all four are bound again.
            self.bound = None;
            for (i, scope) in scopes.iter().enumerate() {
                self.stmt.raw_bind_parameter(i + 2, scope)?;
            }
            self.bound = Some(scopes.clone());
        }
        self.stmt.raw_bind_parameter(1, phone)?;
        let mut rows = self.stmt.raw_query();
        Ok(match rows.next()? {
            Some(row) => Some(from_row(row)?),
            None => None,
        })
    }
}

/// What a pre-send check reads of a run: its state and the scopes of the
/// suppressions that keep a phone from it.
pub(super) struct RunFacts {
    pub state: RunState,
    pub scopes: [String; 4],
}

/// The run's facts for a pre-send check (a pause or cancel wins over a
/// create; see `checks`); an error when the run is gone.
pub(super) fn run_facts(conn: &Connection, run_id: i64) -> Result<RunFacts> {
    conn.prepare_cached("SELECT state, campaign, kind, channel FROM runs WHERE id = ?1")?
        .query_row([run_id], |r| {
            let campaign: String = r.get(1)?;
            Ok(RunFacts {
                state: parsed::<RunState>(r, 0)?,
                scopes: Scope::covering(&campaign, parsed::<CampaignKind>(r, 2)?, parsed::<Channel>(r, 3)?),
            })
        })
        .optional()?
        .ok_or(StoreError::RunNotFound(run_id))
}

/// Lifts a phone's scope-`all` entries that came from `sources` only: an opt-in
/// from Twilio undoes Twilio's opt-out, never an entry someone added by hand
/// or imported.
pub fn remove_from(conn: &Connection, phone: &Phone, sources: &[&str]) -> Result<usize> {
    let mut removed = 0;
    for source in sources {
        removed += conn
            .prepare_cached("DELETE FROM suppressions WHERE phone = ?1 AND scope = 'all' AND source = ?2")?
            .execute(params![phone.as_str(), source])?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use crate::domain::{CampaignKind, Channel, Phone, Scope};
    use crate::store::Store;

    #[tokio::test]
    async fn one_lookup_answers_phones_of_campaigns_in_turn_each_with_its_own_scopes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flowcast.db");
        let store = Store::open_path(&path).await.unwrap();
        let (ada, bo) = ("+12015550001", "+12015550002");
        let reminders = Scope::Campaign("reminders".into());
        assert!(store.suppress(&Phone::from_e164(ada.into()), &reminders, None, "cli", 1).await.unwrap());
        assert!(
            store
                .suppress(&Phone::from_e164(bo.into()), &Scope::Kind(CampaignKind::Survey), None, "cli", 2)
                .await
                .unwrap()
        );
        let conn = rusqlite::Connection::open(&path).unwrap();
        let mut lookup = super::Covering::new(&conn).unwrap();
        let of = |campaign, kind| Scope::covering(campaign, kind, Channel::Sms);
        let (remind, poll) = (of("reminders", CampaignKind::Reminder), of("poll", CampaignKind::Survey));
        let mut found = |phone, scopes| lookup.find(phone, scopes).unwrap().map(|e| e.scope);
        // Each answer follows the scopes asked with, switched back and forth.
        assert_eq!(found(ada, &remind), Some(reminders.clone()));
        assert_eq!(found(bo, &remind), None);
        assert_eq!(found(ada, &poll), None);
        assert_eq!(found(bo, &poll), Some(Scope::Kind(CampaignKind::Survey)));
        assert_eq!(found(ada, &remind), Some(reminders));
        assert_eq!(found(bo, &remind), None);
    }

    #[tokio::test]
    async fn the_entry_added_first_among_those_covering_a_campaign_is_the_one_named() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_path(&dir.path().join("flowcast.db")).await.unwrap();
        let ada = Phone::from_e164("+12015550001".into());
        let reminders = Scope::Campaign("reminders".into());
        // Added in this order; the (phone, scope) key sorts them otherwise.
        for (scope, at) in [(Scope::Kind(CampaignKind::Survey), 1), (reminders.clone(), 2), (Scope::All, 3)] {
            assert!(store.suppress(&ada, &scope, Some("asked"), "cli", at).await.unwrap());
        }
        let named = |campaign: &'static str, kind| {
            let store = store.clone();
            async move {
                store.suppression_for("+12015550001", campaign, kind, Channel::Sms).await.unwrap().map(|e| e.scope)
            }
        };
        assert_eq!(named("reminders", CampaignKind::Reminder).await, Some(reminders));
        assert_eq!(named("poll", CampaignKind::Survey).await, Some(Scope::Kind(CampaignKind::Survey)));
        assert_eq!(named("other", CampaignKind::Reminder).await, Some(Scope::All));
        assert_eq!(
            store.suppression_for("+12015550002", "reminders", CampaignKind::Reminder, Channel::Sms).await.unwrap(),
            None
        );
    }
}
