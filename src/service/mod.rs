//! `flowcast serve`: one process that keeps the campaigns folder, the schedules,
//! the dispatcher and the HTTP API together.
//!
//! - The folder is rescanned when a file event arrives (debounced) and every few
//!   seconds as a safety net. A changed file that fails validation is refused and
//!   the previous valid version stays in force; a removed campaign fires no new
//!   runs, and its runs already started finish.
//! - Schedules fire from the ledger's record of the last tick handled, so a
//!   restart neither loses nor repeats a tick; one run per (campaign, tick) is
//!   enforced by the ledger's unique key.
//! - Every active run is dispatched by its own task; all share the account rate
//!   and the in-flight bound.

pub mod control;
mod http;
mod registry;
pub mod webhook;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use crate::campaign::{Campaign, FlowRef, Folders};
use crate::dispatch::{Dispatcher, RunEnd};
use crate::domain::{FlowSid, RunState};
use crate::import;
use crate::schedule::{Clock, parse_cron, plan_ticks};
use crate::store::Store;
use crate::studio::StudioApi;

pub use http::{HttpConfig, router};
pub use registry::{Registry, ScanChange};

/// How the service finds a campaign's Flow SID when the campaign names a flow
/// file instead of a SID.
pub trait FlowResolver: Send + Sync + 'static {
    fn resolve(&self, campaign: &Campaign) -> Result<FlowSid, String>;
}

/// Resolves flow names through `flows/flows.lock.toml`, which records, per
/// account SID, each deployed flow's SID: `[ACxxx] survey = { sid = "FW…" }`.
pub struct LockFileResolver {
    pub flows: std::path::PathBuf,
    pub account_sid: String,
}

impl FlowResolver for LockFileResolver {
    fn resolve(&self, campaign: &Campaign) -> Result<FlowSid, String> {
        let name = match &campaign.flow {
            FlowRef::Sid(sid) => return Ok(sid.clone()),
            FlowRef::Name(name) => name,
        };
        let lock = self.flows.join("flows.lock.toml");
        let account = &self.account_sid;
        let not_deployed = || {
            format!(
                "flow {name:?} is not deployed for account {account} (no entry in {}); deploy it first",
                lock.display()
            )
        };
        let text = std::fs::read_to_string(&lock).map_err(|_| not_deployed())?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| format!("{}: {}", lock.display(), e.message()))?;
        let sid = table
            .get(account)
            .and_then(|a| a.get(name))
            .and_then(|f| f.get("sid"))
            .and_then(|s| s.as_str())
            .ok_or_else(not_deployed)?;
        FlowSid::parse(sid).map_err(|e| format!("{}: {name}: {e}", lock.display()))
    }
}

/// Resolves only Flow SIDs; flow names need `flows deploy`.
pub struct SidOnly;

impl FlowResolver for SidOnly {
    fn resolve(&self, campaign: &Campaign) -> Result<FlowSid, String> {
        match &campaign.flow {
            FlowRef::Sid(s) => Ok(s.clone()),
            FlowRef::Name(n) => Err(format!("flow {n:?} is not deployed")),
        }
    }
}

/// Service settings.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub catch_up: Duration,
    /// Safety-net rescan of the folder, besides file events.
    pub rescan_every: Duration,
    /// How long file events must be quiet before a rescan (a file written in
    /// several steps is read once, complete).
    pub debounce: Duration,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            catch_up: Duration::from_secs(3600),
            rescan_every: Duration::from_secs(5),
            debounce: Duration::from_millis(300),
        }
    }
}

/// The service's state, shared by its loops and HTTP handlers.
pub struct Service<S: StudioApi> {
    pub store: Store,
    pub dispatcher: Dispatcher<S>,
    clock: Arc<dyn Clock>,
    folders: Folders,
    settings: ServiceSettings,
    resolver: Box<dyn FlowResolver>,
    registry: Mutex<Registry>,
    dispatching: Mutex<HashSet<i64>>,
    importing: Arc<Mutex<HashSet<i64>>>,
    /// Woken when something may have become dispatchable (a resume, a new run).
    pub wake: tokio::sync::Notify,
}

