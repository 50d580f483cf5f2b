//! `flowcast serve` as a user runs it, and run control: pause, resume, cancel
//! (also while a run is still importing), shutdown, and the ledger lock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowcast::dispatch::RunEnd;
use flowcast::domain::RunAction as Action;
use flowcast::domain::Trigger;
use flowcast::runs::control as control_run;
use flowcast::runs::{import_run, new_run};
use flowcast::schedule::SystemClock;
use flowcast::studio::simulator::{SimConfig, Simulator};
use tokio::io::AsyncBufReadExt;

use crate::helpers::*;

/// Polls `check` every 50 ms until it holds or `within` passes. Used where
/// the state lives in another process (a `serve` child, read over its API)
/// that has no change feed to wait on.
/// Serve answers before its first scan of the folder: waits until it has a
/// campaign in force.
pub async fn campaigns_in_force(served: &Served) {
    let client = reqwest::Client::new();
    let listed = eventually(Duration::from_secs(10), async || {
        let campaigns: serde_json::Value =
            client.get(format!("{}/api/campaigns", served.url)).send().await.unwrap().json().await.unwrap();
        campaigns["campaigns"].as_array().is_some_and(|c| !c.is_empty())
    })
    .await;
    assert!(listed, "{}", served.log());
}

pub async fn eventually(within: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    check().await
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `flowcast serve` child whose log lines are collected as they come.
pub struct Served {
    child: tokio::process::Child,
    log: Arc<Mutex<String>>,
    /// Ends when the child's stderr closes: every line is then in `log`.
    reader: tokio::task::JoinHandle<()>,
    pub url: String,
}

impl Served {
    pub async fn start(app: &TestApp, studio_url: &str) -> Served {
        Self::start_with(app, studio_url, &[]).await
    }

    /// Starts serve with extra environment variables.
    pub async fn start_with(app: &TestApp, studio_url: &str, env: &[(&str, &str)]) -> Served {
        Self::start_in(app, &app.campaigns, studio_url, env).await
    }

    /// Starts serve on `app`'s ledger with its own campaigns folder (one
    /// instance among several sharing a PostgreSQL ledger).
    pub async fn start_in(
        app: &TestApp,
        campaigns: &std::path::Path,
        studio_url: &str,
        env: &[(&str, &str)],
    ) -> Served {
        let port = free_port();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_flowcast"));
        for (k, _) in std::env::vars() {
            if k.starts_with("FLOWCAST_") || k.starts_with("TWILIO_") {
                cmd.env_remove(k);
            }
        }
        cmd.current_dir(app.dir.path())
            .args(["--db", &app.ledger, "--campaigns", campaigns.to_str().unwrap()])
            .args(["--flows", app.flows.to_str().unwrap(), "serve"])
            .env("FLOWCAST_STUDIO_URL", studio_url)
            .env("FLOWCAST_LISTEN", format!("127.0.0.1:{port}"))
            .env("FLOWCAST_RATE", "200")
            .env("TWILIO_ACCOUNT_SID", ACCOUNT)
            .env("TWILIO_AUTH_TOKEN", TOKEN)
            .env_remove("FLOWCAST_LOG")
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("serve starts");
        let log = Arc::new(Mutex::new(String::new()));
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = Arc::clone(&log);
        let reader = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut log = sink.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let served = Served { child, log, reader, url: format!("http://127.0.0.1:{port}") };
        let client = reqwest::Client::new();
        let health = format!("{}/healthz", served.url);
        // /healthz needs no token, so this works whatever the admin token.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = client.get(&health).send().await
                && r.status().is_success()
            {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "serve never became healthy:\n{}", served.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        served
    }

    /// SIGKILL: gone at once, with whatever it had in flight.
    pub async fn kill(mut self) -> String {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.reader).await;
        self.log()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub async fn terminate(mut self) -> (Option<i32>, String) {
        let pid = self.child.id().expect("still running") as i32;
        // SIGTERM, as a service manager would send.
        let _ = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status();
        let status =
            tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await.expect("serve exits").unwrap();
        // The last lines are read once stderr closes, not after a guess.
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.reader).await;
        (status.code(), self.log())
    }
}

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
    app.write("c.csv", contacts_csv(&phones(9000)));
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
    let mut cancelled = false;
    let counts = import_run(&store, &campaign, run, now.timestamp_millis(), async |_| {
        if !cancelled {
            control_run(&store, run, Action::Cancel, now.timestamp_millis()).await.unwrap();
            cancelled = true;
        }
    })
    .await
    .unwrap();
    assert!(counts.imported < 9000, "the import stopped early: {counts:?}");

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
