//! Rate limits: one account-wide pace (`FLOWCAST_RATE`) and one per campaign
//! (`rate`), both honoured for every create.
//!
//! Each limit is a slot pacer: the n-th create of a stream may go at
//! `start + n × period`, on a fixed grid. A waiter that wakes late does not push
//! later slots back (no drift, so the achieved rate is the set rate), and no two
//! slots are closer than a period (no bursts, so no one-second window holds more
//! than the cap). The period is 1 % longer than `1 s / rate`, which leaves ten
//! milliseconds of room per second for the jitter between this process and
//! Studio's clock of arrivals. Measured against a simulator that answers 429
//! above 20/s (see the README's benchmark table), governor's GCRA with a burst
//! of a tenth of the rate let a 21st request into some one-second window and
//! drew 429s; with a burst of 1 it loses each late waiter's lateness and runs
//! below the cap.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// The headroom below the nominal rate.
const MARGIN: f64 = 0.01;

/// A slot due this soon may be taken without waiting: at high rates this lets
/// the dispatcher claim a batch of jobs per pass instead of one per timer tick,
/// and it is well inside the margin's jitter room.
const HORIZON: Duration = Duration::from_millis(1);

/// Paces one stream of creates at `per_second` at most.
#[derive(Debug)]
pub struct Pacer {
    period: Duration,
    next: Mutex<Option<Instant>>,
}

impl Pacer {
    pub fn new(per_second: u32) -> Self {
        let rate = f64::from(per_second.max(1)) * (1.0 - MARGIN);
        Pacer { period: Duration::from_secs_f64(1.0 / rate), next: Mutex::new(None) }
    }

    /// The time between two creates.
    pub fn period(&self) -> Duration {
        self.period
    }

    /// Reserves the next slot and returns when it is due. A stream that was idle
    /// starts now; a busy one keeps its grid.
    fn reserve(&self) -> Instant {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let slot = next.map_or(now, |n| n.max(now));
        *next = Some(slot + self.period);
        slot
    }

    /// Waits for the next slot.
    pub async fn until_ready(&self) {
        let slot = self.reserve();
        tokio::time::sleep_until(slot).await;
    }

    /// Takes a slot only if one is due now (or within a millisecond).
    pub fn try_acquire(&self) -> bool {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match *next {
            Some(n) if n > now + HORIZON => false,
            n => {
                let slot = n.map_or(now, |n| n.max(now));
                *next = Some(slot + self.period);
                true
            }
        }
    }
}

/// The limits shared by every run a process dispatches.
pub struct RateLimits {
    account: Pacer,
    /// Account-wide send slots handed out so far.
    granted: std::sync::atomic::AtomicU64,
    campaigns: Mutex<HashMap<(String, u32), Arc<Pacer>>>,
    /// After a 429, no create goes out before this instant.
    held_until: Mutex<Option<Instant>>,
}

impl RateLimits {
    pub fn new(account_per_second: u32) -> Self {
        RateLimits {
            account: Pacer::new(account_per_second),
            granted: std::sync::atomic::AtomicU64::new(0),
            campaigns: Mutex::new(HashMap::new()),
            held_until: Mutex::new(None),
        }
    }

    /// Studio said 429: hold every create for `delay` (extending, never
    /// shortening, a hold already in place).
    pub fn hold_for(&self, delay: Duration) {
        let until = Instant::now() + delay;
        let mut held = self.held_until.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_none_or(|h| h < until) {
            *held = Some(until);
        }
    }

    /// Waits until a create for `campaign` (at `campaign_rate`, if any) may go.
    /// The campaign's pace is waited on first, so that an account-wide slot is
    /// only taken when the request is about to be sent.
    pub async fn until_ready(&self, campaign: &str, campaign_rate: Option<u32>) {
        let held = *self.held_until.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(until) = held {
            tokio::time::sleep_until(until).await;
        }
        if let Some(pacer) = self.campaign_pacer(campaign, campaign_rate) {
            pacer.until_ready().await;
        }
        self.account.until_ready().await;
        self.granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Account-wide send slots handed out so far (each is a create that was
    /// allowed to go).
    pub fn granted(&self) -> u64 {
        self.granted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Takes a slot now if both limits allow it, without waiting.
    pub fn try_acquire(&self, campaign: &str, campaign_rate: Option<u32>) -> bool {
        let held = *self.held_until.lock().unwrap_or_else(|e| e.into_inner());
        if held.is_some_and(|until| until > Instant::now()) {
            return false;
        }
        if let Some(pacer) = self.campaign_pacer(campaign, campaign_rate)
            && !pacer.try_acquire()
        {
            return false;
        }
        let taken = self.account.try_acquire();
        if taken {
            self.granted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        taken
    }

    fn campaign_pacer(&self, campaign: &str, rate: Option<u32>) -> Option<Arc<Pacer>> {
        let rate = rate?;
        let mut map = self.campaigns.lock().unwrap_or_else(|e| e.into_inner());
        Some(Arc::clone(map.entry((campaign.to_string(), rate)).or_insert_with(|| Arc::new(Pacer::new(rate)))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn slots_keep_their_grid_when_a_waiter_is_late() {
        let pacer = Pacer::new(20);
        let start = Instant::now();
        let mut slots = Vec::new();
        for _ in 0..5 {
            slots.push(pacer.reserve());
        }
        // Each slot is one period after the last, from the first: no drift and
        // no two closer than a period.
        for (i, slot) in slots.iter().enumerate() {
            assert_eq!(*slot, start + pacer.period() * i as u32);
        }
        assert!(pacer.period() > Duration::from_millis(50), "1% under the nominal 20/s");
        // Time passing while slots are still ahead (waiters waking late) does
        // not move the grid.
        tokio::time::advance(Duration::from_millis(120)).await;
        assert_eq!(pacer.reserve(), start + pacer.period() * 5);
        // An idle pacer starts afresh rather than bursting to catch up.
        tokio::time::advance(Duration::from_secs(10)).await;
        let now = Instant::now();
        assert_eq!(pacer.reserve(), now);
        assert!(!pacer.try_acquire(), "the next slot is a period away");
    }
}
