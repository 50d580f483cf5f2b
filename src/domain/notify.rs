//! Where a campaign's events go: a URL and the event types it wants. The
//! events themselves are written by the ledger, in the same transaction as
//! the change they report, and delivered by [`crate::notify`].

use super::text::text_enum;

text_enum! {
    /// What an event reports.
    pub enum EventType("event") {
        /// A sent job's outcome was read back from Studio.
        Outcome = "outcome",
        /// A job ended `failed`.
        JobFailed = "job.failed",
        /// A job ended `skipped` (suppressed, capped, already sent, a conflict).
        JobSkipped = "job.skipped",
        /// Every job of a run is settled.
        RunFinished = "run.finished",
    }
}

/// A `notify = { url = "https://…", events = [...] }` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyRule {
    pub url: String,
    pub events: Vec<EventType>,
}

impl NotifyRule {
    /// Checks the URL (http or https, with a host) and the event names; no
    /// events listed means all of them.
    pub fn parse(url: &str, events: Option<&[String]>) -> Result<Self, String> {
        let url = url.trim();
        let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://"));
        if rest.is_none_or(|r| r.is_empty() || r.starts_with('/')) {
            return Err(format!("notify.url {url:?} must be an http:// or https:// URL with a host"));
        }
        let events = match events {
            None => EventType::ALL.to_vec(),
            Some([]) => return Err(format!("notify.events is empty; list some of {}", EventType::choices())),
            Some(names) => names
                .iter()
                .map(|n| n.parse::<EventType>().map_err(|e| format!("notify.events: {e}")))
                .collect::<Result<Vec<_>, _>>()?,
        };
        Ok(NotifyRule { url: url.to_string(), events })
    }

    /// The ledger's form of the event list: `,outcome,job.failed,` (the
    /// commas let the ledger's triggers match a whole name).
    pub fn events_column(&self) -> String {
        let mut out = String::from(",");
        for e in &self.events {
            out.push_str(e.as_str());
            out.push(',');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_needs_a_web_url_and_known_events() {
        let all = NotifyRule::parse("https://shop.example/hooks", None).unwrap();
        assert_eq!(all.events_column(), ",outcome,job.failed,job.skipped,run.finished,");
        let some = NotifyRule::parse("http://127.0.0.1:9/x", Some(&["run.finished".into()])).unwrap();
        assert_eq!(some.events, [EventType::RunFinished]);
        assert!(NotifyRule::parse("ftp://x", None).unwrap_err().contains("http:// or https://"));
        assert!(NotifyRule::parse("https://", None).is_err());
        assert!(NotifyRule::parse("https://x", Some(&["job.sent".into()])).unwrap_err().contains("must be one of"));
        assert!(NotifyRule::parse("https://x", Some(&[])).unwrap_err().contains("empty"));
    }
}
