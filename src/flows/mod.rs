//! Flows as code: Studio Flow definitions kept in `flows/NAME.json`, checked
//! locally, deployed through Studio's Flow API, and recorded per account in
//! `flows/flows.lock.toml` (which campaigns resolve `flow = "NAME"` through).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::campaign::{Campaign, FlowRef};
use crate::domain::{FlowSid, sha256_hex};

/// Studio refuses request bodies over 1 MB; flowcast refuses them first.
pub const MAX_BODY_BYTES: usize = 1_000_000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FlowError {
    #[error("{file}: cannot read: {message}")]
    Read { file: String, message: String },
    #[error("{file}: ${{{var}}} is not set (set it in the environment or in --env-file)")]
    UnsetVariable { file: String, var: String },
    #[error("{file}:{line}: not JSON: {message}")]
    Json { file: String, line: usize, message: String },
    #[error("{file}: {message}")]
    Shape { file: String, message: String },
    #[error("{file}: the request would be {size} bytes; Studio refuses bodies over {MAX_BODY_BYTES} bytes")]
    TooLarge { file: String, size: usize },
}

/// A definition with its `${VAR}`s resolved and its shape checked.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowDefinition {
    pub name: String,
    pub file: PathBuf,
    /// The resolved definition as Studio receives it (a JSON string).
    pub json: String,
    pub value: Value,
    /// Hex SHA-256 of the resolved definition: unchanged definitions are not redeployed.
    pub hash: String,
}

/// Variables for `${VAR}`: `environment` (the process's, from the config),
/// overridden by an env file (`KEY=value` lines; `#` comments and blank lines
/// ignored).
pub fn variables(
    environment: HashMap<String, String>,
    env_file: Option<&Path>,
) -> Result<HashMap<String, String>, FlowError> {
    let mut vars = environment;
    if let Some(path) = env_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| FlowError::Read { file: path.display().to_string(), message: e.to_string() })?;
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let line = line.strip_prefix("export ").unwrap_or(line);
            if let Some((k, v)) = line.split_once('=') {
                let v = v.trim().trim_matches('"').trim_matches('\'');
                vars.insert(k.trim().to_string(), v.to_string());
            }
        }
    }
    Ok(vars)
}