impl<S: StudioApi> Service<S> {
    pub fn new(
        store: Store,
        dispatcher: Dispatcher<S>,
        clock: Arc<dyn Clock>,
        folders: Folders,
        settings: ServiceSettings,
        resolver: Box<dyn FlowResolver>,
    ) -> Self {
        Service {
            store,
            dispatcher,
            clock,
            folders,
            settings,
            resolver,
            registry: Mutex::new(Registry::default()),
            dispatching: Mutex::new(HashSet::new()),
            importing: Arc::new(Mutex::new(HashSet::new())),
            wake: tokio::sync::Notify::new(),
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub(crate) fn dispatcher_now_ms(&self) -> i64 {
        self.now().timestamp_millis()
    }

    /// The campaigns currently in force (the last valid version of each file).
    pub fn campaigns(&self) -> Vec<Campaign> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner()).campaigns()
    }

    /// Files whose current content is refused, with their problems.
    pub fn refused(&self) -> Vec<(std::path::PathBuf, crate::campaign::CampaignError)> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner()).refused()
    }

    /// Rescans the folder; records what changed in the ledger; starts a run of each
    /// new or changed one-off campaign. Returns the runs started.
    pub fn scan(&self) -> Vec<i64> {
        let changes = {
            let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
            registry.scan(&self.folders)
        };
        let now = self.now();
        let mut started = Vec::new();
        for change in changes {
            match change {
                ScanChange::Loaded { campaign, hash, previous } => {
                    tracing::info!(campaign = %campaign.name, file = %campaign.source.display(), changed = previous.is_some(), "campaign loaded");
                    let row = crate::store::CampaignRow {
                        name: campaign.name.clone(),
                        kind: campaign.kind.as_str().to_string(),
                        source: campaign.source.display().to_string(),
                        content_hash: hash.clone(),
                        schedule: campaign.schedule.clone(),
                        timezone: campaign.timezone.name().to_string(),
                        enabled: campaign.enabled,
                        last_tick_at: None,
                        next_fire_at: self.next_fire(&campaign, now).map(|t| t.timestamp_millis()),
                        removed_at: None,
                        updated_at: now.timestamp_millis(),
                    };
                    if let Err(e) = self.store.upsert_campaign(&row, now.timestamp_millis()) {
                        tracing::error!(campaign = %campaign.name, error = %e, "cannot record the campaign");
                        continue;
                    }
                    if campaign.schedule.is_none() && campaign.enabled {
                        // A one-off runs once per content of its files, ever.
                        if let Some(id) = self.start_run(&campaign, "file", format!("file:{hash}"), now) {
                            started.push(id);
                        }
                    }
                }
                ScanChange::Refused { error, kept, .. } => {
                    let kept =
                        kept.map(|n| format!("; the previous version of {n:?} stays in force")).unwrap_or_default();
                    for d in &error.diagnostics {
                        tracing::error!("{d}{kept}");
                    }
                }
                ScanChange::Removed { name, file } => {
                    tracing::info!(campaign = %name, file = %file.display(), "campaign file removed; no new runs will fire, started runs finish");
                    if let Err(e) = self.store.mark_campaign_removed(&name, now.timestamp_millis()) {
                        tracing::error!(campaign = %name, error = %e, "cannot record the removal");
                    }
                }
            }
        }
        if !started.is_empty() {
            self.wake.notify_one();
        }
        started
    }

    fn next_fire(&self, campaign: &Campaign, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let cron = parse_cron(campaign.schedule.as_deref()?).ok()?;
        crate::schedule::next_fire(&cron, campaign.timezone, after)
    }

    /// Fires every schedule tick due at `now` (and missed ticks younger than
    /// `catch_up`); logs and skips older ones. Returns the runs started.
    pub fn fire_schedules(&self, now: DateTime<Utc>) -> Vec<i64> {
        let mut started = Vec::new();
        for campaign in self.campaigns() {
            let Some(schedule) = campaign.schedule.as_deref() else { continue };
            if !campaign.enabled {
                continue;
            }
            let Ok(cron) = parse_cron(schedule) else { continue };
            let row = match self.store.get_campaign(&campaign.name) {
                Ok(Some(row)) => row,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(campaign = %campaign.name, error = %e, "cannot read the campaign's schedule state");
                    continue;
                }
            };
            let last = row.last_tick_at.and_then(DateTime::from_timestamp_millis).unwrap_or(now);
            let plan = plan_ticks(&cron, campaign.timezone, last, now, self.settings.catch_up);
            if plan.skipped > 0 {
                tracing::warn!(
                    campaign = %campaign.name,
                    skipped = plan.skipped,
                    first = ?plan.first_skipped,
                    last = ?plan.last_skipped,
                    "ticks missed while the service was down, older than catch_up; skipped"
                );
            }
            for tick in &plan.fire {
                let lag = (now - *tick).num_milliseconds();
                crate::telemetry::schedule_lag(lag as f64 / 1000.0);
                tracing::info!(campaign = %campaign.name, tick = %tick, lag_ms = lag, "schedule tick");
                if let Some(id) = self.start_run(&campaign, "schedule", format!("tick:{}", tick.to_rfc3339()), *tick) {
                    started.push(id);
                }
            }
            let handled = plan.handled_up_to.map(|t| t.timestamp_millis()).unwrap_or(last.timestamp_millis());
            if let Err(e) = self.store.set_ticks(&campaign.name, handled, plan.next.map(|t| t.timestamp_millis())) {
                tracing::error!(campaign = %campaign.name, error = %e, "cannot record the schedule's progress");
            }
        }
        if !started.is_empty() {
            self.wake.notify_one();
        }
        started
    }

    /// Creates the run keyed `run_key` and imports its contacts. `None` when the
    /// run already exists (the same tick or content) or cannot start.
    pub fn start_run(
        &self,
        campaign: &Campaign,
        trigger: &str,
        run_key: String,
        scheduled_at: DateTime<Utc>,
    ) -> Option<i64> {
        let flow = match self.resolver.resolve(campaign) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(campaign = %campaign.name, "{}: {e}; the run does not start", campaign.source.display());
                return None;
            }
        };
        let now = self.now().timestamp_millis();
        let new = import::new_run(campaign, &flow, trigger, run_key, scheduled_at.timestamp_millis());
        let id = match self.store.create_run(&new, now) {
            Ok(Some(id)) => id,
            Ok(None) => return None,
            Err(e) => {
                tracing::error!(campaign = %campaign.name, error = %e, "cannot create the run");
                return None;
            }
        };
        self.import(campaign, id);
        Some(id)
    }

    /// Imports run `id` on a thread of its own: the run dispatches while its CSV
    /// is read, and the service's loops are not held up by a large file.
    fn import(&self, campaign: &Campaign, id: i64) {
        if !self.importing.lock().unwrap_or_else(|e| e.into_inner()).insert(id) {
            return;
        }
        let store = self.store.clone();
        let campaign = campaign.clone();
        let clock = Arc::clone(&self.clock);
        let importing = Arc::clone(&self.importing);
        let spawned = std::thread::Builder::new().name(format!("import-{id}")).spawn(move || {
            let result = import::import_run(&store, &campaign, id, clock.now().timestamp_millis(), |_| {});
            importing.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            match result {
                Ok(c) => tracing::info!(
                    run = id, campaign = %campaign.name, rows = c.rows, imported = c.imported, rejected = c.rejected,
                    duplicates = c.duplicates, "run imported"
                ),
                Err(e) => {
                    tracing::error!(run = id, campaign = %campaign.name, error = %e, "import failed; run cancelled");
                    let _ = store.set_run_state(
                        id,
                        RunState::Cancelled,
                        Some(&format!("import failed: {e}")),
                        clock.now().timestamp_millis(),
                    );
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(run = id, error = %e, "cannot start the import; it is retried at the next pass");
            self.importing.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        }
    }

    /// Runs left `expanding` with no import in progress (a crash mid-import, or
    /// a resume of a run paused while importing) resume importing where they stopped.
    pub fn recover_imports(&self) {
        let runs = match self.store.unfinished_runs() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot list runs");
                return;
            }
        };
        for run in runs.into_iter().filter(|r| r.state == RunState::Expanding.as_str()) {
            if self.importing.lock().unwrap_or_else(|e| e.into_inner()).contains(&run.id) {
                continue;
            }
            let campaign = self.campaigns().into_iter().find(|c| c.name == run.campaign);
            match campaign {
                Some(c) => {
                    tracing::warn!(run = run.id, campaign = %c.name, "run's import was interrupted; resuming it");
                    self.import(&c, run.id);
                }
                None => {
                    let _ = self.store.set_run_state(
                        run.id,
                        RunState::Cancelled,
                        Some("import interrupted and the campaign file is gone"),
                        self.now().timestamp_millis(),
                    );
                }
            }
        }
    }

    /// Starts a dispatch task for every active run that has none.
    pub fn supervise(self: &Arc<Self>, tasks: &mut tokio::task::JoinSet<()>) {
        let runs = match self.store.unfinished_runs() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot list runs");
                return;
            }
        };
        let dispatchable =
            |r: &crate::store::RunRow| r.state == RunState::Active.as_str() || r.state == RunState::Expanding.as_str();
        for run in runs.into_iter().filter(dispatchable) {
            if !self.dispatching.lock().unwrap_or_else(|e| e.into_inner()).insert(run.id) {
                continue;
            }
            let this = Arc::clone(self);
            tasks.spawn(async move {
                let end = this.dispatcher.run_to_end(run.id).await;
                match &end {
                    Ok(RunEnd::Finished(counts)) => tracing::info!(run = run.id, counts = ?counts.0, "run finished"),
                    Ok(RunEnd::Stopped(reason)) => tracing::error!(run = run.id, "run stopped: {reason}"),
                    Ok(other) => tracing::info!(run = run.id, end = ?other, "run dispatch ended"),
                    Err(e) => tracing::error!(run = run.id, error = %e, "run dispatch failed"),
                }
                this.dispatching.lock().unwrap_or_else(|e| e.into_inner()).remove(&run.id);
            });
        }
    }

    /// The service's main loop: scan, fire, dispatch, until `shutdown`.
    pub async fn run_loops(self: Arc<Self>, shutdown: CancellationToken) {
        let (events_tx, mut events) = tokio::sync::mpsc::channel::<()>(16);
        let _watcher = watch_folder(&self.folders.campaigns, events_tx);
        let mut tasks = tokio::task::JoinSet::new();
        let this = Arc::clone(&self);
        blocking(move || {
            this.recover_imports();
            this.scan();
        })
        .await;
        let mut last_scan = tokio::time::Instant::now();
        loop {
            let this = Arc::clone(&self);
            let now = self.now();
            blocking(move || {
                this.fire_schedules(now);
                this.recover_imports();
            })
            .await;
            self.supervise(&mut tasks);
            while tasks.try_join_next().is_some() {}

            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = self.wake.notified() => {}
                Some(()) = events.recv() => {
                    // Debounce: wait until the folder has been quiet for a moment.
                    loop {
                        tokio::select! {
                            Some(()) = events.recv() => continue,
                            _ = tokio::time::sleep(self.settings.debounce) => break,
                        }
                    }
                    let this = Arc::clone(&self);
                    blocking(move || { this.scan(); }).await;
                    last_scan = tokio::time::Instant::now();
                    continue;
                }
            }
            if last_scan.elapsed() >= self.settings.rescan_every {
                let this = Arc::clone(&self);
                blocking(move || {
                    this.scan();
                })
                .await;
                last_scan = tokio::time::Instant::now();
            }
        }
        // Stop claiming everywhere; dispatch tasks settle their requests in flight
        // within the grace period, then end.
        self.dispatcher.shutdown_token().cancel();
        while tasks.join_next().await.is_some() {}
    }
}

async fn blocking(f: impl FnOnce() + Send + 'static) {
    if let Err(e) = tokio::task::spawn_blocking(f).await {
        tracing::error!(error = %e, "a background step failed");
    }
}

/// Watches the campaigns folder; each event becomes a nudge to rescan. `None` if
/// the platform has no watcher: the periodic rescan still works.
fn watch_folder(dir: &std::path::Path, tx: tokio::sync::mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok() {
            // Full channel: a rescan is already pending, which covers this event.
            let _ = tx.try_send(());
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "no file watcher; relying on periodic rescans"))
    .ok()?;
    watcher
        .watch(dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| tracing::warn!(folder = %dir.display(), error = %e, "cannot watch the folder; relying on periodic rescans"))
        .ok()?;
    Some(watcher)
}
