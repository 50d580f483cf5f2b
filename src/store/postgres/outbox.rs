//! PostgreSQL twin of `sqlite/outbox.rs`: the outbox of signed events (written
//! by the ledger's triggers): read what is due (in order per job), and record
//! each delivery attempt.

use deadpool_postgres::Transaction;
use tokio_postgres::Row;

use super::Pg;
use crate::store::{OUTBOX_SENDABLE, OutboxCounts, OutboxEvent, Result};

const COLUMNS: &str = "id, event_id, event_type, run_id, job_id, url, body, created_at, attempts, next_attempt_at, \
     delivered_at, gave_up_at, last_error";

fn from_row(r: &Row) -> Result<OutboxEvent> {
    Ok(OutboxEvent {
        id: r.try_get(0)?,
        event_id: r.try_get(1)?,
        event_type: r.try_get(2)?,
        run_id: r.try_get(3)?,
        job_id: r.try_get(4)?,
        url: r.try_get(5)?,
        body: r.try_get(6)?,
        created_at: r.try_get(7)?,
        attempts: r.try_get(8)?,
        next_attempt_at: r.try_get(9)?,
        delivered_at: r.try_get(10)?,
        gave_up_at: r.try_get(11)?,
        last_error: r.try_get(12)?,
    })
}

/// Events due for an attempt, oldest first. An event waits while an earlier
/// event of the same job is still undelivered: receivers see a job's events
/// in the order they happened.
pub(crate) async fn due(pg: &Pg, now: i64, limit: u32) -> Result<Vec<OutboxEvent>> {
    let client = pg.client().await?;
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM outbox o WHERE {OUTBOX_SENDABLE} AND next_attempt_at <= $1 ORDER BY id LIMIT $2"
        ))
        .await?;
    let rows = client.query(&stmt, &[&now, &i64::from(limit)]).await?;
    rows.iter().map(from_row).collect()
}

/// When the next event that [`due`] would return comes due, if any (one
/// waiting for an earlier event of its job does not count).
pub(crate) async fn next_due(pg: &Pg) -> Result<Option<i64>> {
    let client = pg.client().await?;
    let row = client
        .query_opt(
            &format!("SELECT next_attempt_at FROM outbox o WHERE {OUTBOX_SENDABLE} ORDER BY next_attempt_at LIMIT 1"),
            &[],
        )
        .await?;
    row.map(|r| r.try_get(0)).transpose().map_err(Into::into)
}

/// A delivered event; one whose run a purge has passed meanwhile goes (see
/// [`forget_if_purged`]).
pub(crate) async fn delivered(pg: &Pg, id: i64, now: i64) -> Result<()> {
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    wait_for_purge(&tx, id).await?;
    let stmt = tx
        .prepare_cached("UPDATE outbox SET delivered_at = $2, attempts = attempts + 1, last_error = NULL WHERE id = $1")
        .await?;
    tx.execute(&stmt, &[&id, &now]).await?;
    forget_if_purged(&tx, id).await?;
    tx.commit().await?;
    Ok(())
}

/// A failed attempt: try again at `retry_at`, or give up (`None`).
pub(crate) async fn failed(pg: &Pg, id: i64, error: &str, retry_at: Option<i64>, now: i64) -> Result<()> {
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    wait_for_purge(&tx, id).await?;
    let stmt = tx
        .prepare_cached(
            "UPDATE outbox SET attempts = attempts + 1, last_error = $2, \
                 next_attempt_at = COALESCE($3::BIGINT, next_attempt_at), \
                 gave_up_at = CASE WHEN $3::BIGINT IS NULL THEN $4::BIGINT END \
             WHERE id = $1",
        )
        .await?;
    tx.execute(&stmt, &[&id, &error, &retry_at, &now]).await?;
    forget_if_purged(&tx, id).await?;
    tx.commit().await?;
    Ok(())
}

