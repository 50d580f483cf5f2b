//! The commands: each wires config, ledger, campaign files, Studio and the
//! dispatcher together, prints for people, and returns the exit code SPEC.md
//! fixes (0 done, 1 input error, 2 Studio or credentials error).

mod flows;
mod output;

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use indicatif::{ProgressBar, ProgressStyle};

use crate::campaign::{self, Campaign, Folders};
use crate::cli::{Cli, Command, ReportFormat};
use crate::config::{Config, Overrides};
use crate::dispatch::{DispatchSettings, Dispatcher, RateLimits, RunEnd};
use crate::domain::{FlowSid, JobState, RunState, parse_duration};
use crate::import::{self, ImportCounts};
use crate::schedule::{Clock, SystemClock};
use crate::service::{FlowResolver, LockFileResolver, Service, ServiceSettings};
use crate::store::{LedgerLock, Store};
use crate::studio::simulator::{SimConfig, Simulator};
use crate::studio::{Credentials, HttpStudio, StudioConfig, base_url_from_env};

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
    let filter = config.log.clone().or_else(|| std::env::var("RUST_LOG").ok()).unwrap_or_else(|| default.to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = if std::env::var("FLOWCAST_LOG_FORMAT").is_ok_and(|f| f == "json") {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    // A second init (tests calling main twice) keeps the first subscriber.
    let _ = result;
}

async fn dispatch_command(command: Command, config: Config) -> CommandResult {
    match command {
        Command::Validate { paths } => validate(&config, &paths),
        Command::Run { campaign, dry_run } => run(&config, &campaign, dry_run).await,
        Command::Resume { run } => resume(&config, run).await,
        Command::Status { campaign, json } => output::status(&config, campaign.as_deref(), json),
        Command::Report { run, format } => output::report(&config, run, format == ReportFormat::Json),
        Command::Pause { run } => control(&config, run, RunState::Paused),
        Command::Cancel { run } => control(&config, run, RunState::Cancelled),
        Command::Simulator { listen, lifetime, rate_cap } => simulator(&listen, &lifetime, rate_cap).await,
        Command::Serve => serve(&config).await,
        Command::Flows { command } => flows::command(&config, command).await,
    }
}

fn folders(config: &Config) -> Folders {
    Folders { campaigns: config.campaigns.clone(), flows: config.flows.clone() }
}

/// One dispatching process per ledger.
fn lock_ledger(config: &Config, what: &str) -> Result<LedgerLock, Failure> {
    LedgerLock::acquire(&config.db, what).map_err(Failure::input)
}

fn open_store(config: &Config) -> Result<Store, Failure> {
    Store::open(&config.db).map_err(Failure::input)
}

/// `flowcast validate [PATH…]`
fn validate(config: &Config, paths: &[PathBuf]) -> CommandResult {
    let folders = folders(config);
    let files: Vec<PathBuf> = if paths.is_empty() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&config.campaigns)
            .with_context(|| format!("campaigns folder {}", config.campaigns.display()))
            .map_err(Failure::input)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        files
    } else {
        paths.to_vec()
    };
    let mut problems = 0usize;
    let mut warnings = 0usize;
    let mut valid = 0usize;
    let mut names: std::collections::HashMap<String, PathBuf> = std::collections::HashMap::new();
    let mut out = std::io::stdout().lock();
    for file in &files {
        match campaign::load_one(file, &folders) {
            Err(e) => {
                for d in &e.diagnostics {
                    let _ = writeln!(out, "{d}");
                }
                problems += e.diagnostics.len();
            }
            Ok(c) => {
                if let Some(first) = names.get(&c.name) {
                    let _ = writeln!(
                        out,
                        "{}:1: campaign name {:?} is already used by {}",
                        file.display(),
                        c.name,
                        first.display()
                    );
                    problems += 1;
                    continue;
                }
                names.insert(c.name.clone(), file.clone());
                match import::dry_run(&c, 0, SystemClock.now()) {
                    Err(e) => {
                        let _ = writeln!(out, "{e}");
                        problems += 1;
                    }
                    Ok(dry) => {
                        let csv = c.contacts.display();
                        for (r, kind) in &dry.refused {
                            if *kind == "duplicate" {
                                let _ = writeln!(out, "{csv}:{}: warning: {}", r.line, r.reason);
                                warnings += 1;
                            } else {
                                let _ = writeln!(out, "{csv}:{}: {}", r.line, r.reason);
                                problems += 1;
                            }
                        }
                        if dry.counts.rejected == 0 {
                            valid += 1;
                        }
                        let _ = writeln!(
                            out,
                            "{}: {} ({}): {} rows, {} contacts, {} rejected, {} duplicates",
                            file.display(),
                            c.name,
                            c.kind.as_str(),
                            dry.counts.rows,
                            dry.counts.imported,
                            dry.counts.rejected,
                            dry.counts.duplicates
                        );
                    }
                }
            }
        }
    }
    let _ =
        writeln!(out, "{} file(s) checked: {valid} valid, {problems} problem(s), {warnings} warning(s)", files.len());
    Ok(if problems == 0 && !files.is_empty() { 0 } else { 1 })
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

