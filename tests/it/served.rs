//! A `flowcast serve` child process for tests, and waiting on state that
//! lives in another process.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;

use crate::helpers::*;

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
    #[allow(dead_code)] // the cluster tests' (a binary of their own)
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
