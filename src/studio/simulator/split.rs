//! The `split-based-on` widget: which of its transitions fires, and, for the
//! default reply mix, a reply that would make a given transition fire.
//!
//! Studio compares without regard to case and trims leading and trailing
//! spaces of both sides; the transitions are tried in the order the definition
//! lists them, the first `match` whose conditions all hold wins, and `noMatch`
//! fires when none does.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use regex::{Regex, RegexBuilder};
use serde_json::Value;

use super::liquid::render;

/// The index, among the widget's transitions, of the one that fires.
pub(super) fn route(widget: &Value, context: &Value) -> Option<usize> {
    let transitions = widget["transitions"].as_array()?;
    let input = widget["properties"]["input"].as_str().unwrap_or_default();
    let matched = transitions.iter().position(|t| {
        t["event"].as_str() == Some("match")
            && t["conditions"].as_array().is_some_and(|conditions| {
                !conditions.is_empty() && conditions.iter().all(|c| condition_holds(c, input, context))
            })
    });
    matched.or_else(|| transitions.iter().position(|t| t["event"].as_str() == Some("noMatch")))
}

/// One condition against the context: its subject is its first argument (the
/// widget's input when it has none), its value may itself be a template.
fn condition_holds(condition: &Value, input: &str, context: &Value) -> bool {
    let subject = condition["arguments"][0].as_str().unwrap_or(input);
    let value = condition["value"].as_str().unwrap_or_default();
    holds(condition["type"].as_str().unwrap_or_default(), &render(subject, context), &render(value, context))
}

/// Whether `subject` satisfies the predicate `kind` with `value`.
pub(super) fn holds(kind: &str, subject: &str, value: &str) -> bool {
    let s = subject.trim().to_lowercase();
    let v = value.trim().to_lowercase();
    let any_of = || v.split(',').any(|item| item.trim() == s);
    match kind {
        "equal_to" => s == v,
        "not_equal_to" => s != v,
        "matches_any_of" => any_of(),
        "does_not_match_any_of" => !any_of(),
        "contains" => s.contains(&v),
        "does_not_contain" => !s.contains(&v),
        "starts_with" => s.starts_with(&v),
        "does_not_start_with" => !s.starts_with(&v),
        "is_blank" => s.is_empty(),
        "is_not_blank" => !s.is_empty(),
        "regex" => regex_matches(value.trim(), subject.trim()),
        "greater_than" => numbers(&s, &v).is_some_and(|(a, b)| a > b),
        "less_than" => numbers(&s, &v).is_some_and(|(a, b)| a < b),
        other => {
            warn_once(other);
            false
        }
    }
}

/// Whether `pattern` (case-insensitive; never, when it is not a valid
/// pattern) finds a match in `subject`. Compiled patterns are kept: the
/// default mix tries many replies against the same few patterns.
fn regex_matches(pattern: &str, subject: &str) -> bool {
    static COMPILED: Mutex<BTreeMap<String, Option<Regex>>> = Mutex::new(BTreeMap::new());
    let mut compiled = COMPILED.lock().unwrap_or_else(|e| e.into_inner());
    if compiled.len() > 1024 {
        // Patterns come from Flow definitions; this many means templated ones.
        compiled.clear();
    }
    compiled
        .entry(pattern.to_string())
        .or_insert_with(|| RegexBuilder::new(pattern).case_insensitive(true).build().ok())
        .as_ref()
        .is_some_and(|r| r.is_match(subject))
}

/// Says once per condition type that the simulator does not evaluate it.
fn warn_once(kind: &str) {
    static WARNED: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    if WARNED.lock().unwrap_or_else(|e| e.into_inner()).insert(kind.to_string()) {
        tracing::warn!(condition = kind, "the simulator does not evaluate this split condition; it never matches");
    }
}

