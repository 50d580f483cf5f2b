//! PostgreSQL twin of `sqlite/runs.rs`: runs, one firing of a campaign, with
//! its frozen settings and import counts.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio_postgres::{GenericClient, Row};

use super::{Pg, parsed};
use crate::domain::{ConflictPolicy, FlowSid, ImportRow, JobState, NotifyRule, ResumePoint, RunState, SendWindow};
use crate::store::{BatchCounts, NewRun, Result, RunCounts, RunRow, StoreError};

const RUN_COLUMNS: &str = "id, campaign, kind, trigger, scheduled_at, flow_sid, from_addr, on_conflict, \
     max_wait_ms, rate, window_start, window_end, state, state_reason, rows_total, imported, rejected, duplicates, \
     created_at, expanded_at, finished_at, outcome_fields, channel, limits_exempt, dedupe_within_ms, purged_at";

fn corrupt(idx: usize, message: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(format!("column {idx}: {message}"))
}

/// Milliseconds as the ledger keeps them; a duration too long for an `i64` is
/// kept as the longest one.
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn run_from_row(r: &Row) -> Result<RunRow> {
    let flow: String = r.try_get(5)?;
    let flow = FlowSid::parse(&flow).map_err(|e| corrupt(5, e))?;
    let max_wait: Option<i64> = r.try_get(8)?;
    let on_conflict: String = r.try_get(7)?;
    let policy = ConflictPolicy::from_parts(&on_conflict, max_wait.map(|ms| Duration::from_millis(ms.max(0) as u64)))
        .map_err(|e| corrupt(7, e))?;
    let window = match (r.try_get::<_, Option<String>>(10)?, r.try_get::<_, Option<String>>(11)?) {
        (Some(start), Some(end)) => Some(SendWindow::parse(&start, &end).map_err(|e| corrupt(10, e))?),
        _ => None,
    };
    let outcomes: String = r.try_get(21)?;
    let outcomes = serde_json::from_str(&outcomes).map_err(|e| corrupt(21, format!("outcome fields: {e}")))?;
    let rate: Option<i64> = r.try_get(9)?;
    let rate = rate.map(|n| u32::try_from(n).map_err(|e| corrupt(9, e))).transpose()?;
    Ok(RunRow {
        id: r.try_get(0)?,
        campaign: r.try_get(1)?,
        kind: parsed(r, 2)?,
        trigger: parsed(r, 3)?,
        scheduled_at: r.try_get(4)?,
        flow,
        from: r.try_get(6)?,
        policy,
        rate,
        window,
        outcomes,
        state: parsed(r, 12)?,
        state_reason: r.try_get(13)?,
        rows_total: r.try_get(14)?,
        imported: r.try_get(15)?,
        rejected: r.try_get(16)?,
        duplicates: r.try_get(17)?,
        created_at: r.try_get(18)?,
        expanded_at: r.try_get(19)?,
        finished_at: r.try_get(20)?,
        channel: parsed(r, 22)?,
        limits_exempt: r.try_get(23)?,
        dedupe_within_ms: r.try_get(24)?,
        purged_at: r.try_get(25)?,
    })
}

/// Records a new run in state `expanding`. `None` if the campaign already has a
/// run with this key (the same tick or content never makes two runs).
pub(crate) async fn create_run(pg: &Pg, run: &NewRun, now: i64) -> Result<Option<i64>> {
    let client = pg.client().await?;
    create_run_in(&**client, run, now).await
}