/// Takes turns with a purge of the event's run: every step of a purge locks
/// the run's row `FOR UPDATE` first, which this share lock waits for (and
/// makes a later step wait for). Without it, a purge step and this end of
/// a delivery could each miss the other's uncommitted write, and the event
/// would stay with its phone in it.
async fn wait_for_purge(tx: &Transaction<'_>, id: i64) -> Result<()> {
    let stmt = tx
        .prepare_cached("SELECT 1 FROM runs WHERE id = (SELECT run_id FROM outbox WHERE id = $1) FOR KEY SHARE")
        .await?;
    tx.query_opt(&stmt, &[&id]).await?;
    Ok(())
}

/// Deletes event `id` if it is done with and a purge has passed its run or
/// job: the purge kept it while it was still to be delivered.
async fn forget_if_purged(tx: &Transaction<'_>, id: i64) -> Result<()> {
    let stmt = tx
        .prepare_cached(&format!(
            "DELETE FROM outbox AS o WHERE o.id = $1 AND {}",
            crate::store::outbox_done_after_purge()
        ))
        .await?;
    tx.execute(&stmt, &[&id]).await?;
    Ok(())
}

/// Delivered and given-up events from the tally the outbox's trigger keeps;
/// pending ones counted through the index that holds only them (not a read
/// of every event ever written).
pub(crate) async fn counts(pg: &Pg) -> Result<OutboxCounts> {
    let client = pg.client().await?;
    let row = client
        .query_one(
            "SELECT (SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL AND gave_up_at IS NULL), delivered, gave_up \
             FROM outbox_tally WHERE id = 1",
            &[],
        )
        .await?;
    Ok(OutboxCounts { pending: row.try_get(0)?, delivered: row.try_get(1)?, gave_up: row.try_get(2)? })
}

/// A page of events by id; `state` is `pending`, `delivered`, `gave_up` or
/// `None` for all.
pub(crate) async fn page(pg: &Pg, state: Option<&str>, after: i64, limit: u32) -> Result<Vec<OutboxEvent>> {
    let filter = match state {
        Some("pending") => "delivered_at IS NULL AND gave_up_at IS NULL",
        Some("delivered") => "delivered_at IS NOT NULL",
        Some("gave_up") => "gave_up_at IS NOT NULL",
        _ => "TRUE",
    };
    let client = pg.client().await?;
    let rows = client
        .query(
            &format!("SELECT {COLUMNS} FROM outbox WHERE id > $1 AND {filter} ORDER BY id LIMIT $2"),
            &[&after, &i64::from(limit)],
        )
        .await?;
    rows.iter().map(from_row).collect()
}

#[cfg(test)]
mod tests {
    use crate::domain::{Phone, RunState, Scope};
    use crate::store::postgres::runs::tests::{T0, job, ledger, new_run};

