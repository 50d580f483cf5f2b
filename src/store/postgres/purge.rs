//! PostgreSQL twin of `sqlite/purge.rs`: retention, the SQL that removes the
//! personal data of runs that are over, leaving their counts, states and a
//! keyed hash of each phone (see the SQLite module for what goes and what
//! stays). A run is purged in batches of jobs, one short transaction each;
//! every step is idempotent, so a purge that stopped half-way is finished by
//! the next one.
//!
//! Each write locks the run's row first, so two instances purging the same
//! run take turns (and the second finds it done). There is no secure delete
//! or WAL checkpoint to ask for: the server reclaims dead rows by vacuum.

use tokio_postgres::GenericClient;

use super::Pg;
use crate::domain::{Phone, mask_phones_in};
use crate::store::Result;
pub(crate) use crate::store::sqlite::purge::{JobBatch, keyed_hash};

/// The ledger's tables, for [`used_bytes`].
const TABLES: &[&str] = &[
    "runs",
    "jobs",
    "import_rows",
    "studio_calls",
    "campaigns",
    "suppressions",
    "push_keys",
    "outbox",
    "ledger_meta",
    "instances",
    "instance_campaigns",
    "rate_grid",
    "flowcast_migrations",
];

/// Runs whose personal data is due to go: over (finished or cancelled)
/// before `before`, not purged yet, and with no job pending or in flight (a
/// cancelled run's request in flight records its outcome first).
pub(crate) async fn due_runs(pg: &Pg, before: i64) -> Result<Vec<i64>> {
    let client = pg.client().await?;
    let rows = client
        .query(
            &format!(
                "SELECT id FROM runs r WHERE state IN ('finished', 'cancelled') AND purged_at IS NULL \
                   AND COALESCE(finished_at, created_at) < $1 AND {} ORDER BY id",
                super::jobs::no_open_jobs("r.id")
            ),
            &[&before],
        )
        .await?;
    Ok(rows.iter().map(|r| r.try_get(0)).collect::<std::result::Result<_, _>>()?)
}

/// Whether run `id` may be purged now (checked again inside each write, since
/// the list was read before), locking the run's row until the write commits.
async fn still_due<C: GenericClient + Sync>(c: &C, run_id: i64) -> Result<bool> {
    Ok(c.query_opt(
        &format!(
            "SELECT 1 FROM runs r WHERE id = $1 AND state IN ('finished', 'cancelled') AND purged_at IS NULL \
               AND {} FOR UPDATE OF r",
            super::jobs::no_open_jobs("r.id")
        ),
        &[&run_id],
    )
    .await?
    .is_some())
}

/// What purging run `id` removes: (jobs, Studio calls, import rows).
pub(crate) async fn count_run(pg: &Pg, run_id: i64) -> Result<(u64, u64, u64)> {
    let client = pg.client().await?;
    let row = client
        .query_one(
            "SELECT (SELECT COUNT(*) FROM jobs WHERE run_id = $1), \
                (SELECT COUNT(*) FROM studio_calls WHERE job_id IN (SELECT id FROM jobs WHERE run_id = $1)) \
              + (SELECT COUNT(*) FROM studio_calls WHERE job_id IS NULL AND run_id = $1) \
              + (SELECT COUNT(*) FROM jobs WHERE run_id = $1 AND create_on_row = 1), \
                (SELECT COUNT(*) FROM import_rows WHERE run_id = $1)",
            &[&run_id],
        )
        .await?;
    let count = |i| row.try_get::<_, i64>(i).map(|n| n.max(0) as u64);
    Ok((count(0)?, count(1)?, count(2)?))
}

/// The id just before run `run_id`'s first job: where its purge starts.
pub(crate) async fn before_first_job(pg: &Pg, run_id: i64) -> Result<i64> {
    let client = pg.client().await?;
    let first: Option<i64> =
        client.query_one("SELECT MIN(id) FROM jobs WHERE run_id = $1", &[&run_id]).await?.try_get(0)?;
    Ok(first.map_or(i64::MAX, |id| id - 1))
}

/// The ledger's salt for phone hashes (made by the migration).
pub(crate) async fn salt(pg: &Pg) -> Result<String> {
    let client = pg.client().await?;
    Ok(client.query_one("SELECT value FROM ledger_meta WHERE key = 'phone_salt'", &[]).await?.try_get(0)?)
}

