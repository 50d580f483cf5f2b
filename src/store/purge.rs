//! Retention: removing the personal data of runs over longer ago than a
//! cutoff, for `flowcast purge` and `serve`'s daily purge.
//!
//! A purged run keeps its counts and each job's state, reason, attempts,
//! times, Execution SID and outcome state, with a keyed hash where the phone
//! was; its Parameters, zones, outcome values, errors, rejected and duplicate
//! rows and Studio calls are gone (see [`super::sqlite::purge`] for each
//! column). The suppression list is never touched. Work goes in batches of
//! jobs, each its own short write, so dispatching and the API go on while a
//! large run is purged; freed pages are reused by later runs without a VACUUM.

use std::sync::Arc;

use super::{Db, Result, Store, postgres, read, sqlite, write};

/// Jobs purged per write transaction: a few milliseconds of the writer each.
const BATCH_JOBS: i64 = 2_000;

/// What a purge removed, or (dry run) would remove.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeSummary {
    /// Runs whose personal data went.
    pub runs: u64,
    /// Their jobs (each kept, with a hashed phone and no personal values).
    pub jobs: u64,
    /// Studio calls deleted (their bodies carried the contact and Parameters).
    pub studio_calls: u64,
    /// Rejected and duplicate rows deleted (the run keeps their counts).
    pub import_rows: u64,
}

impl PurgeSummary {
    /// `3 runs finished before 2026-08-30T00:00:00Z: 1200 jobs, 1250 Studio
    /// calls, 4 import rows`, for `flowcast purge` and `serve`'s log alike.
    pub fn describe(&self, before: i64) -> String {
        let counted = |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        format!(
            "{} finished before {}: {}, {}, {}",
            counted(self.runs, "run", "runs"),
            crate::views::time(before),
            counted(self.jobs, "job", "jobs"),
            counted(self.studio_calls, "Studio call", "Studio calls"),
            counted(self.import_rows, "import row", "import rows"),
        )
    }
}

impl Store {
    /// Purges the personal data of every run over before `before` (Unix ms)
    /// and not purged yet, marking each purged at `now`.
    pub async fn purge(&self, before: i64, now: i64) -> Result<PurgeSummary> {
        let runs = self.purge_due_runs(before).await?;
        let mut summary = PurgeSummary::default();
        if runs.is_empty() {
            return Ok(summary);
        }
        let salt = match &self.db {
            Db::Sqlite(db) => read(db, sqlite::purge::salt).await?,
            Db::Postgres(pg) => postgres::purge::salt(pg).await?,
        };
        for run in runs {
            let mut after = match &self.db {
                Db::Sqlite(db) => read(db, move |c| sqlite::purge::before_first_job(c, run)).await?,
                Db::Postgres(pg) => postgres::purge::before_first_job(pg, run).await?,
            };
            let (mut jobs, mut calls, mut rows) = (0, 0, 0);
            loop {
                let batch = match &self.db {
                    Db::Sqlite(db) => {
                        let salt = salt.clone();
                        write(db, move |c| sqlite::purge::purge_jobs(c, run, &salt, after, BATCH_JOBS)).await?
                    }
                    Db::Postgres(pg) => postgres::purge::purge_jobs(pg, run, &salt, after, BATCH_JOBS).await?,
                };
                jobs += batch.jobs;
                calls += batch.calls;
                match batch.last {
                    Some(last) => after = last,
                    None => break,
                }
            }
            loop {
                let deleted = match &self.db {
                    Db::Sqlite(db) => write(db, move |c| sqlite::purge::purge_import_rows(c, run, BATCH_JOBS)).await?,
                    Db::Postgres(pg) => postgres::purge::purge_import_rows(pg, run, BATCH_JOBS).await?,
                };
                rows += deleted;
                if deleted < BATCH_JOBS as u64 {
                    break;
                }
            }
            // `None`: another purge finished this run first; it counts it.
            let finished = match &self.db {
                Db::Sqlite(db) => write(db, move |c| sqlite::purge::finish(c, run, now)).await?,
                Db::Postgres(pg) => postgres::purge::finish(pg, run, now).await?,
            };
            if let Some(run_calls) = finished {
                summary.runs += 1;
                summary.jobs += jobs;
                summary.studio_calls += calls + run_calls;
                summary.import_rows += rows;
            }
        }
        if let Db::Sqlite(db) = &self.db
            && summary.runs > 0
            && !super::blocking({
                let db = Arc::clone(db);
                move || db.checkpoint_and_empty_log()
            })
            .await?
        {
            tracing::info!("the write-ahead log is in use; the pages a purge replaced in it go as it is reused");
        }
        Ok(summary)
    }

