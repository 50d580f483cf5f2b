//! Pause, resume and cancel, and the state changes flowcast makes itself (a
//! run stopped by Studio's refusal, a run whose import failed).

use crate::domain::{NotAllowed, RunAction, RunState};
use crate::store::{Store, StoreError};

/// Times a guarded change is retried when another actor keeps moving the run.
const RACE_RETRIES: usize = 5;

/// A run's state before and after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: RunState,
    pub to: RunState,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    NotAllowed(#[from] NotAllowed),
    #[error("run {0} kept changing state; try again")]
    Contended(i64),
}

/// Applies a user's `action` to run `id`.
pub async fn control(store: &Store, id: i64, action: RunAction, now_ms: i64) -> Result<Transition, ControlError> {
    for _ in 0..RACE_RETRIES {
        let run = store.get_run(id).await?;
        let to = action.target(id, run.state, run.expanded_at.is_some())?;
        if store.set_run_state(id, run.state, to, action.reason(), now_ms).await? {
            return Ok(Transition { from: run.state, to });
        }
    }
    Err(ControlError::Contended(id))
}

/// Moves run `id` to `to` with `reason` if its current state passes `from_ok`;
/// returns the state it left, or `None` when the rule refused it (e.g. the run
/// is already over).
pub async fn move_run(
    store: &Store,
    id: i64,
    to: RunState,
    reason: &str,
    now_ms: i64,
    from_ok: impl Fn(RunState) -> bool,
) -> Result<Option<RunState>, StoreError> {
    for _ in 0..RACE_RETRIES {
        let from = store.run_state(id).await?;
        if !from_ok(from) {
            return Ok(None);
        }
        if store.set_run_state(id, from, to, Some(reason), now_ms).await? {
            return Ok(Some(from));
        }
    }
    Err(StoreError::Corrupt(format!("run {id} kept changing state while moving it to {to}")))
}
