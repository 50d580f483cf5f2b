//! PostgreSQL twin of `sqlite/suppressions.rs`: the suppression list, and the
//! checks every import and every create make against it. An entry's place in
//! the list is `seq` (SQLite's rowid).

use tokio_postgres::{GenericClient, Row};

use super::Pg;
use crate::domain::{CampaignKind, Channel, Phone, RunState, Scope};
use crate::store::checks::{Answer, Draining};
use crate::store::{Result, StoreError, Suppression};

fn from_row(r: &Row) -> Result<Suppression> {
    let scope: String = r.try_get(2)?;
    Ok(Suppression {
        id: r.try_get(0)?,
        phone: Phone::from_e164(r.try_get(1)?),
        scope: Scope::parse(&scope).map_err(|e| StoreError::Corrupt(format!("column 2: {e}")))?,
        reason: r.try_get(3)?,
        source: r.try_get(4)?,
        created_at: r.try_get(5)?,
    })
}

const COLUMNS: &str = "seq, phone, scope, reason, source, created_at";

/// Adds an entry; `false` when the phone was already suppressed in that scope
/// (the first entry, with its reason and source, stays).
pub(crate) async fn add(
    pg: &Pg,
    phone: &Phone,
    scope: &Scope,
    reason: Option<&str>,
    source: &str,
    now: i64,
) -> Result<bool> {
    let client = pg.client().await?;
    let stmt = client
        .prepare_cached(
            "INSERT INTO suppressions (phone, scope, reason, source, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT DO NOTHING",
        )
        .await?;
    let added = client.execute(&stmt, &[&phone.as_str(), &scope.as_text(), &reason, &source, &now]).await?;
    Ok(added == 1)
}

/// Removes a phone's entries, in one scope or (`None`) in every scope.
pub(crate) async fn remove(pg: &Pg, phone: &Phone, scope: Option<&Scope>) -> Result<usize> {
    let client = pg.client().await?;
    let removed = client
        .execute(
            "DELETE FROM suppressions WHERE phone = $1 AND ($2::TEXT IS NULL OR scope = $2)",
            &[&phone.as_str(), &scope.map(Scope::as_text)],
        )
        .await?;
    Ok(removed as usize)
}

/// A page of the list in the order entries were added, after entry `after`.
pub(crate) async fn page(pg: &Pg, after: i64, limit: u32) -> Result<Vec<Suppression>> {
    let client = pg.client().await?;
    let rows = client
        .query(
            &format!("SELECT {COLUMNS} FROM suppressions WHERE seq > $1 ORDER BY seq LIMIT $2"),
            &[&after, &i64::from(limit)],
        )
        .await?;
    rows.iter().map(from_row).collect()
}

/// The entry that keeps `phone` from campaign `campaign` of `kind` on
/// `channel`, if any.
pub(crate) async fn covering(
    pg: &Pg,
    phone: &str,
    campaign: &str,
    kind: CampaignKind,
    channel: Channel,
) -> Result<Option<Suppression>> {
    let client = pg.client().await?;
    covering_in(&**client, phone, campaign, kind, channel).await
}

async fn covering_in<C: GenericClient + Sync>(
    c: &C,
    phone: &str,
    campaign: &str,
    kind: CampaignKind,
    channel: Channel,
) -> Result<Option<Suppression>> {
    let [all, kind, channel, name] = Scope::covering(campaign, kind, channel);
    let row = c
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM suppressions WHERE phone = $1 AND scope IN ($2, $3, $4, $5) \
                 ORDER BY seq LIMIT 1"
            ),
            &[&phone, &all, &kind, &channel, &name],
        )
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// PostgreSQL's drain of the pre-send checks (see `store::checks`): each
/// batch is one statement (one snapshot, one round trip, one backend's
/// work) answering every check with its run's state (a pause or cancel
/// wins) and the first entry that suppresses its contact for the run's
/// campaign (an opt-out that arrived mid-run wins). A check of a run that
/// does not exist gets that error alone; a statement that fails gives its
/// error to every check of the batch.
pub(crate) async fn drain_checks(pg: &Pg, mut draining: Draining) {
    while let Some(batch) = draining.next_batch() {
        let runs: Vec<i64> = batch.iter().map(|c| c.run_id).collect();
        let phones: Vec<&str> = batch.iter().map(|c| c.phone.as_str()).collect();
        // A statement that hangs would hold every create of the process:
        // past the pool's own wait it fails the batch instead.
        let answered = tokio::time::timeout(super::WAIT, check_batch(pg, &runs, &phones))
            .await
            .unwrap_or_else(|_| Err(StoreError::Postgres("the pre-send checks took too long".into())));
        match answered {
            Ok(mut answers) => {
                for (i, check) in batch.into_iter().enumerate() {
                    let answer = answers
                        .remove(&(i as i64 + 1))
                        .unwrap_or_else(|| Err(StoreError::Corrupt(format!("no answer for pre-send check {}", i + 1))));
                    // A caller that gave up waiting has dropped its receiver.
                    let _ = check.reply.send(answer);
                }
            }
            Err(e) => {
                for check in batch {
                    let _ = check.reply.send(Err(same_error(&e)));
                }
            }
        }
    }
}