/// Studio as configured: the in-process simulator, or Twilio (or
/// `FLOWCAST_STUDIO_URL`) with credentials from the environment.
struct StudioHandle {
    client: HttpStudio,
    account_sid: String,
    _simulator: Option<Simulator>,
}

const SIMULATOR_ACCOUNT: &str = "AC00000000000000000000000000000000";

async fn connect_studio(config: &Config) -> Result<StudioHandle, Failure> {
    let (base_url, credentials, simulator) = if config.simulate {
        let sim = Simulator::start(SimConfig::default())
            .await
            .context("starting the Studio simulator")
            .map_err(Failure::studio)?;
        tracing::info!(url = %sim.url(), "using the built-in Studio simulator");
        (sim.url(), Credentials::new(SIMULATOR_ACCOUNT, "simulator"), Some(sim))
    } else {
        let credentials = Credentials::from_env().ok_or_else(|| {
            Failure::studio(anyhow!(
                "no Twilio credentials: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN (or TWILIO_API_KEY and TWILIO_API_SECRET), or use --simulate"
            ))
        })?;
        (base_url_from_env(config.studio_url.as_deref()), credentials, None)
    };
    let account_sid = if simulator.is_some() {
        SIMULATOR_ACCOUNT.to_string()
    } else {
        std::env::var("TWILIO_ACCOUNT_SID").unwrap_or_else(|_| credentials.username.clone())
    };
    let client = HttpStudio::new(StudioConfig {
        base_url,
        credentials,
        timeout: config.request_timeout,
        connect_timeout: Duration::from_secs(5),
    })
    .context("building the HTTP client")
    .map_err(Failure::studio)?;
    Ok(StudioHandle { client, account_sid, _simulator: simulator })
}

/// A campaign's Flow SID: given directly, or by name through `flows/flows.lock.toml`.
fn resolve_flow(config: &Config, campaign: &Campaign, account_sid: &str) -> Result<FlowSid, Failure> {
    let resolver = LockFileResolver { flows: config.flows.clone(), account_sid: account_sid.to_string() };
    resolver.resolve(campaign).map_err(|e| Failure::input(anyhow!("{}: {e}", campaign.source.display())))
}

fn dispatcher(config: &Config, store: &Store, studio: &StudioHandle) -> Dispatcher<HttpStudio> {
    let settings = DispatchSettings {
        concurrency: config.concurrency,
        max_failures: config.max_failures,
        breaker_streak: config.circuit_breaker,
        ambiguous_settle: config.request_timeout,
        ..DispatchSettings::default()
    };
    Dispatcher::new(
        store.clone(),
        Arc::new(studio.client.clone()),
        Arc::new(SystemClock),
        settings,
        Arc::new(RateLimits::new(config.rate)),
    )
}

/// `flowcast run CAMPAIGN [--dry-run]`
async fn run(config: &Config, what: &str, dry_run: bool) -> CommandResult {
    let campaign = find_campaign(config, what)?;
    if dry_run {
        return output::dry_run(&campaign);
    }
    let _lock = lock_ledger(config, "flowcast run")?;
    let store = open_store(config)?;
    let studio = connect_studio(config).await?;
    let flow = resolve_flow(config, &campaign, &studio.account_sid)?;
    let now = SystemClock.now();
    let run = import::new_run(
        &campaign,
        &flow,
        "manual",
        format!("manual:{}", now.timestamp_micros()),
        now.timestamp_millis(),
    );
    let run_id = store
        .create_run(&run, now.timestamp_millis())
        .map_err(Failure::input)?
        .ok_or_else(|| Failure::input(anyhow!("a run with this start instant already exists; try again")))?;
    let started = Instant::now();
    // The import streams into the ledger while the dispatcher already sends.
    let import = spawn_import(&store, &campaign, run_id);
    let end = dispatch_with_progress(config, &store, &studio, run_id).await;
    let counts = finish_import(import).await?;
    let end = end?;
    eprintln!(
        "run {run_id} ({}): {} rows: {} contacts, {} rejected, {} duplicates",
        campaign.name, counts.rows, counts.imported, counts.rejected, counts.duplicates
    );
    output::print_import_rows(&store, run_id, 20);
    finish(&store, run_id, end, started)
}