/// Purges up to `limit` of run `run_id`'s jobs after job id `after`, and their
/// Studio calls, in one transaction. Nothing, if the run is not due any more.
///
/// A job keeps what the SQLite purge keeps (see there); its phone becomes the
/// keyed hash, phone numbers in its reason are masked, and an open outcome is
/// closed as `unknown`.
///
/// As in SQLite, the jobs are deleted and inserted again (same ids, every
/// column, whatever later migrations add) rather than updated: an insert of a
/// hashed phone is no event to the outbox triggers, where an update closing
/// an open outcome would write an `outcome` event about a purged job.
pub(crate) async fn purge_jobs(pg: &Pg, run_id: i64, salt: &str, after: i64, limit: i64) -> Result<JobBatch> {
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    if !still_due(&*tx, run_id).await? {
        return Ok(JobBatch::default());
    }
    let rows = tx
        .query(
            "SELECT id, phone, reason FROM jobs WHERE run_id = $1 AND id > $2 ORDER BY id LIMIT $3 FOR UPDATE",
            &[&run_id, &after, &limit],
        )
        .await?;
    if rows.is_empty() {
        return Ok(JobBatch::default());
    }
    let (mut ids, mut phones, mut reasons) =
        (Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()), Vec::with_capacity(rows.len()));
    for row in &rows {
        let (id, phone, reason): (i64, String, Option<String>) = (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        // A phone already hashed (a purge that stopped half-way) stays as it is.
        let hashed = if phone.starts_with(Phone::HASH_PREFIX) { phone } else { keyed_hash(salt, &phone) };
        ids.push(id);
        phones.push(hashed);
        reasons.push(reason.as_deref().map(mask_phones_in));
    }
    // A create kept on its job row goes as the job's other calls do.
    let on_rows: i64 = tx
        .query_one("SELECT COUNT(*) FROM jobs WHERE id = ANY($1) AND create_on_row = 1", &[&ids])
        .await?
        .try_get(0)?;
    let calls = on_rows as u64 + tx.execute("DELETE FROM studio_calls WHERE job_id = ANY($1)", &[&ids]).await?;
    // A pushed contact's key and the events about these jobs (their bodies
    // carry the phone and the outcome) go too; an event not yet delivered
    // stays until it is, or is given up.
    tx.execute("DELETE FROM push_keys WHERE job_id = ANY($1)", &[&ids]).await?;
    tx.execute(
        "DELETE FROM outbox WHERE job_id = ANY($1) AND (delivered_at IS NOT NULL OR gave_up_at IS NOT NULL)",
        &[&ids],
    )
    .await?;
    tx.execute(
        "WITH purged (id, phone, reason) AS (SELECT * FROM unnest($1::BIGINT[], $2::TEXT[], $3::TEXT[])), \
              old AS (DELETE FROM jobs j USING purged p WHERE j.id = p.id \
                      RETURNING to_jsonb(j) || jsonb_build_object( \
                          'phone', p.phone, 'reason', p.reason, 'parameters', '{}', 'zone', '', \
                          'outcome', NULL, 'outcome_notes', NULL, 'last_error', NULL, 'outcome_due_at', NULL, \
                          'dedupe_key', NULL, 'create_on_row', 0, \
                          'outcome_state', CASE WHEN j.outcome_state = 'open' THEN 'unknown' \
                                                ELSE j.outcome_state END) AS doc) \
         INSERT INTO jobs SELECT r.* FROM old CROSS JOIN LATERAL jsonb_populate_record(NULL::jobs, old.doc) r ORDER BY r.id",
        &[&ids, &phones, &reasons],
    )
    .await?;
    forget_summary(&*tx, run_id).await?;
    tx.commit().await?;
    Ok(JobBatch { jobs: ids.len() as u64, calls, last: ids.last().copied() })
}

/// A kept summary counts the outcome values a purge blanks (a reply's text
/// among them): each step of a purge drops it, so that one stopped half-way
/// leaves none behind, and bumps the run's `jobs_version` first (waiting for
/// a keep that holds the run's row), so that a summary counted before the
/// step is not kept after it. The next read counts what is left.
async fn forget_summary<C: GenericClient + Sync>(tx: &C, run_id: i64) -> Result<()> {
    tx.execute("UPDATE runs SET jobs_version = jobs_version + 1 WHERE id = $1", &[&run_id]).await?;
    tx.execute("DELETE FROM run_summaries WHERE run_id = $1", &[&run_id]).await?;
    Ok(())
}

