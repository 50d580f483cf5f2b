//! Starting runs, resuming interrupted imports, one dispatch task per active
//! run, and the main loop that drives them all until shutdown.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::{Service, ServiceEvent};
use crate::campaign::Campaign;
use crate::dispatch::RunEnd;
use crate::domain::{RunState, Trigger, mask_phones_in};
use crate::studio::StudioApi;

impl<S: StudioApi> Service<S> {
    /// Creates the run keyed `run_key` and starts importing its contacts.
    /// `None` when the run already exists (the same tick or content) or cannot
    /// start.
    pub async fn start_run(
        &self,
        campaign: &Campaign,
        trigger: Trigger,
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
        let at = scheduled_at.timestamp_millis();
        let id = match crate::runs::start(&self.store, campaign, &flow, trigger, run_key, at, self.now_ms()).await {
            Ok(Some(id)) => id,
            Ok(None) => return None,
            Err(e) => {
                tracing::error!(campaign = %campaign.name, error = %e, "cannot create the run");
                return None;
            }
        };
        self.import_if_mine(campaign, id).await;
        Some(id)
    }

    /// Imports run `id` here, unless another instance sharing the ledger
    /// holds its import (it resumes here only if that one stops renewing it).
    async fn import_if_mine(&self, campaign: &Campaign, id: i64) -> bool {
        match self.store.claim_import(id, self.now_ms()).await {
            Ok(true) => {
                self.imports.spawn(&self.store, campaign, id, Arc::clone(&self.clock));
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::error!(run = id, error = %e, "cannot take the run's import");
                false
            }
        }
    }

    /// Runs left `expanding` with no import in progress (a crash mid-import, or
    /// a resume of a run paused while importing) resume importing where they
    /// stopped; a run whose campaign file is gone is cancelled.
    pub async fn recover_imports(&self) {
        let runs = match self.store.unfinished_runs().await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot list runs");
                return;
            }
        };
        // An open run of pushed contacts stays `expanding` while it takes
        // contacts; it has no file to import.
        for run in runs.into_iter().filter(|r| r.state == RunState::Expanding && r.trigger != Trigger::Contacts) {
            if self.imports.is_running(run.id) {
                continue;
            }
            match self.campaigns().into_iter().find(|c| c.name == run.campaign) {
                Some(c) => {
                    if self.import_if_mine(&c, run.id).await {
                        tracing::warn!(run = run.id, campaign = %c.name, "run's import was interrupted; resuming it");
                    }
                }
                None if self.store.is_shared() && !self.is_leader() => {
                    // Another instance may have the file: the leader decides.
                }
                None => {
                    let reason = "import interrupted and the campaign file is gone";
                    let cancelled =
                        crate::runs::move_run(&self.store, run.id, RunState::Cancelled, reason, self.now_ms(), |s| {
                            s == RunState::Expanding
                        })
                        .await;
                    if let Err(e) = cancelled {
                        tracing::error!(run = run.id, error = %e, "cannot cancel the run");
                    }
                }
            }
        }
    }

    /// Starts a dispatch task for every active run that has none.
    pub async fn supervise(self: &Arc<Self>, tasks: &mut tokio::task::JoinSet<()>) {
        let runs = match self.store.unfinished_runs().await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot list runs");
                return;
            }
        };
        for run in runs.into_iter().filter(|r| r.state.is_dispatchable()) {
            if !self.dispatching.lock().unwrap_or_else(|e| e.into_inner()).insert(run.id) {
                continue;
            }
            let this = Arc::clone(self);
            tasks.spawn(async move {
                let end = this.dispatcher.run_to_end(run.id).await;
                match &end {
                    Ok(RunEnd::Finished(counts)) => tracing::info!(run = run.id, counts = ?counts.0, "run finished"),
                    Ok(RunEnd::Stopped(reason)) => {
                        tracing::error!(run = run.id, "run stopped: {}", mask_phones_in(&reason.to_string()))
                    }
                    Ok(other) => tracing::info!(run = run.id, end = ?other, "run dispatch ended"),
                    Err(e) => tracing::error!(run = run.id, error = %e, "run dispatch failed"),
                }
                this.dispatching.lock().unwrap_or_else(|e| e.into_inner()).remove(&run.id);
                this.emit(ServiceEvent::RunDispatched { run: run.id });
            });
        }
    }

    /// The service's main loop: scan, fire, dispatch, until `shutdown`.
    pub async fn run_loops(self: Arc<Self>, shutdown: CancellationToken) {
        let (events_tx, mut events) = tokio::sync::mpsc::channel::<()>(16);
        let _watcher = watch_folder(&self.folders.campaigns, events_tx);
        let mut tasks = tokio::task::JoinSet::new();
        let collecting = {
            let collector = Arc::clone(&self.collector);
            tokio::spawn(super::cluster::while_leading(self.watch_leading(), shutdown.clone(), move |token| {
                Arc::clone(&collector).run(token)
            }))
        };
        let alive = if self.store.is_shared() {
            // Whether this instance leads is known before it scans or fires.
            let leads = self.store.try_lead().await.unwrap_or(false);
            self.leading.send_replace(leads);
            Some(tokio::spawn(Arc::clone(&self).keep_alive(self.address.clone(), shutdown.clone())))
        } else {
            None
        };
        let purging =
            self.settings.retention.map(|r| tokio::spawn(Arc::clone(&self).keep_purging(r, shutdown.clone())));
        let summarising = {
            let this = Arc::clone(&self);
            tokio::spawn(super::cluster::while_leading(self.watch_leading(), shutdown.clone(), move |token| {
                Arc::clone(&this).keep_summarising(token)
            }))
        };
        self.recover_imports().await;
        self.scan().await;
        let mut last_scan = tokio::time::Instant::now();
        loop {
            self.fire_schedules(self.now()).await;
            self.recover_imports().await;
            self.supervise(&mut tasks).await;
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
                    self.scan().await;
                    last_scan = tokio::time::Instant::now();
                    continue;
                }
            }
            if last_scan.elapsed() >= self.settings.rescan_every {
                self.scan().await;
                last_scan = tokio::time::Instant::now();
            }
        }
        // Stop claiming everywhere; dispatch tasks settle their requests in flight
        // within the grace period, then end.
        self.dispatcher.shutdown_token().cancel();
        while tasks.join_next().await.is_some() {}
        let _ = collecting.await;
        if let Some(alive) = alive {
            let _ = alive.await;
        }
        if let Some(purging) = purging {
            let _ = purging.await;
        }
        let _ = summarising.await;
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
