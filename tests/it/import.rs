//! Streaming import into the ledger: batched, resumable, dispatchable early.

use flowcast::domain::Trigger;
use flowcast::runs::{import_run, new_run};

use crate::helpers::*;

#[tokio::test]
async fn an_interrupted_import_resumes_after_the_last_committed_line_without_repeating_a_row() {
    let app = TestApp::new();
    let all = phones(5000);
    // The process died after the first 2,500 rows were committed: import only
    // those, then the whole file, as a resume would.
    app.write("c.csv", contacts_csv(&all[..2500]));
    app.write("c.toml", campaign_toml("c.csv", ""));
    let campaign = app.campaign("c.toml");
    let store = app.store().await;
    let now = chrono::Utc::now().timestamp_millis();
    let flow = flowcast::domain::FlowSid::parse(FLOW).unwrap();
    let run =
        store.create_run(new_run(&campaign, &flow, Trigger::Manual, "k".into(), now), now).await.unwrap().unwrap();
    let first = import_run(&store, &campaign, run, now, async |_| {}).await.unwrap();
    assert_eq!(first.imported, 2500);

    let mut csv = contacts_csv(&all);
    csv.push_str("+12015550001,Duplicate\nbogus,Nobody\n");
    app.write("c.csv", csv);
    let counts = import_run(&store, &campaign, run, now, async |_| {}).await.unwrap();

    assert_eq!((counts.rows, counts.imported, counts.rejected, counts.duplicates), (5002, 5000, 1, 1));
    assert_eq!(store.run_counts(run).await.unwrap().total(), 5000);
    let rows = store.refused_rows(run).await.unwrap();
    assert_eq!(rows.len(), 2, "only the new file's duplicate and rejected rows: {rows:?}");
    assert_eq!(rows[0].line, 5002, "the duplicate is reported at its own line");
}