    async fn purge_due_runs(&self, before: i64) -> Result<Vec<i64>> {
        match &self.db {
            Db::Sqlite(db) => read(db, move |c| sqlite::purge::due_runs(c, before)).await,
            Db::Postgres(pg) => postgres::purge::due_runs(pg, before).await,
        }
    }

    /// What [`purge`](Self::purge) would remove with the same cutoff; changes
    /// nothing.
    pub async fn purge_preview(&self, before: i64) -> Result<PurgeSummary> {
        let mut summary = PurgeSummary::default();
        for run in self.purge_due_runs(before).await? {
            let (jobs, calls, rows) = match &self.db {
                Db::Sqlite(db) => read(db, move |c| sqlite::purge::count_run(c, run)).await?,
                Db::Postgres(pg) => postgres::purge::count_run(pg, run).await?,
            };
            summary.runs += 1;
            summary.jobs += jobs;
            summary.studio_calls += calls;
            summary.import_rows += rows;
        }
        Ok(summary)
    }

    /// Bytes the ledger's data takes (SQLite: pages in use times the page
    /// size, free pages not counted; PostgreSQL: the tables and indexes).
    pub async fn used_bytes(&self) -> Result<u64> {
        match &self.db {
            Db::Sqlite(db) => read(db, sqlite::purge::used_bytes).await,
            Db::Postgres(pg) => postgres::purge::used_bytes(pg).await,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde_json::{Map, Value, json};

    use super::*;
    use crate::domain::{
        CampaignKind, CollectedOutcome, ConflictPolicy, FlowSid, ImportRow, JobOutcome, JobReason, JobSpec, JobState,
        OutcomeField, OutcomeState, OutcomeType, Parameters, Phone, ReasonKind, Rejection, RunState, Scope, Trigger,
    };
    use crate::store::{NewRun, SettledJob, StudioCall};

    pub(crate) const DAY: i64 = 86_400_000;
    /// 2026-06-01T00:00:00Z.
    pub(crate) const T0: i64 = 1_780_272_000_000;

    /// `n` distinct valid US numbers from `first` on.
    pub(crate) fn numbers(first: usize, n: usize) -> Vec<String> {
        (first..first + n).map(|i| format!("+1201555{i:04}")).collect()
    }

    /// The CSV values a contact's row carries besides the phone.
    fn name_of(phone: &str) -> String {
        format!("Ada-{} Lovelace", &phone[8..])
    }

    fn appointment_of(phone: &str) -> String {
        format!("2026-06-{} 09:30 at 12 Harley St", &phone[10..])
    }

    fn reply_of(phone: &str) -> String {
        format!("yes, call {}", name_of(phone))
    }

    async fn new_run(store: &Store, key: &str, at: i64) -> i64 {
        let run = NewRun {
            campaign: "reminders".into(),
            kind: CampaignKind::Reminder,
            trigger: Trigger::Manual,
            run_key: key.into(),
            scheduled_at: at,
            source: "campaigns/reminders.toml".into(),
            flow: FlowSid::parse("FW0123456789abcdef0123456789abcdef").unwrap(),
            from: "+15017122661".into(),
            policy: ConflictPolicy::from_parts("skip", None).unwrap(),
            rate: None,
            window: None,
            outcomes: vec![OutcomeField {
                name: "answer".into(),
                path: "widgets.ask.inbound.Body".into(),
                kind: OutcomeType::String,
            }],
            channel: crate::domain::Channel::Sms,
            limits_exempt: false,
            dedupe_within: Some(std::time::Duration::from_secs(30 * 86_400)),
            notify: None,
        };
        store.create_run(run, at).await.unwrap().expect("a new run")
    }

    /// Imports one job per phone (Parameters from the CSV, the contact's own
    /// zone), plus a rejected row and a duplicate; `active` at `at`.
    async fn imported_run(store: &Store, key: &str, phones: &[String], at: i64) -> i64 {
        let id = new_run(store, key, at).await;
        let mut rows: Vec<ImportRow> = phones
            .iter()
            .enumerate()
            .map(|(i, phone)| {
                let mut parameters = Map::new();
                parameters.insert("name".into(), Value::String(name_of(phone)));
                parameters.insert("appointment".into(), Value::String(appointment_of(phone)));
                parameters.insert("clinic".into(), Value::String("Main St".into()));
                ImportRow::Job(JobSpec {
                    line: i as u64 + 2,
                    phone: Phone::from_e164(phone.clone()),
                    zone: chrono_tz::America::Chicago,
                    parameters: Parameters::from_map(&parameters),
                    due_at: None,
                    expires_at: None,
                    // The dedupe key is a CSV value too.
                    dedupe_key: Some(name_of(phone)),
                })
            })
            .collect();
        let line = phones.len() as u64 + 2;
        rows.push(ImportRow::Rejected(Rejection {
            line,
            raw_phone: "(201) 555-0999".into(),
            reason: "\"(201) 555-0999\" is not a valid phone number for its country".into(),
        }));
        if let Some(ImportRow::Job(first)) = rows.first().cloned() {
            rows.push(ImportRow::Job(JobSpec { line: line + 1, ..first }));
        }
        store.import_batch(id, rows, line + 1, at, at).await.unwrap();
        store.finish_expansion(id, at).await.unwrap();
        id
    }

    /// A run of `phones` dispatched and finished at `at`, the way the
    /// dispatcher and the collector write it: a create call per job (the
    /// first refused with Studio's message quoting the number), the others
    /// sent, their outcomes read back (the last one left open).
    pub(crate) async fn finished_run(store: &Store, key: &str, phones: &[String], at: i64) -> i64 {
        let id = settled_run(store, key, phones, at).await;
        assert!(store.finish_run_if_done(id, at).await.unwrap(), "every job of run {id} is settled");
        id
    }

    /// As [`finished_run`], but still `active`: every job settled, the run
    /// not marked finished yet.
    async fn settled_run(store: &Store, key: &str, phones: &[String], at: i64) -> i64 {
        let id = imported_run(store, key, phones, at).await;
        let claimed = store.claim_due(id, at, phones.len(), false, Default::default()).await.unwrap();
        let (mut settled, mut calls) = (Vec::new(), Vec::new());
        for (i, job) in claimed.iter().enumerate() {
            let phone = job.phone.as_str();
            let sid = format!("FN{:032x}", job.id);
            let refusal = format!("Twilio error 21211: The 'To' number {phone} is not a valid phone number");
            let outcome = if i == 0 {
                JobOutcome::Failed {
                    reason: JobReason::with_detail(ReasonKind::Invalid, refusal.clone()),
                    last_error: Some(refusal.clone()),
                }
            } else {
                JobOutcome::Sent { sid: sid.clone() }
            };
            settled.push(SettledJob { job_id: job.id, outcome, attempts_sent: 1, at });
            if i % 2 == 1 {
                // As the dispatcher records a create Studio answered: kept
                // by the job row (`create_on_row`), which the purge counts
                // and clears as it deletes the others.
                calls.push(StudioCall {
                    run_id: Some(id),
                    job_id: Some(job.id),
                    at,
                    operation: "create",
                    request: String::new(),
                    http_status: None,
                    response: None,
                    outcome: "ok".into(),
                    execution_sid: Some(sid),
                    note: None,
                });
                continue;
            }
            let parameters = job.parameters.with_flowcast_key("reminders", id, job.id).unwrap();
            calls.push(StudioCall {
                run_id: Some(id),
                job_id: Some(job.id),
                at,
                operation: "create",
                request: format!("To={phone} From=+15017122661 Parameters={parameters}"),
                http_status: Some(if i == 0 { 400 } else { 201 }),
                response: Some(if i == 0 { refusal } else { sid }),
                outcome: if i == 0 { "rejected".into() } else { "created".into() },
                execution_sid: None,
                note: None,
            });
        }
        store.record_outcomes(settled, calls, Duration::ZERO).await.unwrap();
        for job in claimed.iter().skip(1).take(claimed.len().saturating_sub(2)) {
            let reply = reply_of(job.phone.as_str());
            let collected = CollectedOutcome {
                status: "ended".into(),
                ended_in: Some("ask".into()),
                values: Map::from_iter([("answer".to_string(), Value::String(reply.clone()))]),
                notes: Map::from_iter([("answer".to_string(), Value::String(format!("kept as text: {reply}")))]),
            };
            assert!(store.record_collected(job.id, OutcomeState::Known, collected, at).await.unwrap());
        }
        id
    }

    /// Every row of every table, as text: what "nothing changed" compares.
    async fn dump(store: &Store) -> BTreeMap<String, Vec<String>> {
        store
            .read(|c| {
                let mut out = BTreeMap::new();
                for table in tables(c)? {
                    // Table names come from sqlite_master, not from input. A
                    // table without rowid is read in its key's order.
                    let without_rowid: bool =
                        c.query_row("SELECT wr FROM pragma_table_list WHERE name = ?1", [&table], |r| r.get(0))?;
                    let order = if without_rowid { "1, 2" } else { "rowid" };
                    let mut stmt = c.prepare(&format!("SELECT * FROM \"{table}\" ORDER BY {order}"))?;
                    let width = stmt.column_count();
                    let rows = stmt
                        .query_map([], |r| {
                            (0..width).map(|i| Ok(format!("{:?}", r.get_ref(i)?))).collect::<rusqlite::Result<Vec<_>>>()
                        })?
                        .map(|row| row.map(|cells| cells.join("|")))
                        .collect::<rusqlite::Result<Vec<_>>>()?;
                    out.insert(table, rows);
                }
                Ok(out)
            })
            .await
            .unwrap()
    }

    fn tables(c: &rusqlite::Connection) -> Result<Vec<String>> {
        let names = c
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        Ok(names)
    }

    /// Every text value of every column of every table: (table.column, value).
    async fn text_values(store: &Store) -> Vec<(String, String)> {
        store
            .read(|c| {
                let mut out = Vec::new();
                for table in tables(c)? {
                    let columns: Vec<String> = c
                        .prepare("SELECT name FROM pragma_table_info(?1)")?
                        .query_map([&table], |r| r.get(0))?
                        .collect::<rusqlite::Result<_>>()?;
                    for column in columns {
                        // Names from the schema itself, not from input.
                        let mut stmt = c.prepare(&format!(
                            "SELECT \"{column}\" FROM \"{table}\" WHERE typeof(\"{column}\") = 'text'"
                        ))?;
                        for value in stmt.query_map([], |r| r.get::<_, String>(0))? {
                            out.push((format!("{table}.{column}"), value?));
                        }
                    }
                }
                Ok(out)
            })
            .await
            .unwrap()
    }

    /// The personal values of `phones` still found anywhere, with where.
    async fn personal_values_left(store: &Store, phones: &[String], skip_table: &str) -> Vec<(String, String)> {
        let mut needles: Vec<String> = Vec::new();
        for phone in phones {
            needles.extend([phone.clone(), phone[2..].to_string(), name_of(phone), appointment_of(phone)]);
        }
        needles.extend(["(201) 555-0999".to_string(), "America/Chicago".to_string(), "yes, call".to_string()]);
        text_values(store)
            .await
            .into_iter()
            .filter(|(at, _)| !at.starts_with(&format!("{skip_table}.")))
            .filter(|(_, value)| needles.iter().any(|n| value.contains(n.as_str())))
            .collect()
    }

    async fn store_in(dir: &tempfile::TempDir) -> Store {
        Store::open_path(&dir.path().join("flowcast.db")).await.unwrap()
    }

    #[tokio::test]
    async fn a_dry_run_counts_what_a_purge_removes_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir).await;
        finished_run(&store, "a", &numbers(0, 5), T0).await;
        finished_run(&store, "b", &numbers(100, 3), T0 + 1).await;
        let before = dump(&store).await;

        let preview = store.purge_preview(T0 + DAY).await.unwrap();

        let expected = PurgeSummary { runs: 2, jobs: 8, studio_calls: 8, import_rows: 4 };
        assert_eq!(preview, expected);
        assert_eq!(dump(&store).await, before, "a dry run changes nothing");
        assert_eq!(store.purge(T0 + DAY, T0 + DAY).await.unwrap(), expected, "the purge removes what was counted");
        assert_eq!(
            expected.describe(T0 + DAY),
            "2 runs finished before 2026-06-02T00:00:00Z: 8 jobs, 8 Studio calls, 4 import rows"
        );
    }

