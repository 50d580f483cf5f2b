//! What the ledger takes and gives: rows built from domain types, the same
//! whichever database keeps them.

use std::collections::BTreeMap;

use chrono_tz::Tz;

use crate::domain::{
    CampaignKind, Channel, ConflictPolicy, FlowSid, ImportRow, JobOutcome, JobReason, JobState, NotifyRule,
    OutcomeField, OutcomeState, Parameters, Phone, RowOutcome, RunState, Scope, SendWindow, Trigger,
};

/// What a new run records about its campaign, frozen when the run starts so
/// that a resume after an edit behaves like the run that was started.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub campaign: String,
    pub kind: CampaignKind,
    pub trigger: Trigger,
    /// What makes the run unique for its campaign: the tick, the content hash,
    /// or the moment of a manual start.
    pub run_key: String,
    pub scheduled_at: i64,
    pub source: String,
    pub flow: FlowSid,
    pub from: String,
    pub policy: ConflictPolicy,
    pub rate: Option<u32>,
    pub window: Option<SendWindow>,
    /// What to read back from each Execution.
    pub outcomes: Vec<OutcomeField>,
    /// How the Flow reaches people (suppressions may cover one channel).
    pub channel: Channel,
    /// `contact_limits = "exempt"`: not counted or capped.
    pub limits_exempt: bool,
    /// `dedupe`'s window: one Execution per key within it.
    pub dedupe_within: Option<std::time::Duration>,
    /// Where the run's events go.
    pub notify: Option<NotifyRule>,
}

/// A run as the ledger has it.
#[derive(Debug, Clone)]
pub struct RunRow {
    pub id: i64,
    pub campaign: String,
    pub kind: CampaignKind,
    pub trigger: Trigger,
    pub scheduled_at: i64,
    pub flow: FlowSid,
    pub from: String,
    pub policy: ConflictPolicy,
    pub rate: Option<u32>,
    pub window: Option<SendWindow>,
    pub outcomes: Vec<OutcomeField>,
    pub state: RunState,
    pub state_reason: Option<String>,
    pub rows_total: i64,
    pub imported: i64,
    pub rejected: i64,
    pub duplicates: i64,
    pub created_at: i64,
    /// Set when the import is complete.
    pub expanded_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub channel: Channel,
    pub limits_exempt: bool,
    pub dedupe_within_ms: Option<i64>,
    /// When its personal data was purged (retention); its jobs' phones are
    /// keyed hashes since.
    pub purged_at: Option<i64>,
}

/// Jobs per state for one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunCounts(pub BTreeMap<JobState, i64>);

impl RunCounts {
    pub fn get(&self, state: JobState) -> i64 {
        self.0.get(&state).copied().unwrap_or(0)
    }

    /// Jobs still to be settled.
    pub fn open(&self) -> i64 {
        self.get(JobState::Pending) + self.get(JobState::Dispatching)
    }

    pub fn total(&self) -> i64 {
        self.0.values().sum()
    }
}

/// A job as reports show it.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: i64,
    pub run_id: i64,
    pub line: i64,
    pub phone: Phone,
    pub state: JobState,
    pub reason: Option<JobReason>,
    pub execution_sid: Option<String>,
    pub attempts: i64,
    pub due_at: i64,
    pub expires_at: Option<i64>,
    pub sent_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub last_error: Option<String>,
    /// When Studio reported the Execution ended (Event Streams), and why.
    pub execution_ended_at: Option<i64>,
    pub ended_reason: Option<String>,
    /// Whether the Execution has been read back (`None`: never sent).
    pub outcome_state: Option<OutcomeState>,
    /// Studio's Execution status when it was read back.
    pub execution_status: Option<String>,
    pub ended_in: Option<String>,
    /// Outcome field → value, and field → why a value is kept as text.
    pub outcome: serde_json::Map<String, serde_json::Value>,
    pub outcome_notes: serde_json::Map<String, serde_json::Value>,
}

/// A sent job whose outcome is to be read back.
#[derive(Debug, Clone)]
pub struct OutcomeJob {
    pub id: i64,
    pub run_id: i64,
    pub phone: Phone,
    pub execution_sid: String,
    pub sent_at: i64,
    pub polls: i64,
}

/// A job claimed for dispatch: already `dispatching` and committed.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: i64,
    pub run_id: i64,
    pub phone: Phone,
    /// The contact's zone (for send windows).
    pub zone: Tz,
    pub parameters: Parameters,
    pub attempts: i64,
    pub failures: i64,
    pub throttles: i64,
    pub expires_at: Option<i64>,
    pub attempt_started_at: i64,
    pub ambiguous_since: Option<i64>,
    pub conflict_sid: Option<String>,
    pub conflict_since: Option<i64>,
}

/// One attempt's outcome, waiting to be recorded.
#[derive(Debug, Clone)]
pub struct SettledJob {
    pub job_id: i64,
    pub outcome: JobOutcome,
    pub attempts_sent: i64,
    pub at: i64,
}

