//! The campaign file parser: TOML text → raw struct (every field with its
//! span) → a validated [`Campaign`], with every problem found reported as
//! `file:line: message`, all at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use chrono_tz::Tz;
use serde::Deserialize;
use serde::de::Error as _;
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use super::{Campaign, CampaignError, Diagnostic, FlowRef, Folders, ParamValue, Sender};
use crate::contacts;
use crate::domain::{
    CampaignKind, Channel, ConflictPolicy, Dedupe, FlowSid, NotifyRule, OutcomeField, OutcomeType, Phone, SendWindow,
    Template, TimeTemplate, parse_duration_at_most, parse_region,
};

/// The longest a job may wait for a busy contact. A wait of weeks is already a
/// campaign stuck in the ledger; past this it is a typo.
const MAX_WAIT_LIMIT: Duration = Duration::from_secs(30 * 86_400);

/// The keys of a campaign file, in the order messages list them.
const FIELDS: &[&str] = &[
    "name",
    "kind",
    "flow",
    "from",
    "contacts",
    "schedule",
    "timezone",
    "on_conflict",
    "max_wait",
    "rate",
    "default_region",
    "phone_column",
    "send_window",
    "send_at",
    "expires",
    "enabled",
    "parameters",
    "outcomes",
    "channel",
    "contact_limits",
    "dedupe",
    "trigger",
    "notify",
];

/// The keys of `notify`.
const NOTIFY_FIELDS: &[&str] = &["url", "events"];

/// The keys of `dedupe`.
const DEDUPE_FIELDS: &[&str] = &["key", "within"];

/// The keys of `send_window`.
const WINDOW_FIELDS: &[&str] = &["start", "end"];

/// The keys a file must have.
const REQUIRED: &[&str] = &["kind", "flow", "from", "contacts"];

/// A campaign file's known keys, typed. Unknown keys are found (all of them)
/// before this is read, and the required ones are optional here so that a
/// missing one is reported next to every other mistake.
#[derive(Debug, Deserialize)]
struct RawCampaign {
    name: Option<Spanned<String>>,
    kind: Option<Spanned<String>>,
    flow: Option<Spanned<String>>,
    from: Option<Spanned<String>>,
    contacts: Option<Spanned<String>>,
    schedule: Option<Spanned<String>>,
    timezone: Option<Spanned<String>>,
    on_conflict: Option<Spanned<String>>,
    max_wait: Option<Spanned<String>>,
    rate: Option<Spanned<i64>>,
    default_region: Option<Spanned<String>>,
    phone_column: Option<Spanned<String>>,
    send_window: Option<Spanned<RawWindow>>,
    send_at: Option<Spanned<String>>,
    expires: Option<Spanned<String>>,
    enabled: Option<bool>,
    parameters: Option<BTreeMap<Spanned<String>, Spanned<toml::Value>>>,
    outcomes: Option<BTreeMap<Spanned<String>, Spanned<toml::Value>>>,
    channel: Option<Spanned<String>>,
    contact_limits: Option<Spanned<String>>,
    dedupe: Option<Spanned<RawDedupe>>,
    trigger: Option<Spanned<String>>,
    notify: Option<Spanned<RawNotify>>,
}

#[derive(Debug, Deserialize)]
struct RawNotify {
    url: String,
    events: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
struct RawDedupe {
    key: Option<Spanned<String>>,
    within: Spanned<String>,
}

#[derive(Debug, Deserialize)]
struct RawWindow {
    start: String,
    end: String,
}

/// Collects diagnostics for one file, turning byte spans into line numbers.
struct Problems<'a> {
    file: &'a Path,
    text: &'a str,
    found: Vec<Diagnostic>,
    warnings: Vec<Diagnostic>,
}

impl<'a> Problems<'a> {
    fn line_of(&self, offset: usize) -> u64 {
        let offset = offset.min(self.text.len());
        self.text.as_bytes()[..offset].iter().filter(|b| **b == b'\n').count() as u64 + 1
    }

    fn at(&mut self, span: std::ops::Range<usize>, message: impl Into<String>) {
        let line = self.line_of(span.start);
        self.found.push(Diagnostic { file: self.file.to_path_buf(), line, message: message.into() });
    }

    fn at_line(&mut self, line: u64, message: impl Into<String>) {
        self.found.push(Diagnostic { file: self.file.to_path_buf(), line, message: message.into() });
    }

    fn warn(&mut self, span: std::ops::Range<usize>, message: impl Into<String>) {
        let line = self.line_of(span.start);
        self.warnings.push(Diagnostic { file: self.file.to_path_buf(), line, message: message.into() });
    }
}

/// serde's own wording for an unknown key, so every unknown key reads the
/// same as the first one always has.
fn unknown_key(key: &str, expected: &'static [&'static str]) -> String {
    serde::de::value::Error::unknown_field(key, expected).to_string()
}

