//! The fault suite: the simulator injects 500s before and after committing an
//! Execution, connections dropped after committing, answers slower than the
//! client's timeout, 429 bursts and Executions that end at once. Whatever
//! happens, each valid contact ends with exactly one Execution, and the ledger
//! holds the SID Studio gave it. Seeds are printed so a failure can be replayed.

use std::time::Duration;

use flowcast::dispatch::{DispatchSettings, RunEnd};
use flowcast::studio::simulator::{FaultKind, Faults, SimConfig, Simulator};
use flowcast::studio::{Credentials, HttpStudio, StudioConfig};

use crate::helpers::*;

/// Settings for runs under faults: enough retries that no job gives up.
fn patient() -> DispatchSettings {
    DispatchSettings { max_failures: 30, breaker_streak: 0, ..fast_settings() }
}

fn impatient_client(url: &str) -> HttpStudio {
    HttpStudio::new(StudioConfig {
        base_url: url.to_string(),
        credentials: Credentials::new(ACCOUNT, TOKEN),
        timeout: Duration::from_millis(300),
        connect_timeout: Duration::from_millis(300),
    })
    .unwrap()
}

async fn run_under(faults: Faults, lifetime: Option<Duration>, contacts: usize) -> (TestApp, Simulator, i64) {
    let sim = Simulator::start(SimConfig { lifetime, faults, ..SimConfig::default() }).await.unwrap();
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&phones(contacts)));
    app.write("c.toml", campaign_toml("c.csv", "on_conflict = \"skip\""));
    let run = app.start_run("c.toml").await;
    let end = app.dispatch_with_settings(run, impatient_client(&sim.url()), 2000, patient()).await;
    assert!(matches!(end, RunEnd::Finished(_)), "{end:?}");
    (app, sim, run)
}

#[tokio::test]
async fn errors_before_and_after_committing_never_lose_or_double_a_contact() {
    let seed = seed("errors_before_and_after");
    let faults = Faults { seed, error_before: 0.1, error_after: 0.1, ..Faults::default() };
    let (app, sim, run) = run_under(faults, None, 150).await;
    assert!(sim.injected(FaultKind::ErrorBefore) > 0 && sim.injected(FaultKind::ErrorAfter) > 0);
    assert_exactly_once(&app, run, &sim, &phones(150)).await;
}

#[tokio::test]
async fn connections_dropped_after_committing_are_reconciled() {
    let seed = seed("dropped_connections");
    let faults = Faults { seed, drop_after: 0.15, ..Faults::default() };
    let (app, sim, run) = run_under(faults, None, 150).await;
    assert!(sim.injected(FaultKind::DropAfter) > 0);
    assert_exactly_once(&app, run, &sim, &phones(150)).await;
}

#[tokio::test]
async fn answers_slower_than_the_timeout_are_reconciled() {
    let seed = seed("slow_answers");
    let faults = Faults { seed, slow_after: 0.1, slow_delay: Duration::from_millis(800), ..Faults::default() };
    let (app, sim, run) = run_under(faults, None, 120).await;
    assert!(sim.injected(FaultKind::SlowAfter) > 0);
    assert_exactly_once(&app, run, &sim, &phones(120)).await;
}

#[tokio::test]
async fn throttle_bursts_delay_but_never_fail_or_count_as_attempts() {
    let seed = seed("throttle_bursts");
    let faults = Faults { seed, throttle_burst: 0.02, burst_len: 5, ..Faults::default() };
    let (app, sim, run) = run_under(faults, None, 150).await;
    assert!(sim.throttled() > 0);
    assert_exactly_once(&app, run, &sim, &phones(150)).await;
    for j in app.jobs(run).await {
        assert_eq!(j.attempts, 1, "{j:?}");
    }
}

#[tokio::test]
async fn executions_that_end_at_once_are_still_found_after_an_ambiguous_answer() {
    // A 409 cannot reveal an Execution that has already ended; only the listing
    // since the attempt began can.
    let seed = seed("ended_at_once");
    let faults = Faults { seed, error_after: 0.15, drop_after: 0.1, ..Faults::default() };
    let (app, sim, run) = run_under(faults, Some(Duration::ZERO), 150).await;
    assert!(sim.injected(FaultKind::ErrorAfter) > 0 && sim.injected(FaultKind::DropAfter) > 0);
    assert_exactly_once(&app, run, &sim, &phones(150)).await;
}

#[tokio::test]
async fn every_fault_at_once() {
    let seed = seed("every_fault");
    let faults = Faults {
        seed,
        error_before: 0.05,
        error_after: 0.05,
        drop_after: 0.05,
        slow_after: 0.05,
        slow_delay: Duration::from_millis(600),
        throttle_burst: 0.01,
        burst_len: 3,
    };
    let (app, sim, run) = run_under(faults, Some(Duration::from_millis(100)), 200).await;
    for kind in [
        FaultKind::ErrorBefore,
        FaultKind::ErrorAfter,
        FaultKind::DropAfter,
        FaultKind::SlowAfter,
        FaultKind::ThrottleBurst,
    ] {
        assert!(sim.injected(kind) > 0, "{kind:?} was injected");
    }
    assert_exactly_once(&app, run, &sim, &phones(200)).await;
}

#[tokio::test]
async fn a_streak_of_transient_failures_opens_the_circuit_and_resume_continues() {
    let seed = seed("circuit_breaker");
    let sim = Simulator::start(SimConfig {
        lifetime: None,
        faults: Faults { seed, error_before: 1.0, ..Faults::default() },
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let app = TestApp::new();
    app.write("c.csv", contacts_csv(&phones(30)));
    app.write("c.toml", campaign_toml("c.csv", ""));
    let run = app.start_run("c.toml").await;
    let settings = DispatchSettings { breaker_streak: 5, max_failures: 30, ..fast_settings() };

    let end = app.dispatch_with_settings(run, http_studio(&sim.url()), 2000, settings.clone()).await;

    let RunEnd::Stopped(reason) = end else { panic!("{end:?}") };
    assert!(reason.to_string().contains("5 transient failures in a row"), "{reason}");
    let paused = app.store().await.get_run(run).await.unwrap();
    assert_eq!(paused.state, flowcast::domain::RunState::Paused);
    assert!(paused.state_reason.unwrap().contains("circuit breaker"));

    // Studio recovers; resume finishes the run with nothing lost or doubled.
    sim.set_config(SimConfig { lifetime: None, ..SimConfig::default() });
    flowcast::runs::control(
        &app.store().await,
        run,
        flowcast::domain::RunAction::Resume,
        chrono::Utc::now().timestamp_millis(),
    )
    .await
    .unwrap();
    let end = app.dispatch_with_settings(run, http_studio(&sim.url()), 2000, settings).await;
    assert!(matches!(end, RunEnd::Finished(_)), "{end:?}");
    assert_exactly_once(&app, run, &sim, &phones(30)).await;
}
