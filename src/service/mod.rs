//! `flowcast serve`: one process that keeps the campaigns folder, the schedules,
//! the dispatcher and the HTTP API together.
//!
//! - [`scan`]: the folder is rescanned when a file event arrives (debounced) and
//!   every few seconds as a safety net. A changed file that fails validation is
//!   refused and the previous valid version stays in force; a removed campaign
//!   fires no new runs, and its runs already started finish.
//! - [`schedules`]: ticks fire from the ledger's record of the last tick
//!   handled, so a restart neither loses nor repeats a tick; one run per
//!   (campaign, tick) is enforced by the ledger's unique key.
//! - [`supervise`]: every active run is dispatched by its own task; all share
//!   the account rate and the in-flight bound. Runs start and import through
//!   [`crate::runs`], like everywhere else.
//! - [`http`]: the API, dashboard, metrics and webhook, behind the Host and
//!   Origin checks of [`guard`], served with the connection limits of
//!   [`listen`].

mod api_runs;
pub mod cluster;
mod guard;
mod http;
mod listen;
mod registry;
mod retention;
mod scan;
mod schedules;
mod summaries;
mod supervise;
pub mod webhook;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::campaign::{Campaign, CampaignError, Folders};
use crate::collect::{CollectSettings, Collector};
use crate::dispatch::Dispatcher;
use crate::flows::FlowResolver;
use crate::runs::Imports;
use crate::schedule::Clock;
use crate::store::Store;
use crate::studio::StudioApi;

pub use api_runs::{ApiRun, ApiRunError, Contacts, Pushed};
pub use http::{HttpConfig, serve as serve_http};
pub use registry::{Registry, ScanChange};

/// Service settings.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    pub catch_up: Duration,
    /// Safety-net rescan of the folder, besides file events.
    pub rescan_every: Duration,
    /// How long file events must be quiet before a rescan (a file written in
    /// several steps is read once, complete).
    pub debounce: Duration,
    /// How outcomes are read back.
    pub collect: CollectSettings,
    /// Purge personal data of runs over longer ago than this, daily (`None`: keep).
    pub retention: Option<Duration>,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        ServiceSettings {
            catch_up: Duration::from_secs(3600),
            rescan_every: Duration::from_secs(5),
            debounce: Duration::from_millis(300),
            collect: CollectSettings::default(),
            retention: None,
        }
    }
}

/// What the service did, for whoever watches (tests wait on these instead of
/// sleeping).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceEvent {
    /// The campaigns folder was read; these runs started from it.
    Scanned { started: Vec<i64> },
    /// A dispatch task ended for this run.
    RunDispatched { run: i64 },
    /// A look for settled runs without a kept summary ended; it kept this many.
    Summarised { runs: usize },
}

/// The service's state, shared by its loops and HTTP handlers.
pub struct Service<S: StudioApi> {
    pub store: Store,
    pub dispatcher: Dispatcher<S>,
    /// Reads outcomes back while the service runs.
    pub collector: Arc<Collector<S>>,
    clock: Arc<dyn Clock>,
    folders: Folders,
    settings: ServiceSettings,
    resolver: Box<dyn FlowResolver>,
    registry: Mutex<Registry>,
    dispatching: Mutex<HashSet<i64>>,
    imports: Imports,
    /// Woken when something may have become dispatchable (a resume, a new run).
    pub wake: tokio::sync::Notify,
    events: tokio::sync::broadcast::Sender<ServiceEvent>,
    /// Whether this instance leads (see [`cluster`]).
    leading: tokio::sync::watch::Sender<bool>,
    /// When this instance last renewed its leases (Unix ms; 0: never).
    renewed_at: std::sync::atomic::AtomicI64,
    /// Where this instance's API listens, as other instances are told.
    pub address: Option<String>,
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
        let collector =
            Arc::new(Collector::new(store.clone(), dispatcher.studio(), Arc::clone(&clock), settings.collect.clone()));
        Service {
            store,
            dispatcher,
            collector,
            clock,
            folders,
            settings,
            resolver,
            registry: Mutex::new(Registry::default()),
            dispatching: Mutex::new(HashSet::new()),
            imports: Imports::default(),
            wake: tokio::sync::Notify::new(),
            events: tokio::sync::broadcast::channel(256).0,
            // A service leads until its loops start (it is then alone: a test
            // driving it step by step); on a shared ledger `run_loops` bids
            // for the role before anything else.
            leading: tokio::sync::watch::Sender::new(true),
            renewed_at: std::sync::atomic::AtomicI64::new(0),
            address: None,
        }
    }

    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub(crate) fn now_ms(&self) -> i64 {
        self.now().timestamp_millis()
    }

    /// Events from now on: folder scans and dispatch tasks ending.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<ServiceEvent> {
        self.events.subscribe()
    }

    fn emit(&self, event: ServiceEvent) {
        // No subscriber is fine: events are for whoever is watching.
        let _ = self.events.send(event);
    }

    /// The campaigns currently in force (the last valid version of each file).
    pub fn campaigns(&self) -> Vec<Campaign> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner()).campaigns()
    }

    /// Forgets what the folder held, so that the next scan reads every file
    /// as new (a new leader publishes its folder afresh).
    fn forget_scans(&self) {
        *self.registry.lock().unwrap_or_else(|e| e.into_inner()) = Registry::default();
    }

    /// Files whose current content is refused, with their problems.
    pub fn refused(&self) -> Vec<(std::path::PathBuf, CampaignError)> {
        self.registry.lock().unwrap_or_else(|e| e.into_inner()).refused()
    }
}