/// Reads the file's known keys. Every unknown key (at the top and inside
/// `send_window`) and every key whose value has the wrong type is reported;
/// the rest are kept, so the checks that follow still see them. `None` only
/// when the text is not TOML at all.
fn read_raw(text: &str, p: &mut Problems) -> Option<RawCampaign> {
    let document = match DeTable::parse(text) {
        Ok(document) => document,
        Err(e) => {
            let line = e.span().map_or(1, |s| p.line_of(s.start));
            p.at_line(line, e.message().trim().to_string());
            return None;
        }
    };
    let whole = document.span();
    let mut missing = Vec::new();
    // Contacts pushed over HTTP need no file.
    let pushed = document
        .get_ref()
        .get("trigger")
        .is_some_and(|v| matches!(v.get_ref(), DeValue::String(t) if t.trim() == "api"));
    for key in REQUIRED {
        let needed = !(pushed && *key == "contacts");
        if needed && !document.get_ref().contains_key(*key) {
            missing.push(*key);
        }
    }
    let mut unknown = Vec::new();
    let mut known = DeTable::new();
    for (key, mut value) in document.into_inner() {
        if !FIELDS.contains(&key.get_ref().as_ref()) {
            unknown.push((key.span(), unknown_key(key.get_ref(), FIELDS)));
            continue;
        }
        let fields = match key.get_ref().as_ref() {
            "send_window" => Some(WINDOW_FIELDS),
            "dedupe" => Some(DEDUPE_FIELDS),
            "notify" => Some(NOTIFY_FIELDS),
            _ => None,
        };
        if let Some(fields) = fields
            && let DeValue::Table(table) = value.get_mut()
        {
            let strangers: Vec<_> = table.keys().filter(|k| !fields.contains(&k.get_ref().as_ref())).cloned().collect();
            for k in strangers {
                table.remove(k.get_ref().as_ref());
                unknown.push((k.span(), unknown_key(k.get_ref(), fields)));
            }
        }
        known.insert(key, value);
    }
    unknown.sort_by_key(|(span, _)| span.start);
    for (span, message) in unknown {
        p.at(span, message);
    }
    for key in missing {
        p.at_line(1, format!("missing field `{key}`"));
    }
    // serde stops at the first value of the wrong type: report it, set that
    // key aside, and read again, until the rest reads cleanly.
    loop {
        let root = Spanned::new(whole.clone(), DeValue::Table(known.clone()));
        match RawCampaign::deserialize(ValueDeserializer::from(root)) {
            Ok(raw) => return Some(raw),
            Err(e) => {
                let line = e.span().map_or(1, |s| p.line_of(s.start));
                p.at_line(line, e.message().trim().to_string());
                let culprit = e.span().and_then(|s| {
                    known
                        .iter()
                        .find(|(k, v)| k.span() == s || (v.span().start <= s.start && s.end <= v.span().end))
                        .map(|(k, _)| k.get_ref().to_string())
                });
                match culprit {
                    Some(key) => {
                        known.remove(key.as_str());
                    }
                    None => return None,
                }
            }
        }
    }
}

