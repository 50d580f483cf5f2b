//! Starting a run: freeze the campaign, record the run, import its contacts.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use super::control::move_run;
use super::import::{ImportCounts, ImportError, import_run};
use crate::campaign::Campaign;
use crate::domain::{FlowSid, NotifyRule, RunState, Trigger};
use crate::schedule::Clock;
use crate::store::{NewRun, Store, StoreError};

/// The ledger record of a new run of `campaign`, with its settings frozen so
/// that a resume after an edit behaves like the run that was started.
pub fn new_run(campaign: &Campaign, flow: &FlowSid, trigger: Trigger, run_key: String, scheduled_at_ms: i64) -> NewRun {
    NewRun {
        campaign: campaign.name.clone(),
        kind: campaign.kind,
        trigger,
        run_key,
        scheduled_at: scheduled_at_ms,
        source: campaign.source.display().to_string(),
        flow: flow.clone(),
        from: campaign.from.as_str().to_string(),
        policy: campaign.on_conflict,
        rate: campaign.rate,
        window: campaign.send_window,
        outcomes: campaign.outcomes.clone(),
        channel: campaign.channel,
        limits_exempt: campaign.limits_exempt,
        dedupe_within: campaign.dedupe.as_ref().map(|d| d.within),
        notify: campaign.notify.clone().or_else(|| DEFAULT_NOTIFY.get().cloned().flatten()),
    }
}

/// `flowcast.toml`'s `notify`, for campaigns without their own: set once, at
/// start, from the service configuration.
static DEFAULT_NOTIFY: std::sync::OnceLock<Option<NotifyRule>> = std::sync::OnceLock::new();

/// Sets the `notify` rule of campaigns that have none (once per process).
pub fn set_default_notify(rule: Option<NotifyRule>) {
    let _ = DEFAULT_NOTIFY.set(rule);
}

/// Records a new run of `campaign` keyed `run_key`; `None` when the campaign
/// already has a run with that key (the same tick or file content). The run
/// is `expanding` until [`Imports::spawn`] has read its CSV.
pub async fn start(
    store: &Store,
    campaign: &Campaign,
    flow: &FlowSid,
    trigger: Trigger,
    run_key: String,
    scheduled_at_ms: i64,
    now_ms: i64,
) -> Result<Option<i64>, StoreError> {
    store.create_run(new_run(campaign, flow, trigger, run_key, scheduled_at_ms), now_ms).await
}

/// The imports this process is running, one at most per run.
#[derive(Clone, Default)]
pub struct Imports {
    running: Arc<Mutex<HashSet<i64>>>,
}

impl Imports {
    /// Whether run `id` is being imported by this process.
    pub fn is_running(&self, id: i64) -> bool {
        self.running.lock().unwrap_or_else(|e| e.into_inner()).contains(&id)
    }

    /// Imports run `id` from `campaign`'s CSV in a task of its own: the run
    /// dispatches while its CSV is read. An import that fails cancels the run
    /// with the reason (its jobs not yet sent are never sent); the error names
    /// the file and line. `None` when this run is already being imported.
    pub fn spawn(
        &self,
        store: &Store,
        campaign: &Campaign,
        id: i64,
        clock: Arc<dyn Clock>,
    ) -> Option<tokio::task::JoinHandle<Result<ImportCounts, ImportError>>> {
        if !self.running.lock().unwrap_or_else(|e| e.into_inner()).insert(id) {
            return None;
        }
        let running = Arc::clone(&self.running);
        let store = store.clone();
        let campaign = campaign.clone();
        Some(tokio::spawn(async move {
            let result = import_run(&store, &campaign, id, clock.now().timestamp_millis(), async |_| {}).await;
            running.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
            match &result {
                Ok(c) => tracing::info!(
                    run = id, campaign = %campaign.name, rows = c.rows, imported = c.imported, rejected = c.rejected,
                    duplicates = c.duplicates, "run imported"
                ),
                Err(e) => {
                    tracing::error!(run = id, campaign = %campaign.name, error = %e, "import failed; run cancelled");
                    let reason = format!("import failed: {e}");
                    let now = clock.now().timestamp_millis();
                    if let Err(e) = move_run(&store, id, RunState::Cancelled, &reason, now, |s| !s.is_over()).await {
                        tracing::error!(run = id, error = %e, "cannot cancel the run whose import failed");
                    }
                }
            }
            result
        }))
    }
}
