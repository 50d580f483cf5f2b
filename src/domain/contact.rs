//! What an import hands the ledger: one job per contact with its Parameters
//! rendered and its times computed, or a row refused with its line and reason.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use serde_json::{Map, Value};

use super::Phone;
use super::text::text_enum;

/// An Execution's Parameters as the ledger keeps them: a JSON object, without
/// flowcast's own `flowcast` key (which needs the job id, known only once the
/// job is stored). Serialised once, at import, and never parsed again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parameters(String);

/// Parameters text that is not a JSON object (only a damaged ledger has one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid parameters in the ledger: not a JSON object")]
pub struct NotAnObject;

impl Parameters {
    pub fn from_map(map: &Map<String, Value>) -> Self {
        // A map of JSON values always serialises.
        Parameters(serde_json::to_string(map).expect("a JSON map serialises"))
    }

    /// Wraps the text the ledger stored (written by [`from_map`](Self::from_map)).
    pub fn from_ledger(text: String) -> Self {
        Parameters(text)
    }

    pub fn as_json(&self) -> &str {
        &self.0
    }

    /// The Parameters with flowcast's own key added last, so that any
    /// Execution flowcast made can be recognised later (reconciliation,
    /// reports). Spliced into the text rather than parsed and rebuilt: this runs
    /// once per create.
    pub fn with_flowcast_key(&self, campaign: &str, run: i64, job: i64) -> Result<String, NotAnObject> {
        let text = self.0.trim();
        let body = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')).ok_or(NotAnObject)?;
        let separator = if body.trim().is_empty() { "" } else { "," };
        // The key as `json!` writes it (keys in order, the name escaped).
        let campaign = serde_json::Value::from(campaign);
        Ok(format!("{{{body}{separator}\"flowcast\":{{\"campaign\":{campaign},\"job\":{job},\"run\":{run}}}}}"))
    }
}

/// What the ledger stores for one contact of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// The CSV line where the contact's row starts (the header is line 1).
    pub line: u64,
    pub phone: Phone,
    pub zone: Tz,
    pub parameters: Parameters,
    /// When to send: `send_at` (or the run's start), moved into the send window.
    pub due_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// The campaign's dedupe key for this contact (`None`: the campaign does
    /// not dedupe).
    pub dedupe_key: Option<String>,
}

/// A row the import refused, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub line: u64,
    /// The phone as written, when the row had one (for the report).
    pub raw_phone: String,
    pub reason: String,
}

text_enum! {
    /// What became of a CSV row that did not become a job.
    pub enum RowOutcome("row outcome") {
        /// Refused, with its line and reason.
        Rejected = "rejected",
        /// A phone seen earlier in the file; the first row wins.
        Duplicate = "duplicate",
    }
}

/// One CSV row, as the ledger records it.
#[derive(Debug, Clone)]
pub enum ImportRow {
    Job(JobSpec),
    Rejected(Rejection),
}

impl ImportRow {
    pub fn line(&self) -> u64 {
        match self {
            ImportRow::Job(spec) => spec.line,
            ImportRow::Rejected(r) => r.line,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flowcasts_key_is_added_to_the_parameters_as_json() {
        let mut map = Map::new();
        map.insert("name".into(), Value::String("Ada \"A\"".into()));
        map.insert("floor".into(), serde_json::json!(3));
        let with_key = Parameters::from_map(&map).with_flowcast_key("c", 2, 9).unwrap();
        let value: Value = serde_json::from_str(&with_key).unwrap();
        assert_eq!(value["name"], "Ada \"A\"");
        assert_eq!(value["floor"], 3);
        assert_eq!(value["flowcast"], serde_json::json!({"campaign": "c", "run": 2, "job": 9}));
        // Byte for byte what `json!` writes for the key, an awkward name too.
        let name = "a \"quoted\" name\n";
        let key = serde_json::json!({ "campaign": name, "run": 2, "job": 9 });
        let body = Parameters::from_map(&map).as_json().to_string();
        assert_eq!(
            Parameters::from_map(&map).with_flowcast_key(name, 2, 9).unwrap(),
            format!("{},\"flowcast\":{key}}}", &body[..body.len() - 1])
        );
        let empty = Parameters::from_map(&Map::new()).with_flowcast_key("c", 1, 1).unwrap();
        assert_eq!(serde_json::from_str::<Value>(&empty).unwrap()["flowcast"]["job"], 1);
        assert_eq!(Parameters::from_ledger("[1]".into()).with_flowcast_key("c", 1, 1), Err(NotAnObject));
    }
}
