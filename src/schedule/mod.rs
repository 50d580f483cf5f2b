//! Cron schedules and time.
//!
//! Fire times are computed with `croner` over `chrono-tz` zones, so a 09:00
//! Europe/Berlin schedule fires at 09:00 local in winter and in summer. Time
//! itself comes from a [`Clock`], so tests can drive it.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

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

    /// The clock's time (also through [`Clock::now`]).
    pub fn now_utc(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
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

/// A campaign's schedule: the line as written (trimmed) and its parsed form.
/// The line is parsed once, when its file is read: croner's parser costs
/// about as much as the rest of a campaign file together, and a service with
/// a thousand campaigns would otherwise parse a thousand lines at every tick.
#[derive(Debug, Clone)]
pub struct Schedule {
    line: String,
    cron: Arc<Cron>,
}

/// Lines parsed so far in this process, shared by the campaigns that write
/// the same line. croner fills a bit for every year it can reach (5,000 of
/// them) whatever the line, about 260,000 instructions a parse under
/// callgrind, most of reading a campaign file; a folder's campaigns often
/// share their schedules, and every rescan and every `status` reads them all
/// again. Bounded: past `PARSED_LINES` distinct lines it starts afresh.
static PARSED: LazyLock<Mutex<HashMap<String, Arc<Cron>>>> = LazyLock::new(Mutex::default);
const PARSED_LINES: usize = 4_096;

impl Schedule {
    pub fn parse(line: &str) -> Result<Self, String> {
        let line = line.trim();
        let known = PARSED.lock().unwrap_or_else(|e| e.into_inner()).get(line).cloned();
        let cron = match known {
            Some(cron) => cron,
            None => {
                let cron = Arc::new(parse_cron(line)?);
                let mut parsed = PARSED.lock().unwrap_or_else(|e| e.into_inner());
                if parsed.len() >= PARSED_LINES {
                    parsed.clear();
                }
                parsed.insert(line.to_string(), Arc::clone(&cron));
                cron
            }
        };
        Ok(Schedule { line: line.to_string(), cron })
    }

    /// The line as written in the campaign file, trimmed.
    pub fn line(&self) -> &str {
        &self.line
    }

    pub fn cron(&self) -> &Cron {
        &self.cron
    }

    /// The first fire time strictly after `after`, in `zone`'s wall-clock time.
    pub fn next_fire(&self, zone: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        next_fire(&self.cron, zone, after)
    }
}

/// Which ticks of a schedule are due at `now`, given the last one handled.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickPlan {
    /// Ticks to fire, oldest first: missed ones younger than `catch_up`, and the
    /// one due now.
    pub fire: Vec<DateTime<Utc>>,
    /// How many ticks were missed by more than `catch_up` (skipped), and the
    /// first and last of them, for the log.
    pub skipped: u64,
    pub first_skipped: Option<DateTime<Utc>>,
    pub last_skipped: Option<DateTime<Utc>>,
    /// The latest tick handled (fired or skipped) once this plan is carried out.
    pub handled_up_to: Option<DateTime<Utc>>,
    /// The next tick after `now`.
    pub next: Option<DateTime<Utc>>,
}

/// Plans the ticks after `last_handled` up to and including `now`.
///
/// A tick is fired if `now` is within `catch_up` of it, and skipped otherwise;
/// either way it is then handled and never considered again.
pub fn plan_ticks(
    cron: &Cron,
    zone: Tz,
    last_handled: DateTime<Utc>,
    now: DateTime<Utc>,
    catch_up: std::time::Duration,
) -> TickPlan {
    let catch_up = chrono::Duration::from_std(catch_up).unwrap_or(chrono::Duration::MAX);
    let mut plan = TickPlan::default();
    let mut cursor = last_handled;
    // Ticks older than the catch-up horizon are only counted; past a bound they
    // are jumped over, so a per-second schedule after a week down stays cheap.
    let horizon = now - catch_up;
    const COUNT_BOUND: u64 = 100_000;
    while let Some(tick) = next_fire(cron, zone, cursor) {
        if tick > now {
            plan.next = Some(tick);
            break;
        }
        if tick < horizon {
            plan.skipped += 1;
            plan.first_skipped.get_or_insert(tick);
            plan.last_skipped = Some(tick);
            let jump_to = horizon - chrono::Duration::seconds(1);
            if plan.skipped >= COUNT_BOUND && tick < jump_to {
                plan.handled_up_to = Some(tick);
                cursor = jump_to;
                continue;
            }
        } else {
            plan.fire.push(tick);
        }
        plan.handled_up_to = Some(tick);
        cursor = tick;
    }
    plan
}

/// The first fire time strictly after `after`, in `zone`'s wall-clock time.
pub fn next_fire(cron: &Cron, zone: Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let local = after.with_timezone(&zone);
    cron.find_next_occurrence(&local, false).ok().map(|t| t.with_timezone(&Utc))
}