/// The answers to checks (`runs[k]`, `phones[k]`), by their place from 1.
async fn check_batch(pg: &Pg, runs: &[i64], phones: &[&str]) -> Result<std::collections::HashMap<i64, Answer>> {
    let client = pg.client().await?;
    let stmt = client
        .prepare_cached(
            "SELECT q.i, q.run_id, r.state, s.seq, s.phone, s.scope, s.reason, s.source, s.created_at \
             FROM unnest($1::bigint[], $2::text[]) WITH ORDINALITY AS q (run_id, phone, i) \
             LEFT JOIN runs r ON r.id = q.run_id \
             LEFT JOIN LATERAL (SELECT seq, phone, scope, reason, source, created_at FROM suppressions \
                                WHERE phone = q.phone AND scope IN ('all', r.kind, r.channel, r.campaign) \
                                ORDER BY seq LIMIT 1) s ON r.id IS NOT NULL",
        )
        .await?;
    let rows = client.query(&stmt, &[&runs, &phones]).await?;
    let mut answers = std::collections::HashMap::with_capacity(rows.len());
    for row in rows {
        answers.insert(row.try_get(0)?, answer_of(&row));
    }
    Ok(answers)
}

/// One row of [`check_batch`] as its check's answer.
fn answer_of(row: &Row) -> Answer {
    let Some(state) = row.try_get::<_, Option<String>>(2)? else {
        return Err(StoreError::RunNotFound(row.try_get(1)?));
    };
    let state: RunState = state.parse().map_err(|e| StoreError::Corrupt(format!("column 2: {e}")))?;
    let suppression = match row.try_get::<_, Option<i64>>(3)? {
        None => None,
        Some(id) => {
            let scope: String = row.try_get(5)?;
            Some(Suppression {
                id,
                phone: Phone::from_e164(row.try_get(4)?),
                scope: Scope::parse(&scope).map_err(|e| StoreError::Corrupt(format!("column 5: {e}")))?,
                reason: row.try_get(6)?,
                source: row.try_get(7)?,
                created_at: row.try_get(8)?,
            })
        }
    };
    Ok((state, suppression))
}

/// The same error again, for each check of a batch that failed as a whole.
fn same_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Postgres(m) => StoreError::Postgres(m.clone()),
        StoreError::Pool(m) => StoreError::Pool(m.clone()),
        StoreError::Corrupt(m) => StoreError::Corrupt(m.clone()),
        other => StoreError::Task(other.to_string()),
    }
}

/// Lifts a phone's scope-`all` entries that came from `sources` only: an opt-in
/// from Twilio undoes Twilio's opt-out, never an entry someone added by hand
/// or imported.
pub(crate) async fn remove_from(pg: &Pg, phone: &Phone, sources: &[&str]) -> Result<usize> {
    let client = pg.client().await?;
    let removed = client
        .execute(
            "DELETE FROM suppressions WHERE phone = $1 AND scope = 'all' AND source = ANY($2)",
            &[&phone.as_str(), &sources],
        )
        .await?;
    Ok(removed as usize)
}

#[cfg(test)]
mod tests {
    use crate::domain::{CampaignKind, Channel, Phone, RunState, Scope};
    use crate::store::StoreError;
    use crate::store::postgres::runs::tests::{T0, ledger, new_run};

