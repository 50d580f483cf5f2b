//! `{{column}}` templates for Parameters, and time templates such as
//! `{{appointment_at}} - 24h` for `send_at` and `expires`.

use chrono::{DateTime, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;

use super::duration::parse_duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TemplateError {
    #[error("unclosed {{{{ in template {0:?}")]
    Unclosed(String),
    #[error("empty {{{{}}}} in template {0:?}")]
    EmptyName(String),
    #[error("column {0:?} is empty, and the template needs it")]
    MissingValue(String),
    #[error("{0}")]
    BadTime(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Text(String),
    Column(String),
}

/// A string with `{{column}}` holes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: String,
    segments: Vec<Segment>,
}

impl Template {
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let mut segments = Vec::new();
        let mut rest = source;
        while let Some(start) = rest.find("{{") {
            if start > 0 {
                segments.push(Segment::Text(rest[..start].to_string()));
            }
            let after = &rest[start + 2..];
            let end = after.find("}}").ok_or_else(|| TemplateError::Unclosed(source.to_string()))?;
            let name = after[..end].trim();
            if name.is_empty() {
                return Err(TemplateError::EmptyName(source.to_string()));
            }
            segments.push(Segment::Column(name.to_string()));
            rest = &after[end + 2..];
        }
        if !rest.is_empty() {
            segments.push(Segment::Text(rest.to_string()));
        }
        Ok(Template { source: source.to_string(), segments })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// The CSV columns this template reads.
    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Column(c) => Some(c.as_str()),
            Segment::Text(_) => None,
        })
    }

    /// Fills the holes; a column that is absent or blank is an error, so that no
    /// contact gets "Hello ," by accident.
    pub fn render<'a>(&self, lookup: impl Fn(&str) -> Option<&'a str>) -> Result<String, TemplateError> {
        let mut out = String::with_capacity(self.source.len());
        for segment in &self.segments {
            match segment {
                Segment::Text(t) => out.push_str(t),
                Segment::Column(c) => match lookup(c) {
                    Some(v) if !v.trim().is_empty() => out.push_str(v),
                    _ => return Err(TemplateError::MissingValue(c.clone())),
                },
            }
        }
        Ok(out)
    }
}

/// A time template: a base (a template that renders to a time) and an offset,
/// e.g. `{{appointment_at}} - 24h`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimeTemplate {
    base: Template,
    offset_secs: i64,
}

impl TimeTemplate {
    pub fn parse(source: &str) -> Result<Self, String> {
        let trimmed = source.trim();
        // The offset follows the last " + " or " - "; a time such as 2026-01-02 has
        // no spaces around its dashes, so it is never mistaken for one.
        let split =
            [" + ", " - "].iter().filter_map(|op| trimmed.rfind(op).map(|at| (at, *op))).max_by_key(|(at, _)| *at);
        let (base, offset_secs) = match split {
            Some((at, op)) => {
                let dur = parse_duration(&trimmed[at + 3..])?;
                let secs = i64::try_from(dur.as_secs()).map_err(|_| "offset too large".to_string())?;
                (&trimmed[..at], if op == " - " { -secs } else { secs })
            }
            None => (trimmed, 0),
        };
        let base = Template::parse(base.trim()).map_err(|e| e.to_string())?;
        if base.columns().next().is_none() {
            // A constant time is fine, but it must be a time.
            parse_instant(base.source(), chrono_tz::UTC)?;
        }
        Ok(TimeTemplate { base, offset_secs })
    }

    pub fn columns(&self) -> impl Iterator<Item = &str> {
        self.base.columns()
    }

    /// Renders the base and reads it as a time in `zone` (the contact's).
    pub fn render<'a>(
        &self,
        lookup: impl Fn(&str) -> Option<&'a str>,
        zone: Tz,
    ) -> Result<DateTime<Utc>, TemplateError> {
        let text = self.base.render(lookup)?;
        let instant = parse_instant(&text, zone).map_err(TemplateError::BadTime)?;
        Ok(instant + chrono::Duration::seconds(self.offset_secs))
    }
}

/// Reads RFC 3339 (`2026-03-01T09:00:00-05:00`) or a local `YYYY-MM-DD HH:MM[:SS]`
/// (also with `T`) in `zone`. A local time that the zone skips (spring forward) is
/// an error; one it repeats (fall back) means the first of the two.
pub fn parse_instant(text: &str, zone: Tz) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let formats = ["%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S"];
    let naive = formats
        .iter()
        .find_map(|f| NaiveDateTime::parse_from_str(text, f).ok())
        .ok_or_else(|| format!("{text:?} is not a time; write RFC 3339 or YYYY-MM-DD HH:MM"))?;
    match zone.from_local_datetime(&naive) {
        LocalResult::Single(t) => Ok(t.with_timezone(&Utc)),
        LocalResult::Ambiguous(first, _) => Ok(first.with_timezone(&Utc)),
        LocalResult::None => Err(format!("{text:?} does not exist in {zone} (daylight-saving gap)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        move |k| pairs.iter().find(|(name, _)| *name == k).map(|(_, v)| *v)
    }

    #[test]
    fn templates_fill_columns_and_refuse_blank_ones() {
        let t = Template::parse("Hi {{first_name}}, see you at {{ time }}").unwrap();
        assert_eq!(t.columns().collect::<Vec<_>>(), ["first_name", "time"]);
        let ok = t.render(row(&[("first_name", "Ada"), ("time", "9am")])).unwrap();
        assert_eq!(ok, "Hi Ada, see you at 9am");
        let err = t.render(row(&[("first_name", " "), ("time", "9am")])).unwrap_err();
        assert_eq!(err, TemplateError::MissingValue("first_name".into()));
        assert!(Template::parse("{{oops").is_err());
    }

    #[test]
    fn time_templates_apply_their_offset_in_the_contacts_zone() {
        let t = TimeTemplate::parse("{{appointment_at}} - 24h").unwrap();
        let at = t.render(row(&[("appointment_at", "2026-07-02 10:00")]), chrono_tz::America::New_York).unwrap();
        assert_eq!(at.to_rfc3339(), "2026-07-01T14:00:00+00:00");
        let rfc = t.render(row(&[("appointment_at", "2026-07-02T10:00:00Z")]), chrono_tz::UTC).unwrap();
        assert_eq!(rfc.to_rfc3339(), "2026-07-01T10:00:00+00:00");
    }

    #[test]
    fn bad_and_skipped_times_are_errors() {
        assert!(parse_instant("tomorrow", chrono_tz::UTC).is_err());
        let gap = parse_instant("2026-03-08 02:30", chrono_tz::America::New_York).unwrap_err();
        assert!(gap.contains("daylight-saving gap"), "{gap}");
        assert!(TimeTemplate::parse("{{a}} - 2x").is_err());
    }
}