    #[tokio::test]
    async fn a_purge_leaves_no_phone_csv_value_or_reply_in_any_table_and_keeps_counts_and_states() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir).await;
        let phones = numbers(0, 6);
        let suppressed = Phone::from_e164(phones[1].clone());
        store.suppress(&suppressed, &Scope::All, Some("asked by phone"), "cli", T0).await.unwrap();
        let id = finished_run(&store, "a", &phones, T0).await;
        let (run, counts) = (store.get_run(id).await.unwrap(), store.run_counts(id).await.unwrap());
        let jobs = store.jobs_page(id, None, 0, 100).await.unwrap();
        let on_rows = jobs.iter().filter(|j| j.execution_sid.is_some()).count();
        let mut trails = 0;
        for job in &jobs {
            trails += store.calls_for_job(job.id).await.unwrap().len();
        }
        assert_eq!((on_rows, trails), (4, 5), "four sent, one refused: each job's trail shows its create");
        assert!(
            !personal_values_left(&store, &phones, "suppressions").await.is_empty(),
            "the scan finds the values before the purge"
        );

        let summary = store.purge(T0 + DAY, T0 + 2 * DAY).await.unwrap();

        // The suppressed contact's job was skipped at import: no call.
        assert_eq!(summary, PurgeSummary { runs: 1, jobs: 6, studio_calls: 5, import_rows: 2 });
        let left = personal_values_left(&store, &phones, "suppressions").await;
        assert!(left.is_empty(), "personal data left after the purge: {left:?}");
        let after = store.get_run(id).await.unwrap();
        assert_eq!(after.purged_at, Some(T0 + 2 * DAY));
        assert_eq!(
            (after.state, after.rows_total, after.imported, after.rejected, after.duplicates),
            (RunState::Finished, run.rows_total, run.imported, run.rejected, run.duplicates)
        );
        assert_eq!(store.run_counts(id).await.unwrap(), counts, "jobs per state are kept");
        assert!(store.refused_rows(id).await.unwrap().is_empty());
        let salt = store.read(sqlite::purge::salt).await.unwrap();
        let purged = store.jobs_page(id, None, 0, 100).await.unwrap();
        for (old, new) in jobs.iter().zip(&purged) {
            assert_eq!(new.phone.as_str(), sqlite::purge::keyed_hash(&salt, old.phone.as_str()));
            assert_eq!(
                (new.id, new.line, new.state, new.attempts, new.sent_at, new.finished_at, &new.execution_sid),
                (old.id, old.line, old.state, old.attempts, old.sent_at, old.finished_at, &old.execution_sid)
            );
            assert_eq!((new.outcome_state.is_some(), &new.ended_in), (old.outcome_state.is_some(), &old.ended_in));
            assert_eq!(new.reason.as_ref().map(|r| r.kind), old.reason.as_ref().map(|r| r.kind));
            assert!(new.outcome.is_empty() && new.outcome_notes.is_empty() && new.last_error.is_none(), "{new:?}");
        }
        assert_eq!(
            purged[0].reason.as_ref().map(ToString::to_string).as_deref(),
            Some("invalid: Twilio error 21211: The 'To' number +*********00 is not a valid phone number")
        );
        assert_eq!(
            purged.last().unwrap().outcome_state,
            Some(OutcomeState::Unknown),
            "an outcome still open is closed: it is never read back into a purged run"
        );
        assert_eq!(store.open_outcomes(Some(id)).await.unwrap(), 0);
        for job in &jobs {
            assert_eq!(store.calls_for_job(job.id).await.unwrap(), vec![], "job {}", job.id);
        }
        let entries = store.suppressions(0, 10).await.unwrap();
        assert_eq!(entries.len(), 1, "the suppression list is never purged");
        assert_eq!((&entries[0].phone, entries[0].reason.as_deref()), (&suppressed, Some("asked by phone")));
        let views: Vec<Value> = purged.iter().map(crate::views::job).collect();
        assert!(views[1]["phone"].as_str().unwrap().starts_with("hash:"), "{}", views[1]);
        assert_eq!(views[1]["reason"], json!("suppressed: scope all, asked by phone"));
        assert_eq!(views[2]["state"], json!("sent"));
        // A sent job is still found by its Execution's SID (an end Studio
        // reports late, an operator's look at the run's Executions).
        let sent: Vec<(String, i64)> = purged
            .iter()
            .filter(|j| j.state == JobState::Sent)
            .map(|j| (j.execution_sid.clone().unwrap(), j.id))
            .collect();
        assert!(!sent.is_empty());
        let found = store.jobs_for_executions(sent.iter().map(|(sid, _)| sid.clone()).collect()).await.unwrap();
        for (sid, id) in &sent {
            assert_eq!(found.get(sid).map(|j| j.job_id), Some(*id), "{sid}");
        }
    }

    #[tokio::test]
    async fn nothing_a_purge_removes_lingers_in_the_ledgers_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir).await;
        // Enough jobs to fill pages that the purge then frees.
        let phones = numbers(0, 300);
        finished_run(&store, "a", &phones, T0).await;

        store.purge(T0 + DAY, T0 + DAY).await.unwrap();

        let mut bytes = Vec::new();
        for name in ["flowcast.db", "flowcast.db-wal"] {
            bytes.extend(std::fs::read(dir.path().join(name)).unwrap_or_default());
        }
        let file = String::from_utf8_lossy(&bytes);
        let values: Vec<String> =
            phones.iter().flat_map(|p| [p.clone(), name_of(p), appointment_of(p), reply_of(p)]).collect();
        let lingering: Vec<&String> = values.iter().filter(|v| file.contains(v.as_str())).collect();
        assert!(lingering.is_empty(), "{} values left in the files, e.g. {:?}", lingering.len(), lingering.first());
    }

    #[tokio::test]
    async fn runs_over_after_the_cutoff_or_not_over_are_untouched_and_a_cancelled_one_is_purged() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir).await;
        let old = finished_run(&store, "old", &numbers(0, 3), T0).await;
        let recent = finished_run(&store, "recent", &numbers(10, 3), T0 + 3 * DAY).await;
        let active = imported_run(&store, "active", &numbers(20, 3), T0).await;
        // Paused with every job settled: not over, it may still be resumed.
        let paused = settled_run(&store, "paused", &numbers(40, 3), T0).await;
        assert!(store.set_run_state(paused, RunState::Active, RunState::Paused, None, T0).await.unwrap());
        let cancelled = imported_run(&store, "cancelled", &numbers(30, 3), T0).await;
        assert!(store.set_run_state(cancelled, RunState::Active, RunState::Cancelled, None, T0).await.unwrap());
        let untouched = |dump: &BTreeMap<String, Vec<String>>| {
            // A job row's second cell is its run.
            let wanted = [recent, active, paused].map(|id| format!("Integer({id})"));
            dump["jobs"]
                .iter()
                .filter(|row| row.split('|').nth(1).is_some_and(|run| wanted.iter().any(|w| w == run)))
                .cloned()
                .collect::<Vec<_>>()
        };
        let before = untouched(&dump(&store).await);
        assert_eq!(before.len(), 9);

        let summary = store.purge(T0 + DAY, T0 + 4 * DAY).await.unwrap();

        assert_eq!(summary.runs, 2, "{summary:?}");
        assert!(store.get_run(old).await.unwrap().purged_at.is_some());
        assert!(store.get_run(cancelled).await.unwrap().purged_at.is_some(), "a cancelled run is over too");
        assert_eq!(store.get_run(recent).await.unwrap().purged_at, None, "finished after the cutoff");
        assert_eq!(store.get_run(active).await.unwrap().purged_at, None, "not over");
        assert_eq!(store.get_run(paused).await.unwrap().purged_at, None, "paused is not over");
        assert_eq!(untouched(&dump(&store).await), before);
        let left = personal_values_left(&store, &numbers(10, 3), "").await;
        assert!(!left.is_empty(), "the recent run keeps its data");
    }

    #[tokio::test]
    async fn purging_twice_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir).await;
        finished_run(&store, "a", &numbers(0, 4), T0).await;
        assert_eq!(store.purge(T0 + DAY, T0 + DAY).await.unwrap().runs, 1);
        let once = dump(&store).await;

        let again = store.purge(T0 + 2 * DAY, T0 + 2 * DAY).await.unwrap();

        assert_eq!(again, PurgeSummary::default());
        assert_eq!(store.purge_preview(T0 + 2 * DAY).await.unwrap(), PurgeSummary::default());
        assert_eq!(dump(&store).await, once);
    }

    #[tokio::test]
    async fn a_purge_interrupted_half_way_is_finished_by_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir).await;
        let phones = numbers(0, 5);
        let id = finished_run(&store, "a", &phones, T0).await;
        let salt = store.read(sqlite::purge::salt).await.unwrap();
        // The first batch of a purge that stopped there: two jobs hashed.
        let first = store.write(move |c| sqlite::purge::purge_jobs(c, id, &salt, 0, 2)).await.unwrap();
        assert_eq!(first.jobs, 2);
        let hashed_once: Vec<String> =
            store.jobs_page(id, None, 0, 2).await.unwrap().iter().map(|j| j.phone.as_str().to_string()).collect();

        let summary = store.purge(T0 + DAY, T0 + DAY).await.unwrap();

        assert_eq!(summary.runs, 1);
        let jobs = store.jobs_page(id, None, 0, 100).await.unwrap();
        assert_eq!(jobs[..2].iter().map(|j| j.phone.as_str().to_string()).collect::<Vec<_>>(), hashed_once);
        assert!(jobs.iter().all(|j| j.phone.is_hashed()), "{jobs:?}");
        assert!(personal_values_left(&store, &phones, "").await.is_empty());
    }

    /// An event still to be delivered outlives its run's purge; once it is
    /// delivered or given up it goes too, whichever step of the purge it
    /// ended after (a job batch, the run's finish), so no phone or outcome
    /// stays in the outbox.
    #[tokio::test]
    async fn an_event_a_purge_kept_for_its_delivery_goes_once_it_is_delivered_or_given_up() {
        let dir = tempfile::tempdir().unwrap();
        let store = store_in(&dir).await;
        let phones = numbers(0, 4);
        let id = finished_run(&store, "a", &phones, T0).await;
        let other = finished_run(&store, "b", &numbers(10, 2), T0 + 2 * DAY).await;
        let jobs: Vec<i64> = store.jobs_page(id, None, 0, 10).await.unwrap().iter().map(|j| j.id).collect();
        let other_job = store.jobs_page(other, None, 0, 1).await.unwrap()[0].id;
        // Pending events: three about jobs of the run, one about the run
        // itself, one about a job of a run the purge leaves alone.
        let (phone, other_phone) = (phones[0].clone(), numbers(10, 1)[0].clone());
        let events = [
            ("evt_job0", Some(jobs[0]), id, phone.clone()),
            ("evt_job1", Some(jobs[1]), id, phone.clone()),
            ("evt_job2", Some(jobs[2]), id, phone.clone()),
            ("evt_run", None, id, phone),
            ("evt_other", Some(other_job), other, other_phone),
        ];
        store
            .write(move |c| {
                for (event_id, job, run, phone) in events {
                    c.execute(
                        "INSERT INTO outbox (event_id, event_type, run_id, job_id, url, body, created_at, \
                                             next_attempt_at) VALUES (?1, 'job.sent', ?2, ?3, 'http://x', ?4, 0, 0)",
                        rusqlite::params![event_id, run, job, format!("{{\"phone\":\"{phone}\"}}")],
                    )?;
                }
                Ok(())
            })
            .await
            .unwrap();
        let id_of = async |event_id: &str| {
            store.outbox_page(None, 0, 100).await.unwrap().into_iter().find(|e| e.event_id == event_id).map(|e| e.id)
        };
        let (job0, job1, job2, run_event, other_event) = (
            id_of("evt_job0").await.unwrap(),
            id_of("evt_job1").await.unwrap(),
            id_of("evt_job2").await.unwrap(),
            id_of("evt_run").await.unwrap(),
            id_of("evt_other").await.unwrap(),
        );
        // One job batch of a purge (the run not marked purged yet), then
        // event 0 delivered: its job's phone is hashed.
        let salt = store.read(sqlite::purge::salt).await.unwrap();
        store.write(move |c| sqlite::purge::purge_jobs(c, id, &salt, 0, 100)).await.unwrap();
        store.outbox_delivered(job0, T0 + DAY).await.unwrap();
        assert_eq!(id_of("evt_job0").await, None, "delivered after its job was purged");
        // The run-level event, delivered before the run's finish, goes with
        // the finish.
        store.outbox_delivered(run_event, T0 + DAY).await.unwrap();
        assert!(id_of("evt_run").await.is_some(), "not purged yet: the finish takes it");
        store.purge(T0 + DAY, T0 + DAY).await.unwrap();
        assert_eq!(id_of("evt_run").await, None);
        assert!(id_of("evt_job1").await.is_some(), "still to be delivered: kept");
        // After the purge: a retry scheduled keeps the event; delivered or
        // given up, it goes.
        store.outbox_failed(job1, "503".into(), Some(T0 + 2 * DAY), T0 + DAY).await.unwrap();
        assert!(id_of("evt_job1").await.is_some(), "to be tried again: kept");
        store.outbox_delivered(job1, T0 + DAY).await.unwrap();
        store.outbox_failed(job2, "410".into(), None, T0 + DAY).await.unwrap();
        assert_eq!((id_of("evt_job1").await, id_of("evt_job2").await), (None, None));
        // An event of a run not purged stays once delivered, and counts.
        store.outbox_delivered(other_event, T0 + DAY).await.unwrap();
        assert!(id_of("evt_other").await.is_some());
        let counts = store.outbox_counts().await.unwrap();
        assert_eq!((counts.pending, counts.delivered, counts.gave_up), (0, 1, 0));
        let left: Vec<_> = personal_values_left(&store, &phones, "").await;
        assert!(left.iter().all(|(at, _)| !at.starts_with("outbox.")), "{left:?}");
    }

    /// A daily campaign's ledger for `days` days: the same `per_day` contacts
    /// every day, retention 2 days, a purge after each day's run. Returns the
    /// bytes in use before the first day and after each day.
    pub(crate) async fn daily_runs(dir: &tempfile::TempDir, per_day: usize, days: i64) -> (u64, Vec<u64>) {
        let store = store_in(dir).await;
        let contacts = numbers(0, per_day);
        let empty = store.used_bytes().await.unwrap();
        let mut used = Vec::new();
        for day in 0..days {
            let now = T0 + day * DAY + 10 * 3_600_000;
            finished_run(&store, &format!("day {day}"), &contacts, now).await;
            store.purge(now - 2 * DAY, now).await.unwrap();
            used.push(store.used_bytes().await.unwrap());
        }
        (empty, used)
    }

    /// The "week of daily runs" figure. From the third day on three runs are
    /// live (the one finished exactly 2 days ago is not older than that); each
    /// later day adds only a purged run's remains (hashed phones, states,
    /// times, SIDs), because the pages a purge frees are reused by the next
    /// run's rows without a VACUUM. Measured: about 530 bytes per live job and
    /// about 335 per purged job (the hashed phone is kept in the row and in
    /// two indexes), so day 7 holds about 1.8 times day 3's data; without the
    /// purge it would be 7/3.
    #[tokio::test]
    async fn a_week_of_daily_runs_reuses_the_pages_a_purge_frees_without_a_vacuum() {
        const PER_DAY: usize = 2_000;
        let dir = tempfile::tempdir().unwrap();
        let (empty, used) = daily_runs(&dir, PER_DAY, 7).await;
        let live = (used[2] - empty) as f64 / (3 * PER_DAY) as f64;
        let purged: Vec<f64> = used.windows(2).skip(2).map(|w| (w[1] as f64 - w[0] as f64) / PER_DAY as f64).collect();
        eprintln!(
            "ledger bytes in use after each day: {used:?} (empty: {empty}); {live:.0} bytes per live job; \
             days 4 to 7 add {purged:.0?} bytes per purged job; day 7 / day 3 = {:.2}",
            used[6] as f64 / used[2] as f64
        );
        // Page reuse comes in steps (one day may take new pages, the next
        // fills freed ones), so the bound is on days 4 to 7 together.
        let kept = (used[6] - used[2]) as f64 / (4 * PER_DAY) as f64;
        assert!(kept <= live * 0.7, "days 4 to 7 kept {kept:.0} bytes per purged job ({live:.0} live)");
        assert!(used[6] * 10 <= used[2] * 20, "day 7 uses {} bytes, day 3 {}: more than 2 times", used[6], used[2]);
    }
}