/// Replaces every `${VAR}`; an unset one is an error naming the file and the variable.
pub fn substitute(file: &str, text: &str, vars: &HashMap<String, String>) -> Result<String, FlowError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find('}') {
            Some(end)
                if !after[..end].is_empty() && after[..end].chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                let var = &after[..end];
                let value = vars
                    .get(var)
                    .ok_or_else(|| FlowError::UnsetVariable { file: file.to_string(), var: var.to_string() })?;
                // The value lands inside JSON text: escape it as a JSON string body.
                let escaped = serde_json::to_string(value).unwrap_or_default();
                out.push_str(&escaped[1..escaped.len() - 1]);
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str("${");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Checks the shape of a Studio flow definition: `description`, `states` with
/// unique names, `initial_state` naming one of them, `flags`.
pub fn check_shape(file: &str, value: &Value) -> Result<(), FlowError> {
    let shape = |message: String| FlowError::Shape { file: file.to_string(), message };
    let obj = value.as_object().ok_or_else(|| shape("a flow definition is a JSON object".into()))?;
    if !obj.get("description").is_some_and(Value::is_string) {
        return Err(shape("\"description\" (a string) is required".into()));
    }
    let states =
        obj.get("states").and_then(Value::as_array).ok_or_else(|| shape("\"states\" (an array) is required".into()))?;
    let mut names = HashSet::new();
    for (i, state) in states.iter().enumerate() {
        let name = state["name"].as_str().ok_or_else(|| shape(format!("states[{i}] has no \"name\"")))?;
        if state["type"].as_str().is_none() {
            return Err(shape(format!("state {name:?} has no \"type\"")));
        }
        if !names.insert(name) {
            return Err(shape(format!("state name {name:?} is used twice")));
        }
    }
    // A transition to a widget that does not exist would strand every
    // Execution that takes it; an empty `next` is Studio's "end here".
    for state in states {
        let transitions = state["transitions"].as_array().map(Vec::as_slice).unwrap_or_default();
        for t in transitions {
            let next = t["next"].as_str().unwrap_or_default();
            if !next.is_empty() && !names.contains(next) {
                let from = state["name"].as_str().unwrap_or_default();
                let event = t["event"].as_str().unwrap_or("?");
                return Err(shape(format!(
                    "state {from:?}: transition {event:?} goes to {next:?}, which is not a state"
                )));
            }
        }
    }
    let initial = obj
        .get("initial_state")
        .and_then(Value::as_str)
        .ok_or_else(|| shape("\"initial_state\" is required".into()))?;
    if !names.contains(initial) {
        return Err(shape(format!("initial_state {initial:?} names no state")));
    }
    if !obj.get("flags").is_some_and(Value::is_object) {
        return Err(shape("\"flags\" (an object) is required".into()));
    }
    Ok(())
}

/// Loads `flows/NAME.json`: resolves `${VAR}`s, parses, checks the shape and the
/// size Studio would receive.
pub fn load(flows: &Path, name: &str, vars: &HashMap<String, String>) -> Result<FlowDefinition, FlowError> {
    let file = flows.join(format!("{name}.json"));
    let shown = file.display().to_string();
    let text =
        std::fs::read_to_string(&file).map_err(|e| FlowError::Read { file: shown.clone(), message: e.to_string() })?;
    let resolved = substitute(&shown, &text, vars)?;
    let value: Value = serde_json::from_str(&resolved).map_err(|e| FlowError::Json {
        file: shown.clone(),
        line: e.line(),
        message: e.to_string(),
    })?;
    check_shape(&shown, &value)?;
    let json = value.to_string();
    // The form body: FriendlyName, Status, CommitMessage and the definition,
    // URL-encoded. Measured as Studio would see it.
    let size = form_urlencoded::Serializer::new(String::new())
        .append_pair("FriendlyName", name)
        .append_pair("Status", "published")
        .append_pair("Definition", &json)
        .finish()
        .len();
    if size > MAX_BODY_BYTES {
        return Err(FlowError::TooLarge { file: shown, size });
    }
    let hash = sha256_hex(json.as_bytes());
    Ok(FlowDefinition { name: name.to_string(), file, json, value, hash })
}

/// Every flow name in the folder (`*.json`), sorted.
pub fn names(flows: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(flows)
        .map(|dir| {
            dir.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The JSON paths where two definitions differ (`/states/1/properties/body`),
/// structurally: key order and formatting do not count.
pub fn diff(local: &Value, deployed: &Value) -> Vec<String> {
    let mut out = Vec::new();
    walk("", local, deployed, &mut out);
    out
}

fn walk(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let p = format!("{path}/{k}");
                match (x.get(k), y.get(k)) {
                    (Some(va), Some(vb)) => walk(&p, va, vb, out),
                    (Some(_), None) => out.push(format!("{p}: only in the local file")),
                    (None, Some(_)) => out.push(format!("{p}: only in Studio")),
                    (None, None) => {}
                }
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            for i in 0..x.len().max(y.len()) {
                let p = format!("{path}/{i}");
                match (x.get(i), y.get(i)) {
                    (Some(va), Some(vb)) => walk(&p, va, vb, out),
                    (Some(_), None) => out.push(format!("{p}: only in the local file")),
                    (None, Some(_)) => out.push(format!("{p}: only in Studio")),
                    (None, None) => {}
                }
            }
        }
        _ if a != b => {
            out.push(format!("{}: {} (local) vs {} (Studio)", if path.is_empty() { "/" } else { path }, a, b))
        }
        _ => {}
    }
}

/// A file name for a Flow pulled from Studio: its friendly name in
/// `[a-z0-9-]`, made unique against `taken`.
pub fn file_name_for(friendly: &str, taken: &HashSet<String>) -> String {
    let mut base: String = friendly
        .to_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect::<String>()
        .split('-')
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    if base.is_empty() {
        base = "flow".into();
    }
    let mut name = base.clone();
    let mut n = 2;
    while taken.contains(&name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}

/// One deployed flow, as the lock file records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Deployed {
    pub sid: String,
    pub revision: i64,
    pub hash: String,
}

/// `flows/flows.lock.toml`: account SID → flow name → what was deployed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Lock(pub BTreeMap<String, BTreeMap<String, Deployed>>);

impl Lock {
    pub fn path(flows: &Path) -> PathBuf {
        flows.join("flows.lock.toml")
    }

    pub fn read(flows: &Path) -> Result<Lock, FlowError> {
        let path = Self::path(flows);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| FlowError::Read { file: path.display().to_string(), message: e.message().to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Lock::default()),
            Err(e) => Err(FlowError::Read { file: path.display().to_string(), message: e.to_string() }),
        }
    }

    /// Writes the lock file atomically: a temporary file, then a rename, so a
    /// crash never leaves half a lock file.
    pub fn write(&self, flows: &Path) -> Result<(), FlowError> {
        let path = Self::path(flows);
        let shown = path.display().to_string();
        let io = |e: std::io::Error| FlowError::Read { file: shown.clone(), message: e.to_string() };
        let text = format!(
            "# Written by `flowcast flows deploy`: for each account SID, each flow's Studio SID,\n# its last deployed revision and the hash of the definition deployed.\n{}",
            toml::to_string(self).map_err(|e| FlowError::Read { file: shown.clone(), message: e.to_string() })?
        );
        let tmp = path.with_extension("toml.tmp");
        std::fs::write(&tmp, text).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        Ok(())
    }

    pub fn get(&self, account: &str, name: &str) -> Option<&Deployed> {
        self.0.get(account).and_then(|a| a.get(name))
    }

    pub fn set(&mut self, account: &str, name: &str, deployed: Deployed) {
        self.0.entry(account.to_string()).or_default().insert(name.to_string(), deployed);
    }
}

pub use crate::domain::OPT_OUT_KEYWORDS;

/// Warnings about a definition that Studio would accept: a split that expects
/// a reply which is one of Twilio's opt-out keywords (the contact who sends it
/// is unsubscribed, not just routed down that branch).
pub fn warnings(file: &str, value: &Value) -> Vec<String> {
    let mut found = Vec::new();
    for state in value["states"].as_array().map(Vec::as_slice).unwrap_or_default() {
        if state["type"].as_str() != Some("split-based-on") {
            continue;
        }
        let name = state["name"].as_str().unwrap_or_default();
        for t in state["transitions"].as_array().map(Vec::as_slice).unwrap_or_default() {
            for c in t["conditions"].as_array().map(Vec::as_slice).unwrap_or_default() {
                let value = c["value"].as_str().unwrap_or_default();
                for word in value.split(',').map(str::trim) {
                    if let Some(keyword) = OPT_OUT_KEYWORDS.iter().find(|k| k.eq_ignore_ascii_case(word)) {
                        found.push(format!(
                            "{file}: warning: split {name:?} expects the reply {word:?}, one of Twilio's opt-out keywords: a contact who sends {keyword} is unsubscribed from every message of this sender; ask for another reply (e.g. 1 or 2)"
                        ));
                    }
                }
            }
        }
    }
    found
}

/// Studio's definition of a pulled Flow, with the `${VAR}` placeholders of the
/// local `template` kept wherever Studio's value is what the placeholder would
/// have produced (so a pull does not bake one account's values into a file
/// meant for every account). Returns the definition and the JSON paths where a
/// placeholder had to give way to a different value.
pub fn keep_placeholders(template: &Value, deployed: &Value) -> (Value, Vec<String>) {
    let mut replaced = Vec::new();
    let kept = keep_at(template, deployed, String::new(), &mut replaced);
    (kept, replaced)
}

fn keep_at(template: &Value, deployed: &Value, path: String, replaced: &mut Vec<String>) -> Value {
    match (template, deployed) {
        (Value::String(t), Value::String(d)) if t.contains("${") => {
            if matches_placeholders(t, d) {
                Value::String(t.clone())
            } else {
                replaced.push(if path.is_empty() { "/".into() } else { path });
                deployed.clone()
            }
        }
        (Value::Object(t), Value::Object(d)) => Value::Object(
            d.iter()
                .map(|(k, v)| {
                    let value = match t.get(k) {
                        Some(tv) => keep_at(tv, v, format!("{path}/{k}"), replaced),
                        None => v.clone(),
                    };
                    (k.clone(), value)
                })
                .collect(),
        ),
        (Value::Array(t), Value::Array(d)) => Value::Array(
            d.iter()
                .enumerate()
                .map(|(i, v)| match t.get(i) {
                    Some(tv) => keep_at(tv, v, format!("{path}/{i}"), replaced),
                    None => v.clone(),
                })
                .collect(),
        ),
        _ => deployed.clone(),
    }
}

/// Whether `value` is what `template` gives for some values of its `${VAR}`s:
/// the literal parts, in order, with anything between them.
fn matches_placeholders(template: &str, value: &str) -> bool {
    let mut literals = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        literals.push(&rest[..start]);
        match rest[start..].find('}') {
            Some(end) => rest = &rest[start + end + 1..],
            None => return template == value,
        }
    }
    let last = rest;
    let Some((first, middle)) = literals.split_first() else {
        return template == value;
    };
    let Some(mut remaining) = value.strip_prefix(first) else {
        return false;
    };
    for literal in middle {
        match remaining.find(literal) {
            Some(at) => remaining = &remaining[at + literal.len()..],
            None => return false,
        }
    }
    remaining.ends_with(last)
}