/// The campaign name rule: `[a-z0-9-]+`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Parses and checks one campaign file's text. `file` is used in messages and to
/// resolve `contacts`; the CSV header is read to check template columns.
pub fn parse_campaign(file: &Path, text: &str, folders: &Folders) -> Result<Campaign, CampaignError> {
    let mut p = Problems { file, text, found: Vec::new(), warnings: Vec::new() };
    let Some(raw) = read_raw(text, &mut p) else {
        return Err(CampaignError { diagnostics: p.found });
    };

    let name = match &raw.name {
        Some(n) => {
            if !is_valid_name(n.get_ref()) {
                p.at(n.span(), format!("name {:?} must match [a-z0-9-]+", n.get_ref()));
            }
            n.get_ref().clone()
        }
        None => {
            let stem = file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            if !is_valid_name(&stem) {
                p.at_line(
                    1,
                    format!("file name {stem:?} is not a valid campaign name ([a-z0-9-]+); set name = \"...\""),
                );
            }
            stem
        }
    };

    let kind = raw.kind.as_ref().map_or(CampaignKind::Reminder, |kind| {
        kind.get_ref().parse::<CampaignKind>().unwrap_or_else(|e| {
            p.at(kind.span(), e);
            CampaignKind::Reminder
        })
    });

    let flow = raw.flow.as_ref().and_then(|flow| parse_flow(flow, folders, &mut p));

    let from = raw.from.as_ref().map_or(Sender(String::new()), |from| parse_from(from, &mut p));

    let timezone = match &raw.timezone {
        Some(tz) => Tz::from_str(tz.get_ref().trim()).unwrap_or_else(|_| {
            p.at(tz.span(), format!("timezone {:?} is not an IANA time zone (e.g. America/New_York)", tz.get_ref()));
            chrono_tz::UTC
        }),
        None => chrono_tz::UTC,
    };

    let schedule = raw.schedule.as_ref().and_then(|s| match crate::schedule::Schedule::parse(s.get_ref()) {
        // A line that parses but never comes round would leave the campaign
        // waiting forever, looking like a one-off that never ran.
        Ok(schedule)
            if crate::schedule::first_fire_within_horizon(schedule.cron(), timezone, chrono::Utc::now()).is_none() =>
        {
            p.at(
                s.span(),
                format!(
                    "schedule: {:?} has no fire time in the next {} years; check its day and month",
                    s.get_ref().trim(),
                    crate::schedule::FIRE_HORIZON_YEARS
                ),
            );
            None
        }
        Ok(schedule) => Some(schedule),
        Err(e) => {
            p.at(s.span(), format!("schedule: {e}"));
            None
        }
    });

    let max_wait = match &raw.max_wait {
        Some(m) => match parse_duration_at_most(m.get_ref(), MAX_WAIT_LIMIT) {
            Ok(d) if d.is_zero() => {
                p.at(m.span(), "max_wait must be longer than 0s");
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                p.at(m.span(), format!("max_wait: {e}"));
                None
            }
        },
        None => None,
    };
    let on_conflict = match &raw.on_conflict {
        None => ConflictPolicy::Skip,
        Some(name) => ConflictPolicy::from_parts(name.get_ref(), max_wait).unwrap_or_else(|e| {
            p.at(name.span(), e);
            ConflictPolicy::Skip
        }),
    };
    // Harmless (the bound is simply unused), so it does not refuse the file.
    if let (Some(m), None) = (&raw.max_wait, on_conflict.max_wait()) {
        p.warn(m.span(), "max_wait only applies with on_conflict = \"wait\"; it is ignored");
    }

    let rate = raw.rate.as_ref().and_then(|r| match u32::try_from(*r.get_ref()) {
        Ok(v) if (1..=10_000).contains(&v) => Some(v),
        _ => {
            p.at(r.span(), format!("rate {} must be a whole number of executions per second, 1 to 10000", r.get_ref()));
            None
        }
    });

    let default_region = raw.default_region.as_ref().and_then(|r| {
        let region = parse_region(r.get_ref());
        if region.is_none() {
            p.at(
                r.span(),
                format!("default_region {:?} is not a two-letter region code (e.g. US, GB, DE)", r.get_ref()),
            );
        }
        region
    });

    let phone_column = raw.phone_column.as_ref().map_or_else(|| "phone".to_string(), |c| c.get_ref().clone());

    let send_window =
        raw.send_window.as_ref().and_then(|w| match SendWindow::parse(&w.get_ref().start, &w.get_ref().end) {
            Ok(window) => Some(window),
            Err(e) => {
                p.at(w.span(), e);
                None
            }
        });

    let time_template = |field: &str, value: &Option<Spanned<String>>, p: &mut Problems| {
        value.as_ref().and_then(|t| match TimeTemplate::parse(t.get_ref()) {
            Ok(tt) => Some((tt, t.span())),
            Err(e) => {
                p.at(t.span(), format!("{field}: {e}"));
                None
            }
        })
    };
    let send_at = time_template("send_at", &raw.send_at, &mut p);
    let expires = time_template("expires", &raw.expires, &mut p);

    let mut parameters: Option<BTreeMap<String, (ParamValue, std::ops::Range<usize>)>> = None;
    if let Some(raw_params) = &raw.parameters {
        let mut map = BTreeMap::new();
        for (key, value) in raw_params {
            if key.get_ref() == "flowcast" {
                p.at(key.span(), "parameter \"flowcast\" is reserved: flowcast adds it to every Execution");
                continue;
            }
            let parsed = match value.get_ref() {
                toml::Value::String(s) => match Template::parse(s) {
                    Ok(t) if t.columns().next().is_some() => ParamValue::Template(t),
                    Ok(_) => ParamValue::Constant(serde_json::Value::String(s.clone())),
                    Err(e) => {
                        p.at(value.span(), format!("parameters.{}: {e}", key.get_ref()));
                        continue;
                    }
                },
                other => match serde_json::to_value(other) {
                    Ok(v) => ParamValue::Constant(v),
                    Err(e) => {
                        p.at(value.span(), format!("parameters.{}: {e}", key.get_ref()));
                        continue;
                    }
                },
            };
            map.insert(key.get_ref().clone(), (parsed, value.span()));
        }
        parameters = Some(map);
    }

    let outcomes = raw.outcomes.as_ref().map(|table| parse_outcomes(table, &mut p)).unwrap_or_default();

    let channel = match &raw.channel {
        Some(c) => c.get_ref().trim().parse::<Channel>().unwrap_or_else(|e| {
            p.at(c.span(), e);
            Channel::Sms
        }),
        None => Channel::implied_by(from.as_str()),
    };
    let limits_exempt = match &raw.contact_limits {
        None => false,
        Some(v) if v.get_ref().trim() == "exempt" => true,
        Some(v) if v.get_ref().trim() == "apply" => false,
        Some(v) => {
            p.at(v.span(), format!("contact_limits {:?} must be \"exempt\" or \"apply\"", v.get_ref()));
            false
        }
    };
    let dedupe = raw.dedupe.as_ref().map(|d| {
        let d = d.get_ref();
        let within = match Dedupe::within(d.within.get_ref()) {
            Ok(w) => Some(w),
            Err(e) => {
                p.at(d.within.span(), format!("dedupe.within: {e}"));
                None
            }
        };
        let key = match &d.key {
            None => Ok(None),
            Some(k) => match Template::parse(k.get_ref()) {
                Ok(t) if t.columns().next().is_some() => Ok(Some((t, k.span()))),
                Ok(_) => Err((k.span(), "dedupe.key must name at least one column, e.g. \"{{order_id}}\"".to_string())),
                Err(e) => Err((k.span(), format!("dedupe.key: {e}"))),
            },
        };
        let key = key.unwrap_or_else(|(span, message)| {
            p.at(span, message);
            None
        });
        // The key's columns are checked against the CSV even when `within`
        // is wrong, so both mistakes are reported in one pass.
        (key, within)
    });
    let notify = raw.notify.as_ref().and_then(|n| {
        NotifyRule::parse(&n.get_ref().url, n.get_ref().events.as_deref()).map_err(|e| p.at(n.span(), e)).ok()
    });

    let pushed = match &raw.trigger {
        None => false,
        Some(t) if t.get_ref().trim() == "api" => true,
        Some(t) => {
            p.at(
                t.span(),
                format!("trigger {:?}: the only trigger is \"api\" (contacts pushed over HTTP)", t.get_ref()),
            );
            false
        }
    };
    if pushed {
        if let Some(c) = &raw.contacts {
            p.at(c.span(), "trigger = \"api\" takes its contacts over HTTP; remove `contacts`");
        }
        if let Some(s) = &raw.schedule {
            p.at(s.span(), "trigger = \"api\" sends when contacts arrive; remove `schedule`");
        }
    }

    // The contacts path must exist and stay inside the campaigns folder, and every
    // column a template names must be in its header.
    let contacts =
        if pushed { None } else { raw.contacts.as_ref().and_then(|c| resolve_contacts(file, c, folders, &mut p)) };
    if let (Some(path), Some(raw_contacts)) = (&contacts, &raw.contacts) {
        match contacts::read_header(path) {
            Ok(header) => {
                let has = |c: &str| header.iter().any(|h| h == c);
                if !has(&phone_column) {
                    let span = raw.phone_column.as_ref().map_or(raw_contacts.span(), |c| c.span());
                    p.at(
                        span,
                        format!(
                            "{}: no {phone_column:?} column for phone numbers (columns: {})",
                            path.display(),
                            header.join(", ")
                        ),
                    );
                }
                let check = |columns: Vec<&str>, span: std::ops::Range<usize>, field: &str, p: &mut Problems| {
                    for c in columns {
                        if !has(c) {
                            p.at(
                                span.clone(),
                                format!(
                                    "{field}: column {c:?} is not in {} (columns: {})",
                                    path.display(),
                                    header.join(", ")
                                ),
                            );
                        }
                    }
                };
                if let Some((t, span)) = &send_at {
                    check(t.columns().collect(), span.clone(), "send_at", &mut p);
                }
                if let Some((t, span)) = &expires {
                    check(t.columns().collect(), span.clone(), "expires", &mut p);
                }
                if let Some((Some((t, span)), _)) = &dedupe {
                    check(t.columns().collect(), span.clone(), "dedupe.key", &mut p);
                }
                if let Some(map) = &parameters {
                    for (key, (value, span)) in map {
                        if let ParamValue::Template(t) = value {
                            check(t.columns().collect(), span.clone(), &format!("parameters.{key}"), &mut p);
                        }
                    }
                }
            }
            Err(e) => p.at(raw_contacts.span(), e.to_string()),
        }
    }

    if !p.found.is_empty() {
        return Err(CampaignError { diagnostics: p.found });
    }
    Ok(Campaign {
        name,
        kind,
        flow: flow.expect("no problems means the flow parsed"),
        from,
        contacts: if pushed { None } else { Some(contacts.expect("no problems means the contacts path resolved")) },
        schedule,
        timezone,
        on_conflict,
        rate,
        default_region,
        phone_column,
        send_window,
        send_at: send_at.map(|(t, _)| t),
        expires: expires.map(|(t, _)| t),
        enabled: raw.enabled.unwrap_or(true),
        parameters: parameters.map(|m| m.into_iter().map(|(k, (v, _))| (k, v)).collect()),
        outcomes,
        channel,
        limits_exempt,
        notify,
        dedupe: dedupe.and_then(|(key, within)| Some(Dedupe { key: key.map(|(t, _)| t), within: within? })),
        source: file.to_path_buf(),
        warnings: p.warnings,
    })
}

