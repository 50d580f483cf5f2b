//! PostgreSQL twin of `sqlite/pushed.rs`: contacts pushed to a campaign with
//! `trigger = "api"` land in the campaign's open run for the day, in one
//! transaction per request, and a contact's key maps to the job it made, so a
//! repeated push is a no-op.
//!
//! SQLite runs one push at a time (its one writer); here pushes to the same
//! campaign take a transaction-scoped advisory lock on the campaign, so two
//! instances pushing at once never both create the open run, nor both record
//! the same key.

use tokio_postgres::GenericClient;

use super::jobs::insert_batch;
use super::runs::{create_run_in, run_by_key_in};
use super::{Pg, parsed};
use crate::domain::{ImportRow, JobState};
use crate::store::{NewRun, PushOutcome, PushResult, PushRow, Result, StoreError};

pub(crate) async fn push(pg: &Pg, open: &NewRun, rows: &[PushRow], now: i64) -> Result<(i64, Vec<PushResult>)> {
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext('flowcast push ' || $1::TEXT))", &[&open.campaign]).await?;
    let run_id = match run_by_key_in(&*tx, &open.campaign, &open.run_key).await? {
        Some(id) => id,
        None => create_run_in(&*tx, open, now).await?.ok_or(StoreError::RunNotFound(0))?,
    };
    // Yesterday's open run takes no more contacts: its import is complete, so
    // it finishes once its jobs are settled.
    tx.execute(
        "UPDATE runs SET expanded_at = $3, state = CASE WHEN state = 'expanding' THEN 'active' ELSE state END \
         WHERE campaign = $1 AND trigger = 'contacts' AND expanded_at IS NULL AND id != $2",
        &[&open.campaign, &run_id, &now],
    )
    .await?;
    let rows_so_far: i64 = tx.query_one("SELECT rows_total FROM runs WHERE id = $1", &[&run_id]).await?.try_get(0)?;
    let key_stmt = tx.prepare_cached("SELECT job_id FROM push_keys WHERE campaign = $1 AND key = $2").await?;
    let job_stmt = tx.prepare_cached("SELECT id FROM jobs WHERE run_id = $1 AND phone = $2").await?;
    let mut results = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        if let Some(key) = &row.key
            && let Some(found) = tx.query_opt(&key_stmt, &[&open.campaign, key]).await?
        {
            results.push(with_state(&*tx, found.try_get(0)?, PushOutcome::Existing).await?);
            continue;
        }
        // Pushed contacts are numbered on, as if one growing CSV.
        let line = (rows_so_far + i as i64 + 2) as u64;
        let item = match &row.item {
            ImportRow::Job(spec) => ImportRow::Job(crate::domain::JobSpec { line, ..spec.clone() }),
            ImportRow::Rejected(r) => ImportRow::Rejected(crate::domain::Rejection { line, ..r.clone() }),
        };
        let counts = insert_batch(&tx, run_id, std::slice::from_ref(&item), None, line, now, now).await?;
        let spec = match &item {
            ImportRow::Job(spec) => spec,
            ImportRow::Rejected(r) => {
                results.push(PushResult {
                    job: None,
                    outcome: PushOutcome::Rejected,
                    state: None,
                    reason: Some(r.reason.clone()),
                });
                continue;
            }
        };
        let job: i64 = tx.query_one(&job_stmt, &[&run_id, &spec.phone.as_str()]).await?.try_get(0)?;
        let outcome = if counts.duplicates > 0 { PushOutcome::Duplicate } else { PushOutcome::Created };
        if let (Some(key), PushOutcome::Created) = (&row.key, outcome) {
            tx.execute(
                "INSERT INTO push_keys (campaign, key, job_id, created_at) VALUES ($1, $2, $3, $4)",
                &[&open.campaign, key, &job, &now],
            )
            .await?;
        }
        results.push(with_state(&*tx, job, outcome).await?);
    }
    tx.commit().await?;
    Ok((run_id, results))
}

async fn with_state<C: GenericClient + Sync>(c: &C, job: i64, outcome: PushOutcome) -> Result<PushResult> {
    let row = c.query_one("SELECT state, reason FROM jobs WHERE id = $1", &[&job]).await?;
    let state: JobState = parsed(&row, 0)?;
    Ok(PushResult { job: Some(job), outcome, state: Some(state), reason: row.try_get(1)? })
}

#[cfg(test)]
mod tests {
    use crate::domain::{ImportRow, JobState, Phone, RunState, Scope, Trigger};
    use crate::store::postgres::runs::tests::{T0, job, job_lines, ledger, new_run, refused_lines, rejected};
    use crate::store::{NewRun, PushOutcome, PushRow};

