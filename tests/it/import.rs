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
