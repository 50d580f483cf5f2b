//! Outcome fields: what a campaign keeps from each Execution's Context (a
//! survey's score, a reminder's decision), how a value is read and typed, where
//! an Execution ended (from its Steps), and the per-run summary of each field.
//! Pure: the collector fetches, this decides.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::text::text_enum;

text_enum! {
    /// How an outcome field's value is read.
    pub enum OutcomeType("outcome type") {
        String = "string",
        Integer = "integer",
        Number = "number",
        Boolean = "boolean",
        /// A 0–10 score, summarised as a Net Promoter Score.
        Nps = "nps",
    }
}

text_enum! {
    /// Whether a sent job's outcome has been read back from Studio.
    pub enum OutcomeState("outcome state") {
        /// Sent; its Execution has not been read back yet.
        Open = "open",
        /// Read back: status, the widget it ended in, and the fields.
        Known = "known",
        /// Still running after the outcome timeout, or gone from Studio.
        Unknown = "unknown",
    }
}

impl OutcomeType {
    /// Whether values of this type have a mean.
    pub fn is_numeric(self) -> bool {
        matches!(self, OutcomeType::Integer | OutcomeType::Number | OutcomeType::Nps)
    }
}

/// One field of `[outcomes]`: a name, a dot-separated path into the
/// Execution's Context, and a type.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutcomeField {
    pub name: String,
    pub path: String,
    #[serde(rename = "type", with = "type_text")]
    pub kind: OutcomeType,
}

mod type_text {
    use super::OutcomeType;

    pub fn serialize<S: serde::Serializer>(kind: &OutcomeType, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(kind.as_str())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<OutcomeType, D::Error> {
        let text: String = serde::Deserialize::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Names flowcast gives every campaign; a field may not take them.
pub const BUILT_IN_FIELDS: [&str; 2] = ["status", "ended_in"];

impl OutcomeField {
    /// Checks a field's name and path: a name of letters, digits, `_` and
    /// `-`; a path of non-empty dot-separated keys.
    pub fn new(name: &str, path: &str, kind: OutcomeType) -> Result<Self, String> {
        let word = |t: &str| !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !word(name) {
            return Err(format!("outcome name {name:?} must be letters, digits, _ or -"));
        }
        if BUILT_IN_FIELDS.contains(&name) {
            return Err(format!("outcome name {name:?} is built in; choose another"));
        }
        if path.trim().is_empty() || !path.split('.').all(word) {
            return Err(format!(
                "outcome {name}: path {path:?} must be dot-separated keys, e.g. widgets.ask_score.inbound.Body"
            ));
        }
        Ok(OutcomeField { name: name.to_string(), path: path.to_string(), kind })
    }

    /// The field's value in `context` (the Execution Context's `context`
    /// object): `null` when the path is absent; a value of the wrong type is
    /// kept as text, with a note saying so.
    pub fn read(&self, context: &Value) -> (Value, Option<String>) {
        let mut at = context;
        for key in self.path.split('.') {
            match at.get(key) {
                Some(next) => at = next,
                None => return (Value::Null, None),
            }
        }
        let text = match at {
            Value::Null => return (Value::Null, None),
            Value::String(s) => s.trim().to_string(),
            other => other.to_string(),
        };
        if text.is_empty() {
            return (Value::Null, None);
        }
        let wrong = |what: &str| (Value::String(text.clone()), Some(format!("{text:?} is not {what}")));
        match self.kind {
            OutcomeType::String => match at {
                Value::String(s) => (Value::String(s.clone()), None),
                other => (Value::String(other.to_string()), None),
            },
            OutcomeType::Integer => match parse_integer(&text) {
                Some(n) => (Value::from(n), None),
                None => wrong("an integer"),
            },
            OutcomeType::Number => match text.parse::<f64>().ok().filter(|f| f.is_finite()) {
                Some(f) => (serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number), None),
                None => wrong("a number"),
            },
            OutcomeType::Boolean => match text.to_ascii_lowercase().as_str() {
                "true" => (Value::Bool(true), None),
                "false" => (Value::Bool(false), None),
                _ => wrong("true or false"),
            },
            OutcomeType::Nps => match parse_integer(&text).filter(|n| (0..=10).contains(n)) {
                Some(n) => (Value::from(n), None),
                None => wrong("a score from 0 to 10"),
            },
        }
    }
}

fn parse_integer(text: &str) -> Option<i64> {
    text.parse::<i64>().ok().or_else(|| {
        let f = text.parse::<f64>().ok()?;
        (f.is_finite() && f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
    })
}

/// A Step as the outcome needs it: where it came from, where it went, when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepSeen {
    pub transitioned_from: Option<String>,
    pub transitioned_to: Option<String>,
    pub date_created: Option<String>,
}

/// The widget an Execution ended in: the `transitioned_from` of the Step that
/// went to `Ended`, else of the latest Step by creation time (Studio promises
/// no order for its Steps list).
pub fn ended_in(steps: &[StepSeen]) -> Option<String> {
    if let Some(step) = steps.iter().find(|s| s.transitioned_to.as_deref() == Some("Ended")) {
        return step.transitioned_from.clone();
    }
    let latest = steps.iter().max_by(|a, b| {
        let at = |s: &StepSeen| s.date_created.as_deref().and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
        at(a).cmp(&at(b))
    })?;
    latest.transitioned_from.clone()
}

/// What was collected from one Execution.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectedOutcome {
    /// Studio's Execution status (`ended`, or `active` when given up on).
    pub status: String,
    pub ended_in: Option<String>,
    /// Field name → value (`null` when absent).
    pub values: Map<String, Value>,
    /// Field name → why its value is kept as text.
    pub notes: Map<String, Value>,
}

impl CollectedOutcome {
    /// Reads every field from an Execution's context and steps.
    pub fn read(fields: &[OutcomeField], status: &str, context: &Value, steps: &[StepSeen]) -> Self {
        let mut values = Map::new();
        let mut notes = Map::new();
        for field in fields {
            let (value, note) = field.read(context);
            values.insert(field.name.clone(), value);
            if let Some(note) = note {
                notes.insert(field.name.clone(), Value::String(note));
            }
        }
        CollectedOutcome { status: status.to_string(), ended_in: ended_in(steps), values, notes }
    }
}

/// One field's summary over a run: how often each value was given, how many
/// gave none, and for numbers the mean (and for `nps` the score).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct FieldSummary {
    /// Value (as text) → count; the most common first when shown.
    pub values: BTreeMap<String, i64>,
    pub no_answer: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nps: Option<f64>,
}