    #[tokio::test]
    async fn suppressions_are_added_once_paged_in_order_and_cover_their_scopes() {
        let Some((store, _client)) = ledger("pg suppressions").await else { return };
        let ada = Phone::from_e164("+12015550001".into());
        let bob = Phone::from_e164("+12015550002".into());
        let reminders = Scope::Campaign("reminders".into());
        assert!(store.suppress(&ada, &reminders, None, "api", T0).await.unwrap());
        assert!(
            store
                .suppress(&bob, &Scope::Channel(Channel::Whatsapp), Some("STOP"), "messaging webhook", T0 + 1)
                .await
                .unwrap()
        );
        assert!(store.suppress(&ada, &Scope::All, Some("STOP"), "messaging webhook", T0 + 2).await.unwrap());
        assert!(
            !store.suppress(&ada, &Scope::All, Some("again"), "cli", T0 + 3).await.unwrap(),
            "the first entry stays"
        );
        assert!(store.suppress(&bob, &Scope::Kind(CampaignKind::Survey), None, "cli", T0 + 4).await.unwrap());
        let all = store.suppressions(0, 10).await.unwrap();
        let listed: Vec<(String, String)> =
            all.iter().map(|s| (s.phone.as_str().to_string(), s.scope.as_text())).collect();
        assert_eq!(
            listed,
            [
                ("+12015550001".into(), "reminders".into()),
                ("+12015550002".into(), "whatsapp".into()),
                ("+12015550001".into(), "all".into()),
                ("+12015550002".into(), "survey".into()),
            ]
        );
        assert_eq!(
            (all[2].reason.as_deref(), all[2].source.as_str(), all[2].created_at),
            (Some("STOP"), "messaging webhook", T0 + 2)
        );
        let page: Vec<i64> = store.suppressions(all[1].id, 2).await.unwrap().iter().map(|s| s.id).collect();
        assert_eq!(page, [all[2].id, all[3].id]);
        // The earliest entry that covers the campaign.
        let covering =
            store.suppression_for("+12015550001", "reminders", CampaignKind::Reminder, Channel::Sms).await.unwrap();
        assert_eq!(covering.unwrap().scope, reminders);
        let covering =
            store.suppression_for("+12015550001", "other", CampaignKind::Reminder, Channel::Sms).await.unwrap();
        assert_eq!(covering.unwrap().scope, Scope::All);
        assert_eq!(
            store.suppression_for("+12015550002", "reminders", CampaignKind::Reminder, Channel::Sms).await.unwrap(),
            None
        );
        let survey = store.suppression_for("+12015550002", "poll", CampaignKind::Survey, Channel::Sms).await.unwrap();
        assert_eq!(survey.unwrap().scope, Scope::Kind(CampaignKind::Survey));
        let whatsapp =
            store.suppression_for("+12015550002", "poll", CampaignKind::Survey, Channel::Whatsapp).await.unwrap();
        assert_eq!(whatsapp.unwrap().scope, Scope::Channel(Channel::Whatsapp));
        // Before a create: the run's state, and its campaign's entry.
        let run = store.create_run(new_run("reminders", "k", None), T0).await.unwrap().unwrap();
        let (state, entry) = store.before_create(run, "+12015550001").await.unwrap();
        assert_eq!(
            (state, entry.map(|e| (e.scope, e.id))),
            (RunState::Expanding, Some((reminders.clone(), all[0].id)))
        );
        let (_, entry) = store.before_create(run, "+12015550002").await.unwrap();
        assert_eq!(entry, None);
        let (_, entry) = store.before_create(run, "+12015550003").await.unwrap();
        assert_eq!(entry, None);
        assert!(matches!(store.before_create(9999, "+12015550001").await, Err(StoreError::RunNotFound(9999))));
        // Lifted only from the sources named, only in scope all.
        assert_eq!(store.unsuppress_from(&bob, &["messaging webhook"]).await.unwrap(), 0, "bob's is a channel entry");
        assert_eq!(store.unsuppress_from(&ada, &["cli", "studio"]).await.unwrap(), 0);
        assert_eq!(store.unsuppress_from(&ada, &["cli", "messaging webhook"]).await.unwrap(), 1);
        let (_, entry) = store.before_create(run, "+12015550001").await.unwrap();
        assert_eq!(entry.unwrap().scope, reminders, "the campaign's entry still covers it");
        assert_eq!(store.unsuppress(&ada, Some(&Scope::All)).await.unwrap(), 0);
        assert_eq!(store.unsuppress(&ada, Some(&reminders)).await.unwrap(), 1);
        assert_eq!(store.unsuppress(&bob, None).await.unwrap(), 2);
        assert!(store.suppressions(0, 10).await.unwrap().is_empty());
        // Added again: later in the list than anything before.
        assert!(store.suppress(&ada, &Scope::All, None, "cli", T0 + 9).await.unwrap());
        assert!(store.suppressions(0, 10).await.unwrap()[0].id > all[3].id);
    }
}