/// `[outcomes]`: `NAME = "PATH"`, or `NAME = { path = "PATH", type = T }`.
fn parse_outcomes(table: &BTreeMap<Spanned<String>, Spanned<toml::Value>>, p: &mut Problems) -> Vec<OutcomeField> {
    let mut fields = Vec::new();
    for (name, value) in table {
        let (path, kind) = match value.get_ref() {
            toml::Value::String(path) => (path.clone(), OutcomeType::String),
            toml::Value::Table(t) => {
                let strangers: Vec<&String> = t.keys().filter(|k| *k != "path" && *k != "type").collect();
                if !strangers.is_empty() {
                    p.at(
                        value.span(),
                        format!("outcomes.{}: unknown key {:?}; use path and type", name.get_ref(), strangers[0]),
                    );
                    continue;
                }
                let Some(path) = t.get("path").and_then(toml::Value::as_str) else {
                    p.at(value.span(), format!("outcomes.{}: path (a string) is required", name.get_ref()));
                    continue;
                };
                let kind = match t.get("type").map(|v| v.as_str().unwrap_or_default().parse::<OutcomeType>()) {
                    None => OutcomeType::String,
                    Some(Ok(kind)) => kind,
                    Some(Err(e)) => {
                        p.at(value.span(), format!("outcomes.{}: {e}", name.get_ref()));
                        continue;
                    }
                };
                (path.to_string(), kind)
            }
            _ => {
                p.at(
                    value.span(),
                    format!("outcomes.{}: write a path string or {{ path = \"…\", type = \"…\" }}", name.get_ref()),
                );
                continue;
            }
        };
        match OutcomeField::new(name.get_ref(), &path, kind) {
            Ok(field) => fields.push(field),
            Err(e) => p.at(name.span(), format!("outcomes: {e}")),
        }
    }
    fields
}