/// A batch that failed half-way (on PostgreSQL, one of the parts a batch
/// is written in side by side, while the other part committed) is read
/// again on resume for the rows the ledger does not have, and only those:
/// every row is counted once, none as a duplicate of itself, even when the
/// campaign changed in between so that a row would now fall in the other part.
#[tokio::test]
async fn an_import_that_failed_in_one_part_of_a_batch_resumes_each_part_where_it_stopped() {
    use flowcast::domain::part_of;

    let app = TestApp::new();
    let mut rows: Vec<(String, String)> =
        phones(5000).into_iter().enumerate().map(|(i, p)| (p, format!("Name{i}"))).collect();
    // The row the ledger refuses the first time: in the second batch of
    // 2,000 rows. A duplicate of an earlier number and a refused number
    // go in the same batch, in the other part.
    let failing = rows[2998].0.clone();
    let other = |p: &str| part_of(p, 2) != part_of(&failing, 2);
    let duplicated = rows[..2000].iter().map(|r| r.0.clone()).find(|p| other(p)).unwrap();
    let bogus = (0..).map(|i| format!("bogus{i}")).find(|p| other(p)).unwrap();
    // A number written without its country code: refused the first time
    // (the campaign names no default region), in the part that commits; a
    // job once the region is set before the resume, and as such in the
    // other part. Its row is in the ledger already and must stay counted once.
    let local = (0..10_000).map(|i| format!("203555{i:04}")).find(|p| other(p) && !other(&format!("+1{p}"))).unwrap();
    rows.insert(2500, (duplicated, "Again".into()));
    rows.insert(2600, (bogus, "Nobody".into()));
    rows.insert(2700, (local, "Local".into()));
    let failing_line = rows.iter().position(|r| r.0 == failing).unwrap() + 2;
    let mut csv = String::from("phone,first_name\n");
    for (phone, name) in &rows {
        csv.push_str(&format!("{phone},{name}\n"));
    }
    app.write("c.csv", csv);
    app.write("c.toml", campaign_toml("c.csv", ""));
    let campaign = app.campaign("c.toml");
    let store = app.store().await;
    inject_job_fault(&app, "refuse_row", "INSERT", &format!("NEW.line = {failing_line}"));
    let now = chrono::Utc::now().timestamp_millis();
    let flow = flowcast::domain::FlowSid::parse(FLOW).unwrap();
    let run =
        store.create_run(new_run(&campaign, &flow, Trigger::Manual, "k".into(), now), now).await.unwrap().unwrap();
    let failed = import_run(&store, &campaign, run, now, async |_| {}).await;
    assert!(failed.is_err(), "{failed:?}");
    // The first batch (2,000 rows or a little more) is in whole.
    let line = store.import_line(run).await.unwrap() as i64;
    assert!(line > 2000 && (line as usize) < failing_line, "every part through line {line}");
    let held = store.run_counts(run).await.unwrap().total();
    if on_postgres() {
        // The other part of the second batch committed too.
        assert!(held > line - 1 && held < 4500, "{held} jobs");
    } else {
        assert_eq!(held, line - 1);
    }

    drop_job_fault(&app, "refuse_row");
    app.write("c.toml", campaign_toml("c.csv", "default_region = \"US\""));
    let campaign = app.campaign("c.toml");
    let counts = import_run(&store, &campaign, run, now, async |_| {}).await.unwrap();
    let refused: Vec<i64> = store.refused_rows(run).await.unwrap().iter().map(|r| r.line).collect();
    if on_postgres() {
        // The local number's refusal was committed with its part: it stays.
        assert_eq!((counts.rows, counts.imported, counts.rejected, counts.duplicates), (5003, 5000, 2, 1));
        assert_eq!(refused, [2502, 2602, 2702], "the duplicate and the refused rows, once each");
    } else {
        // The whole second batch was read again, under the new region.
        assert_eq!((counts.rows, counts.imported, counts.rejected, counts.duplicates), (5003, 5001, 1, 1));
        assert_eq!(refused, [2502, 2602], "the duplicate and the refused row, once each");
    }
    assert_eq!(store.run_counts(run).await.unwrap().total(), counts.imported);
}

#[tokio::test]
async fn a_run_dispatches_while_its_csv_is_still_being_imported() {
    use flowcast::studio::simulator::{SimConfig, Simulator};

    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&phones(6000)));
    app.write("c.toml", campaign_toml("c.csv", ""));
    let campaign = app.campaign("c.toml");
    let store = app.store().await;
    let now = chrono::Utc::now().timestamp_millis();
    let flow = flowcast::domain::FlowSid::parse(FLOW).unwrap();
    let run =
        store.create_run(new_run(&campaign, &flow, Trigger::Manual, "k".into(), now), now).await.unwrap().unwrap();
    let dispatcher = app.dispatcher_on(&sim.url(), std::sync::Arc::new(flowcast::schedule::SystemClock)).await;
    let mut sent_during_import = false;
    let import = import_run(&store, &campaign, run, now, async |_| {
        // After the first batch, hold the import until the dispatcher has
        // claimed or sent one of its jobs (outcomes are recorded in batches):
        // that can only happen while the run is still importing.
        let started = |c: flowcast::store::RunCounts| {
            c.get(flowcast::domain::JobState::Sent) + c.get(flowcast::domain::JobState::Dispatching) > 0
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !sent_during_import && std::time::Instant::now() < deadline {
            sent_during_import = store.run_counts(run).await.map(started).unwrap_or(false);
            // Polled: the ledger has no change feed to wait on.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    });
    let (end, imported) = tokio::join!(dispatcher.run_to_end(run), import);
    let end = end.unwrap();
    imported.unwrap();

    assert!(sent_during_import, "sending started before the import ended");
    assert!(matches!(end, flowcast::dispatch::RunEnd::Finished(_)), "{end:?}");
    assert_eq!(sim.executions().len(), 6000);
}