/// Deletes up to `limit` of the run's rejected and duplicate rows (the run
/// keeps their counts); returns how many.
pub(crate) async fn purge_import_rows(pg: &Pg, run_id: i64, limit: i64) -> Result<u64> {
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    if !still_due(&*tx, run_id).await? {
        return Ok(0);
    }
    let deleted = tx
        .execute(
            "DELETE FROM import_rows WHERE ctid = ANY(ARRAY(SELECT ctid FROM import_rows WHERE run_id = $1 LIMIT $2))",
            &[&run_id, &limit],
        )
        .await?;
    tx.commit().await?;
    Ok(deleted)
}

/// Ends a run's purge: its Studio calls not tied to a job go, and the run is
/// marked purged. Returns the calls deleted, `None` when the run was not due
/// (purged meanwhile by another instance, say).
pub(crate) async fn finish(pg: &Pg, run_id: i64, now: i64) -> Result<Option<u64>> {
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    if !still_due(&*tx, run_id).await? {
        return Ok(None);
    }
    let calls = tx.execute("DELETE FROM studio_calls WHERE job_id IS NULL AND run_id = $1", &[&run_id]).await?;
    tx.execute(
        "DELETE FROM outbox WHERE run_id = $1 AND job_id IS NULL AND (delivered_at IS NOT NULL OR gave_up_at IS NOT NULL)",
        &[&run_id],
    )
    .await?;
    tx.execute("UPDATE runs SET purged_at = $2 WHERE id = $1", &[&run_id, &now]).await?;
    forget_summary(&*tx, run_id).await?;
    tx.commit().await?;
    Ok(Some(calls))
}

