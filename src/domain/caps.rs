//! How often one person may be contacted: per-phone caps over rolling 24-hour
//! and 7-day windows and a minimum gap, counted across every campaign that is
//! not exempt; and a campaign's dedupe rule (one Execution per key within a
//! window). Pure arithmetic over the instants of earlier contacts; the store
//! gathers those instants inside the transaction that claims the job, so two
//! runs dispatching at once cannot both take the last allowed contact.

use std::time::Duration;

use super::{format_duration, parse_duration};

const DAY_MS: i64 = 86_400_000;
const WEEK_MS: i64 = 7 * DAY_MS;

/// The account's per-contact limits (`[contact_limits]` in `flowcast.toml`).
/// Every limit is optional; none set means no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ContactLimits {
    /// Contacts per phone in any rolling 24 hours.
    pub max_per_day: Option<u32>,
    /// Contacts per phone in any rolling 7 days.
    pub max_per_week: Option<u32>,
    /// Least time between two contacts of one phone.
    pub min_gap: Option<Duration>,
}

impl ContactLimits {
    /// Whether no limit is set (claims then skip the per-phone look-up).
    pub fn is_unlimited(&self) -> bool {
        self.max_per_day.is_none() && self.max_per_week.is_none() && self.min_gap.is_none()
    }

    /// How far back earlier contacts matter, in milliseconds.
    pub fn horizon_ms(&self) -> i64 {
        let gap = self.min_gap.map_or(0, |g| g.as_millis() as i64);
        let mut horizon = gap;
        if self.max_per_day.is_some() {
            horizon = horizon.max(DAY_MS);
        }
        if self.max_per_week.is_some() {
            horizon = horizon.max(WEEK_MS);
        }
        horizon
    }

    /// The first instant at or after `now` when one more contact is allowed,
    /// given the instants (ms) of this phone's earlier contacts — those sent
    /// and those in flight. `now` itself when the limits allow it.
    ///
    /// Each limit on its own is met from some instant on (a rolling window
    /// only loses contacts as time passes), so the latest of those instants
    /// meets them all.
    pub fn next_allowed(&self, earlier: &[i64], now: i64) -> i64 {
        let mut recent: Vec<i64> = earlier.to_vec();
        recent.sort_unstable_by(|a, b| b.cmp(a));
        let mut allowed = now;
        let mut window = |max: Option<u32>, span: i64| {
            if let Some(max) = max {
                // The window (t - span, t] holds fewer than `max` contacts once
                // the max-th most recent has left it: t >= that contact + span.
                let in_window: Vec<i64> = recent.iter().copied().filter(|&c| c > now - span).collect();
                if max == 0 {
                    allowed = i64::MAX;
                } else if in_window.len() >= max as usize {
                    allowed = allowed.max(in_window[max as usize - 1] + span);
                }
            }
        };
        window(self.max_per_day, DAY_MS);
        window(self.max_per_week, WEEK_MS);
        if let (Some(gap), Some(&last)) = (self.min_gap, recent.first()) {
            allowed = allowed.max(last + gap.as_millis() as i64);
        }
        allowed
    }

    /// The limit that holds a contact back at `now`, for the job's reason.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = self.max_per_day {
            parts.push(format!("max_per_day {n}"));
        }
        if let Some(n) = self.max_per_week {
            parts.push(format!("max_per_week {n}"));
        }
        if let Some(gap) = self.min_gap {
            parts.push(format!("min_gap {}", format_duration(gap)));
        }
        parts.join(", ")
    }
}

/// A campaign's `dedupe`: at most one Execution per key (rendered from the
/// contact's row; the phone when no key is given) within `within`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dedupe {
    /// `None`: the phone is the key.
    pub key: Option<super::Template>,
    pub within: Duration,
}

impl Dedupe {
    /// Reads `within` (a duration such as `30d`).
    pub fn within(text: &str) -> Result<Duration, String> {
        let within = parse_duration(text)?;
        if within.is_zero() {
            return Err("within must be longer than 0s".into());
        }
        Ok(within)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000;

    #[test]
    fn no_earlier_contact_means_now() {
        let caps =
            ContactLimits { max_per_day: Some(1), max_per_week: Some(2), min_gap: Some(Duration::from_secs(3600)) };
        assert_eq!(caps.next_allowed(&[], 100 * H), 100 * H);
    }

    #[test]
    fn one_per_day_waits_until_the_earlier_contact_is_a_day_old() {
        let caps = ContactLimits { max_per_day: Some(1), ..Default::default() };
        let now = 100 * H;
        assert_eq!(caps.next_allowed(&[now - 5 * H], now), now + 19 * H);
        assert_eq!(caps.next_allowed(&[now - 24 * H], now), now, "a contact exactly a day old has left the window");
    }

    #[test]
    fn two_per_day_counts_the_second_most_recent() {
        let caps = ContactLimits { max_per_day: Some(2), ..Default::default() };
        let now = 100 * H;
        assert_eq!(caps.next_allowed(&[now - H], now), now);
        assert_eq!(caps.next_allowed(&[now - H, now - 10 * H, now - 30 * H], now), now + 14 * H);
    }

    #[test]
    fn the_latest_of_all_limits_wins() {
        let caps =
            ContactLimits { max_per_day: Some(3), max_per_week: Some(2), min_gap: Some(Duration::from_secs(4 * 3600)) };
        let now = 1000 * H;
        // Two contacts this week: the week's limit waits for the older one.
        assert_eq!(caps.next_allowed(&[now - 2 * H, now - 48 * H], now), now - 48 * H + 168 * H);
        // One contact an hour ago: only the gap holds.
        assert_eq!(caps.next_allowed(&[now - H], now), now + 3 * H);
    }

    #[test]
    fn a_cap_of_zero_never_allows_a_contact() {
        let caps = ContactLimits { max_per_week: Some(0), ..Default::default() };
        assert_eq!(caps.next_allowed(&[], 0), i64::MAX);
    }

    #[test]
    fn the_horizon_is_the_longest_limit() {
        assert_eq!(ContactLimits::default().horizon_ms(), 0);
        assert_eq!(ContactLimits { max_per_day: Some(1), ..Default::default() }.horizon_ms(), DAY_MS);
        assert_eq!(
            ContactLimits { max_per_day: Some(1), max_per_week: Some(3), ..Default::default() }.horizon_ms(),
            WEEK_MS
        );
    }
}
