//! Job and run states, the transitions a user may ask of a run, what came of
//! ending an Execution, what started a run, what a campaign is for, and why a
//! job ended as it did.

use super::text::text_enum;

text_enum! {
    /// A job's place in its life: `pending` → `dispatching` → `sent`, or one of
    /// the terminal states, each recorded with a reason.
    pub enum JobState("job state") {
        Pending = "pending",
        Dispatching = "dispatching",
        Sent = "sent",
        Skipped = "skipped",
        Failed = "failed",
        Expired = "expired",
        Cancelled = "cancelled",
    }
}

impl JobState {
    /// A terminal job is never touched by the dispatcher again.
    pub fn is_terminal(self) -> bool {
        !matches!(self, JobState::Pending | JobState::Dispatching)
    }
}

text_enum! {
    /// A run's control state. `expanding` while its CSV is being imported;
    /// `active` while it has work; `paused` by a user or by a stop condition (bad
    /// credentials); `cancelled`; `finished` when every job is terminal.
    pub enum RunState("run state") {
        Expanding = "expanding",
        Active = "active",
        Paused = "paused",
        Cancelled = "cancelled",
        Finished = "finished",
    }
}

impl RunState {
    /// Jobs of a run in this state may be claimed and sent (an expanding run
    /// sends while its CSV is still being read).
    pub fn is_dispatchable(self) -> bool {
        matches!(self, RunState::Active | RunState::Expanding)
    }

    /// Finished and cancelled runs never change again.
    pub fn is_over(self) -> bool {
        matches!(self, RunState::Finished | RunState::Cancelled)
    }
}

text_enum! {
    /// What a user may ask of a run, from the command line or over HTTP.
    pub enum RunAction("action") {
        Pause = "pause",
        Resume = "resume",
        Cancel = "cancel",
    }
}

/// A run cannot make the transition asked of it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("run {run} is {from}; it cannot be {verb}")]
pub struct NotAllowed {
    pub run: i64,
    pub from: RunState,
    pub verb: &'static str,
}

impl RunAction {
    /// The state a run in `from` moves to, or why it cannot. `imported` says
    /// whether the run's CSV has been read to the end: a run paused while
    /// importing resumes importing, and its import makes it active when done.
    pub fn target(self, run: i64, from: RunState, imported: bool) -> Result<RunState, NotAllowed> {
        let to = match (self, from) {
            (RunAction::Pause, RunState::Active | RunState::Expanding | RunState::Paused) => RunState::Paused,
            (RunAction::Resume, RunState::Paused | RunState::Active | RunState::Expanding) => {
                if imported {
                    RunState::Active
                } else {
                    RunState::Expanding
                }
            }
            (RunAction::Cancel, state) if state != RunState::Finished => RunState::Cancelled,
            _ => return Err(NotAllowed { run, from, verb: self.past_tense() }),
        };
        Ok(to)
    }

    pub fn past_tense(self) -> &'static str {
        match self {
            RunAction::Pause => "paused",
            RunAction::Resume => "resumed",
            RunAction::Cancel => "cancelled",
        }
    }

    /// The reason recorded with the new state.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            RunAction::Pause => Some("paused by user"),
            RunAction::Cancel => Some("cancelled by user"),
            RunAction::Resume => None,
        }
    }
}

text_enum! {
    /// What asking Studio to end an Execution came to: `ended` by this
    /// request, `already_ended` (Studio says it is not active, or does not
    /// know it), or `failed` (Studio refused or did not answer; it may still
    /// be active).
    pub enum EndOutcome("end outcome") {
        Ended = "ended",
        AlreadyEnded = "already_ended",
        Failed = "failed",
    }
}

text_enum! {
    /// What started a run.
    pub enum Trigger("trigger") {
        /// `flowcast run`.
        Manual = "manual",
        /// `POST /api/campaigns/{name}/runs`.
        Api = "api",
        /// The open run of a `trigger = "api"` campaign, fed by
        /// `POST /api/campaigns/{name}/contacts`.
        Contacts = "contacts",
        /// A cron tick.
        Schedule = "schedule",
        /// A one-off campaign file seen with new content.
        File = "file",
    }
}

text_enum! {
    /// What a campaign is for. The kinds share one engine; the kind is for
    /// people (status, dashboards) and for choosing sensible examples.
    pub enum CampaignKind("kind") {
        Reminder = "reminder",
        DeliveryNotice = "delivery-notice",
        Survey = "survey",
    }
}

