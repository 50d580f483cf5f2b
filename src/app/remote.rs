//! `flowcast run` while `flowcast serve` holds the ledger: instead of being
//! refused, the command asks the service to start the run
//! (`POST /api/campaigns/{name}/runs`) and follows it over the API until it
//! ends, printing the same summary and exiting with the same codes as a run
//! in the foreground.
//!
//! The service's address comes from the ledger's lock file, where `serve`
//! writes it, so the command reaches the process that actually holds this
//! ledger whatever `FLOWCAST_LISTEN` says in this shell.

use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use serde_json::Value;

use super::{CommandResult, Failure, shutdown_signal};
use crate::config::Config;

/// How `serve` names itself in the lock file, before its base URL.
pub(super) const SERVE_HOLDER: &str = "flowcast serve at ";

/// The service's base URL from the lock file's holder text, when the holder
/// is a `serve` that wrote one.
pub(super) fn serve_url(holder: &str) -> Option<String> {
    let rest = holder.strip_prefix(SERVE_HOLDER)?;
    let url = rest.split(',').next()?.trim();
    url.starts_with("http://").then(|| url.to_string())
}

/// Starts a run of `campaign` through the service at `base` and follows it.
pub(super) async fn run(config: &Config, base: &str, campaign: &str) -> CommandResult {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| Failure::input(anyhow!("HTTP client: {e}")))?;
    let with_token = |request: reqwest::RequestBuilder| match &config.admin_token {
        Some(token) => request.bearer_auth(token.expose()),
        None => request,
    };
    eprintln!("the ledger is held by flowcast serve at {base}; starting the run there");
    let answer = with_token(client.post(format!("{base}/api/campaigns/{campaign}/runs")))
        .send()
        .await
        .with_context(|| format!("asking flowcast serve at {base} to start {campaign:?}"))
        .map_err(Failure::input)?;
    let status = answer.status();
    let body: Value = answer.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let message = body["error"]["message"].as_str().unwrap_or("no message").to_string();
        return Err(Failure::input(anyhow!("flowcast serve refused the run ({status}): {message}")));
    }
    let id = body["id"].as_i64().ok_or_else(|| Failure::input(anyhow!("flowcast serve answered without a run id")))?;
    eprintln!("run {id} ({campaign}) started by flowcast serve");
    let started = Instant::now();
    let mut last_line = Instant::now();
    let interrupted = shutdown_signal();
    tokio::pin!(interrupted);
    let run = loop {
        let run: Value = with_token(client.get(format!("{base}/api/runs/{id}")))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .with_context(|| format!("following run {id} at {base}"))
            .map_err(Failure::input)?
            .json()
            .await
            .map_err(|e| Failure::input(anyhow!("run {id}: {e}")))?;
        let state = run["state"].as_str().unwrap_or_default().to_string();
        if matches!(state.as_str(), "finished" | "cancelled" | "paused") {
            break run;
        }
        if last_line.elapsed() >= Duration::from_secs(5) {
            eprintln!("run {id}: {} (sent {})", state, count(&run, "sent"));
            last_line = Instant::now();
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = &mut interrupted => {
                // The run is the service's now: stopping this command does not stop it.
                println!("run {id} continues in flowcast serve; `flowcast status` follows it");
                return Ok(0);
            }
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    let sent = count(&run, "sent");
    println!(
        "run {id} ({campaign}): {sent} sent, {} skipped, {} failed, {} expired, {} cancelled, {} pending; {} rejected, {} duplicates; {elapsed:.1}s, {:.1}/s",
        count(&run, "skipped"),
        count(&run, "failed"),
        count(&run, "expired"),
        count(&run, "cancelled"),
        count(&run, "pending") + count(&run, "dispatching"),
        run["rejected"].as_i64().unwrap_or(0),
        run["duplicates"].as_i64().unwrap_or(0),
        if elapsed > 0.0 { sent as f64 / elapsed } else { 0.0 }
    );
    match run["state"].as_str() {
        Some("paused") => {
            let reason = run["state_reason"].as_str().map(|r| format!(": {r}")).unwrap_or_default();
            println!("run {id} is paused{reason}; `flowcast resume {id}` continues it");
        }
        Some("cancelled") => println!("run {id} was cancelled"),
        _ => {}
    }
    Ok(0)
}

fn count(run: &Value, state: &str) -> i64 {
    run["jobs"][state].as_i64().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_services_address_is_read_from_the_lock_holder() {
        assert_eq!(
            serve_url("flowcast serve at http://127.0.0.1:8080, pid 42").as_deref(),
            Some("http://127.0.0.1:8080")
        );
        assert_eq!(serve_url("flowcast run, pid 42"), None);
        assert_eq!(serve_url("flowcast serve, pid 42"), None, "an older serve wrote no address");
    }
}