/// One call to Studio, for the audit trail.
#[derive(Debug, Clone)]
pub struct StudioCall {
    pub run_id: Option<i64>,
    pub job_id: Option<i64>,
    pub at: i64,
    pub operation: &'static str,
    /// What was asked, e.g. `To=… From=…`; empty for a create that
    /// succeeded (its job's phone and its run's sender say it).
    pub request: String,
    pub http_status: Option<u16>,
    pub response: Option<String>,
    pub outcome: String,
    pub execution_sid: Option<String>,
    pub note: Option<String>,
}

impl StudioCall {
    /// The job and Execution of a create Studio answered with that
    /// Execution, as the dispatcher records one (nothing else to say: no
    /// request text, response or note): the call a job row keeps itself
    /// (`create_on_row`) when the same batch records the job sent with it.
    pub(crate) fn answered_create(&self) -> Option<(i64, &str)> {
        let bare = self.request.is_empty() && self.http_status.is_none() && self.response.is_none();
        if self.operation != "create" || self.outcome != "ok" || !bare || self.note.is_some() {
            return None;
        }
        Some((self.job_id?, self.execution_sid.as_deref()?))
    }
}

/// The calls of a batch still to be written as rows of `studio_calls`: all
/// but the creates the batch recorded on their job rows (`on_rows`: job →
/// the Execution it was recorded sent with), one each.
pub(crate) fn calls_left_for_rows<'a>(
    calls: &'a [StudioCall],
    mut on_rows: std::collections::HashMap<i64, &str>,
) -> Vec<&'a StudioCall> {
    calls
        .iter()
        .filter(|call| match call.answered_create() {
            Some((job, sid)) if on_rows.get(&job) == Some(&sid) => {
                on_rows.remove(&job);
                false
            }
            _ => true,
        })
        .collect()
}

/// The job that created an Execution: its run and contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionJob {
    pub job_id: i64,
    pub run_id: i64,
    pub phone: Phone,
}

/// One audit record, as tests and reports read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSummary {
    pub operation: String,
    pub outcome: String,
    pub execution_sid: Option<String>,
    pub note: Option<String>,
}

/// Import counts of one batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCounts {
    pub imported: i64,
    pub rejected: i64,
    pub duplicates: i64,
}

impl std::ops::AddAssign for BatchCounts {
    fn add_assign(&mut self, other: BatchCounts) {
        self.imported += other.imported;
        self.rejected += other.rejected;
        self.duplicates += other.duplicates;
    }
}

/// What an import refused or found duplicated, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefusedRow {
    pub line: i64,
    pub raw_phone: String,
    pub outcome: RowOutcome,
    pub reason: String,
}

/// A campaign as the service last saw it, and its schedule's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignRow {
    pub name: String,
    pub kind: CampaignKind,
    pub source: String,
    pub content_hash: String,
    pub schedule: Option<String>,
    pub timezone: String,
    pub enabled: bool,
    pub last_tick_at: Option<i64>,
    pub next_fire_at: Option<i64>,
    pub removed_at: Option<i64>,
    pub updated_at: i64,
}

/// One entry of the suppression list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suppression {
    /// Its place in the list (for paging).
    pub id: i64,
    pub phone: Phone,
    pub scope: Scope,
    pub reason: Option<String>,
    /// Where it came from: `cli`, `api`, `import`, `messaging webhook`, `studio`.
    pub source: String,
    pub created_at: i64,
}

impl Suppression {
    /// Why a job is skipped for this entry: the scope, then the reason.
    pub fn describe(&self) -> String {
        match &self.reason {
            Some(reason) => format!("scope {}, {reason}", self.scope),
            None => format!("scope {}", self.scope),
        }
    }
}

/// A contact pushed to a campaign's open run, with its key if it has one.
#[derive(Debug, Clone)]
pub struct PushRow {
    pub key: Option<String>,
    pub item: ImportRow,
}

/// What became of a pushed contact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PushOutcome {
    /// A new job.
    Created,
    /// Its key was pushed before: the job that push made.
    Existing,
    /// Its phone is already in the open run: that job.
    Duplicate,
    /// The row was refused (the reason says why); no job.
    Rejected,
}

/// A pushed contact's job (if any), its state and reason now.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PushResult {
    pub job: Option<i64>,
    pub outcome: PushOutcome,
    pub state: Option<JobState>,
    pub reason: Option<String>,
}

/// An event in the outbox, as written by the ledger's triggers.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OutboxEvent {
    pub id: i64,
    pub event_id: String,
    pub event_type: String,
    pub run_id: i64,
    pub job_id: Option<i64>,
    pub url: String,
    /// The JSON document sent, exactly as signed.
    pub body: String,
    pub created_at: i64,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub delivered_at: Option<i64>,
    pub gave_up_at: Option<i64>,
    pub last_error: Option<String>,
}

/// Events by delivery state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct OutboxCounts {
    pub pending: i64,
    pub delivered: i64,
    pub gave_up: i64,
}

/// A live instance sharing the ledger (PostgreSQL).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceRow {
    pub name: String,
    pub leader: bool,
    /// Its last heartbeat.
    pub seen_at: i64,
    pub started_at: i64,
    /// Where its HTTP API listens.
    pub address: Option<String>,
    /// Campaigns whose file in its folder differs from the version in force.
    pub differs: Vec<String>,
    /// Whether it is the instance asking.
    pub this: bool,
}
