//! `flowcast run` and `flowcast resume`: start (or continue) runs and dispatch
//! them to the end in the foreground, with progress, then a summary.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use indicatif::{ProgressBar, ProgressStyle};

use super::studio::{StudioHandle, connect_studio, dispatcher, resolver};
use super::{CommandResult, Failure, find_campaign, lock_ledger, open_store, output, shutdown_signal};
use crate::config::Config;
use crate::dispatch::RunEnd;
use crate::domain::{JobState, RunAction, RunState, Trigger};
use crate::flows::FlowResolver;
use crate::runs::{ImportCounts, ImportError, Imports};
use crate::schedule::{Clock, SystemClock};
use crate::store::{LockError, Store, StoreError};

type ImportTask = tokio::task::JoinHandle<Result<ImportCounts, ImportError>>;

/// `flowcast run CAMPAIGN [--dry-run]`
pub(super) async fn run(config: &Config, what: &str, dry_run: bool) -> CommandResult {
    let campaign = find_campaign(config, what)?;
    crate::runs::set_default_notify(config.notify.clone());
    if dry_run {
        return output::dry_run(config, &campaign).await;
    }
    let store = open_store(config).await?;
    let _lock = match store.lock_for_dispatch("flowcast run").await {
        Ok(lock) => lock,
        Err(StoreError::Locked(LockError::Busy { holder, .. })) if super::remote::serve_url(&holder).is_some() => {
            let base = super::remote::serve_url(&holder).expect("checked");
            return super::remote::run(config, &base, &campaign.name).await;
        }
        Err(e) => return Err(Failure::input(e)),
    };
    let studio = connect_studio(config).await?;
    let flow = resolver(config, &studio)
        .resolve(&campaign)
        .map_err(|e| Failure::input(anyhow!("{}: {e}", campaign.source.display())))?;
    let now = SystemClock.now();
    let key = format!("manual:{}", now.timestamp_micros());
    let ms = now.timestamp_millis();
    let run_id = crate::runs::start(&store, &campaign, &flow, Trigger::Manual, key, ms, ms)
        .await
        .map_err(Failure::input)?
        .ok_or_else(|| Failure::input(anyhow!("a run with this start instant already exists; try again")))?;
    let started = Instant::now();
    // The import streams into the ledger while the dispatcher already sends.
    let import = Imports::default().spawn(&store, &campaign, run_id, Arc::new(SystemClock));
    let end = dispatch_with_progress(config, &store, &studio, run_id).await;
    let counts = finish_import(import).await?;
    let end = end?;
    if let Some(counts) = counts {
        eprintln!(
            "run {run_id} ({}): {} rows: {} contacts, {} rejected, {} duplicates",
            campaign.name, counts.rows, counts.imported, counts.rejected, counts.duplicates
        );
    }
    output::print_refused_rows(&store, run_id, 20).await;
    collect_simulated(config, &store, &studio, run_id).await?;
    finish(&store, run_id, end, started).await
}

/// With `--simulate` the simulator lives in this process and ends with it, so
/// the outcomes of its Executions (which end as soon as their flow does) are
/// read back before the command ends.
async fn collect_simulated(config: &Config, store: &Store, studio: &StudioHandle, run_id: i64) -> Result<(), Failure> {
    if !config.simulate {
        return Ok(());
    }
    let collector = Arc::new(crate::collect::Collector::new(
        store.clone(),
        Arc::new(studio.client.clone()),
        Arc::new(SystemClock),
        super::collect::settings(config),
    ));
    let open = collector.until_settled(Some(run_id), Duration::from_secs(30)).await.map_err(Failure::input)?;
    if open > 0 {
        eprintln!("run {run_id}: {open} outcome(s) still open (their simulated Executions are still running)");
    }
    Ok(())
}

/// Waits for an import; a failed one (which cancelled its run) is an input error.
async fn finish_import(handle: Option<ImportTask>) -> Result<Option<ImportCounts>, Failure> {
    let Some(handle) = handle else { return Ok(None) };
    let counts = handle.await.map_err(|e| Failure::input(anyhow!("the import stopped: {e}")))?;
    counts.map(Some).map_err(Failure::input)
}

fn progress_bar(len: Option<u64>, what: &'static str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    };
    let template = if len.is_some() {
        "{msg} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})"
    } else {
        "{msg} {spinner} {pos} rows"
    };
    bar.set_style(
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()).progress_chars("=> "),
    );
    bar.set_message(what);
    bar
}