/// [`create_run`] on a connection or inside the caller's transaction.
pub(crate) async fn create_run_in<C: GenericClient + Sync>(c: &C, run: &NewRun, now: i64) -> Result<Option<i64>> {
    let outcomes = serde_json::to_string(&run.outcomes).expect("outcome fields serialise");
    let row = c
        .query_opt(
            "INSERT INTO runs (campaign, kind, trigger, run_key, scheduled_at, source, flow_sid, \
             from_addr, on_conflict, max_wait_ms, rate, window_start, window_end, state, created_at, outcome_fields, \
             channel, limits_exempt, dedupe_within_ms, notify_url, notify_events) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21) \
             ON CONFLICT (campaign, run_key) DO NOTHING RETURNING id",
            &[
                &run.campaign,
                &run.kind.as_str(),
                &run.trigger.as_str(),
                &run.run_key,
                &run.scheduled_at,
                &run.source,
                &run.flow.as_str(),
                &run.from,
                &run.policy.name(),
                &run.policy.max_wait().map(millis),
                &run.rate.map(i64::from),
                &run.window.map(|w| w.start_text()),
                &run.window.map(|w| w.end_text()),
                &RunState::Expanding.as_str(),
                &now,
                &outcomes,
                &run.channel.as_str(),
                &run.limits_exempt,
                &run.dedupe_within.map(millis),
                &run.notify.as_ref().map(|n| n.url.as_str()),
                &run.notify.as_ref().map(NotifyRule::events_column),
            ],
        )
        .await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

/// The run of `campaign` keyed `run_key`, if there is one.
pub(crate) async fn run_by_key(pg: &Pg, campaign: &str, run_key: &str) -> Result<Option<i64>> {
    let client = pg.client().await?;
    run_by_key_in(&**client, campaign, run_key).await
}

/// [`run_by_key`] on a connection or inside the caller's transaction.
pub(crate) async fn run_by_key_in<C: GenericClient + Sync>(
    c: &C,
    campaign: &str,
    run_key: &str,
) -> Result<Option<i64>> {
    let row = c.query_opt("SELECT id FROM runs WHERE campaign = $1 AND run_key = $2", &[&campaign, &run_key]).await?;
    Ok(row.map(|r| r.try_get(0)).transpose()?)
}

/// Records a run and all its contacts in one transaction, already imported
/// (`active`): a crash leaves either the whole run or nothing, so a retried
/// request never finds half a run. `Err(id)` (inside `Ok`) when the campaign
/// already has a run with this key.
pub(crate) async fn create_run_with_rows(
    pg: &Pg,
    run: &NewRun,
    rows: &[ImportRow],
    now: i64,
) -> Result<std::result::Result<(i64, BatchCounts), i64>> {
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    let Some(id) = create_run_in(&*tx, run, now).await? else {
        // The insert waited for a run with this key being created meanwhile
        // to commit, so this (later) read sees it.
        let existing = run_by_key_in(&*tx, &run.campaign, &run.run_key).await?.ok_or(StoreError::RunNotFound(0))?;
        return Ok(Err(existing));
    };
    let last_line = rows.iter().map(ImportRow::line).max().unwrap_or(1);
    let counts = super::jobs::insert_batch(&tx, id, rows, None, last_line, now, now).await?;
    tx.execute(
        "UPDATE runs SET expanded_at = $2, state = 'active' WHERE id = $1 AND state = 'expanding'",
        &[&id, &now],
    )
    .await?;
    tx.commit().await?;
    Ok(Ok((id, counts)))
}

/// Just a run's state (checked before every create, so kept cheap).
pub(crate) async fn run_state(pg: &Pg, id: i64) -> Result<RunState> {
    let client = pg.client().await?;
    let stmt = client.prepare_cached("SELECT state FROM runs WHERE id = $1").await?;
    let row = client.query_opt(&stmt, &[&id]).await?.ok_or(StoreError::RunNotFound(id))?;
    parsed(&row, 0)
}

async fn run_state_in<C: GenericClient + Sync>(c: &C, id: i64) -> Result<RunState> {
    let row = c.query_opt("SELECT state FROM runs WHERE id = $1", &[&id]).await?.ok_or(StoreError::RunNotFound(id))?;
    parsed(&row, 0)
}

pub(crate) async fn get_run(pg: &Pg, id: i64) -> Result<RunRow> {
    let client = pg.client().await?;
    let stmt = client.prepare_cached(&format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = $1")).await?;
    let row = client.query_opt(&stmt, &[&id]).await?.ok_or(StoreError::RunNotFound(id))?;
    run_from_row(&row)
}

/// Runs, newest first, optionally of one campaign.
pub(crate) async fn list_runs(pg: &Pg, campaign: Option<&str>, limit: u32) -> Result<Vec<RunRow>> {
    let client = pg.client().await?;
    let rows = client
        .query(
            &format!(
                "SELECT {RUN_COLUMNS} FROM runs WHERE ($1::TEXT IS NULL OR campaign = $1) ORDER BY id DESC LIMIT $2"
            ),
            &[&campaign, &i64::from(limit)],
        )
        .await?;
    rows.iter().map(run_from_row).collect()
}

/// Runs that still have work: not finished and not cancelled.
pub(crate) async fn unfinished_runs(pg: &Pg) -> Result<Vec<RunRow>> {
    let client = pg.client().await?;
    let rows = client
        .query(
            &format!("SELECT {RUN_COLUMNS} FROM runs WHERE state NOT IN ($1, $2) ORDER BY id"),
            &[&RunState::Finished.as_str(), &RunState::Cancelled.as_str()],
        )
        .await?;
    rows.iter().map(run_from_row).collect()
}

/// Import finished: the run is `active` (unless a user paused or cancelled it
/// meanwhile). Its jobs were claimable while it was `expanding`.
pub(crate) async fn finish_expansion(pg: &Pg, id: i64, now: i64) -> Result<()> {
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    tx.execute(
        "UPDATE runs SET expanded_at = $2, state = CASE WHEN state = 'expanding' THEN 'active' ELSE state END \
         WHERE id = $1",
        &[&id, &now],
    )
    .await?;
    // Jobs written by a batch that raced a cancel are cancelled too.
    tx.execute(
        "UPDATE jobs SET state = 'cancelled', reason = 'run cancelled', updated_at = $2, finished_at = $2 \
         WHERE run_id = $1 AND state = 'pending' AND (SELECT state FROM runs WHERE id = $1) = 'cancelled'",
        &[&id, &now],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Where an interrupted import resumes: after `import_line`, the line every
/// part of it holds (see `jobs::import_batch`), except for the lines a part
/// ahead of the others committed after it, read back from the jobs and
/// refused rows that hold them (at most one batch: the parts of a batch run
/// together, and the import stops when one fails). The run's rows are read
/// through their indexes by run; this happens once, when a part failed.
pub(crate) async fn import_resume(pg: &Pg, id: i64) -> Result<ResumePoint> {
    let client = pg.client().await?;
    let row = client
        .query_opt(
            "SELECT import_line, (SELECT MAX(line) FROM unnest(import_part_lines) line) FROM runs WHERE id = $1",
            &[&id],
        )
        .await?
        .ok_or(StoreError::RunNotFound(id))?;
    let through = row.try_get::<_, i64>(0)?.max(1);
    let ahead: Option<i64> = row.try_get(1)?;
    let Some(ahead) = ahead.filter(|&line| line > through) else {
        return Ok(ResumePoint::whole(through as u64));
    };
    let held = client
        .query(
            "SELECT line FROM jobs WHERE run_id = $1 AND line > $2 AND line <= $3 \
             UNION ALL SELECT line FROM import_rows WHERE run_id = $1 AND line > $2 AND line <= $3",
            &[&id, &through, &ahead],
        )
        .await?
        .iter()
        .map(|r| r.try_get::<_, i64>(0).map(|line| line as u64))
        .collect::<std::result::Result<Vec<u64>, _>>()?;
    Ok(ResumePoint::with_held(through as u64, held))
}

/// The last CSV line every part of an import has committed.
pub(crate) async fn import_line(pg: &Pg, id: i64) -> Result<u64> {
    let client = pg.client().await?;
    let row = client
        .query_opt("SELECT import_line FROM runs WHERE id = $1", &[&id])
        .await?
        .ok_or(StoreError::RunNotFound(id))?;
    let line: i64 = row.try_get(0)?;
    Ok(line.max(1) as u64)
}

/// Moves a run from `from` to `to` with a reason, only if it is still in
/// `from`; returns whether it was (`false`: someone else changed it first).
pub(crate) async fn set_run_state(
    pg: &Pg,
    id: i64,
    from: RunState,
    to: RunState,
    reason: Option<&str>,
    now: i64,
) -> Result<bool> {
    let mut client = pg.client().await?;
    let tx = client.transaction().await?;
    let finished = to.is_over().then_some(now);
    let changed = tx
        .execute(
            "UPDATE runs SET state = $3, state_reason = $4, finished_at = COALESCE($5, finished_at) \
             WHERE id = $1 AND state = $2",
            &[&id, &from.as_str(), &to.as_str(), &reason, &finished],
        )
        .await?;
    if changed == 0 {
        // Tell a run that is not there from one that moved on.
        run_state_in(&*tx, id).await?;
        return Ok(false);
    }
    if to == RunState::Cancelled {
        // Jobs not yet handed to Studio never will be. A job in `dispatching`
        // has a request in flight; its outcome is recorded when it returns.
        tx.execute(
            "UPDATE jobs SET state = 'cancelled', reason = 'run cancelled', updated_at = $2, finished_at = $2 \
             WHERE run_id = $1 AND state = 'pending'",
            &[&id, &now],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(true)
}

/// Marks the run finished when no job is open; returns whether it did.
pub(crate) async fn finish_run_if_done(pg: &Pg, id: i64, now: i64) -> Result<bool> {
    let client = pg.client().await?;
    let changed = client
        .execute(
            &format!(
                "UPDATE runs SET state = 'finished', finished_at = $2 WHERE id = $1 AND state = 'active' AND {}",
                super::jobs::no_open_jobs("$1")
            ),
            &[&id, &now],
        )
        .await?;
    Ok(changed == 1)
}

pub(crate) async fn run_counts(pg: &Pg, id: i64) -> Result<RunCounts> {
    run_counts_in(&pg.client().await?, id).await
}

/// [`run_counts`] through `c` (a transaction, for one consistent read).
pub(crate) async fn run_counts_in<C: deadpool_postgres::GenericClient>(c: &C, id: i64) -> Result<RunCounts> {
    let stmt = c.prepare_cached("SELECT state, COUNT(*) FROM jobs WHERE run_id = $1 GROUP BY state").await?;
    let mut counts = BTreeMap::new();
    for row in c.query(&stmt, &[&id]).await? {
        counts.insert(parsed::<JobState>(&row, 0)?, row.try_get::<_, i64>(1)?);
    }
    Ok(RunCounts(counts))
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::{Map, Value};

    use crate::domain::{
        CampaignKind, Channel, ConflictPolicy, FlowSid, ImportRow, JobSpec, JobState, NotifyRule, Parameters, Phone,
        Rejection, RunState, Scope, Trigger,
    };
    use crate::store::{Ledger, NewRun, Store, StoreError};

    /// 2026-06-01T00:00:00Z.
    pub(crate) const T0: i64 = 1_780_272_000_000;

    /// A fresh PostgreSQL ledger, and a plain client on it for what the tests
    /// look at or set up directly; `None` without a test server.
    pub(crate) async fn ledger(label: &str) -> Option<(Store, tokio_postgres::Client)> {
        let url = crate::store::postgres::test_ledger(label).await?;
        let store = Store::open(&Ledger::parse(&url).unwrap()).await.unwrap();
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(connection);
        Some((store, client))
    }

    pub(crate) fn new_run(campaign: &str, key: &str, notify: Option<&[&str]>) -> NewRun {
        NewRun {
            campaign: campaign.into(),
            kind: CampaignKind::Reminder,
            trigger: Trigger::Manual,
            run_key: key.into(),
            scheduled_at: T0,
            source: format!("campaigns/{campaign}.toml"),
            flow: FlowSid::parse("FW0123456789abcdef0123456789abcdef").unwrap(),
            from: "+15017122661".into(),
            policy: ConflictPolicy::from_parts("wait", Some(std::time::Duration::from_secs(90))).unwrap(),
            rate: Some(20),
            window: None,
            outcomes: Vec::new(),
            channel: Channel::Sms,
            limits_exempt: true,
            dedupe_within: None,
            notify: notify.map(|events| {
                let events: Vec<String> = events.iter().map(|e| e.to_string()).collect();
                NotifyRule::parse("https://hooks.example.com/flowcast", Some(&events)).unwrap()
            }),
        }
    }

    pub(crate) fn job(line: u64, phone: &str) -> ImportRow {
        let mut parameters = Map::new();
        parameters.insert("name".into(), Value::String(format!("Ada {line}")));
        ImportRow::Job(JobSpec {
            line,
            phone: Phone::from_e164(phone.into()),
            zone: chrono_tz::America::Chicago,
            parameters: Parameters::from_map(&parameters),
            due_at: None,
            expires_at: None,
            dedupe_key: None,
        })
    }

    pub(crate) fn rejected(line: u64, raw: &str) -> ImportRow {
        ImportRow::Rejected(Rejection { line, raw_phone: raw.into(), reason: format!("{raw:?} is not a phone number") })
    }

    /// The CSV lines of a run's jobs, in job order.
    pub(crate) async fn job_lines(client: &tokio_postgres::Client, run: i64) -> Vec<i64> {
        client
            .query("SELECT line FROM jobs WHERE run_id = $1 ORDER BY id", &[&run])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    /// The CSV lines of a run's refused and duplicate rows, in line order.
    pub(crate) async fn refused_lines(client: &tokio_postgres::Client, run: i64) -> Vec<i64> {
        client
            .query("SELECT line FROM import_rows WHERE run_id = $1 ORDER BY line", &[&run])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    }

    pub(crate) async fn job_states(client: &tokio_postgres::Client, run: i64) -> Vec<(String, String, Option<String>)> {
        client
            .query("SELECT phone, state, reason FROM jobs WHERE run_id = $1 ORDER BY id", &[&run])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    #[tokio::test]
    async fn a_run_is_created_once_per_key_and_reads_back() {
        let Some((store, _client)) = ledger("pg runs create").await else { return };
        let id = store.create_run(new_run("reminders", "k1", None), T0).await.unwrap().expect("a new run");
        assert_eq!(store.create_run(new_run("reminders", "k1", None), T0 + 1).await.unwrap(), None);
        assert_eq!(store.run_by_key("reminders", "k1").await.unwrap(), Some(id));
        assert_eq!(store.run_by_key("reminders", "k2").await.unwrap(), None);
        let other = store.create_run(new_run("other", "k1", None), T0).await.unwrap().expect("another campaign's");
        let run = store.get_run(id).await.unwrap();
        assert_eq!(
            (run.campaign.as_str(), run.state, run.rate, run.created_at),
            ("reminders", RunState::Expanding, Some(20), T0)
        );
        assert_eq!(run.policy.name(), "wait");
        assert_eq!(run.policy.max_wait(), Some(std::time::Duration::from_secs(90)));
        assert!(run.limits_exempt && run.expanded_at.is_none() && run.purged_at.is_none());
        assert_eq!(store.run_state(id).await.unwrap(), RunState::Expanding);
        assert!(matches!(store.run_state(9999).await, Err(StoreError::RunNotFound(9999))));
        assert!(matches!(store.get_run(9999).await, Err(StoreError::RunNotFound(9999))));
        assert_eq!(store.import_line(id).await.unwrap(), 1);
        let all: Vec<i64> = store.list_runs(None, 10).await.unwrap().iter().map(|r| r.id).collect();
        assert_eq!(all, [other, id]);
        let one: Vec<i64> = store.list_runs(Some("reminders"), 10).await.unwrap().iter().map(|r| r.id).collect();
        assert_eq!(one, [id]);
        assert_eq!(store.list_runs(None, 1).await.unwrap().len(), 1);
        store.finish_expansion(id, T0 + 5).await.unwrap();
        let run = store.get_run(id).await.unwrap();
        assert_eq!((run.state, run.expanded_at), (RunState::Active, Some(T0 + 5)));
        assert!(store.finish_run_if_done(id, T0 + 6).await.unwrap(), "no job is open");
        let unfinished: Vec<i64> = store.unfinished_runs().await.unwrap().iter().map(|r| r.id).collect();
        assert_eq!(unfinished, [other]);
    }

    #[tokio::test]
    async fn a_run_with_rows_is_written_whole_with_suppressions_duplicates_and_rejections() {
        let Some((store, client)) = ledger("pg runs with rows").await else { return };
        store.suppress(&Phone::from_e164("+12015550003".into()), &Scope::All, Some("STOP"), "cli", T0).await.unwrap();
        // Two entries cover +12015550004: the first one made (no reason) is
        // the one named; an entry for another campaign covers no one here.
        let four = Phone::from_e164("+12015550004".into());
        store.suppress(&four, &Scope::Campaign("other".into()), Some("other"), "cli", T0).await.unwrap();
        store.suppress(&four, &Scope::Campaign("reminders".into()), None, "cli", T0).await.unwrap();
        store.suppress(&four, &Scope::All, Some("STOP"), "cli", T0).await.unwrap();
        let five = Phone::from_e164("+12015550005".into());
        store.suppress(&five, &Scope::Campaign("other".into()), Some("other"), "cli", T0).await.unwrap();
        let rows = vec![
            job(2, "+12015550001"),
            job(3, "+12015550002"),
            rejected(4, "555"),
            job(5, "+12015550001"),
            job(6, "+12015550003"),
            job(7, "+12015550004"),
            job(8, "+12015550005"),
        ];
        let (id, counts) =
            store.create_run_with_rows(new_run("reminders", "k", None), rows.clone(), T0).await.unwrap().unwrap();
        assert_eq!((counts.imported, counts.rejected, counts.duplicates), (5, 1, 1));
        let again = store.create_run_with_rows(new_run("reminders", "k", None), rows, T0).await.unwrap();
        assert_eq!(again.unwrap_err(), id);
        let run = store.get_run(id).await.unwrap();
        assert_eq!((run.state, run.expanded_at), (RunState::Active, Some(T0)));
        assert_eq!((run.rows_total, run.imported, run.rejected, run.duplicates), (7, 5, 1, 1));
        assert_eq!(store.import_line(id).await.unwrap(), 8);
        assert_eq!(
            job_states(&client, id).await,
            [
                ("+12015550001".into(), "pending".into(), None),
                ("+12015550002".into(), "pending".into(), None),
                ("+12015550003".into(), "skipped".into(), Some("suppressed: scope all, STOP".into())),
                ("+12015550004".into(), "skipped".into(), Some("suppressed: scope reminders".into())),
                ("+12015550005".into(), "pending".into(), None),
            ]
        );
        let refused: Vec<(i64, String, String, String)> = client
            .query("SELECT line, raw_phone, outcome, reason FROM import_rows WHERE run_id = $1 ORDER BY line", &[&id])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect();
        assert_eq!(refused[0], (4, "555".into(), "rejected".into(), "\"555\" is not a phone number".into()));
        assert_eq!(
            refused[1],
            (
                5,
                "+12015550001".into(),
                "duplicate".into(),
                "duplicate phone +12015550001; the first row with it is kept".into()
            )
        );
        let counts = store.run_counts(id).await.unwrap();
        assert_eq!((counts.get(JobState::Pending), counts.get(JobState::Skipped), counts.total()), (3, 2, 5));
        assert!(!store.finish_run_if_done(id, T0).await.unwrap(), "three jobs are pending");
    }

    #[tokio::test]
    async fn a_large_batch_keeps_each_phones_first_row_and_file_order() {
        let Some((store, client)) = ledger("pg runs large batch").await else { return };
        // 1,500 rows: 1,000 phones, the first 500 of them again later on.
        let rows: Vec<ImportRow> = (0..1500u64).map(|i| job(i + 2, &format!("+1201555{:04}", i % 1000))).collect();
        let started = std::time::Instant::now();
        let (id, counts) =
            store.create_run_with_rows(new_run("reminders", "k", None), rows, T0).await.unwrap().unwrap();
        eprintln!("1,500 rows in {:?}", started.elapsed());
        assert_eq!((counts.imported, counts.duplicates), (1000, 500));
        let lines = job_lines(&client, id).await;
        assert_eq!(lines, (2..1002).collect::<Vec<i64>>(), "ids in file order, each phone's first row kept");
        let duplicates = refused_lines(&client, id).await;
        assert_eq!(duplicates, (1002..1502).collect::<Vec<i64>>());
        assert_eq!(store.import_line(id).await.unwrap(), 1501);
    }

    #[tokio::test]
    async fn a_key_sent_within_the_dedupe_window_is_skipped_at_import() {
        let Some((store, client)) = ledger("pg runs dedupe").await else { return };
        let with_key = |line, phone: &str, key: &str| match job(line, phone) {
            ImportRow::Job(spec) => ImportRow::Job(JobSpec { dedupe_key: Some(key.into()), ..spec }),
            other => other,
        };
        let dedupe = |key: &str| NewRun {
            dedupe_within: Some(std::time::Duration::from_secs(3600)),
            ..new_run("reminders", key, None)
        };
        let (first, _) = store
            .create_run_with_rows(dedupe("a"), vec![with_key(2, "+12015550001", "ada")], T0)
            .await
            .unwrap()
            .unwrap();
        let sent = client.query_one("SELECT id FROM jobs WHERE run_id = $1", &[&first]).await.unwrap().get::<_, i64>(0);
        client
            .execute("UPDATE jobs SET state = 'sent', sent_at = $2 WHERE id = $1", &[&sent, &(T0 + 10)])
            .await
            .unwrap();
        let rows = vec![with_key(2, "+12015550009", "ada"), with_key(3, "+12015550008", "bob")];
        let (second, counts) = store.create_run_with_rows(dedupe("b"), rows.clone(), T0 + 1000).await.unwrap().unwrap();
        assert_eq!(counts.imported, 2);
        let states = job_states(&client, second).await;
        assert_eq!(states[0].1, "skipped");
        assert_eq!(states[0].2.as_deref(), Some(format!("already_sent: run {first}, job {sent}").as_str()));
        assert_eq!(states[1].1, "pending");
        // Outside the window, or without a rule, the key is no reason.
        let (third, _) = store.create_run_with_rows(dedupe("c"), rows.clone(), T0 + 3_600_010).await.unwrap().unwrap();
        assert!(job_states(&client, third).await.iter().all(|j| j.1 == "pending"));
        let (fourth, _) =
            store.create_run_with_rows(new_run("reminders", "d", None), rows, T0 + 1000).await.unwrap().unwrap();
        assert!(job_states(&client, fourth).await.iter().all(|j| j.1 == "pending"));
    }

    #[tokio::test]
    async fn a_run_state_moves_only_from_the_state_given_and_a_cancel_cancels_pending_jobs() {
        let Some((store, client)) = ledger("pg runs state").await else { return };
        let rows = vec![job(2, "+12015550001"), job(3, "+12015550002"), job(4, "+12015550003")];
        let (id, _) = store.create_run_with_rows(new_run("reminders", "k", None), rows, T0).await.unwrap().unwrap();
        let first =
            client.query_one("SELECT MIN(id) FROM jobs WHERE run_id = $1", &[&id]).await.unwrap().get::<_, i64>(0);
        client.execute("UPDATE jobs SET state = 'dispatching' WHERE id = $1", &[&first]).await.unwrap();
        assert!(!store.set_run_state(id, RunState::Paused, RunState::Active, None, T0).await.unwrap());
        assert!(matches!(
            store.set_run_state(9999, RunState::Active, RunState::Paused, None, T0).await,
            Err(StoreError::RunNotFound(9999))
        ));
        assert!(
            store.set_run_state(id, RunState::Active, RunState::Paused, Some("paused by user"), T0 + 1).await.unwrap()
        );
        let run = store.get_run(id).await.unwrap();
        assert_eq!(
            (run.state, run.state_reason.as_deref(), run.finished_at),
            (RunState::Paused, Some("paused by user"), None)
        );
        assert!(job_states(&client, id).await.iter().skip(1).all(|j| j.1 == "pending"), "a pause cancels nothing");
        assert!(!store.set_run_state(id, RunState::Active, RunState::Cancelled, None, T0 + 2).await.unwrap());
        assert!(
            store
                .set_run_state(id, RunState::Paused, RunState::Cancelled, Some("cancelled by user"), T0 + 3)
                .await
                .unwrap()
        );
        let run = store.get_run(id).await.unwrap();
        assert_eq!((run.state, run.finished_at), (RunState::Cancelled, Some(T0 + 3)));
        let states = job_states(&client, id).await;
        assert_eq!(states[0].1, "dispatching", "a request in flight records its own outcome");
        for (_, state, reason) in &states[1..] {
            assert_eq!((state.as_str(), reason.as_deref()), ("cancelled", Some("run cancelled")));
        }
        let finished: Vec<Option<i64>> = client
            .query("SELECT finished_at FROM jobs WHERE run_id = $1 AND state = 'cancelled'", &[&id])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert_eq!(finished, [Some(T0 + 3), Some(T0 + 3)]);
    }

    #[tokio::test]
    async fn an_expansion_that_raced_a_cancel_cancels_its_jobs() {
        let Some((store, client)) = ledger("pg runs expansion").await else { return };
        let id = store.create_run(new_run("reminders", "k", None), T0).await.unwrap().unwrap();
        assert!(store.set_run_state(id, RunState::Expanding, RunState::Cancelled, None, T0).await.unwrap());
        // A batch written after the cancel (its jobs pending)...
        client
            .execute(
                "INSERT INTO jobs (run_id, phone, line, zone, parameters, due_at, created_at, updated_at) \
                 VALUES ($1, '+12015550001', 2, 'UTC', '{}', 0, 0, 0)",
                &[&id],
            )
            .await
            .unwrap();
        store.finish_expansion(id, T0 + 1).await.unwrap();
        let run = store.get_run(id).await.unwrap();
        assert_eq!((run.state, run.expanded_at), (RunState::Cancelled, Some(T0 + 1)));
        assert_eq!(job_states(&client, id).await[0].1, "cancelled");
    }
}