fn parse_from(raw: &Spanned<String>, p: &mut Problems) -> Sender {
    let from_text = raw.get_ref().trim();
    if let Some(hex) = from_text.strip_prefix("MG") {
        if hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            Sender(from_text.to_string())
        } else {
            p.at(raw.span(), format!("from {from_text:?} is not a Messaging Service SID (MG + 32 hex digits)"));
            Sender(String::new())
        }
    } else if !from_text.starts_with('+') {
        p.at(
            raw.span(),
            format!("from {from_text:?} must be an E.164 number (+15017122661) or a Messaging Service SID (MG…)"),
        );
        Sender(String::new())
    } else {
        match Phone::parse(from_text, None) {
            Ok(phone) => Sender(phone.as_str().to_string()),
            Err(e) => {
                p.at(raw.span(), format!("from: {e}"));
                Sender(String::new())
            }
        }
    }
}

fn parse_flow(raw: &Spanned<String>, folders: &Folders, p: &mut Problems) -> Option<FlowRef> {
    let text = raw.get_ref().trim();
    // Anything that starts like a SID is held to the SID shape, so a typo in a SID
    // is not mistaken for a flow name.
    if text.len() >= 2 && text.as_bytes()[0].is_ascii_uppercase() && text.as_bytes()[1].is_ascii_uppercase() {
        return match FlowSid::parse(text) {
            Ok(sid) => Some(FlowRef::Sid(sid)),
            Err(e) => {
                p.at(raw.span(), format!("flow: {e}"));
                None
            }
        };
    }
    if !is_valid_name(text) && !text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        p.at(
            raw.span(),
            format!("flow {text:?} is neither a Flow SID (FW + 32 hex digits) nor a flow name in the flows folder"),
        );
        return None;
    }
    let definition = folders.flows.join(format!("{text}.json"));
    if !definition.is_file() {
        p.at(
            raw.span(),
            format!("flow {text:?}: no definition {} (a Flow SID is FW + 32 hex digits)", definition.display()),
        );
        return None;
    }
    Some(FlowRef::Name(text.to_string()))
}

