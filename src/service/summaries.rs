//! Settled runs' summaries kept in the background: the leading instance
//! looks for runs that settled (over, nothing in flight, every outcome read
//! back) without a kept summary, at start and every [`SUMMARISE_EVERY`], and
//! keeps theirs, so the first status or API request after a big run settles
//! reads one row instead of counting a million jobs. A request that comes
//! first keeps the summary itself; this only saves it the wait.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Service, ServiceEvent};
use crate::studio::StudioApi;

/// How often `serve` looks for newly settled runs.
pub const SUMMARISE_EVERY: Duration = Duration::from_secs(30);

/// Runs summarised per ledger read of the candidates.
const BATCH: u32 = 50;

impl<S: StudioApi> Service<S> {
    /// Keeps settled runs' summaries now and then every [`SUMMARISE_EVERY`]
    /// until `shutdown`.
    pub(super) async fn keep_summarising(self: Arc<Self>, shutdown: CancellationToken) {
        loop {
            let mut kept = 0;
            loop {
                if shutdown.is_cancelled() {
                    return;
                }
                match self.store.summarise_settled(BATCH, self.now_ms()).await {
                    Ok(n) => {
                        kept += n;
                        if n < BATCH as usize {
                            break;
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "keeping settled runs' summaries failed; tried again later");
                        break;
                    }
                }
            }
            if kept > 0 {
                tracing::debug!(runs = kept, "settled runs' summaries kept");
            }
            self.emit(ServiceEvent::Summarised { runs: kept });
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(SUMMARISE_EVERY) => {}
            }
        }
    }
}
