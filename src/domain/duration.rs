//! Human durations as campaign files write them: `30s`, `15m`, `2h`, `1d`, and sums
//! such as `1d 2h` or `1h30m`.

use std::time::Duration;

/// Parses `30s`, `15m`, `2h`, `1d` and sums of them (`1d 2h`, `1h30m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("empty duration; write e.g. 30s, 15m, 2h, 1d or 1d 2h".into());
    }
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
            let n: u64 = digits.parse().map_err(|_| format!("duration {text:?}: number too large"))?;
            total = n
                .checked_mul(unit)
                .and_then(|s| total.checked_add(s))
                .ok_or_else(|| format!("duration {text:?}: too large"))?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn formatting_round_trips() {
        let d = parse_duration("1d 2h 3m 4s").unwrap();
        assert_eq!(parse_duration(&format_duration(d)).unwrap(), d);
    }
}