/// How a campaign's Flow SID is found when the campaign names a flow file
/// instead of a SID.
pub trait FlowResolver: Send + Sync + 'static {
    fn resolve(&self, campaign: &Campaign) -> Result<FlowSid, String>;
}

/// Resolves flow names through the lock file, for one account.
pub struct LockFileResolver {
    pub flows: PathBuf,
    pub account_sid: String,
}

impl LockFileResolver {
    /// The SID of the flow named `name` (a file in `flows/`), from the lock
    /// file, for this account.
    pub fn resolve_name(&self, name: &str) -> Result<FlowSid, String> {
        let lock = Lock::read(&self.flows).map_err(|e| e.to_string())?;
        let deployed = lock.get(&self.account_sid, name).ok_or_else(|| {
            format!(
                "flow {name:?} is not deployed for account {} (no entry in {}); deploy it first",
                self.account_sid,
                Lock::path(&self.flows).display()
            )
        })?;
        FlowSid::parse(&deployed.sid).map_err(|e| format!("{}: {name}: {e}", Lock::path(&self.flows).display()))
    }
}

impl FlowResolver for LockFileResolver {
    fn resolve(&self, campaign: &Campaign) -> Result<FlowSid, String> {
        match &campaign.flow {
            FlowRef::Sid(sid) => Ok(sid.clone()),
            FlowRef::Name(name) => self.resolve_name(name),
        }
    }
}

