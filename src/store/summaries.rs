//! A run's summary — its jobs per state and each outcome field's values — and
//! when the ledger keeps it instead of recounting.
//!
//! Status, the API's run views and `/metrics` used to count a run's jobs per
//! state and parse every read-back outcome on each request: seconds for a
//! million-job run, and a sort of the whole jobs table for `/metrics`. A run
//! that is *settled* (over, no job pending or in flight, no outcome still to
//! be read back) has a summary that the dispatcher and the outcome reader can
//! no longer change, so it is computed once from one consistent read and kept
//! in `run_summaries`. What can still change such a run's jobs bumps the
//! run's `jobs_version` and deletes the kept summary in the same transaction:
//! each step of retention's purge (it blanks outcome values), and an import
//! or push batch that lands in a run already over (a push dated by a clock
//! that disagrees, a stalled importer on another instance). A summary counted
//! from a read is only kept if the run's `jobs_version` is still the one that
//! read saw.
//!
//! Runs that are not settled are summarised live, as before. The encoding of
//! a kept summary is the same for both backends and lives here.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{Db, Result, RunCounts, RunRow, Store, StoreError, postgres, sqlite};
use crate::domain::{JobState, RunState};

/// How often each value of one outcome field was given (JSON text; `None`:
/// no answer), in the value order the ledger's GROUP BY gives.
pub type ValueCounts = Vec<(Option<String>, i64)>;

/// A run's jobs per state and, per outcome field, its value counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub counts: RunCounts,
    pub outcomes: BTreeMap<String, ValueCounts>,
}

/// A summary read from the ledger: kept, or counted just now.
pub(crate) enum Found {
    Kept(RunSummary),
    Live {
        summary: RunSummary,
        /// Settled in the read the summary was counted from.
        settled: bool,
        /// The run's `jobs_version` in that read.
        version: i64,
    },
}

/// Whether a run in `state`, whose import is complete or not (`imported`:
/// its `expanded_at` is set), with these counts and with or without outcomes
/// still to be read back, can no longer change its summary. An import that
/// raced a cancel may still write a batch of jobs (cancelled when it ends),
/// and a pushed run takes contacts until its day is over: until then neither
/// is settled, whatever its state.
pub(crate) fn is_settled(state: RunState, imported: bool, counts: &RunCounts, open_outcomes: bool) -> bool {
    state.is_over() && imported && counts.open() == 0 && !open_outcomes
}

/// The kept form of a summary: `(counts, outcomes)` as JSON text.
pub(crate) fn encode(summary: &RunSummary) -> (String, String) {
    let counts: Map<String, Value> =
        summary.counts.0.iter().map(|(state, n)| (state.as_str().to_string(), json!(n))).collect();
    let outcomes: Map<String, Value> = summary
        .outcomes
        .iter()
        .map(|(field, values)| (field.clone(), values.iter().map(|(v, n)| json!([v, n])).collect()))
        .collect();
    (Value::Object(counts).to_string(), Value::Object(outcomes).to_string())
}

/// A kept summary back from its JSON text; `run_id` names it in errors.
pub(crate) fn decode(run_id: i64, counts: &str, outcomes: &str) -> Result<RunSummary> {
    let bad = |what: &str| StoreError::Corrupt(format!("run {run_id}'s kept summary: {what}"));
    let counts: Map<String, Value> = serde_json::from_str(counts).map_err(|e| bad(&format!("counts: {e}")))?;
    let mut by_state = BTreeMap::new();
    for (state, n) in counts {
        let state: JobState = state.parse().map_err(|e| bad(&format!("counts: {e}")))?;
        by_state.insert(state, n.as_i64().ok_or_else(|| bad("counts: a count is not a whole number"))?);
    }
    let outcomes: Map<String, Value> = serde_json::from_str(outcomes).map_err(|e| bad(&format!("outcomes: {e}")))?;
    let mut fields = BTreeMap::new();
    for (field, values) in outcomes {
        let pairs = values.as_array().ok_or_else(|| bad("outcomes: a field's values are not a list"))?;
        let mut counted = Vec::with_capacity(pairs.len());
        for pair in pairs {
            let (value, n) = match pair.as_array().map(Vec::as_slice) {
                Some([Value::Null, n]) => (None, n),
                Some([Value::String(v), n]) => (Some(v.clone()), n),
                _ => return Err(bad("outcomes: a value is not [text or null, count]")),
            };
            counted.push((value, n.as_i64().ok_or_else(|| bad("outcomes: a count is not a whole number"))?));
        }
        fields.insert(field, counted);
    }
    Ok(RunSummary { counts: RunCounts(by_state), outcomes: fields })
}

