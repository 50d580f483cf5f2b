//! The commands: each wires config, ledger, campaign files, Studio and the
//! dispatcher together, prints for people, and returns the exit code (0 done,
//! 1 input error, 2 Studio or credentials error).
//!
//! - [`validate`](validate::validate): campaign files and their CSVs.
//! - [`run`](run::run) and [`resume`](run::resume): a run in the foreground.
//! - [`serve`](serve::serve): the service.
//! - `status`, `report` and `--dry-run` print from [`output`].
//! - Studio (real or simulated) is chosen in [`studio`]; `flows` in [`flows`];
//!   `executions` and `cancel --end-active` in [`executions`].
//! - [`purge`](purge::purge): retention on demand.

mod collect;
mod executions;
mod flows;
mod output;
mod purge;
mod remote;
mod run;
mod serve;
mod studio;
mod suppress;
mod validate;

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, anyhow};

use crate::campaign::{self, Campaign, Folders};
use crate::cli::{Cli, Command, ReportFormat};
use crate::config::{Config, Overrides};
use crate::domain::RunAction;
use crate::store::{DispatchLock, Store};

/// A command's failure with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn input(error: impl Into<anyhow::Error>) -> Self {
        Failure { code: 1, error: error.into() }
    }
    pub fn studio(error: impl Into<anyhow::Error>) -> Self {
        Failure { code: 2, error: error.into() }
    }
}

pub type CommandResult = Result<u8, Failure>;

/// Runs one command line; returns the process exit code.
pub async fn main(cli: Cli) -> u8 {
    let overrides = Overrides {
        db: cli.db.clone(),
        campaigns: cli.campaigns.clone(),
        flows: cli.flows.clone(),
        config: cli.config.clone(),
        simulate: cli.simulate,
    };
    let default_log = if matches!(cli.command, Command::Serve) { "info" } else { "warn" };
    let result = match Config::load(&overrides) {
        Ok(config) => {
            init_logging(&config, default_log);
            dispatch_command(cli.command, config).await
        }
        Err(e) => Err(Failure::input(e)),
    };
    match result {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("error: {:#}", failure.error);
            failure.code
        }
    }
}

fn init_logging(config: &Config, default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = config.log.clone().unwrap_or_else(|| default.to_string());
    let filter = EnvFilter::try_new(&filter)
        .unwrap_or_else(|_| EnvFilter::new("warn"))
        // The PostgreSQL client logs each statement's parameters (phones,
        // Parameters) at debug: never let those through, whatever the filter.
        .add_directive("tokio_postgres=warn".parse().expect("a valid directive"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = if config.log_json { builder.json().try_init() } else { builder.try_init() };
    // A second init (tests calling main twice) keeps the first subscriber.
    let _ = result;
}

async fn dispatch_command(command: Command, config: Config) -> CommandResult {
    match command {
        Command::Validate { paths } => validate::validate(&config, &paths).await,
        Command::Run { campaign, dry_run } => run::run(&config, &campaign, dry_run).await,
        Command::Resume { run } => run::resume(&config, run).await,
        Command::Status { campaign, json } => output::status(&config, campaign.as_deref(), json).await,
        Command::Report { run, format } => output::report(&config, run, format == ReportFormat::Json).await,
        Command::Collect { run, wait } => collect::collect(&config, run, &wait).await,
        Command::Suppress { command } => suppress::command(&config, command).await,
        Command::Purge { older_than, dry_run } => purge::purge(&config, older_than, dry_run).await,
        Command::Pause { run } => control(&config, run, RunAction::Pause).await,
        Command::Cancel { run, end_active: false } => control(&config, run, RunAction::Cancel).await,
        Command::Cancel { run, end_active: true } => executions::cancel_end_active(&config, run).await,
        Command::Executions { command } => executions::command(&config, command).await,
        Command::Simulator { listen, lifetime, rate_cap, replies } => {
            studio::simulator(&listen, &lifetime, rate_cap, replies.as_deref()).await
        }
        Command::Serve => serve::serve(&config).await,
        Command::Flows { command } => flows::command(&config, command).await,
    }
}

fn folders(config: &Config) -> Folders {
    Folders { campaigns: config.campaigns.clone(), flows: config.flows.clone() }
}

async fn open_store(config: &Config) -> Result<Store, Failure> {
    Store::open(&config.db).await.map_err(Failure::input)
}

/// The phones the suppression list keeps from `campaign`, for dry runs and
/// `validate`: read from the ledger when there is one (checking a campaign
/// never creates a ledger), else none.
async fn suppressed_for(config: &Config, campaign: &Campaign) -> Result<std::collections::HashSet<String>, Failure> {
    if config.db.missing_file().is_some() {
        return Ok(Default::default());
    }
    let store = open_store(config).await?;
    crate::runs::suppressed_phones(&store, campaign).await.map_err(Failure::input)
}

/// One dispatching process per ledger.
async fn lock_ledger(store: &Store, what: &str) -> Result<DispatchLock, Failure> {
    store.lock_for_dispatch(what).await.map_err(Failure::input)
}

/// Finds a campaign by name, or by file path.
fn find_campaign(config: &Config, what: &str) -> Result<Campaign, Failure> {
    let folders = folders(config);
    let as_path = Path::new(what);
    if what.ends_with(".toml") || as_path.is_file() {
        return campaign::load_one(as_path, &folders).map_err(Failure::input);
    }
    let loaded = campaign::load_folder(&folders)
        .with_context(|| format!("campaigns folder {}", config.campaigns.display()))
        .map_err(Failure::input)?;
    if let Some(c) = loaded.find(what) {
        return Ok(c.clone());
    }
    // A refused file of that name: show why, rather than "not found".
    if let Some((_, e)) = loaded.refused.iter().find(|(p, _)| p.file_stem().is_some_and(|s| s == what)) {
        return Err(Failure::input(anyhow!("campaign {what:?} is refused:\n{e}")));
    }
    let known: Vec<&str> = loaded.campaigns.iter().map(|c| c.name.as_str()).collect();
    Err(Failure::input(anyhow!(
        "no campaign {what:?} in {} (campaigns: {})",
        config.campaigns.display(),
        if known.is_empty() { "none".to_string() } else { known.join(", ") }
    )))
}

/// `flowcast pause|cancel RUN`
async fn control(config: &Config, run_id: i64, action: RunAction) -> CommandResult {
    let store = open_store(config).await?;
    let now = chrono::Utc::now().timestamp_millis();
    let t = crate::runs::control(&store, run_id, action, now).await.map_err(Failure::input)?;
    println!("run {run_id}: {} → {}", t.from, t.to);
    Ok(0)
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
}
