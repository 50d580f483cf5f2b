//! Several `serve` instances on one PostgreSQL ledger.
//!
//! Every instance dispatches every active run: claims are taken with
//! `FOR UPDATE SKIP LOCKED`, so no two instances ever hold one job, and each
//! claim carries a lease this loop renews every second. One instance leads:
//! the one holding the ledger's leader lock. The leader alone fires
//! schedules, publishes campaign files into the ledger (and starts one-off
//! runs from them), reads outcomes back and delivers the outbox; when it
//! goes, the next instance to ask takes the lock within about a second and
//! re-reads its own folder, so no tick is lost (the ledger's record of the
//! last tick handled decides what fires next) and none is fired twice (one
//! run per (campaign, tick)). On a SQLite ledger the one process leads.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Service;
use crate::studio::StudioApi;

/// How often an instance renews its row, its leases and its bid to lead.
const HEARTBEAT: Duration = Duration::from_secs(1);

impl<S: StudioApi> Service<S> {
    /// Whether this instance leads (always, on a SQLite ledger).
    pub fn is_leader(&self) -> bool {
        *self.leading.borrow()
    }

    /// How long ago this instance last renewed its leases in the ledger
    /// (`None`: never, or a SQLite ledger).
    pub fn lease_age_ms(&self) -> Option<i64> {
        let at = self.renewed_at.load(Ordering::Relaxed);
        (at > 0).then(|| self.now_ms() - at)
    }

    /// Leadership changes from now on.
    pub fn watch_leading(&self) -> tokio::sync::watch::Receiver<bool> {
        self.leading.subscribe()
    }

    /// Renews this instance's row and leases and bids to lead, every second,
    /// until `shutdown`; then gives the role up so another takes it at once.
    pub(super) async fn keep_alive(self: Arc<Self>, address: Option<String>, shutdown: CancellationToken) {
        let mut differs_seen: Vec<(String, Vec<String>)> = Vec::new();
        loop {
            let now = self.now_ms();
            let leader = match self.store.try_lead().await {
                Ok(leader) => leader,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot reach the ledger to hold or take the leader's role");
                    false
                }
            };
            if leader != self.is_leader() {
                if leader {
                    tracing::info!(instance = self.store.instance().unwrap_or(""), "this instance leads now");
                    // Publish this instance's folder afresh: the campaigns, and
                    // the one-off runs of any content not run yet.
                    self.forget_scans();
                    self.wake.notify_one();
                } else {
                    tracing::warn!("this instance no longer leads");
                }
                self.leading.send_replace(leader);
            }
            match self.store.announce(address.as_deref(), leader, now).await {
                Ok(()) => self.renewed_at.store(now, Ordering::Relaxed),
                Err(e) => tracing::warn!(error = %e, "cannot renew this instance's row in the ledger"),
            }
            match self.store.instances(now).await {
                Ok(live) => {
                    self.dispatcher.limits().set_instances(live.len());
                    let differs: Vec<(String, Vec<String>)> = live
                        .iter()
                        .filter(|i| !i.differs.is_empty())
                        .map(|i| (i.name.clone(), i.differs.clone()))
                        .collect();
                    if differs != differs_seen {
                        for (instance, campaigns) in &differs {
                            tracing::error!(
                                instance = %instance,
                                campaigns = %campaigns.join(", "),
                                "campaign files differ from the version in force (deploy the same folder to every instance)"
                            );
                        }
                        differs_seen = differs;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot list the live instances"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(HEARTBEAT) => {}
            }
        }
        self.store.resign().await;
    }
}

/// Runs `task` while this instance leads: started when the role is taken,
/// cancelled when it is lost, until `shutdown`.
pub async fn while_leading<F, Fut>(
    mut leading: tokio::sync::watch::Receiver<bool>,
    shutdown: CancellationToken,
    task: F,
) where
    F: Fn(CancellationToken) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        while !*leading.borrow_and_update() {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                changed = leading.changed() => if changed.is_err() { return },
            }
        }
        let token = shutdown.child_token();
        let handle = tokio::spawn(task(token.clone()));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                changed = leading.changed() => {
                    if changed.is_err() || !*leading.borrow_and_update() {
                        break;
                    }
                }
            }
        }
        token.cancel();
        let _ = handle.await;
        if shutdown.is_cancelled() {
            return;
        }
    }
}