    /// The event function runs for the rows that may be an event, not for
    /// every job written (it read the job's run each time).
    #[tokio::test]
    async fn the_job_event_function_runs_only_for_rows_that_may_be_an_event() {
        let Some((store, mut client)) = ledger("pg event conditions").await else { return };
        let run = new_run("reminders", "k", Some(&["job.skipped", "job.failed", "outcome"]));
        let (id, _) = store.create_run_with_rows(run, vec![], T0).await.unwrap().unwrap();
        let tx = client.transaction().await.unwrap();
        // Counted for this transaction alone; a superuser setting.
        if let Err(e) = tx.batch_execute("SET LOCAL track_functions = 'pl'").await {
            eprintln!("skipped: counting function calls needs a superuser on FLOWCAST_TEST_POSTGRES ({e})");
            return;
        }
        let calls = async |tx: &tokio_postgres::Transaction<'_>| -> i64 {
            tx.query_opt("SELECT calls FROM pg_stat_xact_user_functions WHERE funcname = 'flowcast_job_event'", &[])
                .await
                .unwrap()
                .map_or(0, |r| r.get(0))
        };
        let insert = "INSERT INTO jobs (run_id, phone, line, zone, parameters, due_at, created_at, updated_at, state) \
                      VALUES ($1, $2, 2, 'UTC', '{}', 0, 0, 0, $3) RETURNING id";
        let mut ids = Vec::new();
        for (phone, state) in [("+12015550001", "pending"), ("+12015550002", "pending"), ("+12015550003", "skipped")] {
            ids.push(tx.query_one(insert, &[&id, &phone, &state]).await.unwrap().get::<_, i64>(0));
        }
        assert_eq!(calls(&tx).await, 1, "the skipped insert alone");
        // A claim and a send: no event.
        tx.execute("UPDATE jobs SET state = 'dispatching' WHERE id = $1", &[&ids[0]]).await.unwrap();
        tx.execute("UPDATE jobs SET state = 'sent', outcome_state = 'open' WHERE id = $1", &[&ids[0]]).await.unwrap();
        assert_eq!(calls(&tx).await, 1);
        // A failure and an outcome read back: one call each.
        tx.execute("UPDATE jobs SET state = 'failed' WHERE id = $1", &[&ids[1]]).await.unwrap();
        tx.execute("UPDATE jobs SET outcome_state = 'known' WHERE id = $1", &[&ids[0]]).await.unwrap();
        assert_eq!(calls(&tx).await, 3);
        let types: Vec<String> = tx
            .query("SELECT event_type FROM outbox WHERE run_id = $1 ORDER BY id", &[&id])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(types, ["job.skipped", "job.failed", "outcome"]);
    }

    #[tokio::test]
    async fn events_from_the_triggers_are_due_in_order_per_job_and_record_their_attempts() {
        let Some((store, client)) = ledger("pg outbox").await else { return };
        assert_eq!(store.outbox_next_due().await.unwrap(), None);
        store.suppress(&Phone::from_e164("+12015550002".into()), &Scope::All, Some("STOP"), "cli", T0).await.unwrap();
        let run = new_run("reminders", "k", Some(&["run.finished", "job.skipped", "job.failed"]));
        let rows = vec![job(2, "+12015550001"), job(3, "+12015550002")];
        let (id, _) = store.create_run_with_rows(run, rows, T0).await.unwrap().unwrap();
        // A run without `notify` writes nothing.
        store
            .create_run_with_rows(new_run("reminders", "quiet", None), vec![job(2, "+12015550002")], T0)
            .await
            .unwrap()
            .unwrap();
        let skipped = client
            .query_one("SELECT id FROM jobs WHERE run_id = $1 AND state = 'skipped'", &[&id])
            .await
            .unwrap()
            .get::<_, i64>(0);
        let sent = client
            .query_one("SELECT id FROM jobs WHERE run_id = $1 AND state = 'pending'", &[&id])
            .await
            .unwrap()
            .get::<_, i64>(0);
        // The skipped job fails too (a second event of the same job), the
        // other is sent (no event), and the run finishes.
        client
            .execute("UPDATE jobs SET state = 'failed', reason = 'invalid' WHERE id = $1", &[&skipped])
            .await
            .unwrap();
        client.execute("UPDATE jobs SET state = 'sent', sent_at = 1 WHERE id = $1", &[&sent]).await.unwrap();
        assert!(store.finish_run_if_done(id, T0 + 5).await.unwrap());
        let all = store.outbox_page(None, 0, 10).await.unwrap();
        let types: Vec<(&str, Option<i64>)> = all.iter().map(|e| (e.event_type.as_str(), e.job_id)).collect();
        assert_eq!(types, [("job.skipped", Some(skipped)), ("job.failed", Some(skipped)), ("run.finished", None)]);
        assert!(all.iter().all(|e| e.run_id == id && e.url == "https://hooks.example.com/flowcast" && e.attempts == 0));
        let body: serde_json::Value = serde_json::from_str(&all[0].body).unwrap();
        assert_eq!(body["id"], all[0].event_id.as_str());
        assert_eq!(
            (body["phone"].as_str(), body["reason"].as_str()),
            (Some("+12015550002"), Some("suppressed: scope all, STOP"))
        );
        let finished: serde_json::Value = serde_json::from_str(&all[2].body).unwrap();
        assert_eq!(finished["jobs"], serde_json::json!({"failed": 1, "sent": 1}));
        assert_eq!(finished["state"], "finished");
        let now = all.iter().map(|e| e.next_attempt_at).max().unwrap();
        assert_eq!(store.outbox_next_due().await.unwrap(), Some(all[0].next_attempt_at));
        // The job's second event waits for its first.
        let due: Vec<i64> = store.outbox_due(now, 10).await.unwrap().iter().map(|e| e.id).collect();
        assert_eq!(due, [all[0].id, all[2].id]);
        assert!(store.outbox_due(all[0].next_attempt_at - 1, 10).await.unwrap().is_empty());
        assert_eq!(store.outbox_due(now, 1).await.unwrap().len(), 1);
        // A failed attempt to retry keeps it pending (and its successor waiting).
        store.outbox_failed(all[0].id, "HTTP 500".into(), Some(now + 1000), now).await.unwrap();
        let due: Vec<i64> = store.outbox_due(now, 10).await.unwrap().iter().map(|e| e.id).collect();
        assert_eq!(due, [all[2].id]);
        assert_eq!(store.outbox_due(now + 1000, 10).await.unwrap()[0].id, all[0].id);
        let first = &store.outbox_page(None, 0, 1).await.unwrap()[0];
        assert_eq!(
            (first.attempts, first.last_error.as_deref(), first.next_attempt_at, first.gave_up_at),
            (1, Some("HTTP 500"), now + 1000, None)
        );
        // Given up on: its successor is due.
        store.outbox_failed(all[0].id, "HTTP 410".into(), None, now + 1000).await.unwrap();
        let first = &store.outbox_page(None, 0, 1).await.unwrap()[0];
        assert_eq!((first.attempts, first.next_attempt_at, first.gave_up_at), (2, now + 1000, Some(now + 1000)));
        let due: Vec<i64> = store.outbox_due(now, 10).await.unwrap().iter().map(|e| e.id).collect();
        assert_eq!(due, [all[1].id, all[2].id]);
        store.outbox_delivered(all[2].id, now + 2000).await.unwrap();
        let delivered = &store.outbox_page(Some("delivered".into()), 0, 10).await.unwrap()[0];
        assert_eq!(
            (delivered.id, delivered.delivered_at, delivered.attempts, delivered.last_error.clone()),
            (all[2].id, Some(now + 2000), 1, None)
        );
        let counts = store.outbox_counts().await.unwrap();
        assert_eq!((counts.pending, counts.delivered, counts.gave_up), (1, 1, 1));
        let ids = |events: Vec<crate::store::OutboxEvent>| events.iter().map(|e| e.id).collect::<Vec<_>>();
        assert_eq!(ids(store.outbox_page(Some("pending".into()), 0, 10).await.unwrap()), [all[1].id]);
        assert_eq!(ids(store.outbox_page(Some("gave_up".into()), 0, 10).await.unwrap()), [all[0].id]);
        assert_eq!(ids(store.outbox_page(None, all[0].id, 10).await.unwrap()), [all[1].id, all[2].id]);
        assert_eq!(store.outbox_next_due().await.unwrap(), Some(all[1].next_attempt_at));
        // A run cancelled is no `run.finished`.
        let other = store.create_run(new_run("reminders", "k2", Some(&["run.finished"])), T0).await.unwrap().unwrap();
        assert!(store.set_run_state(other, RunState::Expanding, RunState::Cancelled, None, T0).await.unwrap());
        assert_eq!(store.outbox_page(None, 0, 10).await.unwrap().len(), 3);
    }
}
