//! Streaming import into the ledger: batched, resumable, dispatchable early.

use flowcast::import::{import_run, new_run};

use crate::helpers::*;

#[test]
fn an_interrupted_import_resumes_after_the_last_committed_line_without_repeating_a_row() {
    let app = TestApp::new();
    let all = phones(5000);
    // The process died after the first 2,500 rows were committed: import only
    // those, then the whole file, as a resume would.
    app.write("c.csv", contacts_csv(&all[..2500]));
    app.write("c.toml", campaign_toml("c.csv", ""));
    let campaign = app.campaign("c.toml");
    let store = app.store();
    let now = chrono::Utc::now().timestamp_millis();
    let flow = flowcast::domain::FlowSid::parse(FLOW).unwrap();
    let run = store.create_run(&new_run(&campaign, &flow, "manual", "k".into(), now), now).unwrap().unwrap();
    let first = import_run(&store, &campaign, run, now, |_| {}).unwrap();
    assert_eq!(first.imported, 2500);

    let mut csv = contacts_csv(&all);
    csv.push_str("+12015550001,Duplicate\nbogus,Nobody\n");
    app.write("c.csv", csv);
    let counts = import_run(&store, &campaign, run, now, |_| {}).unwrap();

    assert_eq!((counts.rows, counts.imported, counts.rejected, counts.duplicates), (5002, 5000, 1, 1));
    assert_eq!(store.run_counts(run).unwrap().total(), 5000);
    let rows = store.import_rows(run).unwrap();
    assert_eq!(rows.len(), 2, "only the new file's duplicate and rejected rows: {rows:?}");
    assert_eq!(rows[0].0, 5002, "the duplicate is reported at its own line");
}

#[tokio::test]
async fn a_run_dispatches_while_its_csv_is_still_being_imported() {
    use flowcast::studio::simulator::{SimConfig, Simulator};

    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&phones(6000)));
    app.write("c.toml", campaign_toml("c.csv", ""));
    let campaign = app.campaign("c.toml");
    let store = app.store();
    let now = chrono::Utc::now().timestamp_millis();
    let flow = flowcast::domain::FlowSid::parse(FLOW).unwrap();
    let run = store.create_run(&new_run(&campaign, &flow, "manual", "k".into(), now), now).unwrap().unwrap();
    let dispatcher = app.dispatcher_on(&sim.url(), std::sync::Arc::new(flowcast::schedule::SystemClock));
    let sent_during_import = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let import = {
        let store = store.clone();
        let seen = std::sync::Arc::clone(&sent_during_import);
        let sim_url = sim.url();
        tokio::task::spawn_blocking(move || {
            import_run(&store, &campaign, run, now, |_| {
                // After each batch: has anything been sent before the import ended?
                // Sent, or claimed and in flight (outcomes are recorded in batches).
                let started = |c: flowcast::store::RunCounts| {
                    c.get(flowcast::domain::JobState::Sent) + c.get(flowcast::domain::JobState::Dispatching) > 0
                };
                if store.run_counts(run).map(started).unwrap_or(false) {
                    seen.store(true, std::sync::atomic::Ordering::SeqCst);
                }
                // Give the dispatcher a moment between batches, as a large file would.
                std::thread::sleep(std::time::Duration::from_millis(100));
                let _ = &sim_url;
            })
        })
    };

    let end = dispatcher.run_to_end(run).await.unwrap();
    import.await.unwrap().unwrap();

    assert!(matches!(end, flowcast::dispatch::RunEnd::Finished(_)), "{end:?}");
    assert!(sent_during_import.load(std::sync::atomic::Ordering::SeqCst), "sending started before the import ended");
    assert_eq!(sim.executions().len(), 6000);
}