impl FieldSummary {
    /// Summarises `counts` (a value's JSON text, or `None` for no answer, with
    /// how many jobs gave it) for a field of type `kind`.
    pub fn from_counts(kind: OutcomeType, counts: &[(Option<String>, i64)]) -> Self {
        let mut summary = FieldSummary::default();
        let (mut sum, mut n) = (0.0, 0i64);
        let (mut promoters, mut detractors) = (0i64, 0i64);
        for (value, count) in counts {
            let Some(value) = value else {
                summary.no_answer += count;
                continue;
            };
            // A value kept as text (the wrong type) is shown, but never counted
            // as a number: "11" is no NPS score.
            let (shown, number) = match serde_json::from_str::<Value>(value) {
                Ok(Value::String(s)) => (s, None),
                Ok(Value::Number(n)) => (n.to_string(), n.as_f64()),
                _ => (value.clone(), None),
            };
            *summary.values.entry(shown).or_insert(0) += count;
            if kind.is_numeric()
                && let Some(x) = number
            {
                sum += x * *count as f64;
                n += count;
                if kind == OutcomeType::Nps {
                    if x >= 9.0 {
                        promoters += count;
                    } else if x <= 6.0 {
                        detractors += count;
                    }
                }
            }
        }
        if kind.is_numeric() && n > 0 {
            summary.mean = Some(sum / n as f64);
        }
        if kind == OutcomeType::Nps && n > 0 {
            summary.nps = Some(100.0 * (promoters - detractors) as f64 / n as f64);
        }
        summary
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn field(path: &str, kind: OutcomeType) -> OutcomeField {
        OutcomeField::new("f", path, kind).unwrap()
    }

    #[test]
    fn values_are_read_by_path_and_typed() {
        let ctx = json!({
            "widgets": { "ask": { "inbound": { "Body": " 9 " } } },
            "flow": { "variables": { "ok": "true", "n": 2.5, "word": "later" } }
        });
        assert_eq!(field("widgets.ask.inbound.Body", OutcomeType::Integer).read(&ctx), (json!(9), None));
        assert_eq!(field("widgets.ask.inbound.Body", OutcomeType::Nps).read(&ctx), (json!(9), None));
        assert_eq!(field("widgets.ask.inbound.Body", OutcomeType::String).read(&ctx), (json!(" 9 "), None));
        assert_eq!(field("flow.variables.ok", OutcomeType::Boolean).read(&ctx), (json!(true), None));
        assert_eq!(field("flow.variables.n", OutcomeType::Number).read(&ctx), (json!(2.5), None));
        assert_eq!(field("flow.variables.missing", OutcomeType::String).read(&ctx), (Value::Null, None));
        let (value, note) = field("flow.variables.word", OutcomeType::Integer).read(&ctx);
        assert_eq!(value, json!("later"));
        assert_eq!(note.unwrap(), "\"later\" is not an integer");
        let (_, note) = field("flow.variables.n", OutcomeType::Nps).read(&ctx);
        assert!(note.unwrap().contains("0 to 10"));
    }

    #[test]
    fn names_and_paths_are_checked() {
        assert!(OutcomeField::new("score", "flow.variables.score", OutcomeType::Nps).is_ok());
        assert!(OutcomeField::new("status", "flow.x", OutcomeType::String).unwrap_err().contains("built in"));
        assert!(OutcomeField::new("s", "flow..x", OutcomeType::String).unwrap_err().contains("dot-separated"));
        assert!(OutcomeField::new("a b", "x", OutcomeType::String).is_err());
    }

    #[test]
    fn the_widget_an_execution_ended_in_comes_from_its_steps_whatever_their_order() {
        let step = |from: &str, to: &str, at: &str| StepSeen {
            transitioned_from: Some(from.into()),
            transitioned_to: Some(to.into()),
            date_created: Some(at.into()),
        };
        let steps = [step("ask", "Ended", "2026-11-28T10:00:05Z"), step("Trigger", "ask", "2026-11-28T10:00:00Z")];
        assert_eq!(ended_in(&steps).as_deref(), Some("ask"));
        let unfinished =
            [step("ask", "thanks", "2026-11-28T10:00:09Z"), step("Trigger", "ask", "2026-11-28T10:00:00Z")];
        assert_eq!(ended_in(&unfinished).as_deref(), Some("ask"));
        assert_eq!(ended_in(&[]), None);
    }

    #[test]
    fn summaries_count_values_and_score_nps() {
        let counts = [
            (Some("10".to_string()), 3),
            (Some("9".to_string()), 2),
            (Some("7".to_string()), 1),
            (Some("3".to_string()), 4),
            (None, 5),
        ];
        let s = FieldSummary::from_counts(OutcomeType::Nps, &counts);
        assert_eq!(s.no_answer, 5);
        assert_eq!(s.values["10"], 3);
        // 5 promoters, 4 detractors of 10 answers.
        assert_eq!(s.nps, Some(10.0));
        assert_eq!(s.mean, Some((30.0 + 18.0 + 7.0 + 12.0) / 10.0));
        let kept_as_text =
            FieldSummary::from_counts(OutcomeType::Nps, &[(Some("\"11\"".into()), 4), (Some("10".into()), 1)]);
        assert_eq!((kept_as_text.nps, kept_as_text.mean), (Some(100.0), Some(10.0)), "\"11\" is shown, not scored");
        assert_eq!(kept_as_text.values["11"], 4);
        let words = FieldSummary::from_counts(OutcomeType::String, &[(Some("\"confirm\"".into()), 2)]);
        assert_eq!(words.values["confirm"], 2);
        assert_eq!(words.mean, None);
    }
}