/// Resolves only Flow SIDs; flow names need `flows deploy`.
pub struct SidOnly;

impl FlowResolver for SidOnly {
    fn resolve(&self, campaign: &Campaign) -> Result<FlowSid, String> {
        match &campaign.flow {
            FlowRef::Sid(s) => Ok(s.clone()),
            FlowRef::Name(n) => Err(format!("flow {n:?} is not deployed")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn placeholders_are_replaced_and_an_unset_one_names_file_and_variable() {
        let out = substitute(
            "f.json",
            r#"{"url": "${BASE}/x", "n": "$notvar", "q": "${QUOTE}"}"#,
            &vars(&[("BASE", "https://a"), ("QUOTE", "say \"hi\"")]),
        )
        .unwrap();
        assert_eq!(out, r#"{"url": "https://a/x", "n": "$notvar", "q": "say \"hi\""}"#);
        let err = substitute("flows/survey.json", "${MISSING}", &vars(&[])).unwrap_err().to_string();
        assert_eq!(err, "flows/survey.json: ${MISSING} is not set (set it in the environment or in --env-file)");
    }

    #[test]
    fn diffs_are_structural_and_name_their_paths() {
        let a = serde_json::json!({"b": 1, "a": [1, {"x": "y"}]});
        let b = serde_json::json!({"a": [1, {"x": "z"}], "b": 1, "c": true});
        assert_eq!(diff(&a, &b), ["/a/1/x: \"y\" (local) vs \"z\" (Studio)", "/c: only in Studio"]);
        assert!(diff(&a, &a.clone()).is_empty());
    }

    #[test]
    fn a_pull_keeps_the_placeholders_that_studios_values_match() {
        let template = serde_json::json!({"states": [{"properties": {
            "body": "Hi from ${CLINIC} at ${PHONE}", "url": "${BASE}/hook", "plain": "x"}}]});
        let deployed = serde_json::json!({"states": [{"properties": {
            "body": "Hi from Main St at +1 555", "url": "https://other.example/moved", "plain": "y", "new": 1}}]});
        let (kept, replaced) = keep_placeholders(&template, &deployed);
        assert_eq!(kept["states"][0]["properties"]["body"], "Hi from ${CLINIC} at ${PHONE}");
        assert_eq!(kept["states"][0]["properties"]["url"], "https://other.example/moved");
        assert_eq!(kept["states"][0]["properties"]["plain"], "y");
        assert_eq!(kept["states"][0]["properties"]["new"], 1);
        assert_eq!(replaced, ["/states/0/properties/url"]);
        assert!(matches_placeholders("${A}", "anything"));
        assert!(!matches_placeholders("a-${B}-c", "a-b-d"));
    }

    #[test]
    fn a_split_on_an_opt_out_keyword_is_warned_about() {
        let flow = serde_json::json!({"states": [{"name": "split_reply", "type": "split-based-on", "transitions": [
            {"event": "match", "next": "x", "conditions": [{"type": "matches_any_of", "value": "1, Confirm"}]},
            {"event": "match", "next": "y", "conditions": [{"type": "matches_any_of", "value": "2,cancel"}]}]}]});
        let found = warnings("f.json", &flow);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("split \"split_reply\" expects the reply \"cancel\""), "{found:?}");
    }

    #[test]
    fn pulled_names_are_slugs_made_unique() {
        let mut taken = HashSet::new();
        assert_eq!(file_name_for("Appointment Reminder (v2)", &taken), "appointment-reminder-v2");
        taken.insert("survey".to_string());
        assert_eq!(file_name_for("Survey", &taken), "survey-2");
    }

    #[test]
    fn the_shape_of_a_definition_is_checked() {
        let ok = serde_json::json!({"description": "d", "states": [{"name": "Trigger", "type": "trigger"}], "initial_state": "Trigger", "flags": {}});
        assert!(check_shape("f", &ok).is_ok());
        let mut bad = ok.clone();
        bad["initial_state"] = "Nowhere".into();
        assert!(check_shape("f", &bad).unwrap_err().to_string().contains("names no state"));
        let mut twice = ok.clone();
        twice["states"] = serde_json::json!([{"name": "A", "type": "x"}, {"name": "A", "type": "y"}]);
        assert!(check_shape("f", &twice).unwrap_err().to_string().contains("used twice"));
        let mut dangling = ok.clone();
        dangling["states"][0]["transitions"] = serde_json::json!([{"event": "incomingRequest", "next": "nowhere"}]);
        let err = check_shape("f", &dangling).unwrap_err().to_string();
        assert!(err.contains("transition \"incomingRequest\" goes to \"nowhere\", which is not a state"), "{err}");
        let mut ends = ok.clone();
        ends["states"][0]["transitions"] = serde_json::json!([{"event": "incomingRequest", "next": ""}]);
        assert!(check_shape("f", &ends).is_ok(), "an empty next ends the Flow");
    }
}
