//! Human durations as campaign files write them: `30s`, `15m`, `2h`, `1d`, and sums
//! such as `1d 2h` or `1h30m`.

use std::time::Duration;

/// The longest duration any setting may name: a hundred years (36,500 days).
/// Far past any real wait or offset, and small enough that every caller can
/// turn it into milliseconds or add it to a date without overflowing.
pub const MAX_DURATION: Duration = Duration::from_secs(36_500 * 86_400);

/// Parses `30s`, `15m`, `2h`, `1d` and sums of them (`1d 2h`, `1h30m`), up to
/// [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    parse_duration_at_most(text, MAX_DURATION)
}

/// As [`parse_duration`], refusing anything longer than `limit` (and naming it).
pub fn parse_duration_at_most(text: &str, limit: Duration) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("empty duration; write e.g. 30s, 15m, 2h, 1d or 1d 2h".into());
    }
    let limit_secs = limit.min(MAX_DURATION).as_secs();
    let too_long =
        || format!("duration {text:?} is longer than {}, the limit", format_duration(limit.min(MAX_DURATION)));
    let mut total: u64 = 0;
    let mut digits = String::new();
    let mut saw_unit = false;
    for ch in trimmed.chars() {
        if ch.is_ascii_digit() {
            digits.push(ch);
        } else if ch.is_whitespace() {
            if !digits.is_empty() {
                return Err(format!("duration {text:?}: number {digits} has no unit (s, m, h or d)"));
            }
        } else {
            let unit: u64 = match ch {
                's' => 1,
                'm' => 60,
                'h' => 3600,
                'd' => 86_400,
                other => {
                    return Err(format!("duration {text:?}: unknown unit {other:?}; use s, m, h or d"));
                }
            };
            if digits.is_empty() {
                return Err(format!("duration {text:?}: unit {ch:?} has no number before it"));
            }
            // A number too long for u64 is past any limit too.
            let n: u64 = digits.parse().map_err(|_| too_long())?;
            total = n
                .checked_mul(unit)
                .and_then(|s| total.checked_add(s))
                .filter(|t| *t <= limit_secs)
                .ok_or_else(too_long)?;
            digits.clear();
            saw_unit = true;
        }
    }
    if !digits.is_empty() {
        return Err(format!("duration {text:?}: number {digits} has no unit (s, m, h or d)"));
    }
    if !saw_unit {
        return Err(format!("duration {text:?}: write e.g. 30s, 15m, 2h, 1d"));
    }
    Ok(Duration::from_secs(total))
}

/// Formats a duration the way [`parse_duration`] reads it (largest units first).
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut out = Vec::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push(format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out.join(" ")
}

/// Reads a retention setting: `keep` (personal data is kept; `None`) or how
/// long after a run is over its personal data is purged.
pub fn parse_retention(text: &str) -> Result<Option<Duration>, String> {
    if text.trim().eq_ignore_ascii_case("keep") {
        return Ok(None);
    }
    parse_duration(text).map(Some).map_err(|e| format!("{e}; or write keep (the default) to never purge"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retention_is_keep_or_a_duration() {
        assert_eq!(parse_retention("keep"), Ok(None));
        assert_eq!(parse_retention(" KEEP "), Ok(None));
        assert_eq!(parse_retention("90d"), Ok(Some(Duration::from_secs(90 * 86_400))));
        let err = parse_retention("90 days").unwrap_err();
        assert!(err.contains("\"90 days\"") && err.contains("or write keep"), "{err}");
    }

    #[test]
    fn single_units_and_sums_parse() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("1d 2h").unwrap(), Duration::from_secs(93_600));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
    }

    #[test]
    fn malformed_durations_say_what_is_wrong() {
        assert!(parse_duration("").unwrap_err().contains("empty"));
        assert!(parse_duration("10").unwrap_err().contains("no unit"));
        assert!(parse_duration("2w").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("h").unwrap_err().contains("no number"));
    }

    #[test]
    fn a_duration_too_large_to_hold_is_refused_with_the_limit() {
        for text in ["18446744073709551615s", "99999999999999999999999s", "36501d", "36500d 1s"] {
            let err = parse_duration(text).unwrap_err();
            assert_eq!(err, format!("duration {text:?} is longer than 36500d, the limit"));
        }
        assert_eq!(parse_duration("36500d").unwrap(), Duration::from_secs(36_500 * 86_400));
    }

    #[test]
    fn a_bounded_duration_names_its_own_limit() {
        let month = Duration::from_secs(30 * 86_400);
        assert_eq!(parse_duration_at_most("30d", month).unwrap(), month);
        let err = parse_duration_at_most("30d 1s", month).unwrap_err();
        assert_eq!(err, "duration \"30d 1s\" is longer than 30d, the limit");
    }

    #[test]
    fn formatting_round_trips() {
        let d = parse_duration("1d 2h 3m 4s").unwrap();
        assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
    }
}