/// Imports run `run_id` on a blocking thread; a failed import cancels the run
/// (its jobs not yet sent are never sent) and names the file and line.
fn spawn_import(
    store: &Store,
    campaign: &Campaign,
    run_id: i64,
) -> tokio::task::JoinHandle<Result<ImportCounts, Failure>> {
    let store = store.clone();
    let campaign = campaign.clone();
    tokio::task::spawn_blocking(move || {
        match import::import_run(&store, &campaign, run_id, SystemClock.now().timestamp_millis(), |_| {}) {
            Ok(counts) => Ok(counts),
            Err(e) => {
                let reason = format!("import failed: {e}");
                let _ = store.set_run_state(
                    run_id,
                    RunState::Cancelled,
                    Some(&reason),
                    SystemClock.now().timestamp_millis(),
                );
                Err(Failure::input(e))
            }
        }
    })
}

async fn finish_import(
    handle: tokio::task::JoinHandle<Result<ImportCounts, Failure>>,
) -> Result<ImportCounts, Failure> {
    handle.await.map_err(|e| Failure::input(anyhow!("the import stopped: {e}")))?
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
    let counts = store.run_counts(run_id).map_err(Failure::input)?;
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
            loop {
                if let Ok(c) = store.run_counts(run_id) {
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
                tokio::time::sleep(Duration::from_millis(200)).await;
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

fn finish(store: &Store, run_id: i64, end: RunEnd, started: Instant) -> CommandResult {
    let run = store.get_run(run_id).map_err(Failure::input)?;
    let counts = store.run_counts(run_id).map_err(Failure::input)?;
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
async fn resume(config: &Config, run: Option<i64>) -> CommandResult {
    let _lock = lock_ledger(config, "flowcast resume")?;
    let store = open_store(config)?;
    let runs = match run {
        Some(id) => vec![store.get_run(id).map_err(Failure::input)?],
        None => store.unfinished_runs().map_err(Failure::input)?,
    };
    if runs.is_empty() {
        println!("no unfinished runs");
        return Ok(0);
    }
    let studio = connect_studio(config).await?;
    let mut code = 0;
    for run in runs {
        let now = SystemClock.now().timestamp_millis();
        match run.state.parse::<RunState>() {
            Ok(RunState::Finished) | Ok(RunState::Cancelled) => {
                println!("run {} is {}; nothing to resume", run.id, run.state);
                continue;
            }
            Ok(RunState::Expanding) => {}
            Ok(RunState::Paused) => {
                // A run paused mid-import goes back to importing, not to active:
                // only the import's end makes it active (and finishable).
                let to = if run.expanded_at.is_none() { RunState::Expanding } else { RunState::Active };
                store.set_run_state(run.id, to, None, now).map_err(Failure::input)?;
            }
            _ => {}
        }
        let started = Instant::now();
        // A run whose import was cut short (the process died) resumes importing
        // after the last line the ledger has, while it dispatches.
        let import = if run.expanded_at.is_none() && run.state != RunState::Cancelled.as_str() {
            let campaign = find_campaign(config, &run.campaign).map_err(|f| Failure {
                code: f.code,
                error: f.error.context(format!("run {} was interrupted while importing", run.id)),
            })?;
            eprintln!("run {}: its import was interrupted; resuming it", run.id);
            Some(spawn_import(&store, &campaign, run.id))
        } else {
            None
        };
        let end = dispatch_with_progress(config, &store, &studio, run.id).await;
        if let Some(import) = import {
            finish_import(import).await?;
        }
        let end = end?;
        match finish(&store, run.id, end, started) {
            Ok(c) => code = code.max(c),
            Err(f) => return Err(f),
        }
    }
    Ok(code)
}

/// `flowcast pause|cancel RUN`
fn control(config: &Config, run_id: i64, to: RunState) -> CommandResult {
    let store = open_store(config)?;
    let run = store.get_run(run_id).map_err(Failure::input)?;
    let from = run.state.parse::<RunState>().map_err(|e| Failure::input(anyhow!(e)))?;
    let allowed = match to {
        RunState::Paused => matches!(from, RunState::Active | RunState::Expanding | RunState::Paused),
        RunState::Cancelled => !matches!(from, RunState::Finished),
        _ => false,
    };
    if !allowed {
        return Err(Failure::input(anyhow!("run {run_id} is {from}; it cannot be {}", to.as_str())));
    }
    let reason = match to {
        RunState::Paused => "paused by user",
        _ => "cancelled by user",
    };
    store.set_run_state(run_id, to, Some(reason), SystemClock.now().timestamp_millis()).map_err(Failure::input)?;
    println!("run {run_id}: {from} → {to}");
    Ok(0)
}

/// `flowcast simulator`
async fn simulator(listen: &str, lifetime: &str, rate_cap: Option<u32>) -> CommandResult {
    let addr = listen.parse().with_context(|| format!("--listen {listen:?}")).map_err(Failure::input)?;
    let lifetime = parse_duration(lifetime).map_err(|e| Failure::input(anyhow!("--lifetime: {e}")))?;
    let config = SimConfig { lifetime: (!lifetime.is_zero()).then_some(lifetime), rate_cap, ..SimConfig::default() };
    let sim = Simulator::start_on(addr, config)
        .await
        .with_context(|| format!("listening on {listen}"))
        .map_err(Failure::input)?;
    println!("Studio simulator listening on {}", sim.url());
    println!(
        "point flowcast at it with FLOWCAST_STUDIO_URL={} and any TWILIO_ACCOUNT_SID/TWILIO_AUTH_TOKEN",
        sim.url()
    );
    let _ = std::io::stdout().flush();
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C").map_err(Failure::input)?;
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

/// `flowcast serve`
async fn serve(config: &Config) -> CommandResult {
    let listen: std::net::SocketAddr =
        config.listen.parse().with_context(|| format!("listen address {:?}", config.listen)).map_err(Failure::input)?;
    let admin_token = std::env::var("FLOWCAST_ADMIN_TOKEN").ok().filter(|t| !t.trim().is_empty());
    if !listen.ip().is_loopback() && admin_token.is_none() {
        return Err(Failure::input(anyhow!(
            "refusing to listen on {listen} without FLOWCAST_ADMIN_TOKEN: the API would be open to the network"
        )));
    }
    let _lock = lock_ledger(config, "flowcast serve")?;
    crate::telemetry::install();
    let store = open_store(config)?;
    let studio = connect_studio(config).await?;
    let dispatcher = dispatcher(config, &store, &studio);
    let resolver = LockFileResolver { flows: config.flows.clone(), account_sid: studio.account_sid.clone() };
    let settings = ServiceSettings { catch_up: config.catch_up, ..ServiceSettings::default() };
    let service = Arc::new(Service::new(
        store,
        dispatcher,
        Arc::new(SystemClock),
        folders(config),
        settings,
        Box::new(resolver) as Box<dyn FlowResolver>,
    ));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))
        .map_err(Failure::input)?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let http = {
        let http_config = crate::service::HttpConfig {
            admin_token,
            webhook_token: std::env::var("TWILIO_AUTH_TOKEN").ok().filter(|t| !t.is_empty()),
            public_url: std::env::var("FLOWCAST_PUBLIC_URL").ok().filter(|u| !u.is_empty()),
        };
        let app = crate::service::router(Arc::clone(&service), http_config);
        let token = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).with_graceful_shutdown(async move { token.cancelled().await }).await;
        })
    };
    tracing::info!(listen = %listen, campaigns = %config.campaigns.display(), ledger = %config.db.display(), "flowcast serve started");
    let signal = {
        let token = shutdown.clone();
        tokio::spawn(async move {
            shutdown_signal().await;
            tracing::info!("shutting down: no new sends; waiting for requests in flight");
            token.cancel();
        })
    };
    Arc::clone(&service).run_loops(shutdown.clone()).await;
    shutdown.cancel();
    signal.abort();
    let _ = http.await;
    tracing::info!("flowcast serve stopped");
    Ok(0)
}