fn numbers(a: &str, b: &str) -> Option<(f64, f64)> {
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Replies tried, after those a condition suggests, when looking for one that
/// takes a given transition: a word no condition is likely to expect, the usual
/// yes/no words, every score from 0 to 10, and an empty message.
const GENERIC_REPLIES: &[&str] =
    &["maybe", "yes", "no", "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "stop", ""];

/// Replies likely to satisfy `condition` (its value, the first of a list, a
/// number either side of a bound, a string a simple pattern matches), then the
/// generic ones. The caller checks which transition each one really takes.
pub(super) fn candidates(condition: &Value, context: &Value) -> Vec<String> {
    let value = render(condition["value"].as_str().unwrap_or_default(), context).trim().to_string();
    let number = value.parse::<f64>().ok();
    let suggested = match condition["type"].as_str().unwrap_or_default() {
        "equal_to" | "contains" | "starts_with" => Some(value.clone()),
        "matches_any_of" => value.split(',').next().map(|first| first.trim().to_string()),
        "greater_than" => number.map(|n| (n.floor() + 1.0).to_string()),
        "less_than" => number.map(|n| (n.ceil() - 1.0).to_string()),
        "is_blank" => Some(String::new()),
        "regex" => Some(example_of(&value)),
        _ => None,
    };
    suggested.into_iter().chain(GENERIC_REPLIES.iter().map(|s| s.to_string())).collect()
}

/// A string that a simple pattern matches: anchors and groups dropped, the
/// first alternative kept, a class replaced by its first member, `\d`, `\w`,
/// `\s` and `.` by a digit, a letter, a space and a letter, a count `{n}`
/// honoured and other repeats taken once. Good enough for the
/// patterns splits use (`^[0-6]$`, `^(yes|y)$`); the generic replies cover the
/// rest.
fn example_of(pattern: &str) -> String {
    let mut out = String::new();
    let mut chars = pattern.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '^' | '$' | '(' | ')' | '*' | '+' | '?' => {}
            '|' => break,
            '.' => out.push('a'),
            '{' => {
                // `x{n}` or `x{n,m}`: n of the last character in all.
                let bound: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let least = bound.split(',').next().and_then(|n| n.trim().parse::<usize>().ok()).unwrap_or(1);
                if let Some(last) = out.pop() {
                    out.extend(std::iter::repeat_n(last, least));
                }
            }
            '[' => {
                let negated = chars.peek() == Some(&'^');
                let mut first = None;
                for c in chars.by_ref() {
                    if c == ']' {
                        break;
                    }
                    first.get_or_insert(c);
                }
                out.push(if negated { '~' } else { first.unwrap_or('a') });
            }
            '\\' => out.push(match chars.next() {
                Some('d') => '1',
                Some('w') => 'a',
                Some('s') => ' ',
                Some(other) => other,
                None => '\\',
            }),
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_condition_type_compares_trimmed_and_without_case() {
        let cases = [
            ("equal_to", " Yes ", "yes", true),
            ("equal_to", "no", "yes", false),
            ("not_equal_to", "no", "yes", true),
            ("matches_any_of", "Y", "yes, y ,ok", true),
            ("matches_any_of", "nope", "yes,y", false),
            ("does_not_match_any_of", "nope", "yes,y", true),
            ("contains", "I am happy", "HAPPY", true),
            ("does_not_contain", "I am sad", "happy", true),
            ("starts_with", "Stop now", "stop", true),
            ("does_not_start_with", "please stop", "stop", true),
            ("is_blank", "   ", "", true),
            ("is_not_blank", "x", "", true),
            ("regex", "10", "^([0-9]|10)$", true),
            ("regex", "11", "^([0-9]|10)$", false),
            ("regex", "YES", "^yes$", true),
            ("regex", "x", "(unclosed", false),
            ("greater_than", "9", "8", true),
            ("greater_than", "8", "8", false),
            ("less_than", "2.5", "3", true),
            ("less_than", "three", "4", false),
            ("is_before_time", "x", "y", false),
        ];
        for (kind, subject, value, expected) in cases {
            assert_eq!(holds(kind, subject, value), expected, "{kind} {subject:?} {value:?}");
        }
    }

    fn split() -> Value {
        json!({
            "name": "split", "type": "split-based-on",
            "properties": {"input": "{{widgets.ask.inbound.Body}}"},
            "transitions": [
                {"event": "noMatch", "next": "unclear"},
                {"event": "match", "next": "high", "conditions": [
                    {"arguments": ["{{widgets.ask.inbound.Body}}"], "type": "greater_than", "value": "{{flow.data.bar}}"}]},
                {"event": "match", "next": "low", "conditions": [
                    {"arguments": ["{{widgets.ask.inbound.Body}}"], "type": "regex", "value": "^[0-6]$"}]},
            ]
        })
    }

    fn replying(body: &str) -> Value {
        json!({"flow": {"data": {"bar": 8}}, "widgets": {"ask": {"inbound": {"Body": body}}}})
    }

    #[test]
    fn the_first_match_in_definition_order_wins_and_no_match_falls_through() {
        assert_eq!(route(&split(), &replying("9")), Some(1));
        assert_eq!(route(&split(), &replying("3")), Some(2));
        assert_eq!(route(&split(), &replying("7")), Some(0));
        assert_eq!(route(&split(), &json!({})), Some(0));
    }

    #[test]
    fn candidates_start_with_a_reply_that_satisfies_the_condition() {
        let transitions = split()["transitions"].clone();
        let high = candidates(&transitions[1]["conditions"][0], &replying(""));
        assert_eq!(high[0], "9");
        let low = candidates(&transitions[2]["conditions"][0], &replying(""));
        assert_eq!(low[0], "0");
        assert_eq!(example_of(r"^(yes|y)$"), "yes");
        assert_eq!(example_of(r"^\d{3}-[a-z]+$"), "111-a");
        assert!(holds("regex", &example_of(r"^\d{3}-[a-z]+$"), r"^\d{3}-[a-z]+$"));
    }
}