/// The bytes the ledger's tables take in the current schema, with their
/// indexes and TOAST (dead rows not yet vacuumed included: PostgreSQL reuses
/// their space as SQLite reuses free pages, but counts it as the table's).
pub(crate) async fn used_bytes(pg: &Pg) -> Result<u64> {
    let client = pg.client().await?;
    let row = client
        .query_one(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::BIGINT FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND c.relname::TEXT = ANY($1::TEXT[])",
            &[&TABLES],
        )
        .await?;
    let bytes: i64 = row.try_get(0)?;
    Ok(bytes.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::keyed_hash;
    use crate::store::postgres::runs::tests::{T0, job, ledger, new_run, rejected};

    #[tokio::test]
    async fn a_purge_hashes_phones_and_removes_calls_import_rows_and_personal_values() {
        let Some((store, client)) = ledger("pg purge").await else { return };
        let rows = vec![job(2, "+12015550001"), job(3, "+12015550002"), rejected(4, "555"), job(5, "+12015550001")];
        let run = new_run("reminders", "k", Some(&["outcome"]));
        let (id, _) = store.create_run_with_rows(run, rows.clone(), T0).await.unwrap().unwrap();
        let (keep, _) =
            store.create_run_with_rows(new_run("reminders", "recent", None), rows, T0).await.unwrap().unwrap();
        let jobs: Vec<i64> = client
            .query("SELECT id FROM jobs WHERE run_id = $1 ORDER BY id", &[&id])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        // One sent with its outcome still open (its create kept on its row),
        // one refused by Studio.
        client
            .execute(
                "UPDATE jobs SET state = 'sent', sent_at = $2, execution_sid = 'FN1', outcome_state = 'open', \
                        outcome_due_at = $2, outcome = '{\"answer\": \"yes\"}', last_error = 'late', \
                        create_on_row = 1 WHERE id = $1",
                &[&jobs[0], &T0],
            )
            .await
            .unwrap();
        client
            .execute(
                "UPDATE jobs SET state = 'failed', reason = 'invalid: The To number +12015550002 is not valid', \
                        finished_at = $2 WHERE id = $1",
                &[&jobs[1], &T0],
            )
            .await
            .unwrap();
        for (job, run) in [(Some(jobs[1]), id), (None, id), (None, keep)] {
            client
                .execute(
                    "INSERT INTO studio_calls (run_id, job_id, at, operation, request, outcome) \
                     VALUES ($1, $2, 0, 'create', 'To=+12015550001', 'created')",
                    &[&run, &job],
                )
                .await
                .unwrap();
        }
        client.execute("INSERT INTO push_keys VALUES ('reminders', 'a', $1, 0)", &[&jobs[0]]).await.unwrap();
        client
            .execute(
                "INSERT INTO outbox (event_id, event_type, run_id, job_id, url, body, created_at, next_attempt_at, delivered_at) \
                 VALUES ('evt_1', 'job.failed', $1, $2, 'u', '{}', 0, 0, 1), ('evt_2', 'job.failed', $1, $2, 'u', '{}', 0, 0, NULL)",
                &[&id, &jobs[1]],
            )
            .await
            .unwrap();
        let counts = |c: crate::store::OutboxCounts| (c.pending, c.delivered, c.gave_up);
        assert_eq!(counts(store.outbox_counts().await.unwrap()), (1, 1, 0), "an event written delivered counts");
        assert!(store.finish_run_if_done(id, T0 + 10).await.unwrap());
        client.execute("UPDATE jobs SET state = 'sent' WHERE run_id = $1", &[&keep]).await.unwrap();
        assert!(store.finish_run_if_done(keep, T0 + 10).await.unwrap());
        client.execute("UPDATE runs SET finished_at = $2 WHERE id = $1", &[&keep, &(T0 + 1000)]).await.unwrap();
        let before = T0 + 100;
        let preview = store.purge_preview(before).await.unwrap();
        assert_eq!((preview.runs, preview.jobs, preview.studio_calls, preview.import_rows), (1, 2, 3, 2));
        assert!(store.used_bytes().await.unwrap() > 0);
        let summary = store.purge(before, T0 + 200).await.unwrap();
        assert_eq!(summary, preview);
        assert_eq!(store.get_run(id).await.unwrap().purged_at, Some(T0 + 200));
        let salt: String =
            client.query_one("SELECT value FROM ledger_meta WHERE key = 'phone_salt'", &[]).await.unwrap().get(0);
        let purged = client
            .query(
                "SELECT id, phone, parameters, zone, state, reason, outcome, outcome_state, outcome_due_at, last_error, \
                        execution_sid, sent_at FROM jobs WHERE run_id = $1 ORDER BY id",
                &[&id],
            )
            .await
            .unwrap();
        assert_eq!(purged.len(), 2);
        let sent = &purged[0];
        assert_eq!(sent.get::<_, i64>(0), jobs[0], "a job keeps its id");
        assert_eq!(sent.get::<_, String>(1), keyed_hash(&salt, "+12015550001"));
        assert_eq!((sent.get::<_, String>(2), sent.get::<_, String>(3)), ("{}".into(), "".into()));
        assert_eq!((sent.get::<_, String>(4), sent.get::<_, Option<String>>(6)), ("sent".into(), None));
        assert_eq!((sent.get::<_, Option<String>>(7), sent.get::<_, Option<i64>>(8)), (Some("unknown".into()), None));
        assert_eq!(sent.get::<_, Option<String>>(9), None);
        assert_eq!((sent.get::<_, Option<String>>(10), sent.get::<_, Option<i64>>(11)), (Some("FN1".into()), Some(T0)));
        let failed = &purged[1];
        assert_eq!(failed.get::<_, String>(1), keyed_hash(&salt, "+12015550002"));
        let reason: String = failed.get(5);
        assert!(reason.starts_with("invalid: ") && !reason.contains("2015550002"), "{reason}");
        let count = |sql: &'static str| {
            let client = &client;
            async move { client.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
        };
        assert_eq!(count("SELECT COUNT(*) FROM studio_calls").await, 1, "the other run's call stays");
        assert_eq!(count("SELECT COUNT(*) FROM jobs WHERE create_on_row = 1").await, 0, "the kept create goes too");
        assert_eq!(count("SELECT COUNT(*) FROM push_keys").await, 0);
        assert_eq!(
            count("SELECT COUNT(*) FROM outbox WHERE event_type = 'outcome'").await,
            0,
            "closing an outcome in a purge is no event"
        );
        let events: Vec<String> =
            client.query("SELECT event_id FROM outbox", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
        assert_eq!(events, ["evt_2"], "an event not delivered yet stays");
        assert_eq!(counts(store.outbox_counts().await.unwrap()), (1, 0, 0), "the purged event no longer counts");
        let rows: Vec<(i64, i64)> = client
            .query("SELECT run_id, COUNT(*) FROM import_rows GROUP BY run_id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(rows, [(keep, 2)]);
        let run = store.get_run(id).await.unwrap();
        assert_eq!((run.rows_total, run.imported, run.rejected, run.duplicates), (4, 2, 1, 1), "the counts stay");
        // Done: nothing more to purge.
        assert_eq!(store.purge(before, T0 + 300).await.unwrap(), Default::default());
        assert_eq!(store.get_run(id).await.unwrap().purged_at, Some(T0 + 200));
        // The other run's turn comes; a phone hashed once is not hashed again.
        let later = store.purge(T0 + 2000, T0 + 400).await.unwrap();
        assert_eq!((later.runs, later.jobs, later.studio_calls, later.import_rows), (1, 2, 1, 2));
        let phones: Vec<String> =
            client.query("SELECT phone FROM jobs ORDER BY id", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
        assert!(phones.iter().all(|p| p.starts_with("hash:")), "{phones:?}");
        assert_eq!(phones[0], phones[2], "one phone, one hash");
    }

    /// A delivery that ends while a purge step of its run is in flight waits
    /// for it, then sees the job purged and deletes the event: neither
    /// misses the other's uncommitted write.
    #[tokio::test]
    async fn an_event_delivered_while_a_purge_step_is_in_flight_goes_once_the_step_commits() {
        let Some((store, mut client)) = ledger("pg purge delivery").await else { return };
        let rows = vec![job(2, "+12015550001"), job(3, "+12015550002")];
        let (id, _) = store.create_run_with_rows(new_run("reminders", "k", None), rows, T0).await.unwrap().unwrap();
        let jobs: Vec<i64> = client
            .query("SELECT id FROM jobs WHERE run_id = $1 ORDER BY id", &[&id])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        let event = |event_id: &'static str, job: i64| {
            let client = &client;
            async move {
                client
                    .query_one(
                        "INSERT INTO outbox (event_id, event_type, run_id, job_id, url, body, created_at, next_attempt_at) \
                         VALUES ($1, 'job.sent', $2, $3, 'u', '{\"phone\": \"+12015550001\"}', 0, 0) RETURNING id",
                        &[&event_id, &id, &job],
                    )
                    .await
                    .unwrap()
                    .get::<_, i64>(0)
            }
        };
        let (first, second) = (event("evt_1", jobs[0]).await, event("evt_2", jobs[1]).await);
        let left = async |client: &tokio_postgres::Client| -> Vec<String> {
            client
                .query("SELECT event_id FROM outbox ORDER BY id", &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect()
        };
        // A purge step in flight, written out here so that it stays open: as
        // `purge_jobs` does, its run locked first, the events it found done
        // deleted (none: both pending), the first job's phone hashed.
        let step = client.transaction().await.unwrap();
        step.query("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE", &[&id]).await.unwrap();
        step.execute(
            "DELETE FROM outbox WHERE job_id = $1 AND (delivered_at IS NOT NULL OR gave_up_at IS NOT NULL)",
            &[&jobs[0]],
        )
        .await
        .unwrap();
        step.execute("UPDATE jobs SET phone = 'hash:0' WHERE id = $1", &[&jobs[0]]).await.unwrap();
        let delivering = tokio::spawn({
            let store = store.clone();
            async move { store.outbox_delivered(first, T0 + 1).await }
        });
        // The delivery waits on the step's lock (a backend blocked by the
        // step's own).
        crate::store::postgres::until_blocked_by(&step, || delivering.is_finished()).await;
        step.commit().await.unwrap();
        delivering.await.unwrap().unwrap();
        assert_eq!(left(&client).await, ["evt_2"], "delivered after its job was purged: gone");
        // The other event, its job not purged: delivered, it stays.
        store.outbox_delivered(second, T0 + 2).await.unwrap();
        assert_eq!(left(&client).await, ["evt_2"]);
    }

    #[tokio::test]
    async fn a_batch_that_stopped_half_way_is_finished_by_the_next_purge() {
        let Some((store, client)) = ledger("pg purge resumed").await else { return };
        let rows: Vec<_> = (0..5).map(|i| job(i + 2, &format!("+1201555000{i}"))).collect();
        let (id, _) = store.create_run_with_rows(new_run("reminders", "k", None), rows, T0).await.unwrap().unwrap();
        client.execute("UPDATE jobs SET state = 'sent' WHERE run_id = $1", &[&id]).await.unwrap();
        assert!(store.finish_run_if_done(id, T0).await.unwrap());
        let pg = match &store.db {
            crate::store::Db::Postgres(pg) => pg.clone(),
            crate::store::Db::Sqlite(_) => unreachable!(),
        };
        let salt = super::salt(&pg).await.unwrap();
        let start = super::before_first_job(&pg, id).await.unwrap();
        let batch = super::purge_jobs(&pg, id, &salt, start, 2).await.unwrap();
        assert_eq!((batch.jobs, batch.last), (2, Some(start + 2)));
        let summary = store.purge(T0 + 1, T0 + 2).await.unwrap();
        assert_eq!((summary.runs, summary.jobs), (1, 5));
        let hashed: i64 =
            client.query_one("SELECT COUNT(*) FROM jobs WHERE phone LIKE 'hash:%'", &[]).await.unwrap().get(0);
        assert_eq!(hashed, 5);
        assert_eq!(super::before_first_job(&pg, 9999).await.unwrap(), i64::MAX);
    }
}