fn resolve_contacts(file: &Path, raw: &Spanned<String>, folders: &Folders, p: &mut Problems) -> Option<PathBuf> {
    let rel = Path::new(raw.get_ref().trim());
    if rel.as_os_str().is_empty() {
        p.at(raw.span(), "contacts must name a CSV file");
        return None;
    }
    if rel.is_absolute() {
        p.at(raw.span(), format!("contacts {:?} must be relative to the campaign file", raw.get_ref()));
        return None;
    }
    let dir = file.parent().unwrap_or(Path::new("."));
    let joined = dir.join(rel);
    let root = match folders.campaigns.canonicalize() {
        Ok(r) => r,
        Err(e) => {
            p.at(raw.span(), format!("campaigns folder {}: {e}", folders.campaigns.display()));
            return None;
        }
    };
    match joined.canonicalize() {
        // Kept as written (relative to the campaign file) for messages; the
        // canonical path was only needed for the containment check.
        Ok(real) if real.starts_with(&root) => Some(joined),
        Ok(_) => {
            p.at(
                raw.span(),
                format!("contacts {:?} is outside the campaigns folder {}", raw.get_ref(), folders.campaigns.display()),
            );
            None
        }
        Err(_) => {
            // A missing file that would also be outside is reported as outside:
            // the path itself is the mistake.
            let escapes = rel.components().any(|c| matches!(c, std::path::Component::ParentDir));
            if escapes {
                p.at(
                    raw.span(),
                    format!(
                        "contacts {:?} is outside the campaigns folder {}",
                        raw.get_ref(),
                        folders.campaigns.display()
                    ),
                );
            } else {
                p.at(raw.span(), format!("contacts file {} not found", joined.display()));
            }
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    struct Dir {
        _tmp: tempfile::TempDir,
        folders: Folders,
    }

    fn dir_with_csv(csv: &str) -> Dir {
        let tmp = tempfile::tempdir().unwrap();
        let campaigns = tmp.path().join("campaigns");
        let flows = tmp.path().join("flows");
        std::fs::create_dir_all(&campaigns).unwrap();
        std::fs::create_dir_all(&flows).unwrap();
        std::fs::write(campaigns.join("appointments.csv"), csv).unwrap();
        Dir { _tmp: tmp, folders: Folders { campaigns, flows } }
    }

    fn parse(dir: &Dir, file: &str, text: &str) -> Result<Campaign, CampaignError> {
        parse_campaign(&dir.folders.campaigns.join(file), text, &dir.folders)
    }

    const FULL_EXAMPLE: &str = r#"name        = "appointment-reminders"
kind        = "reminder"
flow        = "FW0123456789abcdef0123456789abcdef"
from        = "+15017122661"
contacts    = "appointments.csv"
schedule    = "0 9 * * Mon-Fri"
timezone    = "America/New_York"
on_conflict = "wait"
max_wait    = "2h"
rate        = 5
default_region = "US"
send_window = { start = "08:00", end = "21:00" }
send_at     = "{{appointment_at}} - 24h"
expires     = "{{appointment_at}}"
enabled     = true

[parameters]
name        = "{{first_name}}"
appointment = "{{appointment_at}}"
clinic      = "Main St"
floor       = 3
"#;

    #[test]
    fn the_spec_example_parses_with_every_field() {
        let dir = dir_with_csv("phone,first_name,appointment_at\n+12015550123,Ada,2030-01-02 10:00\n");
        let c = parse(&dir, "x.toml", FULL_EXAMPLE).unwrap();
        assert_eq!(c.name, "appointment-reminders");
        assert_eq!(c.kind, CampaignKind::Reminder);
        assert_eq!(c.on_conflict, ConflictPolicy::Wait { max_wait: Duration::from_secs(7200) });
        assert_eq!(c.rate, Some(5));
        assert_eq!(c.timezone, chrono_tz::America::New_York);
        let window = c.send_window.unwrap();
        assert_eq!((window.start.to_string(), window.end.to_string()), ("08:00:00".into(), "21:00:00".into()));
        let params = c.parameters.unwrap();
        assert_eq!(params["floor"], ParamValue::Constant(serde_json::json!(3)));
        assert_eq!(params["clinic"], ParamValue::Constant(serde_json::json!("Main St")));
        assert!(matches!(params["name"], ParamValue::Template(_)));
    }

    #[test]
    fn the_name_defaults_to_the_file_stem_and_must_be_lowercase() {
        let dir = dir_with_csv("phone\n+12015550123\n");
        let body = "kind = \"survey\"\nflow = \"FW0123456789abcdef0123456789abcdef\"\nfrom = \"+15017122661\"\ncontacts = \"appointments.csv\"\n";
        assert_eq!(parse(&dir, "weekly-survey.toml", body).unwrap().name, "weekly-survey");
        let err = parse(&dir, "Weekly Survey.toml", body).unwrap_err().to_string();
        assert!(
            err.contains("Weekly Survey.toml:1: file name \"Weekly Survey\" is not a valid campaign name"),
            "{err}"
        );
    }

    #[test]
    fn flowcasts_own_parameter_key_is_reserved() {
        let dir = dir_with_csv("phone\n+12015550123\n");
        let body = "kind = \"survey\"\nflow = \"FW0123456789abcdef0123456789abcdef\"\nfrom = \"+15017122661\"\ncontacts = \"appointments.csv\"\n[parameters]\nflowcast = \"x\"\n";
        let err = parse(&dir, "s.toml", body).unwrap_err().to_string();
        assert!(err.contains("s.toml:6: parameter \"flowcast\" is reserved"), "{err}");
    }

    /// A valid survey campaign's first four lines; tests append what they check.
    const SURVEY: &str = "kind = \"survey\"\nflow = \"FW0123456789abcdef0123456789abcdef\"\nfrom = \"+15017122661\"\ncontacts = \"appointments.csv\"\n";

    fn lines_and_messages(err: &CampaignError) -> Vec<(u64, String)> {
        err.diagnostics.iter().map(|d| (d.line, d.message.clone())).collect()
    }

    #[test]
    fn channel_caps_exemption_and_dedupe_are_read_and_bad_ones_named_at_their_line() {
        let dir = dir_with_csv("phone,order_id\n+12015550123,A1\n");
        let c = parse(&dir, "s.toml", SURVEY).unwrap();
        assert_eq!((c.channel, c.limits_exempt, c.dedupe.is_none()), (Channel::Sms, false, true));
        let body = format!(
            "{SURVEY}channel = \"voice\"\ncontact_limits = \"exempt\"\ndedupe = {{ key = \"{{{{order_id}}}}\", within = \"30d\" }}\n"
        );
        let c = parse(&dir, "s.toml", &body).unwrap_or_else(|e| panic!("refused: {e}"));
        assert_eq!((c.channel, c.limits_exempt), (Channel::Voice, true));
        let dedupe = c.dedupe.unwrap();
        assert_eq!(dedupe.within, Duration::from_secs(30 * 86_400));
        assert_eq!(dedupe.key.unwrap().columns().collect::<Vec<_>>(), ["order_id"]);
        let phone_key = parse(&dir, "s.toml", &format!("{SURVEY}dedupe = {{ within = \"1d\" }}\n")).unwrap();
        assert!(phone_key.dedupe.unwrap().key.is_none(), "no key: the phone");

        let body = format!(
            "{SURVEY}channel = \"fax\"\ncontact_limits = \"sometimes\"\ndedupe = {{ key = \"{{{{order}}}}\", within = \"0s\", by = 1 }}\n"
        );
        let err = parse(&dir, "s.toml", &body).unwrap_err();
        let found = lines_and_messages(&err);
        assert_eq!(found.len(), 5, "{found:?}");
        assert!(found[0].0 == 7 && found[0].1.contains("unknown field `by`"), "{found:?}");
        assert!(found.iter().any(|(l, m)| *l == 5 && m.contains("channel \"fax\" must be one of")), "{found:?}");
        assert!(found.iter().any(|(l, m)| *l == 6 && m.contains("must be \"exempt\"")), "{found:?}");
        assert!(found.iter().any(|(l, m)| *l == 7 && m.starts_with("dedupe.within:")), "{found:?}");
        assert!(
            found.iter().any(|(l, m)| *l == 7 && m.contains("dedupe.key: column \"order\" is not in")),
            "{found:?}"
        );
    }

    #[test]
    fn a_campaign_fed_over_http_has_no_contacts_file_and_no_schedule() {
        let dir = dir_with_csv("phone\n+12015550123\n");
        let head =
            "kind = \"delivery-notice\"\nflow = \"FW0123456789abcdef0123456789abcdef\"\nfrom = \"+15017122661\"\n";
        let c = parse(&dir, "p.toml", &format!("{head}trigger = \"api\"\n")).unwrap_or_else(|e| panic!("{e}"));
        assert!(c.contacts.is_none());
        let body = format!("{head}trigger = \"api\"\ncontacts = \"appointments.csv\"\nschedule = \"0 9 * * *\"\n");
        let found = lines_and_messages(&parse(&dir, "p.toml", &body).unwrap_err());
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found.iter().any(|(l, m)| *l == 5 && m.contains("remove `contacts`")), "{found:?}");
        assert!(found.iter().any(|(l, m)| *l == 6 && m.contains("remove `schedule`")), "{found:?}");
        let found = lines_and_messages(&parse(&dir, "p.toml", &format!("{head}trigger = \"cron\"\n")).unwrap_err());
        assert!(found.iter().any(|(l, m)| *l == 4 && m.contains("the only trigger is \"api\"")), "{found:?}");
        assert!(
            found.iter().any(|(_, m)| m == "missing field `contacts`"),
            "without api, contacts is required: {found:?}"
        );
    }

    #[test]
    fn max_wait_without_the_wait_policy_is_a_warning_and_the_campaign_loads() {
        let dir = dir_with_csv("phone\n+12015550123\n");
        let body = format!("{SURVEY}on_conflict = \"skip\"\nmax_wait = \"1h\"\n");
        let c = parse(&dir, "s.toml", &body).unwrap_or_else(|e| panic!("refused: {e}"));
        assert_eq!(c.on_conflict, ConflictPolicy::Skip);
        let warnings: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].ends_with("s.toml:6: max_wait only applies with on_conflict = \"wait\"; it is ignored"));
    }

    #[test]
    fn a_campaign_without_mistakes_has_no_warnings() {
        let dir = dir_with_csv("phone,first_name,appointment_at\n+12015550123,Ada,2030-01-02 10:00\n");
        assert!(parse(&dir, "x.toml", FULL_EXAMPLE).unwrap().warnings.is_empty());
    }

    #[test]
    fn max_wait_beyond_thirty_days_is_refused_with_its_line_and_the_limit() {
        let dir = dir_with_csv("phone\n+12015550123\n");
        for max_wait in ["18446744073709551615s", "31d", "30d 1s"] {
            let body = format!("{SURVEY}on_conflict = \"wait\"\nmax_wait = \"{max_wait}\"\n");
            let err = parse(&dir, "s.toml", &body).unwrap_err();
            assert_eq!(
                lines_and_messages(&err),
                [(6, format!("max_wait: duration \"{max_wait}\" is longer than 30d, the limit"))]
            );
        }
        let body = format!("{SURVEY}on_conflict = \"wait\"\nmax_wait = \"30d\"\n");
        let c = parse(&dir, "s.toml", &body).unwrap();
        assert_eq!(c.on_conflict, ConflictPolicy::Wait { max_wait: Duration::from_secs(30 * 86_400) });
    }

    #[test]
    fn every_unknown_key_is_reported_with_the_files_other_mistakes() {
        let dir = dir_with_csv("phone\n+12015550123\n");
        let body = format!(
            "{SURVEY}colour = \"blue\"\ntimezone = \"Mars/Olympus\"\nsize = 3\nrate = \"fast\"\nsend_window = {{ start = \"08:00\", end = \"21:00\", middle = \"12:00\" }}\n"
        );
        let err = parse(&dir, "s.toml", &body).unwrap_err();
        let found = lines_and_messages(&err);
        let lines: Vec<u64> = found.iter().map(|(l, _)| *l).collect();
        assert_eq!(lines, [5, 7, 9, 8, 6], "{err}");
        assert!(found[0].1.starts_with("unknown field `colour`, expected one of `name`, `kind`"), "{err}");
        assert!(found[1].1.starts_with("unknown field `size`"), "{err}");
        assert_eq!(found[2].1, "unknown field `middle`, expected `start` or `end`");
        assert!(found[3].1.starts_with("invalid type: string \"fast\""), "{err}");
        assert!(found[4].1.starts_with("timezone \"Mars/Olympus\""), "{err}");
    }

    #[test]
    fn a_missing_required_key_is_reported_with_the_files_other_mistakes() {
        let dir = dir_with_csv("phone\n+12015550123\n");
        let body = "flow = \"FW0123456789abcdef0123456789abcdef\"\nfrom = \"12345\"\ncontacts = \"appointments.csv\"\nshape = \"round\"\n";
        let err = parse(&dir, "s.toml", body).unwrap_err();
        let found = lines_and_messages(&err);
        assert_eq!(found.len(), 3, "{err}");
        assert_eq!(found[0].0, 4);
        assert!(found[0].1.starts_with("unknown field `shape`"), "{err}");
        assert_eq!(found[1], (1, "missing field `kind`".to_string()));
        assert_eq!(found[2].0, 2);
        assert!(found[2].1.starts_with("from \"12345\" must be an E.164 number"), "{err}");
    }

    #[test]
    fn a_schedule_that_never_fires_is_refused_with_its_line_and_the_bound() {
        let dir = dir_with_csv("phone\n+12015550123\n");
        let body = format!("{SURVEY}schedule = \"0 0 30 2 *\"\n");
        let err = parse(&dir, "s.toml", &body).unwrap_err();
        assert_eq!(
            lines_and_messages(&err),
            [(
                5,
                "schedule: \"0 0 30 2 *\" has no fire time in the next 10 years; check its day and month".to_string()
            )]
        );
        // 29 February comes round at least once in any ten years.
        let body = format!("{SURVEY}schedule = \"0 0 29 2 *\"\n");
        assert_eq!(parse(&dir, "s.toml", &body).unwrap().schedule.as_ref().map(|s| s.line()), Some("0 0 29 2 *"));
    }

    #[test]
    fn a_send_window_whose_ends_are_equal_is_refused_at_its_line() {
        let dir = dir_with_csv("phone\n+12015550123\n");
        let body = format!("{SURVEY}send_window = {{ start = \"08:00\", end = \"08:00\" }}\n");
        let err = parse(&dir, "s.toml", &body).unwrap_err();
        assert_eq!(
            lines_and_messages(&err),
            [(5, "send_window start and end are equal; the window would be empty".to_string())]
        );
    }

    #[test]
    fn outcome_fields_are_read_with_their_types_and_bad_ones_named_at_their_line() {
        let dir = dir_with_csv("phone\n+12015550123\n");
        let head = "kind = \"survey\"\nflow = \"FW0123456789abcdef0123456789abcdef\"\nfrom = \"+15017122661\"\ncontacts = \"appointments.csv\"\n";
        let good = format!(
            "{head}[outcomes]\nreply = \"widgets.ask.inbound.Body\"\nscore = {{ path = \"flow.variables.score\", type = \"nps\" }}\n"
        );
        let c = parse(&dir, "s.toml", &good).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.outcomes.len(), 2);
        let score = c.outcomes.iter().find(|f| f.name == "score").unwrap();
        assert_eq!((score.path.as_str(), score.kind), ("flow.variables.score", OutcomeType::Nps));
        let bad = format!(
            "{head}[outcomes]\nreply = \"widgets..Body\"\nscore = {{ path = \"x\", type = \"percent\" }}\nstatus = \"flow.x\"\n"
        );
        let err = parse(&dir, "s.toml", &bad).unwrap_err();
        let got = lines_and_messages(&err);
        assert_eq!(got.len(), 3, "{got:?}");
        assert!(got[0].0 == 6 && got[0].1.contains("dot-separated"), "{got:?}");
        assert!(
            got[1].0 == 7
                && got[1].1.contains("outcome type \"percent\" must be one of string, integer, number, boolean, nps"),
            "{got:?}"
        );
        assert!(got[2].0 == 8 && got[2].1.contains("built in"), "{got:?}");
    }

    #[test]
    fn a_flow_name_must_have_a_definition_in_the_flows_folder() {
        let dir = dir_with_csv("phone\n+12015550123\n");
        let body = "kind = \"survey\"\nflow = \"survey\"\nfrom = \"MG0123456789abcdef0123456789abcdef\"\ncontacts = \"appointments.csv\"\n";
        let err = parse(&dir, "s.toml", body).unwrap_err().to_string();
        assert!(err.contains("s.toml:2: flow \"survey\": no definition"), "{err}");
        std::fs::write(dir.folders.flows.join("survey.json"), "{}").unwrap();
        let c = parse(&dir, "s.toml", body).unwrap();
        assert_eq!(c.flow, FlowRef::Name("survey".into()));
        assert_eq!(c.from.as_str(), "MG0123456789abcdef0123456789abcdef");
    }

    #[test]
    fn a_bad_send_window_and_bad_from_are_reported_together() {
        let dir = dir_with_csv("phone\n+12015550123\n");
        let body = "kind = \"survey\"\nflow = \"FW0123456789abcdef0123456789abcdef\"\nfrom = \"MG123\"\ncontacts = \"appointments.csv\"\nsend_window = { start = \"8am\", end = \"21:00\" }\n";
        let err = parse(&dir, "s.toml", body).unwrap_err();
        let lines: Vec<u64> = err.diagnostics.iter().map(|d| d.line).collect();
        assert_eq!(lines, [3, 5], "{err}");
    }
}
