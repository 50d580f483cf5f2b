//! Cron schedules and time.
//!
//! Fire times are computed with `croner` over `chrono-tz` zones, so a 09:00
//! Europe/Berlin schedule fires at 09:00 local in winter and in summer. Time
//! itself comes from a [`Clock`], so tests can drive it.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};

/// Where "now" comes from. The service uses [`SystemClock`]; tests use their own.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The real wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that moves only when told to, for tests.
#[derive(Debug)]
pub struct ManualClock(std::sync::Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(at: DateTime<Utc>) -> Self {
        ManualClock(std::sync::Mutex::new(at))
    }

    pub fn set(&self, at: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }

    pub fn advance(&self, by: chrono::Duration) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Parses a 5-field crontab line, or a 6-field one with seconds first.
pub fn parse_cron(line: &str) -> Result<Cron, String> {
    let line = line.trim();
    let fields = line.split_whitespace().count();
    if !(line.starts_with('@') || fields == 5 || fields == 6) {
        return Err(format!(
            "{line:?} has {fields} fields; write 5 (minute hour day month weekday) or 6 (seconds first)"
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(line)
        .map_err(|e| format!("{line:?} is not a valid cron line: {e}"))
}

/// The first fire time strictly after `after`, in `zone`'s wall-clock time.
pub fn next_fire(cron: &Cron, zone: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let local = after.with_timezone(&zone);
    cron.find_next_occurrence(&local, false).ok().map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn five_and_six_field_lines_parse_and_others_are_refused() {
        assert!(parse_cron("0 9 * * Mon-Fri").is_ok());
        assert!(parse_cron("30 0 9 * * *").is_ok());
        let err = parse_cron("0 9 * *").unwrap_err();
        assert!(err.contains("4 fields"), "{err}");
        assert!(parse_cron("0 25 * * *").is_err());
    }

    #[test]
    fn a_berlin_morning_schedule_stays_at_nine_local_across_dst() {
        let cron = parse_cron("0 9 * * *").unwrap();
        let zone = chrono_tz::Europe::Berlin;
        let winter = next_fire(&cron, zone, Utc.with_ymd_and_hms(2026, 1, 10, 0, 0, 0).unwrap()).unwrap();
        assert_eq!(winter, Utc.with_ymd_and_hms(2026, 1, 10, 8, 0, 0).unwrap());
        let summer = next_fire(&cron, zone, Utc.with_ymd_and_hms(2026, 7, 10, 0, 0, 0).unwrap()).unwrap();
        assert_eq!(summer, Utc.with_ymd_and_hms(2026, 7, 10, 7, 0, 0).unwrap());
    }
}