    fn open_run(day: &str) -> NewRun {
        NewRun { trigger: Trigger::Contacts, ..new_run("reminders", &format!("open:{day}"), None) }
    }

    fn keyed(key: Option<&str>, item: ImportRow) -> PushRow {
        PushRow { key: key.map(str::to_string), item }
    }

    #[tokio::test]
    async fn a_push_lands_in_the_open_run_and_a_key_pushed_again_finds_its_job() {
        let Some((store, client)) = ledger("pg push").await else { return };
        store.suppress(&Phone::from_e164("+12015550004".into()), &Scope::All, Some("STOP"), "cli", T0).await.unwrap();
        let rows = vec![
            keyed(Some("a"), job(0, "+12015550001")),
            keyed(None, job(0, "+12015550002")),
            keyed(Some("r"), rejected(0, "555")),
            keyed(Some("s"), job(0, "+12015550004")),
        ];
        let (run, results) = store.push_contacts(open_run("d1"), rows, T0).await.unwrap();
        let outcomes: Vec<_> = results.iter().map(|r| (r.outcome, r.state)).collect();
        assert_eq!(
            outcomes,
            [
                (PushOutcome::Created, Some(JobState::Pending)),
                (PushOutcome::Created, Some(JobState::Pending)),
                (PushOutcome::Rejected, None),
                (PushOutcome::Created, Some(JobState::Skipped)),
            ]
        );
        assert_eq!(results[2].reason.as_deref(), Some("\"555\" is not a phone number"));
        assert_eq!(results[3].reason.as_deref(), Some("suppressed: scope all, STOP"));
        let first = results[0].job.unwrap();
        assert_eq!(store.run_state(run).await.unwrap(), RunState::Expanding, "the open run takes more");
        // Again: the key finds its job; a phone already there is a duplicate.
        let again = vec![keyed(Some("a"), job(0, "+12015550009")), keyed(Some("b"), job(0, "+12015550002"))];
        let (same, results) = store.push_contacts(open_run("d1"), again, T0 + 1).await.unwrap();
        assert_eq!(same, run);
        assert_eq!((results[0].outcome, results[0].job), (PushOutcome::Existing, Some(first)));
        assert_eq!(results[1].outcome, PushOutcome::Duplicate);
        let b = client.query_opt("SELECT job_id FROM push_keys WHERE key = 'b'", &[]).await.unwrap();
        assert!(b.is_none(), "a duplicate records no key");
        let lines = job_lines(&client, run).await;
        assert_eq!(lines, [2, 3, 5]);
        let refused = refused_lines(&client, run).await;
        assert_eq!(refused, [4, 7], "numbered on, as one growing CSV");
        let counts = store.get_run(run).await.unwrap();
        assert_eq!((counts.rows_total, counts.imported, counts.rejected, counts.duplicates), (5, 3, 1, 1));
        // The next day's push closes yesterday's open run.
        let (next, results) = store
            .push_contacts(open_run("d2"), vec![keyed(Some("a2"), job(0, "+12015550001"))], T0 + 86_400_000)
            .await
            .unwrap();
        assert_ne!(next, run);
        assert_eq!(results[0].outcome, PushOutcome::Created);
        let yesterday = store.get_run(run).await.unwrap();
        assert_eq!((yesterday.state, yesterday.expanded_at), (RunState::Active, Some(T0 + 86_400_000)));
        assert_eq!(store.get_run(next).await.unwrap().expanded_at, None);
        // The same key in another campaign is another key.
        let elsewhere = NewRun { campaign: "other".into(), ..open_run("d1") };
        let (_, results) =
            store.push_contacts(elsewhere, vec![keyed(Some("a"), job(0, "+12015550001"))], T0).await.unwrap();
        assert_eq!(results[0].outcome, PushOutcome::Created);
    }

    #[tokio::test]
    async fn pushes_at_once_make_one_open_run() {
        let Some((store, _client)) = ledger("pg push race").await else { return };
        let pushes = (0..4).map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let rows =
                    vec![keyed(Some("same"), job(0, "+12015550001")), keyed(None, job(0, &format!("+1201555010{i}")))];
                store.push_contacts(open_run("d1"), rows, T0).await.unwrap()
            })
        });
        let mut runs = Vec::new();
        let mut created = 0;
        for push in pushes {
            let (run, results) = push.await.unwrap();
            runs.push(run);
            created += usize::from(results[0].outcome == PushOutcome::Created);
        }
        runs.dedup();
        assert_eq!(runs.len(), 1);
        assert_eq!(created, 1, "one push made the keyed job; the others found it");
    }
}
