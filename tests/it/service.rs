//! `flowcast serve` as a user runs it, and run control: pause, resume, cancel
//! (also while a run is still importing), shutdown, and the ledger lock.

use std::sync::Arc;
use std::time::Duration;

use flowcast::dispatch::RunEnd;
use flowcast::domain::RunAction as Action;
use flowcast::domain::Trigger;
use flowcast::runs::control as control_run;
use flowcast::runs::{import_run, new_run};
use flowcast::schedule::SystemClock;
use flowcast::studio::simulator::{SimConfig, Simulator};

use crate::helpers::*;

/// Polls `check` every 50 ms until it holds or `within` passes. Used where
/// the state lives in another process (a `serve` child, read over its API)
/// that has no change feed to wait on.
pub use crate::served::{Served, campaigns_in_force, eventually, free_port};

#[tokio::test]
async fn serve_picks_up_a_dropped_file_keeps_the_old_version_on_a_bad_edit_and_stops_on_sigterm() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    let served = Served::start(&app, &sim.url()).await;

    // A one-off campaign dropped into the folder is run, once.
    app.write("drop.csv", contacts_csv(&phones(5)));
    app.write("drop.toml", campaign_toml("drop.csv", ""));
    assert!(eventually(Duration::from_secs(10), async || sim.executions().len() == 5).await, "{}", served.log());

    // An edit with a mistake is refused with file:line, the old version kept.
    app.write("drop.toml", campaign_toml("drop.csv", "timezone = \"Atlantis/Capital\""));
    assert!(
        eventually(Duration::from_secs(10), async || served
            .log()
            .contains("drop.toml:5: timezone \"Atlantis/Capital\""))
        .await,
        "{}",
        served.log()
    );
    assert!(served.log().contains("stays in force"), "{}", served.log());

    // With a SQLite ledger (one process at a time; several instances share a
    // PostgreSQL one, see cluster.rs):
    if !on_postgres() {
        // While serve dispatches, a second process that would dispatch from the
        // ledger is refused, naming the holder...
        let second = app.flowcast(&["resume"], &[]).await;
        assert_eq!(second.status.code(), Some(1));
        assert!(
            stderr(&second).contains("in use by another flowcast process (flowcast serve at http://127.0.0.1:"),
            "{}",
            stderr(&second)
        );
        // ...but `flowcast run` asks serve to start the run and follows it there.
        // (The contacts are still in their first Executions: each create is a 409,
        // skipped by the campaign's policy, so nothing is sent twice.)
        app.write("other.toml", campaign_toml("drop.csv", "enabled = false"));
        assert!(
            eventually(Duration::from_secs(10), async || served.log().contains("campaign=other")).await,
            "{}",
            served.log()
        );
        let via_serve = app.flowcast(&["run", "other"], &[]).await;
        assert_eq!(via_serve.status.code(), Some(0), "{}{}", stdout(&via_serve), stderr(&via_serve));
        assert!(stderr(&via_serve).contains("starting the run there"), "{}", stderr(&via_serve));
        assert!(stdout(&via_serve).contains("(other): 0 sent, 5 skipped"), "{}", stdout(&via_serve));
    }

    std::fs::remove_file(app.campaigns.join("drop.toml")).unwrap();
    assert!(eventually(Duration::from_secs(10), async || served.log().contains("campaign file removed")).await);

    let (code, log) = served.terminate().await;
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("flowcast serve stopped"), "{log}");
    assert_eq!(sim.executions().len(), 5, "nothing ran twice");
}

