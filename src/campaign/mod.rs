//! Campaign files: TOML text → raw struct (every field with its span) → a
//! validated [`Campaign`]. Every problem found is reported as `file:line: message`,
//! all of them at once, so a user fixes a file in one pass.

mod expand;
mod load;
mod parse;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use chrono_tz::Tz;
use phonenumber::country::Id;

use crate::contacts::ReadOptions;
use crate::domain::{
    CampaignKind, Channel, ConflictPolicy, Dedupe, FlowSid, NotifyRule, OutcomeField, SendWindow, Template,
    TimeTemplate,
};

pub use expand::expand;
pub use load::{
    LoadedFolder, MAX_CAMPAIGN_FILE_BYTES, content_hash, list_campaign_files, load_files, load_folder, load_one,
    name_taken,
};
pub use parse::{is_valid_name, parse_campaign};

/// One problem in an input file, printed as `file:line: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: u64,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file.display(), self.line, self.message)
    }
}

/// A campaign file that was refused, with every problem found in it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", .diagnostics.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
pub struct CampaignError {
    pub diagnostics: Vec<Diagnostic>,
}

/// Which Flow to trigger: a SID, or the name of a definition in `flows/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowRef {
    Sid(FlowSid),
    Name(String),
}

/// Who the Execution comes from: a number or a Messaging Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sender(pub(crate) String);

impl Sender {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A parameter value: a template over CSV columns, or a constant.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    Template(Template),
    Constant(serde_json::Value),
}

/// A validated campaign.
#[derive(Debug, Clone)]
pub struct Campaign {
    pub name: String,
    pub kind: CampaignKind,
    pub flow: FlowRef,
    pub from: Sender,
    /// The contacts CSV, resolved and checked to lie inside the campaigns
    /// folder; `None` for `trigger = "api"`, whose contacts come over HTTP.
    pub contacts: Option<PathBuf>,
    pub schedule: Option<crate::schedule::Schedule>,
    pub timezone: Tz,
    pub on_conflict: ConflictPolicy,
    pub rate: Option<u32>,
    pub default_region: Option<Id>,
    pub phone_column: String,
    pub send_window: Option<SendWindow>,
    pub send_at: Option<TimeTemplate>,
    pub expires: Option<TimeTemplate>,
    pub enabled: bool,
    /// `None`: pass every CSV column except the phone column.
    pub parameters: Option<BTreeMap<String, ParamValue>>,
    /// What to read back from each Execution (`[outcomes]`).
    pub outcomes: Vec<OutcomeField>,
    /// How the Flow reaches people: `channel`, else implied by `from`.
    pub channel: Channel,
    /// `contact_limits = "exempt"`: transactional messages, not counted or capped.
    pub limits_exempt: bool,
    /// `dedupe = { key, within }`: one Execution per key within the window.
    pub dedupe: Option<Dedupe>,
    /// `notify = { url, events }`: where this campaign's events go.
    pub notify: Option<NotifyRule>,
    /// The file this came from.
    pub source: PathBuf,
    /// Mistakes that do not stop the campaign from running.
    pub warnings: Vec<Diagnostic>,
}

impl Campaign {
    /// What `status --json` and `GET /api/campaigns` say about a campaign.
    pub fn summary(&self, next_fire: Option<chrono::DateTime<chrono::Utc>>) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "kind": self.kind,
            "file": self.source.display().to_string(),
            "schedule": self.schedule.as_ref().map(crate::schedule::Schedule::line),
            "timezone": self.timezone.name(),
            "enabled": self.enabled,
            "next_fire_utc": next_fire.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
            "next_fire_local": next_fire.map(|t| t.with_timezone(&self.timezone).to_rfc3339()),
        })
    }

    /// How to read this campaign's CSV.
    pub fn read_options(&self) -> ReadOptions {
        ReadOptions {
            phone_column: self.phone_column.clone(),
            default_region: self.default_region,
            timezone: self.timezone,
        }
    }
}

/// Where a campaign's relative paths are checked against.
#[derive(Debug, Clone)]
pub struct Folders {
    pub campaigns: PathBuf,
    pub flows: PathBuf,
}
