//! The campaign file parser: TOML text → raw struct (every field with its
//! span) → a validated [`Campaign`], with every problem found reported as
//! `file:line: message`, all at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono_tz::Tz;
use serde::Deserialize;
use toml::Spanned;

use super::{Campaign, CampaignError, Diagnostic, FlowRef, Folders, ParamValue, Sender};
use crate::contacts;
use crate::domain::{
    CampaignKind, ConflictPolicy, FlowSid, Phone, SendWindow, Template, TimeTemplate, parse_duration, parse_region,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCampaign {
    name: Option<Spanned<String>>,
    kind: Spanned<String>,
    flow: Spanned<String>,
    from: Spanned<String>,
    contacts: Spanned<String>,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWindow {
    start: String,
    end: String,
}

/// Collects diagnostics for one file, turning byte spans into line numbers.
struct Problems<'a> {
    file: &'a Path,
    text: &'a str,
    found: Vec<Diagnostic>,
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
}

/// The campaign name rule: `[a-z0-9-]+`.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Parses and checks one campaign file's text. `file` is used in messages and to
/// resolve `contacts`; the CSV header is read to check template columns.
pub fn parse_campaign(file: &Path, text: &str, folders: &Folders) -> Result<Campaign, CampaignError> {
    let mut p = Problems { file, text, found: Vec::new() };
    let raw: RawCampaign = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let line = e.span().map_or(1, |s| p.line_of(s.start));
            p.at_line(line, e.message().trim().to_string());
            return Err(CampaignError { diagnostics: p.found });
        }
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

    let kind = raw.kind.get_ref().parse::<CampaignKind>().unwrap_or_else(|e| {
        p.at(raw.kind.span(), e);
        CampaignKind::Reminder
    });

    let flow = parse_flow(&raw.flow, folders, &mut p);

    let from_text = raw.from.get_ref().trim();
    let from = if let Some(hex) = from_text.strip_prefix("MG") {
        if hex.len() == 32 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            Sender(from_text.to_string())
        } else {
            p.at(raw.from.span(), format!("from {from_text:?} is not a Messaging Service SID (MG + 32 hex digits)"));
            Sender(String::new())
        }
    } else if !from_text.starts_with('+') {
        p.at(
            raw.from.span(),
            format!("from {from_text:?} must be an E.164 number (+15017122661) or a Messaging Service SID (MG…)"),
        );
        Sender(String::new())
    } else {
        match Phone::parse(from_text, None) {
            Ok(phone) => Sender(phone.as_str().to_string()),
            Err(e) => {
                p.at(raw.from.span(), format!("from: {e}"));
                Sender(String::new())
            }
        }
    };

    let timezone = match &raw.timezone {
        Some(tz) => Tz::from_str(tz.get_ref().trim()).unwrap_or_else(|_| {
            p.at(tz.span(), format!("timezone {:?} is not an IANA time zone (e.g. America/New_York)", tz.get_ref()));
            chrono_tz::UTC
        }),
        None => chrono_tz::UTC,
    };

    let schedule = raw.schedule.as_ref().and_then(|s| match crate::schedule::parse_cron(s.get_ref()) {
        Ok(_) => Some(s.get_ref().trim().to_string()),
        Err(e) => {
            p.at(s.span(), format!("schedule: {e}"));
            None
        }
    });

    let max_wait = match &raw.max_wait {
        Some(m) => match parse_duration(m.get_ref()) {
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
    if let (Some(m), false) = (&raw.max_wait, matches!(on_conflict, ConflictPolicy::Wait { .. })) {
        p.at(m.span(), "max_wait only applies with on_conflict = \"wait\"");
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

    // The contacts path must exist and stay inside the campaigns folder, and every
    // column a template names must be in its header.
    let contacts = resolve_contacts(file, &raw.contacts, folders, &mut p);
    if let Some(path) = &contacts {
        match contacts::read_header(path) {
            Ok(header) => {
                let has = |c: &str| header.iter().any(|h| h == c);
                if !has(&phone_column) {
                    let span = raw.phone_column.as_ref().map_or(raw.contacts.span(), |c| c.span());
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
                if let Some(map) = &parameters {
                    for (key, (value, span)) in map {
                        if let ParamValue::Template(t) = value {
                            check(t.columns().collect(), span.clone(), &format!("parameters.{key}"), &mut p);
                        }
                    }
                }
            }
            Err(e) => p.at(raw.contacts.span(), e.to_string()),
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
        contacts: contacts.expect("no problems means the contacts path resolved"),
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
        outcomes: Vec::new(),
        source: file.to_path_buf(),
    })
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

    #[test]
    fn max_wait_without_the_wait_policy_is_a_mistake() {
        let dir = dir_with_csv("phone\n+12015550123\n");
        let body = "kind = \"survey\"\nflow = \"FW0123456789abcdef0123456789abcdef\"\nfrom = \"+15017122661\"\ncontacts = \"appointments.csv\"\non_conflict = \"skip\"\nmax_wait = \"1h\"\n";
        let err = parse(&dir, "s.toml", body).unwrap_err().to_string();
        assert!(err.contains("s.toml:6: max_wait only applies"), "{err}");
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