#[tokio::test]
async fn runs_are_paused_resumed_and_cancelled_over_http() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    let served = Served::start(&app, &sim.url()).await;
    app.write("c.csv", contacts_csv(&phones(60)));
    app.write("c.toml", campaign_toml("c.csv", "rate = 10"));
    assert!(eventually(Duration::from_secs(10), async || !sim.executions().is_empty()).await, "{}", served.log());
    let client = reqwest::Client::new();

    let paused: serde_json::Value =
        client.post(format!("{}/api/runs/1/pause", served.url)).send().await.unwrap().json().await.unwrap();
    assert_eq!(paused["state"], "paused");
    // Requests in flight settle...
    let run_url = format!("{}/api/runs/1", served.url);
    let mut settled = false;
    for _ in 0..100 {
        let run: serde_json::Value = client.get(&run_url).send().await.unwrap().json().await.unwrap();
        if run["jobs"]["dispatching"].is_null() {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(settled, "in-flight requests settle after a pause");
    // ... and then nothing more is sent (observed over a few dispatch periods).
    let after_pause = sim.executions().len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(sim.executions().len(), after_pause, "a paused run sends nothing");
    assert!(after_pause < 60);

    let resumed = client.post(format!("{}/api/runs/1/resume", served.url)).send().await.unwrap();
    assert_eq!(resumed.status(), 200);
    assert!(eventually(Duration::from_secs(20), async || sim.executions().len() == 60).await, "{}", served.log());

    let run: serde_json::Value = client.get(&run_url).send().await.unwrap().json().await.unwrap();
    assert_eq!(run["id"], 1);
    let late = client.post(format!("{}/api/runs/1/cancel", served.url)).send().await.unwrap();
    let code = late.status().as_u16();
    assert!(code == 200 || code == 409, "cancel of a finishing run: {code}");
    let missing = client.post(format!("{}/api/runs/99/pause", served.url)).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    let (code, log) = served.terminate().await;
    assert_eq!(code, Some(0), "{log}");
    let to: std::collections::HashSet<String> = sim.executions().into_iter().map(|e| e.to).collect();
    assert_eq!(to.len(), 60, "each contact once, across pause and resume");
}

#[tokio::test]
async fn a_cancel_issued_while_a_run_is_still_importing_wins() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    // More rows than the first batch holds, also when the import has the
    // ledger to itself (a large batch).
    let rows = flowcast::runs::LONE_BATCH_ROWS + 2 * flowcast::runs::BATCH_ROWS;
    app.write("c.csv", contacts_csv(&phones(rows)));
    app.write("c.toml", campaign_toml("c.csv", ""));
    let campaign = app.campaign("c.toml");
    let store = app.store().await;
    let now = chrono::Utc::now();
    let flow = flowcast::domain::FlowSid::parse(FLOW).unwrap();
    let run = store
        .create_run(
            new_run(&campaign, &flow, Trigger::Manual, "x".into(), now.timestamp_millis()),
            now.timestamp_millis(),
        )
        .await
        .unwrap()
        .unwrap();

    // The user cancels as soon as the first batch is written.
    let mut first = None;
    let counts = import_run(&store, &campaign, run, now.timestamp_millis(), async |counts| {
        if first.is_none() {
            control_run(&store, run, Action::Cancel, now.timestamp_millis()).await.unwrap();
            first = Some(*counts);
        }
    })
    .await
    .unwrap();
    assert!(counts.imported < rows as i64, "the import stopped early: {counts:?}");
    // The first batch is a small one (its jobs can be claimed at once), also
    // when the import has a SQLite ledger to itself.
    let first = first.unwrap().rows;
    assert!((flowcast::runs::BATCH_ROWS as i64..2 * flowcast::runs::BATCH_ROWS as i64).contains(&first), "{first}");

    let end = app.dispatch(run, &sim.url()).await;

    assert!(matches!(end, RunEnd::Cancelled), "{end:?}");
    assert!(sim.executions().is_empty(), "no job of a cancelled run is sent");
    let counts = store.run_counts(run).await.unwrap();
    assert_eq!(counts.open(), 0, "no job is left pending: {counts:?}");
    assert_eq!(store.get_run(run).await.unwrap().state, flowcast::domain::RunState::Cancelled);
}

#[tokio::test]
async fn a_pause_during_dispatch_stops_sending_and_resume_finishes_without_resending() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&phones(40)));
    app.write("c.toml", campaign_toml("c.csv", "rate = 20"));
    let run = app.start_run("c.toml").await;
    let dispatcher = Arc::new(app.dispatcher_on(&sim.url(), Arc::new(SystemClock)).await);
    let task = {
        let d = Arc::clone(&dispatcher);
        tokio::spawn(async move { d.run_to_end(run).await.unwrap() })
    };
    assert!(eventually(Duration::from_secs(10), async || sim.executions().len() >= 5).await);

    control_run(&app.store().await, run, Action::Pause, chrono::Utc::now().timestamp_millis()).await.unwrap();
    let end = task.await.unwrap();
    assert!(matches!(end, RunEnd::Paused(_)), "{end:?}");
    let sent_before = sim.executions().len();
    assert!(sent_before < 40);
    assert_eq!(app.store().await.run_counts(run).await.unwrap().get(flowcast::domain::JobState::Dispatching), 0);

    control_run(&app.store().await, run, Action::Resume, chrono::Utc::now().timestamp_millis()).await.unwrap();
    let end = dispatcher.run_to_end(run).await.unwrap();
    assert!(matches!(end, RunEnd::Finished(_)), "{end:?}");
    let to: std::collections::HashSet<String> = sim.executions().into_iter().map(|e| e.to).collect();
    assert_eq!((sim.executions().len(), to.len()), (40, 40));
}

#[tokio::test]
async fn shutdown_stops_claiming_and_records_requests_in_flight() {
    let sim = Simulator::start(SimConfig { lifetime: None, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&phones(40)));
    app.write("c.toml", campaign_toml("c.csv", "rate = 20"));
    let run = app.start_run("c.toml").await;
    let dispatcher = Arc::new(app.dispatcher_on(&sim.url(), Arc::new(SystemClock)).await);
    let task = {
        let d = Arc::clone(&dispatcher);
        tokio::spawn(async move { d.run_to_end(run).await.unwrap() })
    };
    assert!(eventually(Duration::from_secs(10), async || sim.executions().len() >= 5).await);

    dispatcher.shutdown_token().cancel();
    let end = task.await.unwrap();

    assert!(matches!(end, RunEnd::Interrupted), "{end:?}");
    let counts = app.store().await.run_counts(run).await.unwrap();
    assert_eq!(counts.get(flowcast::domain::JobState::Dispatching), 0, "every request in flight was recorded");
    assert_eq!(counts.get(flowcast::domain::JobState::Sent) as usize, sim.executions().len());
    assert!(counts.get(flowcast::domain::JobState::Pending) > 0);
}
