//! `flowcast collect [RUN] [--wait D]`: read outcomes back in the foreground.

use std::sync::Arc;

use anyhow::anyhow;

use super::studio::connect_studio;
use super::{CommandResult, Failure, open_store};
use crate::collect::{CollectSettings, Collector};
use crate::config::Config;
use crate::domain::parse_duration;
use crate::schedule::SystemClock;

/// How `collect` reads back, from the configuration.
pub(super) fn settings(config: &Config) -> CollectSettings {
    CollectSettings {
        after: config.outcome_after,
        timeout: config.outcome_timeout,
        read_rate: config.read_rate,
        ..CollectSettings::default()
    }
}

pub(super) async fn collect(config: &Config, run: Option<i64>, wait: &str) -> CommandResult {
    let wait = parse_duration(wait).map_err(|e| Failure::input(anyhow!("--wait: {e}")))?;
    let store = open_store(config).await?;
    if let Some(id) = run {
        store.get_run(id).await.map_err(Failure::input)?;
    }
    let studio = connect_studio(config).await?;
    let collector = Arc::new(Collector::new(
        store.clone(),
        Arc::new(studio.client.clone()),
        Arc::new(SystemClock),
        settings(config),
    ));
    let before = store.open_outcomes(run).await.map_err(Failure::input)?;
    let open = collector.until_settled(run, wait).await.map_err(Failure::input)?;
    let scope = run.map(|id| format!("run {id}")).unwrap_or_else(|| "all runs".into());
    println!("{scope}: {} outcome(s) read back, {open} still open", before - open);
    if open > 0 {
        println!(
            "the open ones are Executions still running; `flowcast collect --wait 10m` keeps asking, and `serve` collects them as they end"
        );
    }
    Ok(0)
}
