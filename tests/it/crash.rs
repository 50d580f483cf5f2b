//! The crash test: a 2,000-contact campaign dispatched by `flowcast` child
//! processes that are killed with SIGKILL at random moments, each time resumed,
//! against a simulator that also injects faults. At the end the simulator's own
//! record must show exactly one Execution per valid contact, none for rejected
//! rows, and the ledger must hold each Execution's SID and pass integrity_check.

use std::time::Duration;

use flowcast::studio::simulator::{Faults, SimConfig, Simulator};
use rand::{RngExt, SeedableRng};

use crate::helpers::*;

#[tokio::test]
async fn killing_the_dispatcher_at_random_moments_never_loses_or_doubles_a_contact() {
    let seed = seed("crash");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let sim = Simulator::start(SimConfig {
        // Some Executions end before they could be found by a 409.
        lifetime: Some(Duration::from_millis(300)),
        faults: Faults {
            seed,
            error_after: 0.01,
            drop_after: 0.01,
            slow_after: 0.01,
            slow_delay: Duration::from_millis(1500),
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let app = TestApp::new();
    let valid = phones(2000);
    let mut csv = contacts_csv(&valid);
    for i in 0..25 {
        csv.push_str(&format!("not-a-phone-{i},Nobody\n"));
    }
    app.write("c.csv", csv);
    app.write("c.toml", campaign_toml("c.csv", ""));
    let url = sim.url();
    let env = [
        ("FLOWCAST_STUDIO_URL", url.as_str()),
        ("TWILIO_ACCOUNT_SID", ACCOUNT),
        ("TWILIO_AUTH_TOKEN", TOKEN),
        ("FLOWCAST_RATE", "500"),
        ("FLOWCAST_REQUEST_TIMEOUT", "1s"),
        ("FLOWCAST_MAX_FAILURES", "50"),
        ("FLOWCAST_CIRCUIT_BREAKER", "0"),
    ];

    let mut kills = 0;
    for round in 0..6 {
        let started = !app.store().await.list_runs(None, 1).await.unwrap().is_empty();
        let args: &[&str] = if started { &["resume"] } else { &["run", "c"] };
        let mut child = app.spawn_flowcast(args, &env);
        let after = Duration::from_millis(rng.random_range(50..1200));
        match tokio::time::timeout(after, child.wait()).await {
            Ok(status) => {
                eprintln!("round {round}: {args:?} finished before its kill: {status:?}");
                break;
            }
            Err(_) => {
                child.start_kill().unwrap();
                let _ = child.wait().await;
                kills += 1;
                eprintln!("round {round}: killed {args:?} after {after:?}");
            }
        }
    }
    // Finish whatever is left.
    let out = app.flowcast(&["resume"], &env).await;
    assert_eq!(out.status.code(), Some(0), "{}{}", stdout(&out), stderr(&out));
    eprintln!("killed {kills} times; {} faults injected", sim.faults_injected());
    // At 500/s, 2,000 contacts take four seconds; the first kill comes within
    // 1.2 s, so every seed kills at least once.
    assert!(kills >= 1, "the test killed the dispatcher at least once");

    let runs = app.store().await.list_runs(None, 10).await.unwrap();
    assert_eq!(runs.len(), 1, "one run, resumed");
    let run = &runs[0];
    assert_eq!(run.state, flowcast::domain::RunState::Finished);
    assert_eq!((run.rows_total, run.imported, run.rejected), (2025, 2000, 25));
    assert_exactly_once(&app, run.id, &sim, &valid).await;
    assert_eq!(app.store().await.integrity_check().await.unwrap(), "ok");
}
