//! Run control shared by the command line and the HTTP API: pause, resume,
//! cancel, with the transitions each allows.

use crate::domain::RunState;
use crate::store::{Store, StoreError};

/// What a user can ask of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Cancel,
}

impl Action {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pause" => Some(Action::Pause),
            "resume" => Some(Action::Resume),
            "cancel" => Some(Action::Cancel),
            _ => None,
        }
    }

    fn target(self) -> RunState {
        match self {
            Action::Pause => RunState::Paused,
            Action::Resume => RunState::Active,
            Action::Cancel => RunState::Cancelled,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("run {run} is {from}; it cannot be {verb}")]
    NotAllowed { run: i64, from: String, verb: &'static str },
}

/// Applies `action` to run `id`; returns the state it had and the one it has.
pub fn control_run(store: &Store, id: i64, action: Action, now_ms: i64) -> Result<(String, RunState), ControlError> {
    let run = store.get_run(id)?;
    let from = run
        .state
        .parse::<RunState>()
        .map_err(|_| StoreError::Corrupt(format!("run {id} has state {:?}", run.state)))?;
    let allowed = match action {
        Action::Pause => matches!(from, RunState::Active | RunState::Expanding | RunState::Paused),
        Action::Resume => matches!(from, RunState::Paused | RunState::Active),
        Action::Cancel => !matches!(from, RunState::Finished),
    };
    let verb = match action {
        Action::Pause => "paused",
        Action::Resume => "resumed",
        Action::Cancel => "cancelled",
    };
    if !allowed {
        return Err(ControlError::NotAllowed { run: id, from: from.to_string(), verb });
    }
    let reason = match action {
        Action::Pause => Some("paused by user"),
        Action::Cancel => Some("cancelled by user"),
        Action::Resume => None,
    };
    // A run paused while still importing resumes importing; the import makes it
    // active when it is done.
    let target =
        if action == Action::Resume && run.expanded_at.is_none() { RunState::Expanding } else { action.target() };
    store.set_run_state(id, target, reason, now_ms)?;
    Ok((run.state, target))
}