impl Store {
    /// Run `run`'s summary: the kept one if there is one, else counted now
    /// (and kept if the run is settled).
    pub async fn run_summary(&self, run: &RunRow, now: i64) -> Result<RunSummary> {
        let id = run.id;
        match self.read_summary(run).await? {
            Found::Kept(summary) => Ok(summary),
            Found::Live { summary, settled: false, .. } => Ok(summary),
            Found::Live { summary, settled: true, version } => {
                // Keeping is an optimisation: a ledger that takes no write now
                // (a read-only copy, a busy writer) still gets its answer.
                if let Err(e) = self.keep_summary(id, &summary, version, now).await {
                    tracing::debug!(run = id, error = %e, "a settled run's summary was not kept");
                }
                Ok(summary)
            }
        }
    }

    /// Run `run`'s kept summary, or its counts now with whether it is settled.
    async fn read_summary(&self, run: &RunRow) -> Result<Found> {
        let fields: Vec<String> = run.outcomes.iter().map(|f| f.name.clone()).collect();
        let id = run.id;
        match &self.db {
            Db::Sqlite(db) => super::report(db, move |c| sqlite::summaries::summary(c, id, &fields)).await,
            Db::Postgres(pg) => postgres::summaries::summary(pg, id, &fields).await,
        }
    }

    async fn keep_summary(&self, run_id: i64, summary: &RunSummary, version: i64, now: i64) -> Result<bool> {
        let (counts, outcomes) = encode(summary);
        match &self.db {
            Db::Sqlite(db) => {
                super::write(db, move |c| sqlite::summaries::keep(c, run_id, &counts, &outcomes, version, now)).await
            }
            Db::Postgres(pg) => postgres::summaries::keep(pg, run_id, &counts, &outcomes, version, now).await,
        }
    }

    /// Counts settled run `id`'s summary and keeps it; whether it was kept.
    async fn summarise_one(&self, id: i64, now: i64) -> Result<bool> {
        let run = self.get_run(id).await?;
        match self.read_summary(&run).await? {
            Found::Live { summary, settled: true, version } => self.keep_summary(id, &summary, version, now).await,
            _ => Ok(false),
        }
    }

    /// Keeps the summary of every settled run that has none yet, oldest
    /// first, at most `limit` of them; returns how many it kept. `serve` calls
    /// this in the background so that the first request after a big run
    /// settles does not pay for counting it.
    pub async fn summarise_settled(&self, limit: u32, now: i64) -> Result<usize> {
        let ids = match &self.db {
            Db::Sqlite(db) => super::report(db, move |c| sqlite::summaries::settled_without(c, limit)).await?,
            Db::Postgres(pg) => postgres::summaries::settled_without(pg, limit).await?,
        };
        let mut kept = 0;
        for id in ids {
            // One run that cannot be summarised (a damaged row, say) leaves
            // the others to be kept; requests still count it live.
            match self.summarise_one(id, now).await {
                Ok(true) => kept += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(run = id, error = %e, "a settled run's summary could not be kept"),
            }
        }
        Ok(kept)
    }