async fn dispatch_with_progress(
    config: &Config,
    store: &Store,
    studio: &StudioHandle,
    run_id: i64,
) -> Result<RunEnd, Failure> {
    let counts = store.run_counts(run_id).await.map_err(Failure::input)?;
    // The total grows while the run's CSV is still being imported.
    let bar = progress_bar(Some(counts.total() as u64), "dispatching");
    let ticker = {
        let store = store.clone();
        let bar = bar.clone();
        // On a terminal, a progress bar; elsewhere (logs, CI), a plain line every
        // few seconds.
        let plain = !std::io::stderr().is_terminal();
        tokio::spawn(async move {
            let mut last_line = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let Ok(c) = store.run_counts(run_id).await else { continue };
                bar.set_length(c.total() as u64);
                bar.set_position((c.total() - c.open()) as u64);
                if plain && last_line.elapsed() >= Duration::from_secs(5) {
                    eprintln!(
                        "run {run_id}: {}/{} settled (sent {}, skipped {}, failed {}, expired {})",
                        c.total() - c.open(),
                        c.total(),
                        c.get(JobState::Sent),
                        c.get(JobState::Skipped),
                        c.get(JobState::Failed),
                        c.get(JobState::Expired)
                    );
                    last_line = Instant::now();
                }
            }
        })
    };
    let dispatcher = dispatcher(config, store, studio);
    let interrupt = {
        let token = dispatcher.shutdown_token();
        tokio::spawn(async move {
            shutdown_signal().await;
            eprintln!("stopping: no new sends; waiting for requests in flight");
            token.cancel();
        })
    };
    let end = dispatcher.run_to_end(run_id).await;
    interrupt.abort();
    ticker.abort();
    bar.finish_and_clear();
    end.map_err(Failure::input)
}

async fn finish(store: &Store, run_id: i64, end: RunEnd, started: Instant) -> CommandResult {
    let run = store.get_run(run_id).await.map_err(Failure::input)?;
    let counts = store.run_counts(run_id).await.map_err(Failure::input)?;
    let elapsed = started.elapsed().as_secs_f64();
    let sent = counts.get(JobState::Sent);
    println!(
        "run {run_id} ({}): {} sent, {} skipped, {} failed, {} expired, {} cancelled, {} pending; {} rejected, {} duplicates; {:.1}s, {:.1}/s",
        run.campaign,
        sent,
        counts.get(JobState::Skipped),
        counts.get(JobState::Failed),
        counts.get(JobState::Expired),
        counts.get(JobState::Cancelled),
        counts.open(),
        run.rejected,
        run.duplicates,
        elapsed,
        if elapsed > 0.0 { sent as f64 / elapsed } else { 0.0 }
    );
    match end {
        RunEnd::Finished(_) => Ok(0),
        RunEnd::Paused(reason) => {
            println!(
                "run {run_id} is paused{}; `flowcast resume {run_id}` continues it",
                reason.map(|r| format!(": {r}")).unwrap_or_default()
            );
            Ok(0)
        }
        RunEnd::Cancelled => {
            println!("run {run_id} was cancelled");
            Ok(0)
        }
        RunEnd::Stopped(reason) => Err(Failure::studio(anyhow!("run {run_id} stopped and is paused: {reason}"))),
        // `run` and `resume` dispatch to the end; they never stop when idle.
        RunEnd::Idle { .. } => Ok(0),
        RunEnd::Interrupted => {
            println!("run {run_id} was interrupted; `flowcast resume {run_id}` continues it");
            Ok(0)
        }
    }
}

/// `flowcast resume [RUN]`
pub(super) async fn resume(config: &Config, run: Option<i64>) -> CommandResult {
    let store = open_store(config).await?;
    let _lock = lock_ledger(&store, "flowcast resume").await?;
    let runs = match run {
        Some(id) => vec![store.get_run(id).await.map_err(Failure::input)?],
        None => store.unfinished_runs().await.map_err(Failure::input)?,
    };
    if runs.is_empty() {
        println!("no unfinished runs");
        return Ok(0);
    }
    let studio = connect_studio(config).await?;
    let imports = Imports::default();
    let mut code = 0;
    for run in runs {
        if run.state.is_over() {
            println!("run {} is {}; nothing to resume", run.id, run.state);
            continue;
        }
        if run.state == RunState::Paused {
            let now = SystemClock.now().timestamp_millis();
            crate::runs::control(&store, run.id, RunAction::Resume, now).await.map_err(Failure::input)?;
        }
        let started = Instant::now();
        // A run whose import was cut short (the process died) resumes importing
        // after the last line the ledger has, while it dispatches.
        let import = if run.expanded_at.is_none() {
            let campaign = find_campaign(config, &run.campaign).map_err(|f| Failure {
                code: f.code,
                error: f.error.context(format!("run {} was interrupted while importing", run.id)),
            })?;
            eprintln!("run {}: its import was interrupted; resuming it", run.id);
            imports.spawn(&store, &campaign, run.id, Arc::new(SystemClock))
        } else {
            None
        };
        let end = dispatch_with_progress(config, &store, &studio, run.id).await;
        finish_import(import).await?;
        let end = end?;
        collect_simulated(config, &store, &studio, run.id).await?;
        code = code.max(finish(&store, run.id, end, started).await?);
    }
    Ok(code)
}
