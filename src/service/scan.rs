//! Reading the campaigns folder: record what changed, start each new or
//! changed one-off campaign once per content.

use super::{ScanChange, Service, ServiceEvent};
use crate::domain::Trigger;
use crate::store::CampaignRow;
use crate::studio::StudioApi;

impl<S: StudioApi> Service<S> {
    /// Rescans the folder; records what changed in the ledger; starts a run of
    /// each new or changed one-off campaign. Returns the runs started.
    pub async fn scan(&self) -> Vec<i64> {
        let changes = {
            let folders = self.folders.clone();
            // Reading files (and hashing CSVs) is blocking work: it runs on a copy,
            // so the campaigns in force stay readable meanwhile.
            let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let (registry, changes) = tokio::task::spawn_blocking(move || {
                let changes = registry.scan(&folders);
                (registry, changes)
            })
            .await
            .expect("a folder scan does not panic");
            *self.registry.lock().unwrap_or_else(|e| e.into_inner()) = registry;
            changes
        };
        let now = self.now();
        let mut started = Vec::new();
        // Several instances: each says what its folder holds; the leader alone
        // publishes campaigns into the ledger and starts runs from files.
        let leader = self.is_leader();
        if self.store.is_shared() {
            let held = self.registry.lock().unwrap_or_else(|e| e.into_inner()).hashes();
            if let Err(e) = self.store.record_folder(held, now.timestamp_millis()).await {
                tracing::warn!(error = %e, "cannot record this instance's campaign files in the ledger");
            }
        }
        for change in changes {
            match change {
                ScanChange::Loaded { campaign, hash, previous } => {
                    if !leader {
                        tracing::info!(campaign = %campaign.name, file = %campaign.source.display(), "campaign read (the leader publishes it)");
                        continue;
                    }
                    tracing::info!(campaign = %campaign.name, file = %campaign.source.display(), changed = previous.is_some(), "campaign loaded");
                    for warning in &campaign.warnings {
                        tracing::warn!("{warning}");
                    }
                    let row = CampaignRow {
                        name: campaign.name.clone(),
                        kind: campaign.kind,
                        source: campaign.source.display().to_string(),
                        content_hash: hash.clone(),
                        schedule: campaign.schedule.as_ref().map(|s| s.line().to_string()),
                        timezone: campaign.timezone.name().to_string(),
                        enabled: campaign.enabled,
                        last_tick_at: None,
                        next_fire_at: self.next_fire(&campaign, now).map(|t| t.timestamp_millis()),
                        removed_at: None,
                        updated_at: now.timestamp_millis(),
                    };
                    if let Err(e) = self.store.upsert_campaign(row, now.timestamp_millis()).await {
                        tracing::error!(campaign = %campaign.name, error = %e, "cannot record the campaign");
                        continue;
                    }
                    // A campaign fed over HTTP has nothing to start from a file.
                    if campaign.schedule.is_none() && campaign.enabled && campaign.contacts.is_some() {
                        // A one-off runs once per content of its files, ever.
                        if let Some(id) = self.start_run(&campaign, Trigger::File, format!("file:{hash}"), now).await {
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
                    if !leader {
                        continue;
                    }
                    tracing::info!(campaign = %name, file = %file.display(), "campaign file removed; no new runs will fire, started runs finish");
                    if let Err(e) = self.store.mark_campaign_removed(&name, now.timestamp_millis()).await {
                        tracing::error!(campaign = %name, error = %e, "cannot record the removal");
                    }
                }
            }
        }
        if !started.is_empty() {
            self.wake.notify_one();
        }
        self.emit(ServiceEvent::Scanned { started: started.clone() });
        started
    }
}