    /// Jobs per state over the whole ledger: the kept summaries' counts plus
    /// a count of the runs without one.
    pub async fn jobs_by_state(&self) -> Result<Vec<(JobState, i64)>> {
        let counts = match &self.db {
            Db::Sqlite(db) => super::report(db, sqlite::summaries::jobs_by_state).await?,
            Db::Postgres(pg) => postgres::summaries::jobs_by_state(pg).await?,
        };
        Ok(counts.0.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CollectedOutcome, OutcomeState};
    use crate::store::purge::tests::{DAY, T0, finished_run, numbers};

    /// A ledger of each backend this machine has: SQLite always, PostgreSQL
    /// when `FLOWCAST_TEST_POSTGRES` names a server.
    struct Backend {
        store: Store,
        postgres: Option<tokio_postgres::Client>,
        _dir: tempfile::TempDir,
    }

    impl Backend {
        async fn all(label: &str) -> Vec<Backend> {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open_path(&dir.path().join("flowcast.db")).await.unwrap();
            let mut out = vec![Backend { store, postgres: None, _dir: dir }];
            if let Some((store, client)) = crate::store::postgres::runs::tests::ledger(label).await {
                out.push(Backend { store, postgres: Some(client), _dir: tempfile::tempdir().unwrap() });
            }
            out
        }

        /// Changes the ledger behind the store's back (what no code path does
        /// to a settled run), to see whether an answer was counted or kept.
        async fn sql(&self, sql: &str) {
            match &self.postgres {
                Some(client) => {
                    client.batch_execute(sql).await.unwrap();
                }
                None => {
                    let sql = sql.to_string();
                    self.store.write(move |c| Ok(c.execute_batch(&sql)?)).await.unwrap();
                }
            }
        }

        /// A finished run of five phones (not those of the tests' open runs) whose every
        /// outcome is read back.
        async fn settled_run(&self, key: &str) -> (RunRow, Vec<String>) {
            let phones = numbers(200, 5);
            let id = finished_run(&self.store, key, &phones, T0).await;
            for job in self.store.due_outcomes(Some(id), T0, 100, true).await.unwrap() {
                let collected = CollectedOutcome {
                    status: "ended".into(),
                    ended_in: Some("ask".into()),
                    values: Map::from_iter([("answer".to_string(), Value::String("LATER".into()))]),
                    notes: Map::new(),
                };
                assert!(self.store.record_collected(job.id, OutcomeState::Known, collected, T0).await.unwrap());
            }
            (self.store.get_run(id).await.unwrap(), phones)
        }
    }

    #[tokio::test]
    async fn a_run_is_counted_live_until_it_settles_and_from_its_kept_summary_after() {
        for backend in Backend::all("summaries kept").await {
            let store = &backend.store;
            let id = finished_run(store, "open", &numbers(0, 5), T0).await;
            let run = store.get_run(id).await.unwrap();
            // Finished, but one outcome is still to be read back: not settled.
            let first = store.run_summary(&run, T0).await.unwrap();
            assert_eq!(first.counts.get(JobState::Sent), 4, "{first:?}");
            backend.sql(&format!("UPDATE jobs SET state = 'expired' WHERE run_id = {id} AND state = 'failed'")).await;
            let live = store.run_summary(&run, T0).await.unwrap();
            assert_eq!((live.counts.get(JobState::Failed), live.counts.get(JobState::Expired)), (0, 1), "{live:?}");

            let (run, _) = backend.settled_run("settled").await;
            let settled = store.run_summary(&run, T0).await.unwrap();
            let answers = &settled.outcomes["answer"];
            assert!(answers.contains(&(Some("\"LATER\"".to_string()), 1)), "{answers:?}");
            assert_eq!(answers.iter().map(|(_, n)| n).sum::<i64>(), 4, "every sent job was read back: {answers:?}");
            backend.sql(&format!("UPDATE jobs SET state = 'cancelled' WHERE run_id = {}", run.id)).await;
            assert_eq!(store.run_summary(&run, T0).await.unwrap(), settled, "read from what was kept, not recounted");
            let by_state: BTreeMap<JobState, i64> = store.jobs_by_state().await.unwrap().into_iter().collect();
            assert_eq!(
                by_state[&JobState::Sent],
                8,
                "4 kept for the settled run, 4 counted for the open one: {by_state:?}"
            );
            assert_eq!(by_state[&JobState::Failed], 1, "the settled run's one failure, kept: {by_state:?}");
            assert_eq!(by_state[&JobState::Expired], 1, "the open run's, counted live: {by_state:?}");
            assert_eq!(by_state.get(&JobState::Cancelled), None, "{by_state:?}");
        }
    }

    #[tokio::test]
    async fn the_background_pass_keeps_only_settled_runs_and_each_once() {
        for backend in Backend::all("summaries pass").await {
            let store = &backend.store;
            finished_run(store, "open", &numbers(0, 5), T0).await;
            let (run, _) = backend.settled_run("settled").await;
            assert_eq!(store.summarise_settled(10, T0).await.unwrap(), 1, "only the run with nothing open");
            assert_eq!(store.summarise_settled(10, T0).await.unwrap(), 0, "kept once");
            backend.sql(&format!("UPDATE jobs SET state = 'cancelled' WHERE run_id = {}", run.id)).await;
            assert_eq!(store.run_summary(&run, T0).await.unwrap().counts.get(JobState::Cancelled), 0);
        }
    }

    #[tokio::test]
    async fn a_batch_landing_in_a_settled_run_drops_its_kept_summary_and_a_count_from_before_it_is_not_kept() {
        use crate::domain::{ImportRow, JobSpec, Parameters, Phone};
        for backend in Backend::all("summaries late batch").await {
            let store = &backend.store;
            let (run, _) = backend.settled_run("settled").await;
            let Found::Live { summary: counted, settled: true, version } = store.read_summary(&run).await.unwrap()
            else {
                panic!("settled, nothing kept yet");
            };
            assert_eq!(store.run_summary(&run, T0).await.unwrap(), counted, "kept");
            // A push dated by a clock that disagrees lands in the run after it was kept.
            let late = ImportRow::Job(JobSpec {
                line: 100,
                phone: Phone::from_e164("+12015550999".into()),
                zone: chrono_tz::UTC,
                parameters: Parameters::from_map(&Map::new()),
                due_at: None,
                expires_at: None,
                dedupe_key: None,
            });
            store.import_batch(run.id, vec![late], 100, T0, T0).await.unwrap();

            assert!(!store.keep_summary(run.id, &counted, version, T0).await.unwrap(), "counted before the batch");
            let after = store.run_summary(&run, T0).await.unwrap();
            assert_eq!(after.counts.total(), counted.counts.total() + 1, "the late job is counted: {after:?}");
        }
    }

    #[tokio::test]
    async fn a_purge_stopped_after_its_first_batch_leaves_no_kept_summary_behind() {
        let backend = Backend::all("summaries half purge").await.remove(0);
        let store = &backend.store;
        let (run, _) = backend.settled_run("settled").await;
        let before = store.run_summary(&run, T0).await.unwrap();
        assert!(before.outcomes["answer"].iter().any(|(v, _)| v.is_some()), "replies counted: {before:?}");
        let salt = store.read(sqlite::purge::salt).await.unwrap();
        let id = run.id;

        let first = store.write(move |c| sqlite::purge::purge_jobs(c, id, &salt, 0, 2)).await.unwrap();

        assert_eq!(first.jobs, 2);
        let kept: i64 =
            store.read(|c| Ok(c.query_row("SELECT COUNT(*) FROM run_summaries", [], |r| r.get(0))?)).await.unwrap();
        assert_eq!(kept, 0, "the kept summary went with the first batch");
    }

    #[tokio::test]
    async fn a_purge_drops_the_kept_summary_with_its_replies_and_a_count_from_before_it_is_not_kept() {
        for backend in Backend::all("summaries purge").await {
            let store = &backend.store;
            let (run, _) = backend.settled_run("settled").await;
            let Found::Live { summary: counted, version, .. } = store.read_summary(&run).await.unwrap() else {
                panic!("nothing kept yet");
            };
            let before = store.run_summary(&run, T0).await.unwrap();
            assert_eq!(before, counted);
            assert!(before.outcomes["answer"].iter().any(|(v, _)| v.is_some()), "{before:?}");

            store.purge(T0 + DAY, T0 + 2 * DAY).await.unwrap();

            assert!(
                !store.keep_summary(run.id, &counted, version, T0 + 2 * DAY).await.unwrap(),
                "counted before the purge: not kept after it"
            );
            let run = store.get_run(run.id).await.unwrap();
            let after = store.run_summary(&run, T0 + 2 * DAY).await.unwrap();
            assert_eq!(after.counts, before.counts, "counts and states survive a purge");
            assert_eq!(after.outcomes["answer"], vec![(None, 4)], "the replies are gone from the summary too");
            backend.sql(&format!("UPDATE jobs SET state = 'cancelled' WHERE run_id = {}", run.id)).await;
            assert_eq!(store.run_summary(&run, T0).await.unwrap(), after, "the purged run's summary is kept again");
        }
    }

    #[test]
    fn a_kept_summary_reads_back_as_it_was_written() {
        let summary = RunSummary {
            counts: RunCounts(BTreeMap::from([(JobState::Sent, 970), (JobState::Failed, 20), (JobState::Skipped, 10)])),
            outcomes: BTreeMap::from([
                ("score".to_string(), vec![(None, 3), (Some("7".to_string()), 5), (Some("10".to_string()), 1)]),
                ("reply".to_string(), vec![(Some("\"yes, \\\"please\\\"\"".to_string()), 2)]),
                ("none".to_string(), vec![]),
            ]),
        };
        let (counts, outcomes) = encode(&summary);
        assert_eq!(decode(1, &counts, &outcomes).unwrap(), summary);
    }

    #[test]
    fn a_damaged_kept_summary_is_an_error_naming_the_run() {
        for (counts, outcomes) in [
            ("{\"sent\": \"ten\"}", "{}"),
            ("{\"posted\": 1}", "{}"),
            ("{}", "{\"score\": [[1, 2]]}"),
            ("{}", "{\"score\": 3}"),
            ("not json", "{}"),
        ] {
            let err = decode(42, counts, outcomes).unwrap_err().to_string();
            assert!(err.contains("run 42"), "{err}");
        }
    }

    #[test]
    fn only_an_over_run_with_nothing_open_is_settled() {
        let done = RunCounts(BTreeMap::from([(JobState::Sent, 2)]));
        let open = RunCounts(BTreeMap::from([(JobState::Sent, 1), (JobState::Dispatching, 1)]));
        assert!(is_settled(RunState::Finished, true, &done, false));
        assert!(is_settled(RunState::Cancelled, true, &done, false));
        assert!(!is_settled(RunState::Finished, true, &done, true), "an outcome is still to be read back");
        assert!(!is_settled(RunState::Cancelled, true, &open, false), "a cancelled run's request is still in flight");
        assert!(!is_settled(RunState::Cancelled, false, &done, false), "its import may still write a batch");
        assert!(!is_settled(RunState::Active, true, &done, false));
        assert!(!is_settled(RunState::Paused, true, &done, false));
    }
}
