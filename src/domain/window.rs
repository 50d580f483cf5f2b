//! Send windows: the local wall-clock hours in which a contact may be reached.

use chrono::{DateTime, Duration, LocalResult, NaiveDate, NaiveTime, TimeZone, Utc};
use chrono_tz::Tz;

/// A daily window of local time, `start` inclusive, `end` exclusive. A window whose
/// end is before its start wraps midnight (`22:00`–`06:00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendWindow {
    pub start: NaiveTime,
    pub end: NaiveTime,
}

/// How a window's times are written: `08:00`.
const HH_MM: &str = "%H:%M";

impl SendWindow {
    /// Reads a window from its `HH:MM` start and end; an empty window (start =
    /// end) is refused.
    pub fn parse(start: &str, end: &str) -> Result<Self, String> {
        let time = |t: &str| NaiveTime::parse_from_str(t.trim(), HH_MM).ok();
        match (time(start), time(end)) {
            (Some(start), Some(end)) if start != end => Ok(SendWindow { start, end }),
            (Some(_), Some(_)) => Err("send_window start and end are equal; the window would be empty".into()),
            _ => Err("send_window start and end must be HH:MM times (e.g. \"08:00\")".into()),
        }
    }

    /// The start as written (`08:00`).
    pub fn start_text(&self) -> String {
        self.start.format(HH_MM).to_string()
    }

    /// The end as written (`21:00`).
    pub fn end_text(&self) -> String {
        self.end.format(HH_MM).to_string()
    }

    /// Whether local time `t` is inside the window.
    pub fn contains(&self, t: NaiveTime) -> bool {
        if self.start < self.end { self.start <= t && t < self.end } else { t >= self.start || t < self.end }
    }

    /// `at` if it is inside the window in `zone`, else the next instant the window
    /// opens there. On a day whose opening time does not exist (spring forward),
    /// the window opens at the first instant after the gap; on a day where it
    /// exists twice (fall back), at the first.
    pub fn next_open(&self, at: DateTime<Utc>, zone: Tz) -> DateTime<Utc> {
        let local = at.with_timezone(&zone);
        if self.contains(local.time()) {
            return at;
        }
        // Outside the window, the next opening is today's if it is still ahead,
        // else tomorrow's. Today's can be "now" only when a daylight-saving gap
        // moved it onto a time past the window's end: that day has no window.
        let today = local.date_naive();
        let open = opening(today, self.start, zone);
        if open > at { open } else { opening(today.succ_opt().unwrap_or(today), self.start, zone) }
    }
}