text_enum! {
    /// The keyword of a job's reason: the first word of its text, the part
    /// reports are grouped and filtered by.
    pub enum ReasonKind("reason") {
        /// The contact was in someone else's active Execution (skip policy, or
        /// the end policy gave up).
        Conflict = "conflict",
        /// The wait policy's `max_wait` passed with the contact still busy.
        ConflictTimeout = "conflict_timeout",
        /// Transient failures (5xx, timeouts) used up the retries.
        Transient = "transient",
        /// Studio refused the request itself (a 4xx other than 409/429/401/403/404).
        Invalid = "invalid",
        /// The job's `expires` passed before it was sent.
        Expired = "expired",
        /// The run was cancelled before this job was sent.
        RunCancelled = "run cancelled",
        /// The contact is on the suppression list for this campaign.
        Suppressed = "suppressed",
        /// The contact's per-contact caps would not allow it before the job
        /// expired.
        FrequencyCap = "frequency_cap",
        /// The campaign's dedupe key already got an Execution within its
        /// window (the detail names that run and job).
        AlreadySent = "already_sent",
    }
}

/// Why a job ended as it did: a keyword, optionally followed by details
/// (`invalid: Twilio error 21211: Invalid 'To' Phone Number`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobReason {
    pub kind: ReasonKind,
    pub detail: Option<String>,
}

impl JobReason {
    pub fn new(kind: ReasonKind) -> Self {
        JobReason { kind, detail: None }
    }

    pub fn with_detail(kind: ReasonKind, detail: impl Into<String>) -> Self {
        JobReason { kind, detail: Some(detail.into()) }
    }

    /// Reads the text form back: the keyword, then `: ` and the details.
    pub fn parse(text: &str) -> Result<Self, String> {
        for kind in ReasonKind::ALL.iter().copied() {
            let keyword = kind.as_str();
            if text == keyword {
                return Ok(JobReason::new(kind));
            }
            if let Some(detail) = text.strip_prefix(keyword).and_then(|rest| rest.strip_prefix(": ")) {
                return Ok(JobReason::with_detail(kind, detail));
            }
        }
        Err(format!("unknown job reason {text:?}"))
    }
}

impl std::fmt::Display for JobReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.detail {
            Some(detail) => write!(f, "{}: {detail}", self.kind),
            None => f.write_str(self.kind.as_str()),
        }
    }
}

impl serde::Serialize for JobReason {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_through_their_names() {
        for state in JobState::ALL {
            assert_eq!(state.as_str().parse::<JobState>().unwrap(), *state);
        }
        for state in RunState::ALL {
            assert_eq!(state.as_str().parse::<RunState>().unwrap(), *state);
        }
        assert!(JobState::Sent.is_terminal());
        assert!(!JobState::Dispatching.is_terminal());
        let err = "sending".parse::<JobState>().unwrap_err();
        assert_eq!(
            err,
            "job state \"sending\" must be one of pending, dispatching, sent, skipped, failed, expired, cancelled"
        );
    }

    #[test]
    fn run_actions_allow_only_their_transitions() {
        use RunAction::*;
        use RunState::*;
        let table = [
            (Pause, Active, true, Ok(Paused)),
            (Pause, Expanding, false, Ok(Paused)),
            (Pause, Finished, true, Err("run 7 is finished; it cannot be paused")),
            (Pause, Cancelled, true, Err("run 7 is cancelled; it cannot be paused")),
            (Resume, Paused, true, Ok(Active)),
            (Resume, Paused, false, Ok(Expanding)),
            (Resume, Finished, true, Err("run 7 is finished; it cannot be resumed")),
            (Cancel, Paused, true, Ok(Cancelled)),
            (Cancel, Expanding, false, Ok(Cancelled)),
            (Cancel, Finished, true, Err("run 7 is finished; it cannot be cancelled")),
        ];
        for (action, from, imported, expected) in table {
            let got = action.target(7, from, imported).map_err(|e| e.to_string());
            assert_eq!(got, expected.map_err(String::from), "{action} from {from}");
        }
    }

    #[test]
    fn reasons_keep_their_keyword_and_details() {
        let invalid = JobReason::with_detail(ReasonKind::Invalid, "Twilio error 21211: Invalid 'To' Phone Number");
        assert_eq!(invalid.to_string(), "invalid: Twilio error 21211: Invalid 'To' Phone Number");
        assert_eq!(JobReason::parse(&invalid.to_string()).unwrap(), invalid);
        assert_eq!(JobReason::parse("conflict_timeout").unwrap().kind, ReasonKind::ConflictTimeout);
        assert_eq!(JobReason::parse("conflict").unwrap().kind, ReasonKind::Conflict);
        assert_eq!(JobReason::parse("run cancelled").unwrap(), JobReason::new(ReasonKind::RunCancelled));
        assert!(JobReason::parse("conflicting").is_err());
    }
}
