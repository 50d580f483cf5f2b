//! `flowcast purge --older-than DURATION [--dry-run]`: retention on demand.
//! Removes the personal data of runs over longer ago than the duration (or
//! the configured `retention`) and says what it removed.

use std::time::Duration;

use anyhow::anyhow;

use super::{CommandResult, Failure, open_store};
use crate::config::Config;

pub(super) async fn purge(config: &Config, older_than: Option<Duration>, dry_run: bool) -> CommandResult {
    // Like a missing argument, which the command line answers with 2.
    let age = older_than.or(config.retention).ok_or_else(|| Failure {
        code: 2,
        error: anyhow!(
            "purge needs --older-than DURATION (e.g. 90d), or `retention` in flowcast.toml or FLOWCAST_RETENTION"
        ),
    })?;
    let now = chrono::Utc::now().timestamp_millis();
    let before = now.saturating_sub(i64::try_from(age.as_millis()).unwrap_or(i64::MAX));
    // A purge never creates a ledger: with none, there is nothing to remove.
    if let Some(path) = config.db.missing_file() {
        println!("nothing to purge: no ledger at {}", path.display());
        return Ok(0);
    }
    let store = open_store(config).await?;
    if dry_run {
        let summary = store.purge_preview(before).await.map_err(Failure::input)?;
        println!("would purge {}", summary.describe(before));
    } else {
        let summary = store.purge(before, now).await.map_err(Failure::input)?;
        println!("purged {}", summary.describe(before));
    }
    Ok(0)
}
