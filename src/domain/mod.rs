//! Pure domain types: no async, no SQL, no HTTP.
//!
//! Everything here is built by parsing, so a value that exists is valid: a
//! [`Phone`] is E.164, a [`FlowSid`] has Studio's shape, a [`ConflictPolicy`]
//! carries its own bound. Each state, policy, trigger, kind and reason has
//! exactly one text form, defined here; the edges (store, studio, dispatch,
//! HTTP, reports) only move these values around.

mod caps;
mod contact;
mod digest;
mod duration;
mod fields;
mod job;
mod notify;
mod outcome;
mod phone;
mod policy;
mod sid;
mod suppression;
mod template;
mod text;
mod window;

pub use caps::{ContactLimits, Dedupe};
pub use contact::{ImportRow, JobSpec, NotAnObject, Parameters, Rejection, ResumePoint, RowOutcome, part_of};
pub use digest::{Sha256Hex, hex, sha256_hex};
pub use duration::{format_duration, parse_duration, parse_duration_at_most, parse_retention};
pub use fields::{
    BUILT_IN_FIELDS, CollectedOutcome, FieldSummary, OutcomeField, OutcomeState, OutcomeType, StepSeen, ended_in,
};
pub use job::{CampaignKind, EndOutcome, JobReason, JobState, NotAllowed, ReasonKind, RunAction, RunState, Trigger};
pub use notify::{EventType, NotifyRule};
pub use outcome::JobOutcome;
pub use phone::{Phone, PhoneError, mask_phones_in, parse_region};
pub use policy::{ConflictFacts, ConflictPolicy, ConflictStep, DEFAULT_MAX_WAIT, backoff_delay};
pub use sid::{ExecutionSid, FlowSid, SidError, find_execution_sid};
pub use suppression::{
    Channel, NOT_MOBILE, OPT_OUT_KEYWORDS, SEND_FAILED_EVENTS, Scope, UNSUBSCRIBED, opt_out_keyword, opt_outs_in,
    send_errors_in, suppression_for_send_error, suppressions_learned,
};
pub use template::{Template, TemplateError, TimeTemplate, parse_instant};
pub use window::SendWindow;