fn opening(date: NaiveDate, start: NaiveTime, zone: Tz) -> DateTime<Utc> {
    let naive = date.and_time(start);
    match zone.from_local_datetime(&naive) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
        LocalResult::None => {
            // Daylight-saving gaps are at most a few hours; step a minute at a time
            // to the first local time that exists.
            let mut probe = naive;
            for _ in 0..(6 * 60) {
                probe += Duration::minutes(1);
                if let Some(t) = zone.from_local_datetime(&probe).earliest() {
                    return t.with_timezone(&Utc);
                }
            }
            Utc.from_utc_datetime(&naive)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(start: &str, end: &str) -> SendWindow {
        SendWindow::parse(start, end).unwrap()
    }

    #[test]
    fn windows_read_and_write_hh_mm() {
        let w = window("08:00", "21:30");
        assert_eq!((w.start_text(), w.end_text()), ("08:00".to_string(), "21:30".to_string()));
        assert!(SendWindow::parse("8am", "21:00").unwrap_err().contains("HH:MM"));
        assert!(SendWindow::parse("08:00", "08:00").unwrap_err().contains("equal"));
    }

    fn utc(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn a_time_inside_the_window_is_kept() {
        let w = window("08:00", "21:00");
        let at = utc("2026-07-01T14:00:00Z"); // 10:00 in New York
        assert_eq!(w.next_open(at, chrono_tz::America::New_York), at);
    }

    #[test]
    fn late_evening_waits_for_the_next_morning_in_the_contacts_zone() {
        let w = window("08:00", "21:00");
        // 22:30 in Berlin (summer, UTC+2) → 08:00 Berlin the next day.
        let at = utc("2026-07-01T20:30:00Z");
        assert_eq!(w.next_open(at, chrono_tz::Europe::Berlin), utc("2026-07-02T06:00:00Z"));
        // Early morning waits for the same day's opening.
        let early = utc("2026-07-01T03:00:00Z"); // 05:00 Berlin
        assert_eq!(w.next_open(early, chrono_tz::Europe::Berlin), utc("2026-07-01T06:00:00Z"));
    }

    #[test]
    fn the_window_follows_daylight_saving() {
        let w = window("08:00", "21:00");
        let ny = chrono_tz::America::New_York;
        // Night before spring forward (2026-03-08): 08:00 EDT is 12:00 UTC.
        assert_eq!(w.next_open(utc("2026-03-08T05:00:00Z"), ny), utc("2026-03-08T12:00:00Z"));
        // Night before fall back (2026-11-01): 08:00 EST is 13:00 UTC.
        assert_eq!(w.next_open(utc("2026-11-01T05:00:00Z"), ny), utc("2026-11-01T13:00:00Z"));
    }

    #[test]
    fn an_opening_inside_a_dst_gap_moves_to_just_after_it() {
        let w = window("02:30", "06:00");
        let ny = chrono_tz::America::New_York;
        // 2026-03-08 02:30 does not exist in New York; 03:00 EDT (07:00 UTC) is next.
        assert_eq!(w.next_open(utc("2026-03-08T05:00:00Z"), ny), utc("2026-03-08T07:00:00Z"));
    }

    fn local(hh_mm: &str) -> NaiveTime {
        NaiveTime::parse_from_str(hh_mm, HH_MM).unwrap()
    }

    #[test]
    fn a_job_due_exactly_at_the_windows_start_is_inside() {
        let w = window("08:00", "21:00");
        assert!(w.contains(local("08:00")));
        let at = utc("2026-07-01T08:00:00Z");
        assert_eq!(w.next_open(at, chrono_tz::UTC), at);
    }

    #[test]
    fn a_job_due_exactly_at_the_windows_end_waits_for_the_next_opening() {
        let w = window("08:00", "21:00");
        assert!(w.contains(local("20:59")));
        assert!(!w.contains(local("21:00")));
        assert_eq!(w.next_open(utc("2026-07-01T21:00:00Z"), chrono_tz::UTC), utc("2026-07-02T08:00:00Z"));
    }

    #[test]
    fn a_window_that_wraps_midnight_also_closes_exactly_at_its_end() {
        let w = window("22:00", "06:00");
        assert!(w.contains(local("22:00")));
        assert!(!w.contains(local("06:00")));
        assert_eq!(w.next_open(utc("2026-07-01T06:00:00Z"), chrono_tz::UTC), utc("2026-07-01T22:00:00Z"));
    }

    #[test]
    fn equal_start_and_end_are_refused_when_read() {
        let err = SendWindow::parse("08:00", "08:00").unwrap_err();
        assert_eq!(err, "send_window start and end are equal; the window would be empty");
    }

    #[test]
    fn a_window_built_in_code_with_equal_ends_is_open_all_day() {
        // Files cannot say this (it is refused above); code that builds a window
        // directly gets a whole day rather than nothing.
        let w = SendWindow { start: local("08:00"), end: local("08:00") };
        for t in ["00:00", "07:59", "08:00", "12:00", "23:59"] {
            assert!(w.contains(local(t)), "{t}");
        }
    }

    #[test]
    fn a_window_swallowed_by_a_spring_forward_gap_opens_the_next_day() {
        // On 2026-03-08 New York skips from 02:00 to 03:00, so 02:30-03:00 never
        // happens that day; 03:00 EDT (07:00 UTC) is just past its end.
        let w = window("02:30", "03:00");
        let ny = chrono_tz::America::New_York;
        assert_eq!(w.next_open(utc("2026-03-08T07:00:00Z"), ny), utc("2026-03-09T06:30:00Z"));
    }

    #[test]
    fn a_window_may_wrap_midnight() {
        let w = window("22:00", "06:00");
        assert!(w.contains(NaiveTime::from_hms_opt(23, 0, 0).unwrap()));
        assert!(w.contains(NaiveTime::from_hms_opt(5, 59, 0).unwrap()));
        assert!(!w.contains(NaiveTime::from_hms_opt(12, 0, 0).unwrap()));
        assert_eq!(w.next_open(utc("2026-07-01T12:00:00Z"), chrono_tz::UTC), utc("2026-07-01T22:00:00Z"));
    }
}
