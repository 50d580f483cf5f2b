//! A contact becomes a job: its Parameters rendered from the campaign's
//! templates, and its due and expiry times from `send_at` and `expires`.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::{Campaign, ParamValue};
use crate::contacts::Contact;
use crate::domain::{JobSpec, Parameters};

/// The Parameters key flowcast adds to every Execution; a CSV column of that
/// name is not passed on (flowcast's own key would replace it anyway).
const RESERVED: &str = "flowcast";

/// Renders `contact` for `campaign` in a run starting at `now`; the error is the
/// reason the row is rejected.
pub fn expand(campaign: &Campaign, contact: &Contact, now: DateTime<Utc>) -> Result<JobSpec, String> {
    let lookup = |c: &str| contact.get(c);
    let parameters = match &campaign.parameters {
        Some(map) => {
            let mut out = Map::with_capacity(map.len());
            for (key, value) in map {
                let v = match value {
                    ParamValue::Constant(v) => v.clone(),
                    ParamValue::Template(t) => {
                        Value::String(t.render(lookup).map_err(|e| format!("parameters.{key}: {e}"))?)
                    }
                };
                out.insert(key.clone(), v);
            }
            out
        }
        None => contact
            .fields()
            .filter(|(name, _)| *name != campaign.phone_column && *name != RESERVED)
            .map(|(name, value)| (name.to_string(), Value::String(value.to_string())))
            .collect(),
    };
    let mut due_at = match &campaign.send_at {
        Some(t) => Some(t.render(lookup, contact.zone).map_err(|e| format!("send_at: {e}"))?),
        None => None,
    };
    if let Some(window) = &campaign.send_window {
        due_at = Some(window.next_open(due_at.unwrap_or(now).max(now), contact.zone));
    }
    let expires_at = match &campaign.expires {
        Some(t) => Some(t.render(lookup, contact.zone).map_err(|e| format!("expires: {e}"))?),
        None => None,
    };
    let dedupe_key = match &campaign.dedupe {
        None => None,
        Some(d) => Some(match &d.key {
            None => contact.phone.as_str().to_string(),
            Some(t) => {
                let key = t.render(lookup).map_err(|e| format!("dedupe.key: {e}"))?;
                // An empty key would make every such row the same contact.
                if key.trim().is_empty() {
                    return Err("dedupe.key: the key is empty for this row".into());
                }
                key
            }
        }),
    };
    Ok(JobSpec {
        line: contact.line,
        phone: contact.phone.clone(),
        zone: contact.zone,
        parameters: Parameters::from_map(&parameters),
        due_at,
        expires_at,
        dedupe_key,
    })
}
