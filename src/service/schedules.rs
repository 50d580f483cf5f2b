//! Schedule ticks: fire what is due, catch up on missed ticks younger than
//! `catch_up`, log and skip older ones, and record the progress in the ledger.

use chrono::{DateTime, Utc};

use super::Service;
use crate::campaign::Campaign;
use crate::domain::Trigger;
use crate::schedule::plan_ticks;
use crate::studio::StudioApi;

impl<S: StudioApi> Service<S> {
    pub(super) fn next_fire(&self, campaign: &Campaign, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        campaign.schedule.as_ref()?.next_fire(campaign.timezone, after)
    }

    /// Fires every schedule tick due at `now` (and missed ticks younger than
    /// `catch_up`); logs and skips older ones. Returns the runs started.
    pub async fn fire_schedules(&self, now: DateTime<Utc>) -> Vec<i64> {
        let mut started = Vec::new();
        // Several instances: the leader alone fires.
        if !self.is_leader() {
            return started;
        }
        for campaign in self.campaigns() {
            let Some(schedule) = &campaign.schedule else { continue };
            if !campaign.enabled {
                continue;
            }
            let row = match self.store.get_campaign(&campaign.name).await {
                Ok(Some(row)) => row,
                Ok(None) => continue,
                Err(e) => {
                    tracing::error!(campaign = %campaign.name, error = %e, "cannot read the campaign's schedule state");
                    continue;
                }
            };
            let last = row.last_tick_at.and_then(DateTime::from_timestamp_millis).unwrap_or(now);
            let plan = plan_ticks(schedule.cron(), campaign.timezone, last, now, self.settings.catch_up);
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
                let key = format!("tick:{}", tick.to_rfc3339());
                if let Some(id) = self.start_run(&campaign, Trigger::Schedule, key, *tick).await {
                    started.push(id);
                }
            }
            let handled = plan.handled_up_to.map(|t| t.timestamp_millis()).unwrap_or(last.timestamp_millis());
            let next = plan.next.map(|t| t.timestamp_millis());
            if let Err(e) = self.store.set_ticks(&campaign.name, handled, next).await {
                tracing::error!(campaign = %campaign.name, error = %e, "cannot record the schedule's progress");
            }
        }
        if !started.is_empty() {
            self.wake.notify_one();
        }
        started
    }
}