/// How far ahead a schedule must fire at least once to be accepted. The rarest
/// line that is not a mistake, 29 February, can be eight years apart (2096 to
/// 2104, since 2100 is not a leap year); a line with nothing in ten years names
/// a day its month never has, or a combination too rare to be meant.
pub const FIRE_HORIZON_YEARS: u32 = 10;

/// The first fire time after `from`, if there is one within
/// [`FIRE_HORIZON_YEARS`].
pub fn first_fire_within_horizon(cron: &Cron, zone: Tz, from: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let horizon = from.checked_add_months(chrono::Months::new(12 * FIRE_HORIZON_YEARS))?;
    next_fire(cron, zone, from).filter(|t| *t <= horizon)
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
    fn schedules_written_alike_share_one_parse_and_fire_alike() {
        let a = Schedule::parse("7 13 * * Tue").unwrap();
        let b = Schedule::parse("  7 13 * * Tue ").unwrap();
        let other = Schedule::parse("8 13 * * Tue").unwrap();
        assert!(Arc::ptr_eq(&a.cron, &b.cron), "one line, one parse");
        assert!(!Arc::ptr_eq(&a.cron, &other.cron));
        assert_eq!(b.line(), "7 13 * * Tue");
        let now = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
        let zone = chrono_tz::Europe::Berlin;
        assert_eq!(a.next_fire(zone, now), b.next_fire(zone, now));
        assert_eq!(a.next_fire(zone, now), Some(Utc.with_ymd_and_hms(2026, 3, 3, 12, 7, 0).unwrap()));
        assert_eq!(other.next_fire(zone, now), Some(Utc.with_ymd_and_hms(2026, 3, 3, 12, 8, 0).unwrap()));
        // A line refused once is refused again, not remembered as parsed.
        assert!(Schedule::parse("7 25 * * Tue").is_err());
        assert!(Schedule::parse("7 25 * * Tue").is_err());
    }

    #[test]
    fn a_line_that_names_a_day_no_month_has_never_fires() {
        let cron = parse_cron("0 0 30 2 *").unwrap();
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(first_fire_within_horizon(&cron, chrono_tz::UTC, now), None);
    }

    #[test]
    fn a_line_whose_next_fire_time_is_beyond_the_horizon_has_none_within_it() {
        // 29 February that is also a Monday ("+" asks for both): 2044, eighteen
        // years after 2026.
        let cron = parse_cron("0 0 29 2 +Mon").unwrap();
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(next_fire(&cron, chrono_tz::UTC, now), Some(Utc.with_ymd_and_hms(2044, 2, 29, 0, 0, 0).unwrap()));
        assert_eq!(first_fire_within_horizon(&cron, chrono_tz::UTC, now), None);
    }

    #[test]
    fn leap_day_schedules_fire_within_the_horizon_even_across_a_century() {
        // 2100 is not a leap year: after 2096 the next 29 February is in 2104.
        let cron = parse_cron("0 0 29 2 *").unwrap();
        let after_2096 = Utc.with_ymd_and_hms(2096, 3, 1, 0, 0, 0).unwrap();
        let first = first_fire_within_horizon(&cron, chrono_tz::UTC, after_2096);
        assert_eq!(first, Some(Utc.with_ymd_and_hms(2104, 2, 29, 0, 0, 0).unwrap()));
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

#[cfg(test)]
mod plan_tests {
    use super::*;
    use std::time::Duration;

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn missed_ticks_inside_catch_up_fire_and_older_ones_are_skipped() {
        let cron = parse_cron("0 * * * *").unwrap();
        let plan = plan_ticks(
            &cron,
            chrono_tz::UTC,
            utc("2026-07-01T00:00:00Z"),
            utc("2026-07-01T05:30:00Z"),
            Duration::from_secs(2 * 3600),
        );
        assert_eq!(plan.fire, [utc("2026-07-01T04:00:00Z"), utc("2026-07-01T05:00:00Z")]);
        assert_eq!(plan.skipped, 3);
        assert_eq!(plan.first_skipped, Some(utc("2026-07-01T01:00:00Z")));
        assert_eq!(plan.handled_up_to, Some(utc("2026-07-01T05:00:00Z")));
        assert_eq!(plan.next, Some(utc("2026-07-01T06:00:00Z")));
    }

    #[test]
    fn a_per_second_schedule_after_a_long_outage_is_planned_quickly() {
        let cron = parse_cron("* * * * * *").unwrap();
        let plan = plan_ticks(
            &cron,
            chrono_tz::UTC,
            utc("2026-06-01T00:00:00Z"),
            utc("2026-07-01T00:00:00Z"),
            Duration::from_secs(2),
        );
        assert_eq!(plan.fire.len(), 3, "the ticks within 2 s of now");
        assert!(plan.skipped >= 100_000);
        assert_eq!(plan.handled_up_to, Some(utc("2026-07-01T00:00:00Z")));
    }
}
