//! Rate limits: one account-wide limiter (`FLOWCAST_RATE`) and one per campaign
//! (`rate`), both honoured for every create.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// The quota for `per_second` creates per second.
///
/// Burst 1 spaces requests exactly but loses time whenever a waiter wakes late,
/// so the achieved rate falls short of the cap; a burst of a tenth of the rate
/// (at least 1) absorbs timer lateness while never exceeding the cap by more
/// than that tenth in any one second.
pub fn quota_for(per_second: u32) -> Quota {
    let rate = per_second.max(1);
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let burst = NonZeroU32::new((rate / 10).max(1)).expect("max(1) is non-zero");
    Quota::with_period(period).expect("a positive period").allow_burst(burst)
}

/// The limiters shared by every run a process dispatches.
pub struct RateLimits {
    account: DefaultDirectRateLimiter,
    campaigns: Mutex<HashMap<(String, u32), Arc<DefaultDirectRateLimiter>>>,
    /// After a 429, no create goes out before this instant.
    held_until: Mutex<Option<tokio::time::Instant>>,
}

impl RateLimits {
    pub fn new(account_per_second: u32) -> Self {
        RateLimits {
            account: RateLimiter::direct(quota_for(account_per_second)),
            campaigns: Mutex::new(HashMap::new()),
            held_until: Mutex::new(None),
        }
    }

    /// Studio said 429: hold every create for `delay` (extending, never
    /// shortening, a hold already in place).
    pub fn hold_for(&self, delay: Duration) {
        let until = tokio::time::Instant::now() + delay;
        let mut held = self.held_until.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_none_or(|h| h < until) {
            *held = Some(until);
        }
    }

    /// Waits until a create for `campaign` (at `campaign_rate`, if any) may go.
    /// The campaign's limiter is waited on first, so that an account-wide token
    /// is only taken when the request is about to be sent.
    pub async fn until_ready(&self, campaign: &str, campaign_rate: Option<u32>) {
        let held = *self.held_until.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(until) = held {
            tokio::time::sleep_until(until).await;
        }
        if let Some(limiter) = self.campaign_limiter(campaign, campaign_rate) {
            limiter.until_ready().await;
        }
        self.account.until_ready().await;
    }

    /// Takes a token now if both limits allow it, without waiting.
    pub fn try_acquire(&self, campaign: &str, campaign_rate: Option<u32>) -> bool {
        let held = *self.held_until.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_some_and(|until| until > tokio::time::Instant::now()) {
            return false;
        }
        if let Some(limiter) = self.campaign_limiter(campaign, campaign_rate)
            && limiter.check().is_err()
        {
            return false;
        }
        self.account.check().is_ok()
    }

    fn campaign_limiter(&self, campaign: &str, rate: Option<u32>) -> Option<Arc<DefaultDirectRateLimiter>> {
        let rate = rate?;
        let mut map = self.campaigns.lock().unwrap_or_else(|e| e.into_inner());
        Some(Arc::clone(
            map.entry((campaign.to_string(), rate)).or_insert_with(|| Arc::new(RateLimiter::direct(quota_for(rate)))),
        ))
    }
}
