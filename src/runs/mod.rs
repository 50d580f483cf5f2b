//! The run lifecycle, one way for every caller: the command line, `serve` and
//! the HTTP API start, import, pause, resume and cancel runs through these
//! functions and nothing else.
//!
//! - [`start`] freezes the campaign's settings into a new run (one per key:
//!   the same tick or file content never makes two runs) and [`Imports`]
//!   streams its CSV into jobs while the dispatcher already sends; a failed
//!   import cancels the run, so nothing half-read is ever finished silently.
//! - [`control`] applies a user's pause, resume or cancel with the transitions
//!   [`RunAction`](crate::domain::RunAction) allows, as a guarded update that
//!   loses no race: if another actor moved the run first, the rule is applied
//!   again to the state it is in now.
//! - [`end_active`] ends a run's Executions still active in Studio (after a
//!   cancel, or on its own), recording each end in the audit trail.

mod control;
mod end_active;
mod given;
mod import;
mod outcomes;
mod start;

pub use control::{ControlError, Transition, control, move_run};
pub use end_active::{
    ENDED_REASON, EndCounts, EndError, EndProgress, EndSettings, EndTarget, Ended, RunEnded, active_of_run,
    cancel_for_end, end_active, end_each, fetch_each, targets_for,
};
pub use given::{GivenError, GivenStart, RefusedContact, push_contacts, read_given, start_with_contacts};
pub use import::{
    BATCH_ROWS, DryRun, ImportCounts, ImportError, LONE_BATCH_ROWS, dry_run, import_run, suppressed_phones,
};
pub use outcomes::summarise;
pub use start::{Imports, new_run, set_default_notify, start};
