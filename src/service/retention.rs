//! Retention in `serve`: with `retention` set, the personal data of runs over
//! longer ago is purged once at start and then every 24 hours, through the
//! same [`Store::purge`] as `flowcast purge`, until shutdown.
//!
//! A purge is a series of short write transactions; shutdown stops it between
//! two of them, and the next start finishes the run it was on (every step is
//! idempotent). The log line says what went and how many bytes the ledger's
//! data takes, never a phone.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Service;
use crate::schedule::Clock;
use crate::store::Store;
use crate::studio::StudioApi;

/// How often `serve` purges: daily, as the retention is counted in days.
pub const PURGE_EVERY: Duration = Duration::from_secs(24 * 3600);

impl<S: StudioApi> Service<S> {
    /// Purges now and then every [`PURGE_EVERY`] until `shutdown`.
    pub(super) async fn keep_purging(self: Arc<Self>, retention: Duration, shutdown: CancellationToken) {
        purge_daily(self.store.clone(), Arc::clone(&self.clock), retention, shutdown).await;
    }
}

/// Purges now and then every [`PURGE_EVERY`] until `shutdown`.
async fn purge_daily(store: Store, clock: Arc<dyn Clock>, retention: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = purge_once(&store, clock.as_ref(), retention) => {}
        }
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PURGE_EVERY) => {}
        }
    }
}

/// One purge of the runs over longer ago than `retention`, logged.
async fn purge_once(store: &Store, clock: &dyn Clock, retention: Duration) {
    let now = clock.now().timestamp_millis();
    let before = now.saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
    match store.purge(before, now).await {
        Ok(summary) => {
            let said = format!("retention: purged {}", summary.describe(before));
            match store.used_bytes().await {
                Ok(bytes) => tracing::info!(ledger_bytes = bytes, "{said}"),
                Err(_) => tracing::info!("{said}"),
            }
        }
        Err(e) => tracing::error!(error = %e, "retention: the purge failed; it is tried again in 24 hours"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::ManualClock;
    use crate::store::purge::tests::{DAY, T0, finished_run, numbers};

    fn at(ms: i64) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_millis(ms).expect("a valid instant")
    }

    #[tokio::test(start_paused = true)]
    async fn serve_purges_at_start_then_every_day_and_stops_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_path(&dir.path().join("flowcast.db")).await.unwrap();
        let old = finished_run(&store, "old", &numbers(0, 3), T0).await;
        let recent = finished_run(&store, "recent", &numbers(10, 3), T0 + 10 * DAY).await;
        let clock = Arc::new(ManualClock::new(at(T0 + 10 * DAY)));
        let shutdown = CancellationToken::new();
        let week = Duration::from_secs(7 * 86_400);
        let purging = tokio::spawn(purge_daily(store.clone(), clock.clone(), week, shutdown.clone()));
        let purged = async |id| store.get_run(id).await.unwrap().purged_at.is_some();

        // Paused time moves only while every task waits on a timer (work on
        // the blocking pool, such as a ledger write, holds it), so this wakes
        // once the first purge is done and the loop waits for the next day.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(purged(old).await, "purged at start");
        assert!(!purged(recent).await, "finished less than a week ago");
        clock.set(at(T0 + 18 * DAY));
        tokio::time::sleep(PURGE_EVERY).await;
        assert!(purged(recent).await, "purged a day later");

        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(1), purging).await.expect("the loop ends at shutdown").unwrap();
    }
}
